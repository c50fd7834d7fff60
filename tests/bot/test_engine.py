"""The bot's routing decisions, against the real demo knowledge base (tantivy + MiniLM)."""

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pydantic import SecretStr

from supportflow.bot.engine import BOT_UNREACHABLE, PAYLOAD_KEY, AnswerRequest, ChatError, SupportBot
from supportflow.bot.handoff import HandoffQueue
from supportflow.bot.llm import LLMResponder
from supportflow.bot.turns import TurnLog, read_turns
from supportflow.kb.build import KnowledgeBase, build_knowledge_base, open_knowledge_base
from supportflow.keys import ConversationKeys
from supportflow.lake import open_lake
from supportflow.settings import Settings
from supportflow.validate.catalogue import load_catalogue
from supportflow.workspace import load_workspace, workspace
from tests.bot.openai_server import FakeOpenAI
from tests.bot.test_internal_doors import serve_json

pytestmark = pytest.mark.slow  # the session's demo knowledge base is built first (20-35 s)

ROOT = Path(__file__).resolve().parents[2]
TEXTS = load_workspace(ROOT / "examples" / "banking77").config.texts  # the demo desk's words, which its bot must speak
KEYS = ConversationKeys(b"a test key of thirty-two bytes..")


@pytest.fixture(scope="session")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    folder = tmp_path_factory.mktemp("kb")
    settings = Settings(
        kb_dir=folder / "kb",
        gx_root=folder / "gx",
        kb_model_cache=ROOT / "models" / "embedder",
        kb_sources=[ROOT / "examples" / "banking77" / "kb"],
        lake_url=str(folder / "lake"),
        mlflow_tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
    )
    build_knowledge_base(settings)
    return open_knowledge_base(settings)


@pytest.fixture
def bot(knowledge: KnowledgeBase, local_settings: Settings, tmp_path: Path) -> Iterator[SupportBot]:
    lake = open_lake(local_settings)
    handoffs = HandoffQueue(f"sqlite:///{tmp_path / 'handoff.db'}", lake, load_catalogue(local_settings.catalogue_file).intents)
    bot = SupportBot(
        knowledge,
        LLMResponder(local_settings),
        handoffs,
        TurnLog(lake, flush_every=1),
        rasa_url="http://127.0.0.1:9",
        keys=KEYS,
        rasa_timeout_s=2,
        texts=workspace(local_settings).config.texts,
    )
    yield bot


def ask(bot: SupportBot, text: str, intent: str | None, confidence: float = 0.95, **extra: object) -> object:
    return bot.answer(AnswerRequest(conversation_id="c1", request_id="r1", text=text, intent=intent, confidence=confidence, **extra))


def test_a_known_intent_is_answered_from_its_article(bot: SupportBot) -> None:
    response = ask(bot, "my card still hasn't arrived", "card_arrival")
    assert (response.route, response.kb_doc_id, response.answer_intent) == ("kb", "card_arrival", "card_arrival")
    assert "delivered" in response.messages[0] and "More: https://" in response.messages[0]
    assert response.kb_score is not None


def test_a_settled_intent_is_answered_from_its_own_article_whatever_a_search_ranks_first(bot: SupportBot, knowledge: KnowledgeBase) -> None:
    """The classifier was sure (or the customer picked the intent): the desk's article for it answers, even where
    the customer's words are closer to other articles. Before, such a message was answered from another intent's
    article, or handed off when no article passed the search's threshold, though the intent was right."""
    question = "I need my card as soon as possible."
    assert "card_delivery_estimate" not in [hit.intent for hit in knowledge.reply(question, k=5).answers]
    response = ask(bot, question, "card_delivery_estimate")
    assert (response.route, response.kb_doc_id, response.answer_intent) == ("kb", "card_delivery_estimate", "card_delivery_estimate")
    assert bot.handoffs.page().handoffs == []


def test_without_an_intent_the_best_match_answers_and_names_the_intent_its_article_answers(bot: SupportBot) -> None:
    """What the customer read is the article's intent, which is what an evaluation must compare with theirs."""
    response = ask(bot, "which exchange rate do you use when I pay in euros?", None, 0.3)
    assert response.route == "kb" and response.intent is None
    assert response.answer_intent is not None and response.kb_doc_id is not None


