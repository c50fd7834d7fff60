"""Agents' replies pushed to SMS, WhatsApp and phone customers through Twilio's Messages API, with their delivery
state (a caller gets an SMS from the number they called).

Without this, an agent's reply to a customer on a phone channel waits in the handoff queue until that customer
writes again. Here each such reply gets a row in the handoff database (`queued`, `sent`, `delivered` or `failed`),
and a sender thread in the bot's process hands the queued ones to Twilio, retrying with exponential backoff while
Twilio's API is down or refuses the account's credentials. The rows are the queue, so a bot restarted with replies
still queued sends them; a sender takes a reply by a conditional update, so two bot workers never both take it
(one that dies mid-send leaves it to be retried after `CLAIM_S`: at least once, not exactly once). Twilio's status
callbacks move a reply on (sent, then delivered, or failed with Twilio's error code), and a state never moves back,
so a replayed or late callback changes nothing. A reply that finally fails goes back to the old path: the customer
gets it with the answer to their next message.

To reach a customer the sender needs their number, which nothing else here keeps (conversations are stored ids,
supportflow/keys.py). The numbers of a conversation with an open handoff are kept sealed (AES-GCM under a key
derived from the server key, bound to the conversation's stored id) and dropped once the handoff is resolved and
none of its replies is still queued.
"""

import hashlib
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import LargeBinary, String, create_engine, delete, exists, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from supportflow.bot.handoff import Handoff, Message
from supportflow.errors import SupportflowError
from supportflow.keys import ConversationKeys, checked_secret
from supportflow.redact import redact
from supportflow.settings import Settings

DeliveryState = Literal["queued", "sent", "delivered", "failed"]
PUSHED_CHANNELS = ("sms", "whatsapp", "phone")  # webchat polls for its replies; these are pushed
CLAIM_S = 120.0  # a reply a sender took and never settled (its process died) is tried again after this
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
BATCH = 20  # replies one pass of the sender takes
# Twilio's message statuses, as its API and status callbacks name them, in our four states.
TWILIO_STATES: dict[str, DeliveryState] = {
    "accepted": "sent",
    "scheduled": "sent",
    "queued": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
_RANK = {"queued": 0, "sent": 1, "delivered": 2, "failed": 2}  # a state only moves up; delivered and failed are final
log = logging.getLogger("supportflow.delivery")


class DeliveryError(SupportflowError):
    """A delivery request that cannot be honoured (a sealed address that does not open, an unknown status)."""


class SendFailure(Exception):
    """One try that did not reach Twilio or that Twilio refused; `retry` says whether trying again can help."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class MessageSender(Protocol):
    def send(self, to: str, from_: str, body: str) -> tuple[str, DeliveryState]:
        """The message's Twilio SID and state once Twilio accepted it; `SendFailure` otherwise."""
        ...


class _Base(DeclarativeBase):
    pass


class Delivery(_Base):
    __tablename__ = "reply_deliveries"

    message_id: Mapped[int] = mapped_column(primary_key=True)  # the agent's reply, in the handoff queue's messages
    conversation_id: Mapped[str] = mapped_column(String(128), index=True)  # the stored id
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True, default=lambda: datetime.now(UTC))
    twilio_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    error: Mapped[str | None] = mapped_column(String(512))  # why the last try failed (redacted: Twilio's text can quote a number)
    updated_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


class Address(_Base):
    __tablename__ = "reply_addresses"

    conversation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)  # nonce + AES-GCM of [customer's number, desk's number]
    updated_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


class AddressSeal:
    """The customer's and the desk's numbers of one conversation, readable only with the server key, and only as
    that conversation's (the stored id is the associated data): a database copied off the machine holds no number."""

    def __init__(self, keys: ConversationKeys) -> None:
        self._aead = AESGCM(hmac.new(keys.key, b"reply-address", hashlib.sha256).digest())

    def seal(self, conversation_id: str, customer: str, desk: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, json.dumps([customer, desk]).encode(), conversation_id.encode())

    def open(self, conversation_id: str, sealed: bytes) -> tuple[str, str]:
        try:
            customer, desk = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], conversation_id.encode()))
        except InvalidTag:
            raise DeliveryError(f"the address of {conversation_id} does not open with this server key (was the key changed?)") from None
        return customer, desk


