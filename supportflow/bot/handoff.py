"""Human handoff: a queue of conversations waiting for an agent, and the labels agents give back.

SQLite by default, any SQLAlchemy URL in production. When an agent resolves a conversation and confirms
its intent, the customer's question lands in the lake as a labelled ticket (`source=agent_label`), so the
next training run learns from it. The question is the message the bot handed off, not the transcript's first
line (which can be "hi"); a handoff the customer asked for has none until they write what they need, and the
agent may point the label at another of the customer's messages. Conversations are known here by their stored id (a keyed hash,
supportflow/keys.py), never by a phone number; a resolved handoff, transcript included, is deleted once it is
older than the retention period (its label, if any, is in the lake by then).

What a customer writes is redacted before it is stored: the queue keeps transcripts for agents to read, and
its database is one more place personal data could leak from. A database error never carries a message's text
out either: the engine hides statement parameters, and a failed operation is re-raised as `HandoffStoreError`,
naming the error's class and the handoffs it touched, never the driver's message (which can quote a value).
"""

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import ForeignKey, String, Text, create_engine, delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from supportflow.errors import SupportflowError
from supportflow.ingest.labels import write_label
from supportflow.lake import Lake
from supportflow.redact import redact

Status = Literal["waiting", "claimed", "answered", "resolved", "returned"]
CLOSED = ("resolved", "returned")  # resolved by an agent, or given back to the bot: the bot answers the next message
log = logging.getLogger(__name__)
MAX_PAGE = 100  # handoffs in one listing: an agent's screen, not the whole history
SUGGESTIONS = 3  # the model's top intents kept with a handoff, for the agent who labels it


class HandoffError(SupportflowError):
    """A handoff request that cannot be honoured (unknown id, wrong state, unknown intent)."""


def _customer_wrote(handoff: "Handoff") -> None:
    """An answered handoff the customer writes to again is the holder's to answer again: back to `claimed`, so the
    queue does not show it handled while the customer waits."""
    if handoff.status == "answered":
        handoff.status = "claimed"


class HandoffStoreError(SupportflowError):
    """The handoff database failed; the message names the error's class and the handoffs involved, nothing they hold."""


class _Base(DeclarativeBase):
    pass


class Handoff(_Base):
    __tablename__ = "handoffs"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(128), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True, default="waiting")
    reason: Mapped[str] = mapped_column(String(256))
    predicted_intent: Mapped[str | None] = mapped_column(String(128))
    confirmed_intent: Mapped[str | None] = mapped_column(String(128))
    agent: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))
    updated_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))
    messages: Mapped[list["Message"]] = relationship(order_by="Message.id", cascade="all, delete-orphan")
    suggestions: Mapped[list["Suggestion"]] = relationship(order_by="Suggestion.rank", cascade="all, delete-orphan")
    question: Mapped["Question | None"] = relationship(cascade="all, delete-orphan")
    events: Mapped[list["Event"]] = relationship(order_by="Event.id", cascade="all, delete-orphan")


class Message(_Base):
    __tablename__ = "handoff_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    handoff_id: Mapped[int] = mapped_column(ForeignKey("handoffs.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # customer, bot or agent
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))
    delivered: Mapped[bool] = mapped_column(default=False)


class Suggestion(_Base):
    """One of the model's top catalogue intents for the message the bot handed off (their own table, so a queue
    created before they were kept gains them without a migration)."""

    __tablename__ = "handoff_suggestions"

    id: Mapped[int] = mapped_column(primary_key=True)
    handoff_id: Mapped[int] = mapped_column(ForeignKey("handoffs.id"), index=True)
    rank: Mapped[int] = mapped_column()
    intent: Mapped[str] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column()


class Question(_Base):
    """The customer's message a confirmed intent labels: the one the bot handed off, the first one written after
    the customer asked for a person, or the one the resolving agent chose. Its own table, so a queue created before
    questions were kept gains it without a migration (its older handoffs have none, and an agent names one)."""

    __tablename__ = "handoff_questions"

    handoff_id: Mapped[int] = mapped_column(ForeignKey("handoffs.id"), primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("handoff_messages.id"))