def test_once_a_form_has_the_slot_the_answer_is_for_the_request_that_started_it(bot: SupportBot) -> None:
    # Rasa's form asked for the slot; this turn's message only names it, and was classified as something else.
    slots = {"pending_intent": "lost_or_stolen_card", "card_type": "virtual"}
    answered = ask(bot, "the virtual one", "virtual_card_not_working", 0.6, slots=slots, form_completed=True)
    assert answered.route == "kb" and answered.kb_doc_id == "lost_or_stolen_card" and answered.slots == {"pending_intent": None}
    named = ask(bot, "virtual", "inform", 1.0, slots=slots)
    assert named.intent == "lost_or_stolen_card" and named.kb_doc_id == "lost_or_stolen_card"
    # Classified as the request itself, the reply still finds the request's article: the search is for the request.
    same = ask(bot, "the virtual one", "lost_or_stolen_card", 0.7, slots=slots, form_completed=True)
    assert (same.route, same.kb_doc_id) == ("kb", "lost_or_stolen_card")


def test_a_value_given_with_no_request_waiting_gets_the_clarification(bot: SupportBot) -> None:
    response = ask(bot, "the virtual one", "inform", 1.0, slots={"card_type": "virtual"})
    assert (response.route, response.messages) == ("dialogue", [TEXTS.clarification])


def test_dialogue_acts_clarification_and_handoff(bot: SupportBot) -> None:
    assert ask(bot, "hello", "greet", 1.0).messages == [TEXTS.greeting]
    clarify = ask(
        bot,
        "how do I top up and why was my card declined?",
        "multiple_requests",
        0.8,
        kind="clarify",
        entities=[{"entity": "request", "value": "top_up_failed"}, {"entity": "request", "value": "declined_card_payment"}],
    )
    assert clarify.route == "clarify" and "(1) Why did my top-up fail or (2)" in clarify.messages[0]  # the articles' titles
    # The reply that picks one is answered, as a pick from an offer is (Rasa forwards it below the threshold).
    picked_one = ask(bot, "the second", "nlu_fallback", 0.9, kind="handoff", slots=clarify.slots)
    assert (picked_one.route, picked_one.kb_doc_id) == ("kb", "declined_card_payment")
    human = ask(bot, "I want a person", "ask_human", 1.0, kind="handoff")
    assert human.route == "handoff" and human.messages == [TEXTS.handoff]
    assert bot.handoffs.page("waiting").handoffs[0]["reason"] == "asked for a person"


UNSURE = [  # what Rasa sends below the threshold: nlu_fallback on top, then the classifier's own ranking
    {"intent": "nlu_fallback", "confidence": 0.9},
    {"intent": "card_arrival", "confidence": 0.41},
    {"intent": "card_delivery_estimate", "confidence": 0.33},
    {"intent": "lost_or_stolen_card", "confidence": 0.05},
]


def test_below_the_threshold_close_intents_are_offered_and_the_pick_is_answered(bot: SupportBot) -> None:
    offer = ask(bot, "where is the thing you sent", "nlu_fallback", 0.9, kind="handoff", ranking=UNSURE)
    assert offer.route == "clarify" and offer.slots == {"offered_intents": ["card_arrival", "card_delivery_estimate"]}
    assert "(1) My card hasn't arrived yet" in offer.messages[0] and "(2)" in offer.messages[0] and "(3)" not in offer.messages[0]
    assert bot.handoffs.page().handoffs == []  # no person yet
    for reply in ("2", "the second one", "how long it takes"):  # what Rasa forwards next: low confidence again, the offer in its slot
        answered = ask(bot, reply, "nlu_fallback", 0.9, kind="handoff", slots=offer.slots)
        assert (answered.route, answered.kb_doc_id) == ("kb", "card_delivery_estimate"), reply
        assert answered.slots == {"offered_intents": None}