class _AtBaseUrl(TwilioHttpClient):
    """Twilio's own HTTP client, sending every request to `base_url` instead of Twilio's host: the client's
    documented extension point is its HTTP client, and a proxy or a test server is just another origin."""

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base = urlsplit(base_url.rstrip("/"))
        if self.base.scheme not in ("http", "https") or not self.base.netloc:
            raise DeliveryError(f"SUPPORTFLOW_TWILIO_API_BASE_URL must be an http(s) URL; got {base_url!r}")

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> Response:
        path, query = urlsplit(url)[2:4]
        return super().request(method, urlunsplit((self.base.scheme, self.base.netloc, self.base.path + path, query, "")), *args, **kwargs)


class TwilioMessages:
    """Twilio's Messages API through the official client; `status_callback`, when given, is where Twilio reports
    each message's progress (the bot's signed `/twilio/status`)."""

    def __init__(self, account_sid: str, auth_token: str, base_url: str, status_callback: str | None, timeout_s: float = 10.0) -> None:
        # environment={}: the client would otherwise read TWILIO_* variables, a second configuration beside ours.
        self.client = Client(account_sid, auth_token, http_client=_AtBaseUrl(base_url, timeout_s), environment={})
        self.status_callback = status_callback

    def send(self, to: str, from_: str, body: str) -> tuple[str, DeliveryState]:
        try:
            message = self.client.messages.create(to=to, from_=from_, body=body, status_callback=self.status_callback)
        except (TwilioRestException, TwilioServiceException) as error:
            # Down (5xx), throttled (429) or refusing the account's credentials (401, 403: an operator can fix them and
            # restart) is worth another try; a request Twilio refuses for itself (a bad number, 400) is not.
            status = int(error.status)
            said = error.msg if isinstance(error, TwilioRestException) else error.detail or error.title
            retry = status >= 500 or status in (401, 403, 408, 429)
            raise SendFailure(f"Twilio answered {status} (error {error.code}): {redact(str(said))}", retry) from None
        except (OSError, TwilioException) as error:  # requests' errors are OSErrors: no connection, a timeout
            raise SendFailure(f"Twilio's API could not be reached ({type(error).__name__})", True) from None
        return str(message.sid), TWILIO_STATES.get(str(message.status), "sent")


