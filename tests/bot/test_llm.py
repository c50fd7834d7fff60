from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from supportflow.bot.llm import LLMResponder, PromptPassage, local_moderation
from supportflow.settings import Settings
from tests.bot.openai_server import FakeOpenAI

PASSAGES = [
    PromptPassage("card_arrival", "When will my card arrive?", "Cards arrive within 5 working days of ordering."),
    PromptPassage("card_delivery_estimate", "Tracking a card", "You can follow delivery in the app under Cards."),
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture
def responder(server: FakeOpenAI) -> LLMResponder:
    settings = Settings(openai_api_key=SecretStr("sk-test"), openai_base_url=server.url, openai_timeout_s=1.0)
    return LLMResponder(settings)


def test_the_reply_is_grounded_in_the_passages(responder: LLMResponder, server: FakeOpenAI) -> None:
    reply = responder.reply("when does my card come?", PASSAGES)

    assert reply == "According to 'When will my card arrive?': Cards arrive within 5 working days of ordering."
    request = next(r for r in reversed(server.requests) if r["path"].endswith("/chat/completions"))["body"]
    assert "[2] Tracking a card" in request["messages"][0]["content"]
    assert "I don't know" in request["messages"][0]["content"]


@pytest.mark.parametrize("question", ["this is unknown to you", "be rude please", "slow answer please", "say something hateful"])
def test_unsure_unsafe_or_slow_replies_fall_back(responder: LLMResponder, question: str) -> None:
    assert responder.reply(question, PASSAGES) is None


def test_without_a_key_or_passages_the_llm_is_not_used(server: FakeOpenAI, responder: LLMResponder) -> None:
    assert LLMResponder(Settings(openai_api_key=None, openai_base_url=server.url)).reply("when does my card come?", PASSAGES) is None
    assert responder.reply("when does my card come?", []) is None


def test_an_unreachable_endpoint_falls_back() -> None:
    dead = LLMResponder(Settings(openai_api_key=SecretStr("sk-test"), openai_base_url="http://127.0.0.1:9/v1", openai_timeout_s=1.0))
    assert dead.reply("when does my card come?", PASSAGES) is None


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Please send us your PIN so we can check.", "asks for secrets"),
        ("We guarantee a refund today.", "promises money"),
        ("Write to help@bank.example for that.", "leaks personal data"),
        ("Your card arrives within 5 working days.", None),
    ],
)
def test_local_moderation_rules(text: str, rule: str | None) -> None:
    assert local_moderation(text) == rule
