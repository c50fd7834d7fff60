"""Write the Rasa project: domain, NLU data, rules, stories and config, from the intent catalogue.

Every catalogue intent is answered by `action_answer` (the bot decides between the knowledge base, the
LLM and a human); the dialogue acts and the multi-turn stories (asking which card when a request needs
one) are the part of the conversation Rasa itself manages.
"""

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

RASA_FILES = Path(__file__).resolve().parent / "rasa_files"
DIALOGUE_INTENTS = ("greet", "goodbye", "affirm", "deny", "ask_human", "inform_card", "multiple_requests")
DIALOGUE_EXAMPLES = {
    "greet": ["hi", "hello", "hey there", "good morning"],
    "goodbye": ["bye", "goodbye", "thanks, bye", "that's all"],
    "affirm": ["yes", "yep", "sure", "correct"],
    "deny": ["no", "nope", "not really"],
    "ask_human": ["I want to talk to a human", "can I speak to an agent", "put me through to a real person"],
    "inform_card": ["the virtual one", "my physical card", "the debit card", "it's the plastic card"],
    "multiple_requests": [
        "how do I reset my passcode and check my card payment fee?",
        "my card is lost and also my top up failed",
    ],
}
# Requests whose answer depends on which card the customer means: the bot asks first.
CARD_INTENTS = (
    "lost_or_stolen_card",
    "card_not_working",
    "activate_my_card",
    "compromised_card",
    "declined_card_payment",
    "card_swallowed",
)


def _literal_block(examples: Sequence[str]) -> str:
    lines = []
    for text in examples:
        clean = " ".join(str(text).split())
        lines.append(f"- {clean}")
    return "\n".join(lines) + "\n"


class _Literal(str):
    pass


def _literal_representer(dumper: yaml.Dumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.add_representer(_Literal, _literal_representer, Dumper=yaml.SafeDumper)


def _dump(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120))


def write_project(
    folder: Path,
    intents: Sequence[str],
    examples: Mapping[str, Sequence[str]],
    fallback_threshold: float,
    classifier_url: str,
    card_intents: Sequence[str] = CARD_INTENTS,
) -> Path:
    """Write (or rewrite) the project in `folder` and return it."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "data").mkdir(parents=True)
    all_intents = [*intents, *DIALOGUE_INTENTS]
    _dump(
        folder / "domain.yml",
        {
            "version": "3.1",
            "intents": all_intents,
            "entities": ["card_type", "request"],
            "slots": {
                "card_type": {
                    "type": "text",
                    "influence_conversation": False,
                    "mappings": [{"type": "from_entity", "entity": "card_type"}],
                },
                "pending_intent": {"type": "text", "influence_conversation": False, "mappings": [{"type": "custom"}]},
            },
            "responses": {"utter_default": [{"text": "Sorry, I didn't get that. Could you say it another way?"}]},
            "actions": ["action_answer", "action_handoff", "action_clarify"],
            "session_config": {"session_expiration_time": 60, "carry_over_slots_to_new_session": False},
        },
    )
    nlu = []
    for intent in all_intents:
        texts = list(examples.get(intent, ())) or DIALOGUE_EXAMPLES.get(intent, [])
        if texts:
            nlu.append({"intent": intent, "examples": _Literal(_literal_block(texts))})
    _dump(folder / "data" / "nlu.yml", {"version": "3.1", "nlu": nlu})
    rules = [
        {"rule": f"answer {intent}", "steps": [{"intent": intent}, {"action": "action_answer"}]}
        for intent in [*intents, "greet", "goodbye", "affirm", "deny", "inform_card"]
    ]
    rules += [
        {"rule": "a person was asked for", "steps": [{"intent": "ask_human"}, {"action": "action_handoff"}]},
        {"rule": "two requests in one message", "steps": [{"intent": "multiple_requests"}, {"action": "action_clarify"}]},
        {"rule": "not understood", "steps": [{"intent": "nlu_fallback"}, {"action": "action_handoff"}]},
    ]
    _dump(folder / "data" / "rules.yml", {"version": "3.1", "rules": rules})
    stories = [
        {
            "story": f"{intent}: which card, then the answer",
            "steps": [
                {"intent": intent},
                {"action": "action_answer"},
                {"intent": "inform_card", "entities": [{"card_type": "virtual"}]},
                {"slot_was_set": [{"card_type": "virtual"}]},
                {"action": "action_answer"},
            ],
        }
        for intent in card_intents
        if intent in intents
    ]
    _dump(folder / "data" / "stories.yml", {"version": "3.1", "stories": stories})
    _dump(
        folder / "config.yml",
        {
            "recipe": "default.v1",
            "language": "en",
            "assistant_id": "supportflow",
            "pipeline": [
                {"name": "supportflow_classifier.SupportflowClassifier", "url": classifier_url},
                {"name": "FallbackClassifier", "threshold": round(float(fallback_threshold), 4), "ambiguity_threshold": 0.0},
            ],
            "policies": [
                {"name": "MemoizationPolicy", "max_history": 3},
                {
                    "name": "RulePolicy",
                    "core_fallback_threshold": 0.3,
                    "core_fallback_action_name": "action_handoff",
                    "enable_fallback_prediction": True,
                },
            ],
        },
    )
    # Rasa substitutes ${VARIABLES} in its endpoint file: the action server's address is set at start-up.
    # Selective domain: the actions never read the domain, so Rasa need not serialise all of it into every call.
    _dump(folder / "endpoints.yml", {"action_endpoint": {"url": "${SUPPORTFLOW_ACTION_WEBHOOK_URL}", "enable_selective_domain": True}})
    _dump(folder / "credentials.yml", {"rest": None})
    shutil.copy(RASA_FILES / "supportflow_classifier.py", folder / "supportflow_classifier.py")
    shutil.copy(RASA_FILES / "rasa_speedups.py", folder / "rasa_speedups.py")
    (folder / "actions").mkdir()
    shutil.copy(RASA_FILES / "actions.py", folder / "actions" / "actions.py")
    (folder / "actions" / "__init__.py").write_text("")
    return folder
