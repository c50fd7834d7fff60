"""The bot's decisions: what to answer, from where, and when a person takes over.

Rasa manages the conversation; its custom actions forward every turn here (`answer`), and the channels
call `chat`, which goes through Rasa and logs the turn. Routing:
- a dialogue act (greeting, goodbye...) gets a short reply;
- a request that needs a slot the customer has not given (the catalogue's `needs`) is asked for it by a
  Rasa form first; once the form completes, the answer is for the request that started it;
- two requests in one message get a clarifying question;
- otherwise the knowledge base: the article for the predicted intent, or the best match above the
  calibrated threshold; with an LLM configured the reply is written from those passages;
- low confidence, nothing relevant, an explicit ask, or a part that is down: a human (handoff);
- a message outside every intent the classifier knows (`out_of_scope`) is routed like low confidence, but never offered
  intents: offering card payments to a question about pizza helps nobody.

Any replica can finish any turn: the action's callback may reach another bot process than the one whose `chat`
waits, so the answer's outcome (route, intent, article...) travels back to `chat` through Rasa, as a custom
payload of the action's reply, and the transcript a handoff shows comes with the action's request, from Rasa's
tracker. Nothing a turn needs is kept in one process.

A conversation's id (a webchat id, or `sms:+<phone>`) is known only to its channel and to `chat`: from there
on, in Rasa's tracker, the turn log, the logs and the handoff queue, it is its stored id, a keyed hash
(supportflow/keys.py), so a phone number never leaves the request.
"""

import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, computed_field

from supportflow.bot.clarify import OFFERED_SLOT, numbered, options_to_offer, picked
from supportflow.bot.handoff import HandoffQueue
from supportflow.bot.llm import LLMResponder, PromptPassage
from supportflow.bot.memory import TRANSCRIPT_TURNS, Transcripts
from supportflow.bot.turns import RANKING_KEPT, Route, Turn, TurnLog
from supportflow.dialogue.project import ASK_HUMAN, PENDING_SLOT  # the slot: set by the from_intent mappings the build makes
from supportflow.keys import ConversationKeys
from supportflow.redact import redact
from supportflow.validate.catalogue import intent_title
from supportflow.workspace import BotTexts

log = logging.getLogger("supportflow.bot")

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9:_+.@-]{1,128}$")
CHANNELS = ("webchat", "sms", "whatsapp", "phone")  # where a customer can write (or speak) from; anything else is refused
# The `supportflow` key of the custom payloads an action utters (dialogue/rasa_files/actions.py, which runs in Rasa's
# environment and cannot import this module, holds the same values): the outcome of an answer, or the marker the
# action utters with its apology when it could not reach /internal/answer (with the transcript the handoff shows).
PAYLOAD_KEY = "supportflow"
OUTCOME = "outcome"
BOT_UNREACHABLE = "bot_unreachable"


class AnswerHit(Protocol):
    doc_id: str
    title: str
    body: str
    url: str
    intent: str | None
    score: float


class KnowledgeReply(Protocol):
    answers: Sequence[AnswerHit]
    threshold: float
    escalate: bool


class Knowledge(Protocol):
    answered_intents: frozenset[str]  # the intents its articles name; empty when they name none
    intent_titles: dict[str, str]  # intent -> the title of its article

    @property
    def build_id(self) -> str: ...  # what a turn it answered records as its knowledge-base build

    def reply(self, question: str, k: int = 3) -> KnowledgeReply: ...

    def article_for(self, intent: str, question: str) -> AnswerHit | None: ...


class TranscriptLine(BaseModel):
    role: Literal["customer", "bot"]
    text: str


TRANSCRIPT = TypeAdapter(list[TranscriptLine])


class AnswerRequest(BaseModel):
    """What a Rasa action forwards for one turn."""

    kind: str = "answer"  # answer, handoff or clarify
    conversation_id: str  # the stored id: Rasa's sender is never the customer's own id
    request_id: str | None = None
    channel: str = "webchat"
    text: str = ""
    intent: str | None = None
    confidence: float | None = None
    ranking: list[dict[str, Any]] = Field(default_factory=list)
    entities: list[dict[str, Any]] = Field(default_factory=list)
    slots: dict[str, Any] = Field(default_factory=dict)
    form_completed: bool = False  # a form finished in this turn: answer the request that started it
    classifier_unavailable: bool = False
    out_of_scope: bool = False  # the classifier's unknown-intent detector: the message belongs to no intent it knows
    # The conversation's last messages from Rasa's tracker, this one included: what a handoff shows the agent, whichever
    # replica the callback reaches. Empty from an action that sends none: the handoff then shows what this process saw.
    transcript: list[TranscriptLine] = Field(default_factory=list, max_length=TRANSCRIPT_TURNS)


