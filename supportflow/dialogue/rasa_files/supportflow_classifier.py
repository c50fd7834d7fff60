"""A Rasa NLU component that asks the supportflow classifier for the intent ranking over HTTP.

Runs inside Rasa's Python 3.10 environment (copied into the generated project). Dialogue acts
(greetings, asking for a person) are recognised by a few patterns; everything else is the classifier's.
A short message that names a value the desk's forms ask for (an entity in `inform_entities`, found by
Rasa's extractors from the desk's lookup tables) and that the classifier is not sure of is `inform`.
A message that holds two requests becomes `multiple_requests`, with the requests as entities, so the bot
can ask which comes first. A message the classifier's unknown-intent detector places outside every intent
(`out_of_scope`) is `nlu_fallback`, flagged `out_of_scope`: the bot hands it off like low confidence and offers no
intent for it, but the classifier's ranking stays with it, as the agent's suggestions for the label.

What one message costs the classifier is bounded: each text sent is cut at `max_chars`, and a message that
splits into more than `max_clauses` clauses is classified whole, as one text (a long run of "and ... and ..."
would otherwise become hundreds of texts, trip the timeout and mark the classifier down for every customer).
"""

import logging
import os
import re
from typing import Any, Dict, List, Optional, Text

import rasa_speedups
import requests
from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.classifiers.classifier import IntentClassifier
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

rasa_speedups.install()
log = logging.getLogger(__name__)

DIALOGUE_ACTS = [
    (
        "ask_human",
        re.compile(r"\b(human|real person|an? agent|someone real|speak to (someone|a person)|talk to (someone|a person))\b", re.I),
    ),
    ("greet", re.compile(r"^\s*(hi|hello|hey|good (morning|afternoon|evening))\b[\s!.,]*$", re.I)),
    ("goodbye", re.compile(r"^\s*(bye|goodbye|see you|thanks,? bye|that'?s all)\b[\s!.,]*$", re.I)),
    ("affirm", re.compile(r"^\s*(yes|yep|yeah|sure|correct|right)\b[\s!.,]*$", re.I)),
    ("deny", re.compile(r"^\s*(no|nope|not really)\b[\s!.,]*$", re.I)),
]
SPLIT = re.compile(r"\s*(?:\?\s+|;\s*|\band also\b|\band\b|\balso\b)\s*", re.I)


def clauses(text: Text, limit: int) -> List[Text]:
    """The message's requests, for the multiple-requests check; none when there are more than `limit`: nobody
    asks that many things at once, and asking which comes first among them would help no one."""
    parts = [p.strip(" ?.!,") for p in SPLIT.split(text)]
    found = [p for p in parts if len(p.split()) >= 3]
    return found if len(found) <= limit else []


@DefaultV1Recipe.register([DefaultV1Recipe.ComponentType.INTENT_CLASSIFIER], is_trainable=False)
class SupportflowClassifier(GraphComponent, IntentClassifier):
    @staticmethod
    def get_default_config() -> Dict[Text, Any]:
        return {
            "url": "http://127.0.0.1:3001/classify",
            "timeout": 5.0,
            "top_k": 10,
            "multi_request_confidence": 0.5,
            "inform_entities": [],
            "inform_max_words": 4,
            "inform_below_confidence": 0.9,
            "max_clauses": 4,
            "max_chars": 1000,
        }

    def __init__(self, config: Dict[Text, Any]) -> None:
        self.config = config
        self.url = os.environ.get("SUPPORTFLOW_CLASSIFY_URL", config["url"])
        self.session = requests.Session()

    @classmethod
    def create(
        cls, config: Dict[Text, Any], model_storage: ModelStorage, resource: Resource, execution_context: ExecutionContext
    ) -> "SupportflowClassifier":
        return cls(config)

    def process_training_data(self, training_data: TrainingData) -> TrainingData:
        return training_data

    def _classify(self, texts: List[Text]) -> Optional[List[Dict[Text, Any]]]:
        try:
            response = self.session.post(self.url, json={"texts": texts}, timeout=self.config["timeout"])
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as error:
            log.error("supportflow classifier at %s unavailable: %s", self.url, error)
            return None

    def process(self, messages: List[Message]) -> List[Message]:
        for message in messages:
            self._process_one(message)
        return messages

    def _set(self, message: Message, name: Text, confidence: float, ranking: List[Dict[Text, Any]]) -> None:
        message.set("intent", {"name": name, "confidence": confidence}, add_to_output=True)
        message.set("intent_ranking", ranking, add_to_output=True)

    def _process_one(self, message: Message) -> None:
        text = message.get("text") or ""
        entities = list(message.get("entities") or [])
        message.set("entities", entities, add_to_output=True)
        informed = [e for e in entities if e.get("entity") in self.config["inform_entities"]]
        for act, pattern in DIALOGUE_ACTS:
            if pattern.search(text):
                self._set(message, act, 1.0, [{"name": act, "confidence": 1.0}])
                return
        parts = clauses(text, self.config["max_clauses"])
        texts = [text] + (parts if len(parts) >= 2 else [])
        results = self._classify([t[: self.config["max_chars"]] for t in texts])
        if results is None:
            self._set(message, "nlu_fallback", 0.0, [])
            message.set("classifier_unavailable", True, add_to_output=True)
            return
        best = results[0]
        ranking = [{"name": r["intent"], "confidence": r["confidence"]} for r in best["ranking"][: self.config["top_k"]]]
        confident = [r for r in results[1:] if r["confidence"] >= self.config["multi_request_confidence"]]
        requested = list(dict.fromkeys(r["intent"] for r in confident))
        if len(requested) >= 2:
            for intent in requested:
                message.get("entities").append({"entity": "request", "value": intent, "extractor": "SupportflowClassifier"})
            self._set(message, "multiple_requests", min(r["confidence"] for r in confident), ranking)
            return
        if (
            informed
            and len(text.split()) <= self.config["inform_max_words"]
            and best["confidence"] < self.config["inform_below_confidence"]
        ):
            self._set(message, "inform", 1.0, ranking)
            return
        if best.get("out_of_scope"):
            self._set(message, "nlu_fallback", best["confidence"], ranking)
            message.set("out_of_scope", True, add_to_output=True)
            return
        self._set(message, best["intent"], best["confidence"], ranking)
