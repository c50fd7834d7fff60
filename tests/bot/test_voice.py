"""Phone calls through Twilio (issue 15, item 6): the bot service's `/twilio/voice`, spoken to as Twilio would,
with signed requests, on a desk whose workspace names an agent number; an agent's reply to a call's handoff is
texted to the caller through a local server speaking Twilio's Messages API.

Rasa is a stand-in whose action asks the bot's real `answer` in this process (as the action server would over
HTTP): "person" in what the caller said asks for a human, anything else is a yes.
"""

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from twilio.request_validator import RequestValidator

from supportflow.bot.engine import AnswerRequest
from supportflow.bot.voice import parse
from supportflow.settings import get_settings
from supportflow.workspace import BotTexts, WorkspaceError, load_workspace, skeleton
from tests.bot.test_delivery import ACCOUNT, twilio, wait_for  # noqa: F401 (twilio: the fixture)
from tests.bot.test_internal_doors import serve_json, uttered
from tests.bot.test_security import TWILIO_TOKEN, TWILIO_URL, bot_environment, start_bot
from tests.bot.twilio_server import FakeTwilio

CALLER = "+15550004444"
DESK_NUMBER = "+15550009999"  # the number the caller dialled
AGENT_PHONE = "+15550100123"
VOICE_URL = f"{TWILIO_URL}/voice"
TEXTS = BotTexts()


@dataclass
class Call:
    client: object  # fastapi.testclient.TestClient
    instance: object
    heard: list[str] = field(default_factory=list)  # what reached the bot's dialogue

    def say(self, url: str, speech: str | None = None, signature: str | None = None, **extra: str) -> httpx.Response:
        """One request of the call, as Twilio posts it to `url` (the first, or a <Gather> action), signed for `url`."""
        form = {"CallSid": "CA" + "1" * 32, "From": CALLER, "To": DESK_NUMBER, **extra}
        if speech is not None:
            form["SpeechResult"] = speech
        signature = signature if signature is not None else RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
        return self.client.post(url.removeprefix(TWILIO_URL.removesuffix("/twilio")), data=form, headers={"X-Twilio-Signature": signature})

    def handoffs(self) -> list[dict]:
        return self.instance.bot.handoffs.page().handoffs


def twiml(response: httpx.Response) -> ElementTree.Element:
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml"), response.text
    return ElementTree.fromstring(response.text)


def listened(response: httpx.Response) -> tuple[list[str], str]:
    """What a <Gather> says, and where it posts what it hears."""
    (gather,) = twiml(response)
    assert gather.tag == "Gather" and gather.get("input") == "speech" and gather.get("actionOnEmptyResult") == "true"
    return [say.text for say in gather.findall("Say")], gather.get("action")


@pytest.fixture
def call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, twilio: FakeTwilio) -> Iterator[Call]:  # noqa: F811
    desk = skeleton(tmp_path / "desk").root
    config = yaml.safe_load((desk / "supportflow.yaml").read_text())
    config["channels"]["agent_phone"] = AGENT_PHONE
    (desk / "supportflow.yaml").write_text(yaml.safe_dump(config))
    holder: list[Call] = []

    def rasa(body: dict) -> list[dict]:
        bot = holder[0].instance.bot
        holder[0].heard.append(body["message"])
        kind, intent = ("handoff", "ask_human") if "person" in body["message"] else ("answer", "affirm")
        request = AnswerRequest(
            kind=kind,
            conversation_id=body["sender"],
            request_id=body["metadata"]["request_id"],
            channel=body["metadata"]["channel"],
            text=body["message"],
            intent=intent,
            confidence=0.9,
        )
        return uttered(body["sender"], bot.answer(request))

    server = serve_json(rasa)
    bot_environment(
        tmp_path,
        monkeypatch,
        WORKSPACE=str(desk),
        RASA_URL=f"http://127.0.0.1:{server.server_address[1]}",
        BIND_HOST="127.0.0.1",
        TWILIO_ACCOUNT_SID=ACCOUNT,
        TWILIO_API_BASE_URL=twilio.url,
        TWILIO_RETRY_BASE_S="0.1",
    )
    client, instance = start_bot()
    holder.append(Call(client, instance))
    try:
        yield holder[0]
    finally:
        instance.stop_sender()
        instance.flush_turns()
        server.shutdown()
        get_settings.cache_clear()


def test_a_caller_is_answered_by_the_bot_and_put_through_to_the_agent_number_on_a_handoff(call: Call) -> None:
    said, action = listened(call.say(VOICE_URL))
    assert said == [TEXTS.greeting] and action == f"{VOICE_URL}?silence=0"

    said, action = listened(call.say(action, "is there an app for that"))
    assert said == [TEXTS.anything_else] and action == f"{VOICE_URL}?silence=0"  # answered, and listening again
    assert call.heard == ["is there an app for that"]

    put_through = twiml(call.say(action, "let me talk to a person"))
    assert [(verb.tag, verb.text) for verb in put_through] == [("Say", TEXTS.handoff), ("Dial", AGENT_PHONE)]
    (handoff,) = call.handoffs()
    assert (handoff["channel"], handoff["reason"]) == ("phone", "asked for a person")
    assert CALLER not in str(handoff) and handoff["conversation_id"].startswith("c-")  # the caller is a stored id