def test_an_offer_declined_or_not_worth_making_goes_to_a_person(bot: SupportBot) -> None:
    offer = ask(bot, "where is the thing you sent", "nlu_fallback", 0.9, kind="handoff", ranking=UNSURE)
    declined = ask(bot, "something else entirely, about my savings", "nlu_fallback", 0.9, kind="handoff", slots=offer.slots, ranking=UNSURE)
    assert declined.route == "handoff" and declined.slots == {"offered_intents": None}  # an offer is made once
    spread = [{"intent": "nlu_fallback", "confidence": 0.9}] + [{"intent": i, "confidence": 0.1} for i in ("card_arrival", "change_pin")]
    assert ask(bot, "hmm", "nlu_fallback", 0.9, kind="handoff", ranking=spread).route == "handoff"  # 0.2 in all: a guess
    assert [h["reason"] for h in bot.handoffs.page().handoffs] == ["not understood with confidence"]  # one open per conversation


def test_nothing_relevant_goes_to_a_person(bot: SupportBot) -> None:
    response = ask(bot, "can you recommend a pizza topping for tonight?", None, 0.2)
    assert response.route == "handoff" and bot.handoffs.page().handoffs[0]["reason"] == "nothing relevant in the knowledge base"


def test_a_handoff_keeps_the_message_it_was_opened_for_as_what_an_agents_label_goes_on(bot: SupportBot) -> None:
    """The transcript starts wherever Rasa's memory does ("hi"); the label belongs to the message the bot handed off.
    A request for a person, or a bare value a form asked for, is not that message: the customer's next one is."""

    def opened(conversation: str, text: str, intent: str | None, **extra: object) -> object:
        lines = [{"role": "customer", "text": "hi"}, {"role": "bot", "text": "Hello!"}, {"role": "customer", "text": text}]
        request = AnswerRequest(conversation_id=conversation, text=text, intent=intent, confidence=0.2, transcript=lines, **extra)
        assert bot.answer(request).route == "handoff"
        view = bot.handoffs.get(bot.handoffs.open_for(conversation))
        return next((m["text"] for m in view["transcript"] if m["id"] == view["question_id"]), None)

    assert opened("c-q1", "can you recommend a pizza topping for tonight?", None) == "can you recommend a pizza topping for tonight?"
    assert opened("c-q2", "where is the thing you sent", "nlu_fallback", kind="handoff") == "where is the thing you sent"
    assert opened("c-q3", "I want a person", "ask_human", kind="handoff") is None
    bot.knowledge = None  # nothing to answer the form's request with: handed off on the message that completed it
    slots = {"pending_intent": "lost_or_stolen_card", "card_type": "virtual"}
    assert opened("c-q4", "the virtual one", "inform", slots=slots, form_completed=True) is None


def test_a_classifier_that_is_down_degrades_to_a_handoff(bot: SupportBot) -> None:
    response = ask(bot, "my card is lost", "nlu_fallback", 0.0, classifier_unavailable=True)
    assert (response.route, response.messages, response.degraded) == ("handoff", [TEXTS.outage], True)


def test_with_an_llm_the_reply_is_written_from_the_passages(knowledge: KnowledgeBase, bot: SupportBot) -> None:
    server = FakeOpenAI()
    try:
        bot.llm = LLMResponder(Settings(openai_api_key=SecretStr("sk-test"), openai_base_url=server.url, openai_timeout_s=2))
        response = ask(bot, "my card still hasn't arrived", "card_arrival")
        assert response.route == "llm" and response.messages[0].startswith("According to 'My card hasn't arrived yet")
        fallback = ask(bot, "this is unknown: my card still hasn't arrived", "card_arrival")
        assert fallback.route == "kb"
    finally:
        server.close()


def test_bad_messages_are_refused_with_a_fitting_status(bot: SupportBot) -> None:
    with pytest.raises(ChatError, match="empty") as empty:
        bot.chat("c2", "   ")
    with pytest.raises(ChatError, match="100,000 characters long; at most 4,000") as huge:
        bot.chat("c2", "x" * 100_000)
    with pytest.raises(ChatError, match="conversation_id") as bad_id:
        bot.chat("no spaces allowed", "hello")
    with pytest.raises(ChatError, match="unknown channel 'pager'") as channel:
        bot.chat("c2", "hello", channel="pager")
    assert (empty.value.status, huge.value.status, bad_id.value.status, channel.value.status) == (400, 413, 400, 400)


