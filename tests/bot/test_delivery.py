"""Agents' replies pushed to SMS and WhatsApp customers through Twilio's Messages API (issue 15, item 2).

Twilio is a local server speaking its Messages API (tests/bot/twilio_server.py), reached through the official
`twilio` client at a configured base URL; it checks the account's basic auth and can be taken down. The first
tests drive the delivery queue itself; the last ones go through the bot service (its real routes, in this
process), as an agent and as Twilio, with signed status callbacks.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator

from supportflow.bot.agents import Agents
from supportflow.bot.delivery import Deliveries, DeliveryError, TwilioMessages, reply_sender
from supportflow.bot.handoff import HandoffQueue
from supportflow.keys import ConversationKeys
from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings
from tests.bot.test_security import TWILIO_TOKEN, TWILIO_URL, bot_environment, start_bot
from tests.bot.twilio_server import FakeTwilio

ACCOUNT = "AC" + "0123456789abcdef" * 2
PHONE = "+15550003333"
DESK = "+15550009999"
KEYS = ConversationKeys(b"delivery-test-key-0123456789abcdef")
STORED = KEYS.stored_id(f"sms:{PHONE}")


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    server = FakeTwilio(ACCOUNT, TWILIO_TOKEN)
    yield server
    server.close()


@dataclass
class Desk:
    queue: HandoffQueue
    url: str

    def agent_reply(self, text: str) -> int:
        """A handoff for the SMS customer, claimed and answered by an agent; the reply's message id."""
        handoff_id = self.queue.enqueue(STORED, "sms", [("customer", "my card was stolen")], "asked for a person", None)
        self.queue.claim(handoff_id, "ann")
        return self.queue.answer(handoff_id, "ann", text)["transcript"][-1]["id"]

    def deliveries(self, sender: TwilioMessages | None, **options: float) -> Deliveries:
        deliveries = Deliveries(self.url, KEYS, sender, **options)
        deliveries.remember_address(STORED, PHONE, DESK)
        return deliveries


@pytest.fixture
def desk(local_settings: Settings, tmp_path: Path) -> Desk:
    url = f"sqlite:///{tmp_path / 'handoff.db'}"
    return Desk(HandoffQueue(url, open_lake(local_settings), ("card_lost",)), url)


def state(deliveries: Deliveries, message_id: int) -> str:
    return deliveries.states([message_id])[message_id][0]


def test_a_reply_is_kept_and_retried_while_twilios_api_is_down_then_sent(desk: Desk, twilio: FakeTwilio) -> None:
    deliveries = desk.deliveries(TwilioMessages(ACCOUNT, TWILIO_TOKEN, twilio.url, None), retry_base_s=0.5)
    message_id = desk.agent_reply("We blocked your card.")
    twilio.down_for = 2
    assert deliveries.queue(message_id, STORED) == "queued"

    assert deliveries.send_due() == 1
    assert state(deliveries, message_id) == "queued" and twilio.sent == []  # kept: the console shows it pending
    assert deliveries.send_due() == 0  # backing off: not tried again at once
    time.sleep(0.6)
    assert deliveries.send_due() == 1 and state(deliveries, message_id) == "queued"
    time.sleep(1.1)  # the second wait is twice the first
    assert deliveries.send_due() == 1 and state(deliveries, message_id) == "sent"
    (sent,) = twilio.sent
    assert (sent["To"], sent["From"], sent["Body"]) == (PHONE, DESK, "We blocked your card.")
    assert twilio.requests == 3
    assert desk.queue.undelivered_replies(STORED) == []  # pushed: the bot's next answer does not repeat it