class Event(_Base):
    """Who did what to a handoff and when: the agent comes from their credential, never from the request."""

    __tablename__ = "handoff_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    handoff_id: Mapped[int] = mapped_column(ForeignKey("handoffs.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # claim, answer, resolve or give_back
    agent: Mapped[str] = mapped_column(String(128))
    intent: Mapped[str | None] = mapped_column(String(128))  # the intent a resolution confirmed
    at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


def _stored(role: str, text: str) -> str:
    """What the queue keeps of a message: a customer's words redacted; the desk's own (bot, agent) as written, since
    an agent's reply must reach the customer whole."""
    return redact(text) if role == "customer" else text


def _view(handoff: Handoff) -> dict[str, object]:
    return {
        "id": handoff.id,
        "conversation_id": handoff.conversation_id,
        "channel": handoff.channel,
        "status": handoff.status,
        "reason": handoff.reason,
        "predicted_intent": handoff.predicted_intent,
        "confirmed_intent": handoff.confirmed_intent,
        "agent": handoff.agent,
        "created_at": handoff.created_at.isoformat(),
        "transcript": [_entry(m) for m in handoff.messages],
        "suggestions": [{"intent": s.intent, "confidence": s.confidence} for s in handoff.suggestions],
        "question_id": handoff.question.message_id if handoff.question else None,  # what a confirmed intent labels
        "events": [{"action": e.action, "agent": e.agent, "intent": e.intent, "at": e.at.isoformat()} for e in handoff.events],
    }


def _entry(message: Message) -> dict[str, object]:
    """One message of a transcript; an agent's reply says whether it reached the customer's channel (a pushed
    reply's own state is the delivery rows', supportflow/bot/delivery.py)."""
    entry: dict[str, object] = {"id": message.id, "role": message.role, "text": message.text, "at": message.at.isoformat()}
    if message.role == "agent":
        entry["delivery"] = "delivered" if message.delivered else "queued"
    return entry


def _suggested(ranking: Sequence[Mapping[str, Any]], intents: tuple[str, ...]) -> list["Suggestion"]:
    """The ranking's first catalogue intents: Rasa's ranking also holds `nlu_fallback` and dialogue acts, which no
    agent would label a ticket with."""
    known = [r for r in ranking if r.get("intent") in intents][:SUGGESTIONS]
    return [Suggestion(rank=i, intent=r["intent"], confidence=r.get("confidence")) for i, r in enumerate(known)]


def _ask(session: Session, handoff: Handoff, message: Message) -> None:
    """Record `message` as the handoff's question: what a confirmed intent labels."""
    session.flush()  # the message's id
    if handoff.question is None:
        handoff.question = Question(message_id=message.id)
    else:
        handoff.question.message_id = message.id


class HandoffPage(BaseModel):
    handoffs: list[dict[str, object]]
    next_offset: int | None  # None: this is the last page