def test_when_rasa_is_down_the_customer_gets_a_handoff_and_503(bot: SupportBot) -> None:
    result = bot.chat("c3", "my card is lost")
    assert (result.status, result.route, result.replies) == (503, "handoff", [TEXTS.outage])
    again = bot.chat("c3", "hello?")
    assert (again.status, again.replies) == (200, [TEXTS.with_agent])
    bot.turns.flush()  # the turns wait for the log's writer: a turn never writes to the lake itself
    turns = read_turns(bot.turns.lake)
    assert list(turns["route"]) == ["handoff", "handoff"] and list(turns["conversation_id"]) == [KEYS.stored_id("c3")] * 2


def test_an_intent_with_no_article_is_handed_off_not_answered_from_another(tmp_path: Path, local_settings: Settings) -> None:
    """A desk that has not written an article yet: the build says which intents lack one, and the bot hands them
    off instead of answering with the nearest other article."""
    articles = tmp_path / "articles"
    articles.mkdir()
    for name in ("card_arrival.md", "card_delivery_estimate.md"):
        (articles / name).write_text((ROOT / "examples" / "banking77" / "kb" / name).read_text())
    settings = Settings(
        kb_dir=tmp_path / "kb",
        gx_root=tmp_path / "gx",
        kb_model_cache=ROOT / "models" / "embedder",
        kb_sources=[articles],
        lake_url=str(tmp_path / "lake"),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    report = build_knowledge_base(settings)
    assert len(report.unanswered_intents) == 75 and "order_physical_card" in report.unanswered_intents
    assert any("no article for 75 intents" in line for line in report.lines())
    knowledge = open_knowledge_base(settings)
    assert knowledge.answered_intents == {"card_arrival", "card_delivery_estimate"}
    lake = open_lake(local_settings)
    handoffs = HandoffQueue(f"sqlite:///{tmp_path / 'handoff.db'}", lake, load_catalogue(local_settings.catalogue_file).intents)
    bot = SupportBot(
        knowledge, LLMResponder(local_settings), handoffs, TurnLog(lake, flush_every=1), rasa_url="http://127.0.0.1:9", keys=KEYS
    )

    answered = ask(bot, "when will my card arrive", "card_arrival")
    assert (answered.route, answered.kb_doc_id) == ("kb", "card_arrival")
    unwritten = ask(bot, "how do I order a physical card? I want my card delivered", "order_physical_card")
    assert unwritten.route == "handoff" and unwritten.kb_doc_id is None
    (queued,) = handoffs.page().handoffs
    assert queued["reason"] == "no article answers order_physical_card"


def test_the_turn_log_keeps_the_ranking_and_why_a_turn_was_handed_off(bot: SupportBot) -> None:
    """What the review queue (its margin, its suggestions) and the knowledge-gap report (no-answer handoffs) read."""
    import httpx

    ranking = {
        "my card still hasn't arrived": [
            {"intent": "card_arrival", "confidence": 0.5},
            {"intent": "card_delivery_estimate", "confidence": 0.4},
        ],
        "can you recommend a pizza topping for tonight?": [{"intent": "card_arrival", "confidence": 0.3}],
    }

    def rasa(request: httpx.Request) -> httpx.Response:  # a stand-in Rasa whose action asks the bot, as the real one does
        said = json.loads(request.content)
        top = ranking[said["message"]][0]
        reply = bot.answer(
            AnswerRequest(
                conversation_id=said["sender"],
                request_id=said["metadata"]["request_id"],
                text=said["message"],
                intent=top["intent"] if top["confidence"] > 0.4 else None,
                confidence=top["confidence"],
                ranking=ranking[said["message"]],
            )
        )
        return httpx.Response(200, json=[*({"text": message} for message in reply.messages), {"custom": reply.custom}])

    bot._http = httpx.Client(transport=httpx.MockTransport(rasa))
    assert bot.chat("c4", "my card still hasn't arrived").route == "kb"
    assert bot.chat("c5", "can you recommend a pizza topping for tonight?").route == "handoff"
    bot.turns.flush()
    answered, handed_off = read_turns(bot.turns.lake).to_dict("records")
    assert [dict(r) for r in answered["ranking"]] == ranking["my card still hasn't arrived"] and pd.isna(answered["handoff_reason"])
    assert handed_off["handoff_reason"] == "nothing relevant in the knowledge base"


class TwoReplicaRasa:
    """Rasa's REST channel in front of two bot replicas: each turn's action calls back the *other* replica than the
    one whose `chat` sent it, and utters the answer and its outcome as Rasa's action server does. It keeps each
    conversation's events, as Rasa's shared tracker store does, and the action sends them as the transcript."""

    def __init__(self, callee: SupportBot) -> None:
        self.callee = callee
        self.events: dict[str, list[dict[str, str]]] = {}
        self.server = serve_json(self.reply)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, body: dict) -> list[dict]:
        sender, text = body["sender"], body["message"]
        events = self.events.setdefault(sender, [])
        events.append({"role": "customer", "text": text})
        kind, intent = ("handoff", "ask_human") if "person" in text else ("answer", "card_arrival")
        request = {"kind": kind, "conversation_id": sender, "request_id": body["metadata"]["request_id"], "text": text}
        answered = self.callee.answer(AnswerRequest(**request, intent=intent, confidence=0.93, transcript=events)).model_dump(mode="json")
        events += [{"role": "bot", "text": message} for message in answered["messages"]]
        said = [{"recipient_id": sender, "text": message} for message in answered["messages"]]
        return [*said, {"recipient_id": sender, "custom": answered["custom"]}]


