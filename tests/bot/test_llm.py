import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from supportflow.bot.llm import LLMResponder, PromptPassage, local_moderation, off_knowledge_base_links
from supportflow.settings import Settings
from supportflow.workspace import BotTexts, load_workspace
from tests.bot.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
ROLE = BotTexts().llm_role
PASSAGES = [
    PromptPassage(
        "card_arrival",
        "When will my card arrive?",
        "Cards arrive within 5 working days of ordering.",
        "https://help.bank.example/card-arrival",
    ),
    PromptPassage("card_delivery_estimate", "Tracking a card", "You can follow delivery in the app or at track.bank.example.", ""),
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture
def responder(server: FakeOpenAI) -> Iterator[LLMResponder]:
    settings = Settings(openai_api_key=SecretStr("sk-test"), openai_base_url=server.url, openai_timeout_s=1.0)
    server.requests.clear()
    yield LLMResponder(settings)
    server.moderation_status = 200


def chat_requests(server: FakeOpenAI) -> list[dict]:
    return [r["body"] for r in server.requests if r["path"].endswith("/chat/completions")]


def test_the_reply_is_grounded_in_the_passages(responder: LLMResponder, server: FakeOpenAI) -> None:
    reply = responder.reply("when does my card come?", PASSAGES, ROLE)

    assert reply == (
        "According to 'When will my card arrive? (https://help.bank.example/card-arrival)': Cards arrive within 5 working days of ordering."
    )
    (request,) = chat_requests(server)
    assert "[2] Tracking a card" in request["messages"][0]["content"]
    assert "I don't know" in request["messages"][0]["content"]


def test_who_the_assistant_is_comes_from_the_desks_workspace(responder: LLMResponder, server: FakeOpenAI) -> None:
    bank = load_workspace(ROOT / "examples" / "banking77").config.texts.llm_role
    responder.reply("when does my card come?", PASSAGES, bank)
    responder.reply("when does my card come?", PASSAGES, ROLE)

    desk, neutral = (request["messages"][0]["content"] for request in chat_requests(server))
    assert desk.startswith(f"You are {bank}.") and "bank" in bank
    assert neutral.startswith(f"You are {ROLE}.") and "bank" not in neutral.split("Passages:")[0].lower()


def test_the_provider_never_sees_the_customers_personal_data(responder: LLMResponder, server: FakeOpenAI) -> None:
    pii = ["4111 1111 1111 1111", "07 12 34 56 78", "josé.garcía@correo.es", "de89 3704 0044 0532 0130 00", "+33 6 12 34 56 78"]
    question = f"my card {pii[0]} has not come, call {pii[1]} or {pii[4]}, mail {pii[2]}, refund to {pii[3]}"

    assert responder.reply(question, PASSAGES, ROLE) is not None
    sent = json.dumps([r["body"] for r in server.requests], ensure_ascii=False)
    assert not [value for value in pii if value in sent]
    (request,) = chat_requests(server)
    assert request["messages"][-1]["content"] == "my card <CARD> has not come, call <PHONE> or <PHONE>, mail <EMAIL>, refund to <IBAN>"


@pytest.mark.parametrize("question", ["this is unknown to you", "be rude please", "slow answer please", "say something hateful"])
def test_unsure_unsafe_or_slow_replies_fall_back(responder: LLMResponder, question: str) -> None:
    assert responder.reply(question, PASSAGES, ROLE) is None


def test_without_a_key_or_passages_the_llm_is_not_used(server: FakeOpenAI, responder: LLMResponder) -> None:
    keyless = LLMResponder(Settings(openai_api_key=None, openai_base_url=server.url))
    assert keyless.reply("when does my card come?", PASSAGES, ROLE) is None
    assert responder.reply("when does my card come?", [], ROLE) is None
    assert chat_requests(server) == []


def test_an_unreachable_endpoint_falls_back() -> None:
    dead = LLMResponder(Settings(openai_api_key=SecretStr("sk-test"), openai_base_url="http://127.0.0.1:9/v1", openai_timeout_s=1.0))
    assert dead.reply("when does my card come?", PASSAGES, ROLE) is None


def test_a_moderation_endpoint_that_is_down_refuses_the_reply(
    responder: LLMResponder, server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.moderation_status = 503
    with caplog.at_level(logging.WARNING, logger="supportflow.bot.llm"):
        assert responder.reply("when does my card come?", PASSAGES, ROLE) is None
    assert [r.reason for r in caplog.records] == ["the moderation endpoint could not be reached (InternalServerError)"]
    assert any(r["path"].endswith("/moderations") for r in server.requests)  # it was asked, and did not answer

    # A desk that turned the endpoint off (a provider without one) relies on the local rules alone, by its own choice.
    local_only = LLMResponder(
        Settings(openai_api_key=SecretStr("sk-test"), openai_base_url=server.url, openai_timeout_s=1.0, openai_moderation_endpoint=False)
    )
    assert local_only.reply("when does my card come?", PASSAGES, ROLE) is not None


def test_a_reply_linking_off_the_knowledge_base_is_refused_and_one_linking_to_it_kept(
    responder: LLMResponder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="supportflow.bot.llm"):
        assert responder.reply("please link elsewhere", PASSAGES, ROLE) is None
    assert [r.reason for r in caplog.records] == ["it links off the knowledge base's domains (https://account-check.example/login)"]

    assert responder.reply("please link the article", PASSAGES, ROLE) == "The article explains it: https://help.bank.example/card-arrival"


@pytest.mark.parametrize(
    ("reply", "off"),
    [
        ("See https://help.bank.example/card-arrival for more.", []),
        ("See www.help.bank.example or HTTPS://Help.Bank.Example/x.", []),
        ("Follow it at track.bank.example.", []),  # a link the articles themselves give
        ("The app docs are at docs.help.bank.example.", []),  # a subdomain of the articles' own host
        ("It takes 1.5 days, e.g. by Monday.", []),
        ("Check https://help.bank.example.evil.com/login now", ["https://help.bank.example.evil.com/login"]),
        ("Verify at bank.example today", ["bank.example"]),  # the parent of the articles' host is another party's
        ("Go to https://user@evil.example/x", ["https://user@evil.example/x"]),
        ("Visit phish.example, then reply.", ["phish.example"]),
        ("Install Node.js first.", ["Node.js"]),  # reads as a domain: refused, the extractive answer follows
    ],
)
def test_links_are_checked_against_the_knowledge_bases_domains(reply: str, off: list[str]) -> None:
    assert off_knowledge_base_links(reply, PASSAGES) == off


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Please send us your PIN so we can check.", "asks for secrets"),
        ("We guarantee a refund today.", "promises money"),
        ("Write to help@bank.example for that.", "leaks personal data"),
        ("Call us on 07 12 34 56 78.", "leaks personal data"),
        ("Your card arrives within 5 working days.", None),
    ],
)
def test_local_moderation_rules(text: str, rule: str | None) -> None:
    assert local_moderation(text) == rule