def test_wrong_credentials_are_refused_and_the_reply_fails_after_its_retries_with_the_reason(desk: Desk, twilio: FakeTwilio) -> None:
    wrong = TwilioMessages(ACCOUNT, "wrong-token-0123456789abcdef0123456", twilio.url, None)
    deliveries = desk.deliveries(wrong, attempts=3, retry_base_s=0.01)
    message_id = desk.agent_reply("We blocked your card.")
    deliveries.queue(message_id, STORED)
    for _ in range(3):
        time.sleep(0.05)
        deliveries.send_due()

    assert twilio.requests == 3 and twilio.sent == []  # refused by the server each time
    (entry,) = [e for e in deliveries.annotate(desk.queue.get(1))["transcript"] if e["role"] == "agent"]
    assert entry["id"] == message_id and entry["delivery"] == "failed"
    assert "401" in entry["delivery_error"] and "Authenticate" in entry["delivery_error"] and "after 3 tries" in entry["delivery_error"]
    # a reply that could not be pushed goes the old way: with the bot's answer to the customer's next message
    assert desk.queue.undelivered_replies(STORED) == ["We blocked your card."]


def test_a_number_twilio_refuses_fails_at_once_and_its_reason_names_no_number(desk: Desk, twilio: FakeTwilio) -> None:
    deliveries = desk.deliveries(TwilioMessages(ACCOUNT, TWILIO_TOKEN, twilio.url, None))
    twilio.unreachable.add(PHONE)
    message_id = desk.agent_reply("We blocked your card.")
    deliveries.queue(message_id, STORED)
    deliveries.send_due()

    assert twilio.requests == 1 and deliveries.send_due() == 0  # trying again cannot help
    state, error = deliveries.states([message_id])[message_id]
    assert state == "failed" and "400" in error and "21211" in error and "after 1 try" in error
    assert PHONE not in error and PHONE[2:] not in error  # Twilio's text quotes the number; the stored reason does not


def test_replies_queued_before_a_restart_are_sent_by_the_next_sender(desk: Desk, twilio: FakeTwilio) -> None:
    before = desk.deliveries(TwilioMessages(ACCOUNT, TWILIO_TOKEN, twilio.url, None))
    first, second = desk.agent_reply("One."), desk.agent_reply("Two.")
    before.queue(first, STORED), before.queue(second, STORED)  # ...and the process stops before its sender ran

    after = Deliveries(desk.url, KEYS, TwilioMessages(ACCOUNT, TWILIO_TOKEN, twilio.url, None), poll_s=0.05).start()
    try:
        wait_for(lambda: len(twilio.sent) == 2)
    finally:
        after.stop()
    assert [m["Body"] for m in twilio.sent] == ["One.", "Two."]
    assert after.states([first, second]) == {first: ("sent", None), second: ("sent", None)}


def test_numbers_are_kept_sealed_and_dropped_once_the_handoff_is_resolved(desk: Desk, twilio: FakeTwilio) -> None:
    deliveries = desk.deliveries(TwilioMessages(ACCOUNT, TWILIO_TOKEN, twilio.url, None))
    message_id = desk.agent_reply("We blocked your card.")
    deliveries.queue(message_id, STORED)
    database = Path(desk.url.removeprefix("sqlite:///"))
    assert PHONE.encode() not in database.read_bytes() and PHONE[1:].encode() not in database.read_bytes()
    with pytest.raises(DeliveryError, match="does not open"):  # another server key, or another conversation's row
        Deliveries(desk.url, ConversationKeys(b"another-key-0123456789abcdef01234"), None).seal.open(
            STORED, deliveries.seal.seal(STORED, PHONE, DESK)
        )

    assert deliveries.forget_closed() == 0  # the handoff is open: its customer may get more replies
    deliveries.send_due()
    desk.queue.resolve(1, "ann", None)
    assert deliveries.forget_closed() == 1
    assert deliveries.queue(desk.agent_reply("Anything else?"), STORED) is None  # no address: waits for the next message


def test_a_half_configured_or_malformed_account_stops_the_bot_at_start(local_settings: Settings) -> None:
    assert reply_sender(local_settings, None) is None  # no account: nothing is pushed
    with pytest.raises(DeliveryError, match="AUTH_TOKEN is not"):
        reply_sender(local_settings.model_copy(update={"twilio_account_sid": ACCOUNT}), None)
    with pytest.raises(DeliveryError, match="AC and 32 hex"):
        reply_sender(local_settings.model_copy(update={"twilio_account_sid": "my-account"}), None)
    with pytest.raises(DeliveryError, match="http"):
        TwilioMessages(ACCOUNT, TWILIO_TOKEN, "api.twilio.com", None)