def test_a_turn_whose_callback_reaches_another_replica_keeps_its_outcome_and_transcript(
    knowledge: KnowledgeBase, bot: SupportBot, local_settings: Settings
) -> None:
    """Two replicas share the handoff queue and the lake, nothing else: the outcome comes back through Rasa's reply,
    and the handoff made on the replica that never saw the conversation shows all of it."""
    turns = TurnLog(bot.turns.lake, flush_every=1)
    other = SupportBot(knowledge, LLMResponder(local_settings), bot.handoffs, turns, rasa_url="http://127.0.0.1:9", keys=KEYS)
    rasa = TwoReplicaRasa(callee=other)
    bot.rasa_url = rasa.url
    try:
        answered = bot.chat("c-replicas", "my card still hasn't arrived")
        assert (answered.status, answered.route, answered.intent, answered.confidence) == (200, "kb", "card_arrival", 0.93)
        assert (answered.kb_doc_id, answered.answer_intent) == ("card_arrival", "card_arrival")
        assert "delivered" in answered.replies[0] and len(answered.replies) == 1  # the outcome payload is not shown to the customer
        handed = bot.chat("c-replicas", "I want a person now")
        assert (handed.route, handed.intent, handed.replies) == ("handoff", "ask_human", [TEXTS.handoff])
        (handoff,) = bot.handoffs.page().handoffs
        roles = [(m["role"], m["text"][:20]) for m in handoff["transcript"]]
        assert roles == [("customer", "my card still hasn't"), ("bot", answered.replies[0][:20]), ("customer", "I want a person now")]
        bot.turns.flush()
        logged = read_turns(bot.turns.lake)
        assert list(logged["route"]) == ["kb", "handoff"] and logged["kb_doc_id"][0] == "card_arrival" and logged["kb_score"][0] > 0
    finally:
        rasa.server.shutdown()


def test_an_action_that_could_not_reach_the_bot_hands_off_with_rasas_transcript(bot: SupportBot) -> None:
    transcript = [{"role": "customer", "text": "hi"}, {"role": "bot", "text": "Hello!"}, {"role": "customer", "text": "my card is lost"}]
    marker = {PAYLOAD_KEY: BOT_UNREACHABLE, "transcript": transcript}
    server = serve_json(lambda body: [{"text": "Sorry, something went wrong on our side."}, {"custom": marker}])
    bot.rasa_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = bot.chat("c-unreachable", "my card is lost")
    finally:
        server.shutdown()
    assert (result.status, result.route, result.replies) == (503, "handoff", [TEXTS.outage])
    (handoff,) = bot.handoffs.page().handoffs
    assert [(m["role"], m["text"]) for m in handoff["transcript"]] == [(line["role"], line["text"]) for line in transcript]
    assert handoff["reason"] == "the action server could not reach the bot"
    assert handoff["question_id"] == handoff["transcript"][-1]["id"]  # the message that went unanswered, not "hi"
