"""Ratings by SMS (issue 15, item 3): a desk that switched `channels.sms_feedback` on asks after each answer whether
it answered the question, and a YES or NO is recorded as a rating of that turn (in the lake's `ratings/`, as the
webchat's are), never sent to the bot.

The bot service runs in this process on a real knowledge base built from the skeleton desk's articles; Rasa is a
stand-in whose action asks the bot's real `answer` (as the action server would): a message about signing in is
the `account_access` intent, "hello" a greeting.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator

from supportflow.bot.engine import AnswerRequest
from supportflow.bot.feedback import read_ratings
from supportflow.bot.sms_feedback import rating
from supportflow.bot.turns import read_turns
from supportflow.kb.build import build_knowledge_base
from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings
from supportflow.workspace import BotTexts, skeleton
from tests.bot.test_internal_doors import serve_json, uttered
from tests.bot.test_security import TWILIO_TOKEN, TWILIO_URL, bot_environment, start_bot

ROOT = Path(__file__).resolve().parents[2]
PHONE = "+15550005555"
TEXTS = BotTexts()
QUESTION = "I can't sign in to my account"


@dataclass
class Desk:
    client: object  # fastapi.testclient.TestClient
    instance: object
    heard: list[str] = field(default_factory=list)  # what reached the dialogue

    def sms(self, text: str, sender: str = PHONE) -> list[str]:
        form = {"From": sender, "To": "+15550009999", "Body": text, "NumMedia": "0", "MessageSid": "SMin"}
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(TWILIO_URL, form)
        response: httpx.Response = self.client.post("/twilio", data=form, headers={"X-Twilio-Signature": signature})
        assert response.status_code == 200, response.text
        return [message.split("</Message>")[0] for message in response.text.split("<Message>")[1:]]

    def ratings(self) -> list[tuple[str, bool, str]]:
        ratings = read_ratings(open_lake(get_settings()))
        return [(row.turn_id, bool(row.helpful), row.channel) for row in ratings.itertuples()]

    def answered_turns(self) -> list[str]:
        self.instance.bot.turns.flush()
        turns = read_turns(open_lake(get_settings()))
        return list(turns[turns["route"] == "kb"]["turn_id"])


def serve_desk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sms_feedback: bool) -> Iterator[Desk]:
    desk = skeleton(tmp_path / "desk").root
    config = desk / "supportflow.yaml"
    config.write_text(config.read_text().replace("sms_feedback: false", f"sms_feedback: {str(sms_feedback).lower()}"))
    build_knowledge_base(
        Settings(
            workspace=desk,
            kb_dir=tmp_path / "kb",
            kb_sources=[desk / "kb"],
            kb_model_cache=ROOT / "models" / "embedder",
            gx_root=tmp_path / "gx",
            lake_url=str(tmp_path / "lake"),
            mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        )
    )
    holder: list[Desk] = []

    def rasa(body: dict) -> list[dict]:
        holder[0].heard.append(body["message"])
        intent = "account_access" if "sign in" in body["message"] else "greet"
        request = AnswerRequest(
            conversation_id=body["sender"],
            request_id=body["metadata"]["request_id"],
            channel=body["metadata"]["channel"],
            text=body["message"],
            intent=intent,
            confidence=0.95,
        )
        return uttered(body["sender"], holder[0].instance.bot.answer(request))

    server = serve_json(rasa)
    bot_environment(
        tmp_path,
        monkeypatch,
        WORKSPACE=str(desk),
        RASA_URL=f"http://127.0.0.1:{server.server_address[1]}",
        BIND_HOST="127.0.0.1",
        KB_MODEL_CACHE=str(ROOT / "models" / "embedder"),
    )
    client, instance = start_bot()
    holder.append(Desk(client, instance))
    try:
        yield holder[0]
    finally:
        instance.stop_sender()
        instance.flush_turns()
        server.shutdown()
        get_settings.cache_clear()


@pytest.fixture
def asking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Desk]:
    yield from serve_desk(tmp_path, monkeypatch, sms_feedback=True)


@pytest.fixture
def not_asking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Desk]:
    yield from serve_desk(tmp_path, monkeypatch, sms_feedback=False)


def test_a_yes_or_no_after_an_answer_rates_that_turn_and_never_reaches_the_bot(asking: Desk) -> None:
    answer = asking.sms(QUESTION)
    assert len(answer) == 2 and "Forgot password" in answer[0] and answer[1] == TEXTS.feedback_question
    assert asking.sms("Yes!") == [TEXTS.feedback_thanks]
    assert asking.heard == [QUESTION]  # the YES was a rating, not a message

    assert asking.sms(QUESTION)[-1] == TEXTS.feedback_question
    assert asking.sms(" no. ") == [TEXTS.feedback_thanks]
    first, second = asking.answered_turns()
    assert sorted(asking.ratings()) == sorted([(first, True, "sms"), (second, False, "sms")])  # each rates its own turn

    assert asking.sms("yes") != [TEXTS.feedback_thanks]  # nothing open to rate: a message like any other
    assert asking.heard[-1] == "yes" and len(asking.ratings()) == 2


def test_only_answers_are_asked_about_and_a_new_message_closes_the_question(asking: Desk) -> None:
    assert asking.sms("hello") == [TEXTS.greeting]  # a greeting answers no question
    asking.sms(QUESTION)
    asking.sms("hello")  # the customer moved on without rating
    assert asking.sms("no") != [TEXTS.feedback_thanks] and asking.heard[-1] == "no"
    assert asking.ratings() == []


def test_a_desk_that_did_not_switch_it_on_asks_nothing(not_asking: Desk) -> None:
    answer = not_asking.sms(QUESTION)
    assert len(answer) == 1 and TEXTS.feedback_question not in answer
    not_asking.sms("yes")
    assert not_asking.heard == [QUESTION, "yes"] and not_asking.ratings() == []


def test_only_a_plain_yes_or_no_is_a_rating() -> None:
    assert [rating(text) for text in ("YES", "y", "Yes!", " no. ", "N")] == [True, True, True, False, False]
    assert [rating(text) for text in ("yes please", "not really", "nothing", "")] == [None, None, None, None]