# Through the bot service: an agent's reply reaches the SMS customer, and Twilio's signed callbacks settle it.


@dataclass
class ServedDesk:
    client: object  # fastapi.testclient.TestClient
    instance: object
    agent: dict[str, str]

    def sms(self, text: str) -> httpx.Response:
        form = {"From": PHONE, "To": DESK, "Body": text, "NumMedia": "0", "MessageSid": "SMin"}
        return self.client.post("/twilio", data=form, headers={"X-Twilio-Signature": sign(TWILIO_URL, form)})

    def status(self, sid: str, status: str, signature: str | None = None) -> httpx.Response:
        form = {"MessageSid": sid, "MessageStatus": status, "AccountSid": ACCOUNT}
        signature = signature if signature is not None else sign(f"{TWILIO_URL}/status", form)
        return self.client.post("/twilio/status", data=form, headers={"X-Twilio-Signature": signature})

    def reply_state(self) -> str:
        (handoff,) = self.client.get("/agent/handoffs", headers=self.agent).json()["handoffs"]
        return [entry for entry in handoff["transcript"] if entry["role"] == "agent"][-1]["delivery"]


def sign(url: str, form: dict[str, str]) -> str:
    return RequestValidator(TWILIO_TOKEN).compute_signature(url, form)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, twilio: FakeTwilio) -> Iterator[ServedDesk]:
    bot_environment(tmp_path, monkeypatch, TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_API_BASE_URL=twilio.url, TWILIO_RETRY_BASE_S="0.1")
    token = Agents(get_settings().handoff_db_url).add("ann")
    client, instance = start_bot()
    try:
        yield ServedDesk(client, instance, {"Authorization": f"Bearer {token}"})
    finally:
        instance.stop_sender()
        instance.flush_turns()
        get_settings.cache_clear()


def test_an_agents_reply_reaches_the_sms_customer_and_signed_callbacks_settle_it_once(served: ServedDesk, twilio: FakeTwilio) -> None:
    assert "colleague" in served.sms("my card was stolen").text  # handed off: Rasa is down in this test
    (handoff,) = served.client.get("/agent/handoffs", headers=served.agent).json()["handoffs"]
    served.client.post(f"/agent/handoffs/{handoff['id']}/claim", json={}, headers=served.agent)
    twilio.down_for = 1  # the first try meets an outage
    answered = served.client.post(f"/agent/handoffs/{handoff['id']}/answer", json={"text": "We blocked it."}, headers=served.agent)
    assert answered.json()["transcript"][-1]["delivery"] == "queued"

    wait_for(lambda: len(twilio.sent) == 1)
    (sent,) = twilio.sent
    assert (sent["To"], sent["From"], sent["Body"]) == (PHONE, DESK, "We blocked it.")
    assert sent["StatusCallback"] == f"{TWILIO_URL}/status"
    wait_for(lambda: served.reply_state() == "sent")

    for forged in ("", sign(f"{TWILIO_URL}/status", {"MessageSid": sent["sid"], "MessageStatus": "failed"})):
        assert served.status(sent["sid"], "delivered", signature=forged).status_code == 403
    assert served.reply_state() == "sent"
    assert served.status(sent["sid"], "delivered").text == "delivered"
    assert served.status(sent["sid"], "delivered").text == "delivered"  # a replay: same answer, nothing changes
    assert served.status(sent["sid"], "sent").text == "delivered"  # a late report never moves a reply back
    assert served.status(sent["sid"], "failed").text == "delivered"
    assert served.reply_state() == "delivered"
    assert served.status("SM" + "f" * 32, "delivered").status_code == 404
    assert served.status(sent["sid"], "teleported").status_code == 400

    # the customer writes again: the pushed reply is not repeated in the bot's answer
    assert "We blocked it." not in served.sms("thanks").text
