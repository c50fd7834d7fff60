"""A running bot serves the knowledge-base build the `kb_index` flow promotes, without a restart: its turns name
the build that answered each, a turn under way when the build is swapped finishes on the one it started with, and
the bot service's `/status` names the build served now.

Real tantivy and real files: the skeleton desk's four articles (build A), then the same and an article on savings
pots (build B), which is what tells the two apart in an answer. Rasa is a stand-in whose action asks the bot's
real `answer`, as the action server would.
"""

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from supportflow.bot.engine import AnswerRequest, SupportBot
from supportflow.bot.handoff import HandoffQueue
from supportflow.bot.llm import LLMResponder
from supportflow.bot.turns import TurnLog, read_turns
from supportflow.kb.build import BuildReport, KnowledgeBase, build_knowledge_base
from supportflow.kb.serving import KnowledgeFollower
from supportflow.keys import ConversationKeys
from supportflow.lake import open_lake
from supportflow.settings import Settings, get_settings
from supportflow.validate.catalogue import load_catalogue
from supportflow.workspace import skeleton
from tests.bot.test_security import bot_environment, start_bot

ROOT = Path(__file__).resolve().parents[2]
SAVINGS = "---\nid: savings\ntitle: Savings pots\n---\n# Savings pots\n\nOpen a savings pot in the app, under Accounts.\n"
ASKED = "how do I open a savings pot?"


def desk_settings(folder: Path) -> Settings:
    desk = skeleton(folder / "desk")
    return Settings(
        workspace=desk.root,
        kb_dir=folder / "kb",
        kb_sources=[desk.root / "kb"],
        kb_model_cache=ROOT / "models" / "embedder",
        kb_refresh_seconds=0,
        gx_root=folder / "gx",
        contracts_dir=ROOT / "data_contracts",
        lake_url=str(folder / "lake"),
        handoff_db_url=f"sqlite:///{folder / 'handoff.db'}",
        mlflow_tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
    )


def build_with_savings(settings: Settings, folder: Path) -> BuildReport:
    """Build B: the desk's articles and one on savings pots, promoted over whatever served."""
    sources = folder / "with-savings"
    shutil.copytree(settings.kb_sources[0], sources)
    (sources / "savings.md").write_text(SAVINGS)
    return build_knowledge_base(settings, sources=[sources])


@pytest.fixture
def followed(tmp_path: Path) -> Iterator[tuple[SupportBot, KnowledgeFollower]]:
    """A bot on build A, its knowledge followed as the bot service follows it; each turn's action asks it with no
    intent (the best match answers), as Rasa's does for a message the classifier is unsure of."""
    settings = desk_settings(tmp_path)
    build_knowledge_base(settings)
    lake = open_lake(settings)
    bot = SupportBot(
        None,
        LLMResponder(settings),
        HandoffQueue(settings.handoff_db_url, lake, load_catalogue(settings.catalogue_file).intents),
        TurnLog(lake, flush_every=1),
        rasa_url="http://rasa.invalid",
        keys=ConversationKeys(b"a test key of thirty-two bytes.."),
    )

    def serve(knowledge: KnowledgeBase) -> None:
        bot.knowledge = knowledge

    follower = KnowledgeFollower(settings, serve)
    bot.knowledge = follower.open_promoted()

    def rasa(request: httpx.Request) -> httpx.Response:
        said = json.loads(request.content)
        asked = AnswerRequest(
            conversation_id=said["sender"], request_id=said["metadata"]["request_id"], text=said["message"], confidence=0.3
        )
        reply = bot.answer(asked)
        return httpx.Response(200, json=[*({"text": message} for message in reply.messages), {"custom": reply.custom}])

    bot._http = httpx.Client(transport=httpx.MockTransport(rasa))
    yield bot, follower
    bot.turns.stop()


def test_turns_name_the_build_that_answered_them_across_a_promotion(followed: tuple[SupportBot, KnowledgeFollower], tmp_path: Path) -> None:
    bot, follower = followed
    first = bot.knowledge
    assert first is not None
    before = bot.chat("c1", ASKED)  # build A has no article on it
    assert before.kb_doc_id != "savings"

    second = build_with_savings(follower.settings, tmp_path)
    assert follower.check() is not None

    after = bot.chat("c2", ASKED)
    assert (after.route, after.kb_doc_id, after.kb_build) == ("kb", "savings", second.build_id)
    bot.turns.flush()
    turns = read_turns(bot.turns.lake)
    assert list(turns["kb_build"]) == [first.build_id, second.build_id]
    assert list(turns["kb_doc_id"])[1] == "savings"


def test_a_turn_under_way_when_the_build_is_swapped_finishes_on_the_build_it_started_with(
    followed: tuple[SupportBot, KnowledgeFollower], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower's thread swaps the reference while a turn searches: the turn's answer, and what the turn log
    records for it, come from the build it read when it began; the next turn reads the new one."""
    bot, follower = followed
    first = bot.knowledge
    assert first is not None
    build_with_savings(follower.settings, tmp_path)
    newer = follower.open_promoted()
    assert newer is not None
    searching = newer.reply

    def swapped_while_searching(question: str, k: int = 3) -> object:
        bot.knowledge = first  # another swap lands mid-turn: the turn keeps the build it started on
        return searching(question, k)

    monkeypatch.setattr(newer, "reply", swapped_while_searching)
    bot.knowledge = newer

    during = bot.chat("c1", ASKED)
    assert (during.kb_doc_id, during.kb_build) == ("savings", newer.build_id)
    following = bot.chat("c2", ASKED)
    assert following.kb_build == first.build_id and following.kb_doc_id != "savings"
    bot.turns.flush()
    assert list(read_turns(bot.turns.lake)["kb_build"]) == [newer.build_id, first.build_id]


def test_the_bot_service_follows_promotions_and_its_status_names_the_build_served_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = desk_settings(tmp_path)
    first = build_knowledge_base(settings)
    bot_environment(
        tmp_path,
        monkeypatch,
        WORKSPACE=str(settings.workspace),
        BIND_HOST="127.0.0.1",
        KB_MODEL_CACHE=str(settings.kb_model_cache),
        KB_REFRESH_SECONDS="0.05",
    )
    client, instance = start_bot()
    try:
        assert client.get("/status").json()["knowledge_base"] == first.build_id
        second = build_with_savings(settings, tmp_path)
        deadline = time.monotonic() + 30
        while client.get("/status").json()["knowledge_base"] != second.build_id and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/status").json()["knowledge_base"] == second.build_id
        assert instance.bot.knowledge.reply(ASKED).answers[0].doc_id == "savings"
    finally:
        instance.stop_following_knowledge()
        instance.stop_sender()
        instance.flush_turns()
        get_settings.cache_clear()