class HandoffQueue:
    def __init__(self, url: str, lake: Lake, intents: tuple[str, ...], retention: timedelta = timedelta(days=30)) -> None:
        self.engine = create_engine(
            url, hide_parameters=True, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {}
        )
        _Base.metadata.create_all(self.engine)
        self.lake = lake
        self.intents = intents
        self.retention = retention
        self.forget_expired()

    def enqueue(
        self,
        conversation_id: str,
        channel: str,
        transcript: list[tuple[str, str]],
        reason: str,
        predicted_intent: str | None,
        ranking: Sequence[Mapping[str, Any]] = (),
        question: str | None = None,
    ) -> int:
        """Open a handoff, or add to the conversation's open one; returns its id. `ranking` is the classifier's
        (`{"intent", "confidence"}`, best first): its top catalogue intents are kept for the agent who labels it.
        `question` is the customer's message the bot could not answer, which a confirmed intent labels; None when
        the customer asked for a person (their next message is the question)."""
        with self._session() as session:
            handoff = session.scalars(
                select(Handoff).where(Handoff.conversation_id == conversation_id, Handoff.status.not_in(CLOSED))
            ).first()
            if handoff is None:
                handoff = Handoff(conversation_id=conversation_id, channel=channel, reason=reason, predicted_intent=predicted_intent)
                handoff.suggestions.extend(_suggested(ranking, self.intents))
                session.add(handoff)
                session.flush()  # its id, which a failure below is reported with
            added = [Message(role=role, text=_stored(role, text)) for role, text in transcript]
            handoff.messages.extend(added)
            if question is not None and handoff.question is None:
                said = _stored("customer", question)
                asked = next((m for m in reversed(added) if m.role == "customer" and m.text == said), None)
                if asked is None:  # a transcript that left out the very message the bot handed off
                    asked = Message(role="customer", text=said)
                    handoff.messages.append(asked)
                _ask(session, handoff, asked)
            if any(role == "customer" for role, _ in transcript):
                _customer_wrote(handoff)
            handoff.updated_at = datetime.now(UTC)
            session.commit()
            return handoff.id

    def open_for(self, conversation_id: str) -> int | None:
        with self._session() as session:
            handoff = session.scalars(
                select(Handoff).where(Handoff.conversation_id == conversation_id, Handoff.status.not_in(CLOSED))
            ).first()
            return handoff.id if handoff else None

    def add_customer_message(self, handoff_id: int, text: str) -> None:
        with self._session() as session:
            handoff = self._get(session, handoff_id)
            message = Message(role="customer", text=_stored("customer", text))
            handoff.messages.append(message)
            if handoff.question is None:  # opened at the customer's word: what they write next is what they need
                _ask(session, handoff, message)
            _customer_wrote(handoff)
            handoff.updated_at = datetime.now(UTC)
            session.commit()

    def page(self, status: Status | None = None, limit: int = MAX_PAGE, offset: int = 0) -> "HandoffPage":
        """One page of handoffs, oldest first; expired ones are forgotten first, so no listing shows them."""
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise HandoffError(f"a page holds 1-{MAX_PAGE} handoffs from an offset >= 0; asked for {limit} from {offset}")
        self.forget_expired()
        with self._session() as session:
            query = select(Handoff).order_by(Handoff.id).limit(limit + 1).offset(offset)  # one more: is there a next page?
            if status:
                query = query.where(Handoff.status == status)
            views = [_view(h) for h in session.scalars(query)]
        return HandoffPage(handoffs=views[:limit], next_offset=offset + limit if len(views) > limit else None)

    def forget_expired(self) -> int:
        """Delete closed handoffs, with their transcripts, last touched longer ago than the retention period."""
        cutoff = datetime.now(UTC) - self.retention
        with self._session() as session:
            expired = select(Handoff.id).where(Handoff.status.in_(CLOSED), Handoff.updated_at < cutoff)
            for table in (Question, Message, Suggestion, Event):
                session.execute(delete(table).where(table.handoff_id.in_(expired)))
            deleted = session.execute(delete(Handoff).where(Handoff.id.in_(expired))).rowcount
            session.commit()
            return deleted

    def get(self, handoff_id: int) -> dict[str, object]:
        with self._session() as session:
            return _view(self._get(session, handoff_id))

    def claim(self, handoff_id: int, agent: str) -> dict[str, object]:
        with self._session() as session:
            handoff = self._get(session, handoff_id)
            if handoff.status in CLOSED or (handoff.agent and handoff.agent != agent):
                raise HandoffError(f"handoff {handoff_id} is {handoff.status} by {handoff.agent}; it cannot be claimed by {agent}")
            handoff.status, handoff.agent, handoff.updated_at = "claimed", agent, datetime.now(UTC)
            handoff.events.append(Event(action="claim", agent=agent))
            session.commit()
            return _view(handoff)

    def answer(self, handoff_id: int, agent: str, text: str) -> dict[str, object]:
        with self._session() as session:
            handoff = self._owned(session, handoff_id, agent)
            handoff.messages.append(Message(role="agent", text=text))
            handoff.status, handoff.updated_at = "answered", datetime.now(UTC)
            handoff.events.append(Event(action="answer", agent=agent))
            session.commit()
            return _view(handoff)

    def undelivered_replies(self, conversation_id: str) -> list[str]:
        """Agent replies not yet shown to the customer; marks them delivered."""
        with self._session() as session:
            messages = session.scalars(
                select(Message)
                .join(Handoff)
                .where(Handoff.conversation_id == conversation_id, Message.role == "agent", Message.delivered.is_(False))
                .order_by(Message.id)
            ).all()
            for message in messages:
                message.delivered = True
            session.commit()
            return [m.text for m in messages]

    def resolve(self, handoff_id: int, agent: str, intent: str | None, message_id: int | None = None) -> dict[str, object]:
        """Close the handoff; a confirmed intent sends the customer's question to the lake as a label: the message
        `message_id` names (one of the customer's in this transcript), else the one the handoff recorded."""
        if intent is not None and intent not in self.intents:
            raise HandoffError(f"intent {intent!r} is not in the intent catalogue")
        with self._session() as session:
            handoff = self._owned(session, handoff_id, agent)
            if intent is not None:
                labelled = self._labelled(session, handoff, message_id)
                write_label(self.lake, labelled.text, intent, handoff.channel)
            elif message_id is not None:
                raise HandoffError("a message_id names the message an intent labels: resolve with an intent, or without either")
            handoff.status, handoff.confirmed_intent, handoff.updated_at = "resolved", intent, datetime.now(UTC)
            handoff.events.append(Event(action="resolve", agent=agent, intent=intent))
            session.commit()
            return _view(handoff)

    @staticmethod
    def _labelled(session: Session, handoff: Handoff, message_id: int | None) -> Message:
        """The customer's message a confirmed intent labels, recorded as the handoff's question from now on."""
        if message_id is None:
            if handoff.question is None:
                raise HandoffError(
                    f"handoff {handoff.id} has no question to label: it was opened at the customer's request (or before "
                    "questions were kept), and they have written nothing since. Name the customer's message the intent is "
                    "for (message_id), or resolve without an intent"
                )
            message_id = handoff.question.message_id
        chosen = next((m for m in handoff.messages if m.id == message_id and m.role == "customer"), None)
        if chosen is None:
            raise HandoffError(f"message {message_id} is not one of the customer's messages in handoff {handoff.id}")
        _ask(session, handoff, chosen)
        return chosen

    def give_back(self, handoff_id: int, agent: str) -> dict[str, object]:
        """Return the conversation to the bot, unlabelled: its next message is the bot's to answer. A waiting
        handoff any agent may give back; a claimed one only the agent who holds it."""
        with self._session() as session:
            handoff = self._get(session, handoff_id)
            if handoff.status != "waiting":
                handoff = self._owned(session, handoff_id, agent)
            handoff.status, handoff.agent, handoff.updated_at = "returned", agent, datetime.now(UTC)
            handoff.events.append(Event(action="give_back", agent=agent))
            session.commit()
            return _view(handoff)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A session whose database errors leave as `HandoffStoreError`: logged with the error's class and the ids of
        the handoffs the session held, and raised without the original, whose text and traceback can quote a message."""
        with Session(self.engine) as session:
            try:
                yield session
            except SQLAlchemyError as error:
                handoffs = sorted(key[1][0] for key in session.identity_map if key[0] is Handoff)[:10]
                log.error("handoff store failed", extra={"error": type(error).__name__, "handoff_ids": handoffs})
                raise HandoffStoreError(f"the handoff store failed ({type(error).__name__}; handoffs {handoffs})") from None

    @staticmethod
    def _get(session: Session, handoff_id: int) -> Handoff:
        handoff = session.get(Handoff, handoff_id)
        if handoff is None:
            raise HandoffError(f"no handoff with id {handoff_id}")
        return handoff

    def _owned(self, session: Session, handoff_id: int, agent: str) -> Handoff:
        handoff = self._get(session, handoff_id)
        if handoff.status in CLOSED:
            raise HandoffError(f"handoff {handoff_id} is already {handoff.status}")
        if handoff.agent != agent:
            raise HandoffError(f"handoff {handoff_id} is not claimed by {agent}; claim it first")
        return handoff