class TurnOutcome(BaseModel):
    """What the turn waiting in `chat` needs to know of the answer, carried back to it through Rasa's reply."""

    route: Route
    intent: str | None = None
    confidence: float | None = None
    kb_doc_id: str | None = None
    answer_intent: str | None = None  # the intent the chosen article answers: what an evaluation checks against the gold intent
    kb_score: float | None = None
    kb_build: str | None = None  # the knowledge-base build that answered (or found nothing): the answering replica's
    degraded: bool = False  # a part the bot needs (the classifier) is down
    offered: list[str] = Field(default_factory=list)  # the intents the reply offered to choose from, in its order
    handoff_reason: str | None = None  # for the turn log: what the knowledge-gap report reads
    ranking: list[dict[str, Any]] = Field(default_factory=list)  # the classifier's top intents, for the turn log


class AnswerResponse(BaseModel):
    messages: list[str]
    slots: dict[str, Any] = Field(default_factory=dict)
    route: Route
    intent: str | None = None
    confidence: float | None = None
    kb_doc_id: str | None = None
    answer_intent: str | None = None
    kb_score: float | None = None
    kb_build: str | None = None
    degraded: bool = False  # a part the bot needs (the classifier) is down
    handoff_reason: str | None = None
    ranking: list[dict[str, Any]] = Field(default_factory=list)  # the classifier's, for the turn log

    @computed_field  # type: ignore[prop-decorator]
    @property
    def custom(self) -> dict[str, Any]:
        """The payload the action utters after the messages; Rasa hands it back to `chat` with them."""
        outcome = TurnOutcome(**self.model_dump(exclude={"messages", "slots", "custom"}), offered=list(self.slots.get(OFFERED_SLOT) or []))
        return {PAYLOAD_KEY: OUTCOME, OUTCOME: outcome.model_dump()}