def test_a_silent_caller_is_asked_again_then_put_through_after_two_tries(call: Call) -> None:
    _, action = listened(call.say(VOICE_URL))
    said, action = listened(call.say(action))  # Twilio heard nothing: no SpeechResult
    assert said == [TEXTS.no_speech] and action == f"{VOICE_URL}?silence=1"
    assert call.handoffs() == []

    put_through = twiml(call.say(action, ""))
    assert [(verb.tag, verb.text) for verb in put_through] == [("Say", TEXTS.handoff), ("Dial", AGENT_PHONE)]
    (handoff,) = call.handoffs()
    assert (handoff["channel"], handoff["reason"]) == ("phone", "no speech heard on the call")
    assert call.heard == []  # silences never reached the dialogue


def test_unsigned_or_wrongly_signed_voice_requests_are_refused(call: Call) -> None:
    signer = RequestValidator(TWILIO_TOKEN)
    form = {"CallSid": "CA" + "1" * 32, "From": CALLER, "To": "+15550009999", "SpeechResult": "let me talk to a person"}
    attempts = {
        "unsigned": "",
        "signed with another token": RequestValidator("another-token-0123456789abcdef012").compute_signature(VOICE_URL, form),
        "another speech signed": signer.compute_signature(VOICE_URL, {**form, "SpeechResult": "hello"}),
        "a forged silence count": signer.compute_signature(
            f"{VOICE_URL}?silence=0", {k: v for k, v in form.items() if k != "SpeechResult"}
        ),
    }
    for attempt, signature in attempts.items():
        url = f"{VOICE_URL}?silence=1" if attempt == "a forged silence count" else VOICE_URL
        speech = None if attempt == "a forged silence count" else form["SpeechResult"]
        refused = call.say(url, speech, signature=signature)
        assert refused.status_code == 403 and "Dial" not in refused.text, attempt
    assert call.heard == [] and call.handoffs() == []  # nothing reached the bot or the queue


def test_a_withheld_number_is_a_conversation_of_its_own_call() -> None:
    assert parse({"From": CALLER, "CallSid": "CA1", "SpeechResult": " hi "}).conversation_id == f"phone:{CALLER}"
    withheld = [parse({"From": "anonymous", "CallSid": sid}).conversation_id for sid in ("CA1", "CA2")]
    assert withheld == ["call:CA1", "call:CA2"]  # two strangers never share a transcript


def test_an_agent_number_that_cannot_be_dialled_is_refused_when_the_workspace_is_read(tmp_path: Path) -> None:
    desk = skeleton(tmp_path / "desk").root
    config = (desk / "supportflow.yaml").read_text().replace("agent_phone: null", "agent_phone: 0800 123 456")
    (desk / "supportflow.yaml").write_text(config)
    with pytest.raises(WorkspaceError, match=r"channels\.agent_phone: agent_phone must be an E\.164 number"):
        load_workspace(desk)


def answer_as_agent(call: Call, text: str) -> dict:
    """The console's two steps on the call's one handoff (a loopback-bound bot with no agent registered: `local`)."""
    (handoff,) = call.handoffs()
    assert call.client.post(f"/agent/handoffs/{handoff['id']}/claim", json={}).status_code == 200
    answered = call.client.post(f"/agent/handoffs/{handoff['id']}/answer", json={"text": text})
    assert answered.status_code == 200, answered.text
    return answered.json()


@pytest.mark.parametrize("silent", [False, True], ids=["asked for a person", "not heard"])
def test_an_agents_reply_to_a_calls_handoff_is_texted_to_the_caller_from_the_number_they_called(
    call: Call,
    twilio: FakeTwilio,  # noqa: F811
    silent: bool,
) -> None:
    _, action = listened(call.say(VOICE_URL))
    if silent:
        _, action = listened(call.say(action))
        twiml(call.say(f"{VOICE_URL}?silence=1"))
    else:
        twiml(call.say(action, "let me talk to a person"))
    answered = answer_as_agent(call, "We blocked the card; a new one is on its way.")
    assert answered["transcript"][-1]["delivery"] == "queued"
    wait_for(lambda: len(twilio.sent) == 1)
    (sent,) = twilio.sent
    assert (sent["To"], sent["From"], sent["Body"]) == (CALLER, DESK_NUMBER, "We blocked the card; a new one is on its way.")


def test_a_caller_who_withheld_their_number_gets_no_text(call: Call, twilio: FakeTwilio) -> None:  # noqa: F811
    twiml(call.say(VOICE_URL, "let me talk to a person", From="anonymous"))
    answered = answer_as_agent(call, "Please call us back.")
    reply = answered["transcript"][-1]
    assert call.instance.deliveries.states([reply["id"]]) == {}  # nowhere to push it: it waits for their next contact
    assert call.instance.deliveries.send_due() == 0 and twilio.sent == []