class Deliveries:
    """The delivery rows and sealed addresses in the handoff database, and the thread that sends queued replies."""

    def __init__(
        self,
        url: str,
        keys: ConversationKeys,
        sender: MessageSender | None,
        attempts: int = 8,
        retry_base_s: float = 2.0,
        retry_max_s: float = 600.0,
        poll_s: float = 1.0,
    ) -> None:
        self.engine = create_engine(
            url, hide_parameters=True, connect_args={"check_same_thread": False} if url.startswith("sqlite") else {}
        )
        _Base.metadata.create_all(self.engine)
        self.seal = AddressSeal(keys)
        self.sender = sender
        self.attempts = attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.poll_s = poll_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pushing(self) -> bool:
        """Whether agents' replies are pushed at all (a Twilio account is configured)."""
        return self.sender is not None

    def remember_address(self, conversation_id: str, customer: str, desk: str) -> None:
        """Keep, sealed, where an agent's reply to this conversation goes: the customer's number and the desk's
        number they wrote to (the sending number is the conversation's own)."""
        sealed = self.seal.seal(conversation_id, customer, desk)
        with self._session() as session:
            address = session.get(Address, conversation_id)
            if address is None:
                session.add(Address(conversation_id=conversation_id, sealed=sealed))
            else:
                address.sealed, address.updated_at = sealed, datetime.now(UTC)
            session.commit()

    def queue(self, message_id: int, conversation_id: str) -> DeliveryState | None:
        """Queue an agent's reply for the sender; None when it cannot be pushed (no Twilio account, or no address
        known), so it waits for the customer's next message as before."""
        if self.sender is None:
            return None
        with self._session() as session:
            if session.get(Address, conversation_id) is None:
                log.warning("no address to push a reply to", extra={"conversation_id": conversation_id, "message_id": message_id})
                return None
            if session.get(Delivery, message_id) is None:
                session.add(Delivery(message_id=message_id, conversation_id=conversation_id))
                # The sender has it now: the bot's next answer to this customer must not carry it a second time.
                session.execute(update(Message).where(Message.id == message_id).values(delivered=True))
                session.commit()
            return "queued"

    def states(self, message_ids: list[int]) -> dict[int, tuple[DeliveryState, str | None]]:
        """Each pushed reply's state and why its last try failed (None when none did)."""
        with self._session() as session:
            rows = session.execute(select(Delivery.message_id, Delivery.state, Delivery.error).where(Delivery.message_id.in_(message_ids)))
            return {message_id: (state, error) for message_id, state, error in rows}

    def annotate(self, view: dict[str, object]) -> dict[str, object]:
        """A handoff's view with each pushed agent reply's `delivery` state, and `delivery_error` when a try failed;
        a reply not pushed keeps the queue's own (`delivered` once the customer's channel took it, else `queued`)."""
        replies = [entry for entry in view["transcript"] if entry.get("role") == "agent"]
        states = self.states([entry["id"] for entry in replies])
        for entry in replies:
            if entry["id"] in states:
                entry["delivery"], error = states[entry["id"]]
                if error:
                    entry["delivery_error"] = error
        return view

    def send_due(self) -> int:
        """One pass: take the queued replies whose time has come and try each once; returns how many were tried."""
        now = datetime.now(UTC)
        with self._session() as session:
            due = session.execute(
                select(Delivery.message_id, Delivery.attempts)
                .where(Delivery.state == "queued", Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at)
                .limit(BATCH)
            ).all()
        tried = 0
        for message_id, attempts in due:
            if self._take(message_id, attempts, now):
                tried += 1
                self._try(message_id, attempts + 1)
        return tried

    def _take(self, message_id: int, attempts: int, now: datetime) -> bool:
        """Count the try and hold the reply for `CLAIM_S`, unless another sender took it first."""
        with self._session() as session:
            taken = session.execute(
                update(Delivery)
                .where(Delivery.message_id == message_id, Delivery.state == "queued", Delivery.attempts == attempts)
                .values(attempts=attempts + 1, next_attempt_at=now + timedelta(seconds=CLAIM_S))
            ).rowcount
            session.commit()
            return taken == 1

    def _try(self, message_id: int, attempt: int) -> None:
        """One try of one reply; no database session is held while Twilio is asked."""
        with self._session() as session:
            delivery = session.get(Delivery, message_id)
            if delivery is None:
                return  # forgotten with its handoff meanwhile
            message, address = session.get(Message, message_id), session.get(Address, delivery.conversation_id)
            conversation_id, text, sealed = delivery.conversation_id, message and message.text, address and address.sealed
        try:
            if text is None or sealed is None:
                raise DeliveryError("the conversation was forgotten before its reply was sent")
            customer, desk = self.seal.open(conversation_id, sealed)
            sid, state = self.sender.send(customer, desk, text)
        except (SendFailure, DeliveryError) as error:
            self._not_sent(message_id, attempt, error)
            return
        with self._session() as session:
            if (delivery := session.get(Delivery, message_id)) is not None:
                delivery.twilio_sid = sid
                self._settle(session, delivery, state, None)

    def _not_sent(self, message_id: int, attempt: int, error: SendFailure | DeliveryError) -> None:
        """Wait before the next try (exponential backoff), or mark the reply failed when no try is left or none can help."""
        retry = isinstance(error, SendFailure) and error.retry and attempt < self.attempts
        reason = error.reason if isinstance(error, SendFailure) else str(error)
        log.warning("a reply was not sent", extra={"message_id": message_id, "attempt": attempt, "retry": retry, "error": reason})
        with self._session() as session:
            delivery = session.get(Delivery, message_id)
            if delivery is None:
                return
            if retry:
                wait = min(self.retry_base_s * 2 ** (attempt - 1), self.retry_max_s)
                delivery.next_attempt_at, delivery.error = datetime.now(UTC) + timedelta(seconds=wait), reason
                delivery.updated_at = datetime.now(UTC)
                session.commit()
            else:
                self._settle(session, delivery, "failed", f"{reason} (after {attempt} {'try' if attempt == 1 else 'tries'})")

    def _settle(self, session: Session, delivery: Delivery, state: DeliveryState, error: str | None) -> None:
        """Move a reply to `state` unless it is already further on; a failed one goes back to the old path, the
        customer's next turn (the queue's `delivered` flag off)."""
        if _RANK[state] > _RANK[delivery.state]:
            delivery.state, delivery.error, delivery.updated_at = state, error, datetime.now(UTC)
            if state == "failed":
                session.execute(update(Message).where(Message.id == delivery.message_id).values(delivered=False))
        session.commit()

    def on_status(self, twilio_sid: str, twilio_status: str, error_code: str | None) -> DeliveryState | None:
        """Twilio's report on a message: the reply's state after it (unchanged when the report is a replay or
        arrives late), or None when no reply has this SID."""
        state = TWILIO_STATES.get(twilio_status)
        if state is None:
            raise DeliveryError(f"unknown MessageStatus {twilio_status[:32]!r}; Twilio's are {', '.join(TWILIO_STATES)}")
        with self._session() as session:
            delivery = session.scalars(select(Delivery).where(Delivery.twilio_sid == twilio_sid)).first()
            if delivery is None:
                return None
            self._settle(session, delivery, state, f"Twilio reported {twilio_status} (error {error_code})" if state == "failed" else None)
            return delivery.state

    def forget_closed(self) -> int:
        """Drop the addresses of conversations with no open handoff and no reply still queued, and the rows of replies
        the handoff queue has forgotten (its retention period); returns how many addresses went."""
        open_handoff = exists().where(Handoff.conversation_id == Address.conversation_id, Handoff.status != "resolved")
        waiting = exists().where(Delivery.conversation_id == Address.conversation_id, Delivery.state == "queued")
        with self._session() as session:
            dropped = session.execute(delete(Address).where(~open_handoff, ~waiting)).rowcount
            session.execute(delete(Delivery).where(~exists().where(Message.id == Delivery.message_id)))
            session.commit()
            return dropped

    def start(self) -> "Deliveries":
        """The sender thread: a pass every `poll_s`, and a sweep of closed conversations' addresses every minute."""

        def send_in_background() -> None:
            swept = 0.0
            while not self._stopped.wait(self.poll_s):
                try:
                    self.send_due()
                    if (now := datetime.now(UTC).timestamp()) - swept > 60:
                        self.forget_closed()
                        swept = now
                except Exception as error:  # the database may be down a while: the rows wait for it
                    log.error("the reply sender failed; it tries again", extra={"error": type(error).__name__})

        if self.sender is not None:
            self._thread = threading.Thread(target=send_in_background, name="reply-sender", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session


def reply_sender(settings: Settings, status_callback: str | None) -> TwilioMessages | None:
    """The Messages API client the settings describe, or None (no account: replies wait for the customer's next
    message). A half-configured account is refused at start rather than found out at an agent's first reply."""
    sid, token = settings.twilio_account_sid, settings.twilio_auth_token
    if sid is None:
        return None
    if not ACCOUNT_SID.match(sid):
        raise DeliveryError(f"SUPPORTFLOW_TWILIO_ACCOUNT_SID must be AC and 32 hex digits (Twilio's console shows it); got {sid[:40]!r}")
    if token is None:
        raise DeliveryError("SUPPORTFLOW_TWILIO_ACCOUNT_SID is set but SUPPORTFLOW_TWILIO_AUTH_TOKEN is not: the Messages API needs both")
    return TwilioMessages(sid, checked_secret("SUPPORTFLOW_TWILIO_AUTH_TOKEN", token), settings.twilio_api_base_url, status_callback)