class ChatError(Exception):
    """Input the bot refuses, with the HTTP status that fits."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ChatResult:
    replies: list[str]
    route: Route
    status: int = 200
    request_id: str = ""
    intent: str | None = None
    confidence: float | None = None
    kb_doc_id: str | None = None
    answer_intent: str | None = None
    offered: list[str] = field(default_factory=list)  # the intents the reply offered to choose from, in its order
    turn_id: str | None = None  # what a customer's rating of this turn names
    kb_score: float | None = None
    kb_build: str | None = None
    handoff_reason: str | None = None
    ranking: list[dict[str, Any]] = field(default_factory=list)


def extract_answer(body: str, limit: int = 600) -> str:
    """The first paragraphs of an article, cut at a sentence, without Markdown headings or emphasis."""
    paragraphs = [p.strip() for p in body.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
    text = re.sub(r"[*_`]{1,2}", "", " ".join(paragraphs))
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > limit // 3 else cut.rstrip() + "..."


@dataclass
class SupportBot:
    knowledge: Knowledge | None
    llm: LLMResponder
    handoffs: HandoffQueue
    turns: TurnLog
    rasa_url: str
    keys: ConversationKeys
    model_version: str | None = None
    max_message_chars: int = 4000
    rasa_timeout_s: float = 30.0
    offer_options: int = 3  # below the threshold, offer at most this many close intents before a handoff (0: never)
    offer_min_share: float = 0.6  # ...when together they hold this much of the probability
    texts: BotTexts = field(default_factory=BotTexts)  # the desk's own words, from its workspace
    conversations_in_memory: int = 10_000
    conversation_memory_s: float = 24 * 3600
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))

    def __post_init__(self) -> None:
        # What this process saw of each conversation: a handoff shows it only when Rasa's tracker cannot be had
        # (Rasa is down, or an action sent no transcript); another replica never needs it.
        self._transcripts = Transcripts(self.conversations_in_memory, self.conversation_memory_s)

    # The answer a Rasa action asks for.
    def answer(self, request: AnswerRequest) -> AnswerResponse:
        # Read once: the knowledge base may be swapped for a newly promoted build while this turn runs
        # (supportflow/kb/serving.py), and one turn's titles, search and article must all come from one build.
        knowledge = self.knowledge
        offered = list(request.slots.get(OFFERED_SLOT) or [])
        choice = picked(request.text, request.intent, offered, self._labels(knowledge, offered)) if offered else None
        if request.classifier_unavailable:
            response = self._handoff(request, "the classifier was unavailable", self.texts.outage).model_copy(update={"degraded": True})
        elif choice is not None:
            response = self._from_knowledge(knowledge, request, self._labels(knowledge, [choice])[choice], choice, request.confidence, {})
        elif (
            request.kind == "handoff"
            and request.intent == "nlu_fallback"
            and not offered
            and (options := self._options(knowledge, request))
        ):
            response = self._offer(knowledge, request, options)
        elif request.kind == "handoff" and request.out_of_scope:
            response = self._handoff(request, "outside every intent the classifier knows")
        elif request.kind == "handoff":
            response = self._handoff(request, "asked for a person" if request.intent == ASK_HUMAN else "not understood with confidence")
        elif request.kind == "clarify":
            response = self._clarify(knowledge, request)
        else:
            response = self._answer(knowledge, request)
        if offered and OFFERED_SLOT not in response.slots:
            response.slots[OFFERED_SLOT] = None  # answered, or declined by a new message: an offer is made once
        response.ranking = request.ranking[:RANKING_KEPT]
        return response

    @staticmethod
    def _labels(knowledge: Knowledge | None, intents: list[str]) -> dict[str, str]:
        titles = knowledge.intent_titles if knowledge is not None else {}
        return {intent: titles.get(intent) or intent_title(intent) for intent in intents}

    def _options(self, knowledge: Knowledge | None, request: AnswerRequest) -> list[str]:
        if request.out_of_scope or knowledge is None or not knowledge.answered_intents or self.offer_options < 1:
            return []  # offers name articles: a knowledge base whose articles name no intent has none to offer
        return options_to_offer(request.ranking, knowledge.answered_intents, self.offer_options, self.offer_min_share)

    def _offer(self, knowledge: Knowledge | None, request: AnswerRequest, options: list[str]) -> AnswerResponse:
        labels = self._labels(knowledge, options)
        if len(options) == 1:
            message = self.texts.offer_one.format(option=labels[options[0]].rstrip("?.!"))
        else:
            message = self.texts.offer.format(options=numbered(options, labels))
        return AnswerResponse(
            messages=[message], slots={OFFERED_SLOT: options}, route="clarify", intent=request.intent, confidence=request.confidence
        )

    def _answer(self, knowledge: Knowledge | None, request: AnswerRequest) -> AnswerResponse:
        intent, confidence = request.intent, request.confidence
        if intent == "greet":
            return AnswerResponse(messages=[self.texts.greeting], route="dialogue", intent=intent, confidence=confidence)
        if intent == "goodbye":
            return AnswerResponse(messages=[self.texts.goodbye], route="dialogue", intent=intent, confidence=confidence)
        if intent in ("affirm", "deny"):
            return AnswerResponse(messages=[self.texts.anything_else], route="dialogue", intent=intent, confidence=confidence)
        pending = request.slots.get(PENDING_SLOT)
        slots: dict[str, Any] = {PENDING_SLOT: None} if pending else {}
        question = request.text
        if _answers_form(request):
            # This message answers the form's question (a bare value); the request came before it, so the search
            # is for the request, by its article's title, with the values given (whatever this message was classified as).
            given = [str(value) for name, value in request.slots.items() if name not in (PENDING_SLOT, OFFERED_SLOT) and value]
            label = self._labels(knowledge, [pending])[pending]
            question = f"{label} ({', '.join(given)})" if given else label
            intent = pending
        elif intent == "inform":
            return AnswerResponse(messages=[self.texts.clarification], route="dialogue", intent=intent, confidence=confidence)
        return self._from_knowledge(knowledge, request, question, intent, confidence, slots)

    def _from_knowledge(
        self,
        knowledge: Knowledge | None,
        request: AnswerRequest,
        question: str,
        intent: str | None,
        confidence: float | None,
        slots: dict[str, Any],
    ) -> AnswerResponse:
        if knowledge is None:
            return self._handoff(request, "no knowledge base is served")
        # The build that decided the turn, answered or not: a replica may have moved to a newer build since this one
        # started, and what the turn log names must be what the customer was given (or found missing).
        build = {"kb_build": knowledge.build_id}
        if intent and knowledge.answered_intents and intent not in knowledge.answered_intents:
            return self._handoff(request, f"no article answers {intent}").model_copy(update=build)  # another article would be wrong
        reply = knowledge.reply(question, k=5)
        matching = [a for a in reply.answers if intent and a.intent == intent]
        if intent and not matching and intent in knowledge.answered_intents:
            # The intent is settled (the classifier is above its precision threshold, the customer picked it, or a
            # form asked for it) and the desk wrote an article for it: that article answers, even where the
            # customer's words share more with other articles than with its own. The search's own threshold is for
            # questions without an intent.
            own = knowledge.article_for(intent, question)
            matching = [own] if own is not None else []
        chosen = matching[0] if matching else (None if reply.escalate or not reply.answers else reply.answers[0])
        if chosen is None:
            return self._handoff(request, "nothing relevant in the knowledge base").model_copy(update=build)
        passages = [PromptPassage(a.doc_id, a.title, a.body, a.url) for a in [chosen, *[x for x in reply.answers if x is not chosen]][:3]]
        written = self.llm.reply(question, passages, self.texts.llm_role)  # the customer's words, or what a form or a pick made of them
        if written:
            messages, route = [written], "llm"
        else:
            messages, route = [extract_answer(chosen.body) + (f"\n\nMore: {chosen.url}" if chosen.url else "")], "kb"
        return AnswerResponse(
            messages=messages,
            slots=slots,
            route=route,
            intent=intent,
            confidence=confidence,
            kb_doc_id=chosen.doc_id,
            answer_intent=chosen.intent,
            kb_score=chosen.score,
            **build,
        )

    def _clarify(self, knowledge: Knowledge | None, request: AnswerRequest) -> AnswerResponse:
        asked = [e["value"] for e in request.entities if e.get("entity") == "request"][:3]
        message = self.texts.multiple_requests.format(options=numbered(asked, self._labels(knowledge, asked)))
        # Kept like an offer's options, so the reply that picks one ("2", "the second", its title) is answered.
        slots: dict[str, Any] = {OFFERED_SLOT: asked} if asked else {}
        return AnswerResponse(messages=[message], slots=slots, route="clarify", intent=request.intent, confidence=request.confidence)

    def _handoff(self, request: AnswerRequest, reason: str, message: str | None = None) -> AnswerResponse:
        transcript = [(line.role, line.text) for line in request.transcript]
        transcript = transcript or self._transcripts.of(request.conversation_id) or [("customer", request.text)]
        # What a confirmed intent will label: not a request for a person, nor a bare value a form asked for (the
        # customer's next message is then the question, unless the agent picks another).
        question = None if request.intent == ASK_HUMAN or _answers_form(request) else request.text
        self.handoffs.enqueue(request.conversation_id, request.channel, transcript, reason, request.intent, request.ranking, question)
        return AnswerResponse(
            messages=[message or self.texts.handoff],
            route="handoff",
            intent=request.intent,
            confidence=request.confidence,
            handoff_reason=reason,
        )

    # A customer's message from a channel.
    def chat(self, conversation_id: str, text: str, channel: str = "webchat", request_id: str | None = None) -> ChatResult:
        """One turn of the conversation `conversation_id`, which the channel has established belongs to the sender."""
        request_id = request_id or uuid.uuid4().hex
        started = time.perf_counter()
        if not CONVERSATION_ID.match(conversation_id or ""):
            raise ChatError(400, "conversation_id must be 1-128 letters, digits or :_+.@-")
        if channel not in CHANNELS:
            raise ChatError(400, f"unknown channel {channel[:32]!r}; one of {', '.join(CHANNELS)}")
        text = (text or "").strip()
        if not text:
            raise ChatError(400, "the message is empty")
        if len(text) > self.max_message_chars:
            raise ChatError(413, f"the message is {len(text):,} characters long; at most {self.max_message_chars:,} are accepted")
        stored = self.keys.stored_id(conversation_id)
        self._transcripts.add(stored, "customer", text)
        result = self._chat(stored, text, channel, request_id)
        result.replies += self.handoffs.undelivered_replies(stored)
        for reply in result.replies:
            self._transcripts.add(stored, "bot", reply)
        latency = (time.perf_counter() - started) * 1000
        result.turn_id = self.keys.new_turn_id(stored)
        self.turns.record(
            Turn(
                turn_id=result.turn_id,
                conversation_id=stored,
                channel=channel,
                text=text,
                intent=result.intent,
                confidence=result.confidence,
                route=result.route,
                kb_doc_id=result.kb_doc_id,
                kb_score=result.kb_score,
                kb_build=result.kb_build,
                model_version=self.model_version,
                latency_ms=latency,
                request_id=request_id,
                ranking=[r for r in result.ranking if r.get("intent") and r.get("confidence") is not None],
                handoff_reason=result.handoff_reason,
            )
        )
        log.info(
            "turn",
            extra={
                "request_id": request_id,
                "conversation_id": stored,
                "route": result.route,
                "intent": result.intent,
                "latency_ms": round(latency, 1),
            },
        )
        return result

    def hand_off(self, conversation_id: str, channel: str, reason: str) -> list[str]:
        """Put a conversation in the agents' queue at the customer's word (a button, not a message to classify)."""
        stored = self.keys.stored_id(conversation_id)
        if self.handoffs.open_for(stored) is not None:
            return [self.texts.with_agent]
        transcript = self._transcripts.of(stored)
        # Asked for after an answer: the question is the customer's last message, the one the answer did not help with.
        question = next((text for role, text in reversed(transcript) if role == "customer"), None)
        self.handoffs.enqueue(stored, channel, transcript, reason, None, question=question)
        return [self.texts.handoff]

    def agent_replies(self, conversation_id: str) -> list[str]:
        """Agent replies the customer of `conversation_id` has not seen yet; they count as delivered from now."""
        return self.handoffs.undelivered_replies(self.keys.stored_id(conversation_id))

    def _chat(self, stored: str, text: str, channel: str, request_id: str) -> ChatResult:
        open_handoff = self.handoffs.open_for(stored)
        if open_handoff is not None:
            self.handoffs.add_customer_message(open_handoff, text)
            return ChatResult([self.texts.with_agent], "handoff", request_id=request_id)
        try:
            response = self._http.post(
                f"{self.rasa_url}/webhooks/rest/webhook",
                # Redacted: Rasa's tracker keeps every message, and the classifier learnt from redacted tickets anyway.
                json={"sender": stored, "message": redact(text), "metadata": {"request_id": request_id, "channel": channel}},
                headers={"X-Request-ID": request_id},
                timeout=self.rasa_timeout_s,
            )
            response.raise_for_status()
            said = response.json()
            messages = [m["text"] for m in said if m.get("text")]
        except (httpx.HTTPError, ValueError) as error:
            log.error("dialogue unavailable", extra={"request_id": request_id, "error": str(error)})
            transcript = self._transcripts.of(stored)
            self.handoffs.enqueue(stored, channel, transcript, "the dialogue service was unavailable", None, question=text)
            return ChatResult([self.texts.outage], "handoff", status=503, request_id=request_id)
        payloads = [m["custom"] for m in said if isinstance(m.get("custom"), dict) and PAYLOAD_KEY in m["custom"]]
        unreachable = next((p for p in payloads if p[PAYLOAD_KEY] == BOT_UNREACHABLE), None)
        if unreachable is not None:
            # The action could not reach /internal/answer and told the customer a colleague is coming: make it true.
            log.error("the action server could not reach the bot", extra={"request_id": request_id})
            transcript = _transcript(unreachable.get("transcript")) or self._transcripts.of(stored)
            self.handoffs.enqueue(stored, channel, transcript, "the action server could not reach the bot", None, question=text)
            return ChatResult([self.texts.outage], "handoff", status=503, request_id=request_id)
        outcomes = [p[OUTCOME] for p in payloads if p[PAYLOAD_KEY] == OUTCOME]
        if not outcomes:
            return ChatResult(messages or [self.texts.handoff], "dialogue", request_id=request_id)
        outcome = TurnOutcome.model_validate(outcomes[-1])  # the last action's: it answered the turn
        return ChatResult(
            messages,
            outcome.route,
            status=503 if outcome.degraded else 200,
            request_id=request_id,
            intent=outcome.intent,
            confidence=outcome.confidence,
            kb_doc_id=outcome.kb_doc_id,
            answer_intent=outcome.answer_intent,
            offered=outcome.offered,
            kb_score=outcome.kb_score,
            kb_build=outcome.kb_build,
            handoff_reason=outcome.handoff_reason,
            ranking=outcome.ranking,
        )


def _answers_form(request: AnswerRequest) -> bool:
    """This message answers a form's question (a bare value); the request it completes came in an earlier message."""
    return bool(request.slots.get(PENDING_SLOT)) and (request.form_completed or request.intent == "inform")


def _transcript(lines: object) -> list[tuple[str, str]]:
    """The transcript an action sent with its marker, as the handoff queue takes it; none when it sent none or a malformed one."""
    try:
        valid = TRANSCRIPT.validate_python(lines)
    except ValidationError:
        return []
    return [(line.role, line.text) for line in valid[-TRANSCRIPT_TURNS:]]
