"""A running bot follows the promoted knowledge-base build (supportflow/kb/serving.py), with real tantivy and real
files: the skeleton desk's four articles, then the same with one more, each build a fraction of a second."""

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supportflow.kb.build import KnowledgeBase, build_folder, build_knowledge_base
from supportflow.kb.serving import KnowledgeFollower
from supportflow.settings import Settings
from supportflow.workspace import skeleton

SAVINGS = "---\nid: savings\ntitle: Savings pots\n---\n# Savings pots\n\nOpen a savings pot in the app, under Accounts.\n"
ASKED = "how do I open a savings pot?"


@pytest.fixture
def desk_settings(kb_settings: Settings, tmp_path: Path) -> Settings:
    desk = skeleton(tmp_path / "desk")
    return kb_settings.model_copy(update={"workspace": desk.root, "kb_sources": [desk.root / "kb"], "kb_refresh_seconds": 0.0})


@pytest.fixture
def with_savings(desk_settings: Settings, tmp_path: Path) -> Path:
    """The desk's articles and one more: the build that answers `ASKED` with its own article."""
    folder = tmp_path / "more"
    shutil.copytree(desk_settings.kb_sources[0], folder)
    (folder / "savings.md").write_text(SAVINGS)
    return folder


class Served:
    """What the bot holds: the follower's `on_change` assigns it, as the bot service's does."""

    def __init__(self) -> None:
        self.knowledge: KnowledgeBase | None = None

    def serve(self, knowledge: KnowledgeBase) -> None:
        self.knowledge = knowledge


@pytest.fixture
def logged() -> Iterator[list[logging.LogRecord]]:
    """The follower's log records, caught on its own logger (a bot service in the same process stops propagation)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("supportflow.kb")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_a_promoted_build_is_served_once_opened_and_the_old_one_finishes_its_questions(desk_settings: Settings, with_savings: Path) -> None:
    first = build_knowledge_base(desk_settings)
    served = Served()
    follower = KnowledgeFollower(desk_settings, served.serve)
    served.knowledge = follower.open_promoted()
    old = served.knowledge
    assert old is not None and old.build_id == first.build_id

    second = build_knowledge_base(desk_settings, sources=[with_savings])  # promotes, and removes the first build's files

    assert served.knowledge is old  # nothing changes between checks
    # A turn on the old build finishes there, though it asks its first question after the old build's files went.
    assert old.reply("I forgot my password").answers[0].doc_id == "account_access"
    assert old.reply(ASKED).answers[0].doc_id != "savings"
    assert follower.check() is served.knowledge
    assert served.knowledge is not old and served.knowledge.build_id == second.build_id == follower.current
    assert served.knowledge.reply(ASKED).answers[0].doc_id == "savings"
    assert follower.check() is None  # the same build: nothing opened again


def test_a_broken_promoted_build_leaves_the_served_one_and_is_retried(
    desk_settings: Settings, with_savings: Path, logged: list[logging.LogRecord]
) -> None:
    first = build_knowledge_base(desk_settings)
    served = Served()
    follower = KnowledgeFollower(desk_settings, served.serve)
    served.knowledge = follower.open_promoted()
    second = build_knowledge_base(desk_settings, sources=[with_savings])
    manifest = build_folder(desk_settings, second.build_id) / "manifest.json"
    intact = manifest.read_text()
    manifest.write_text(intact[: len(intact) // 2])  # a torn write

    assert follower.check() is None and follower.check() is None
    assert served.knowledge is not None and served.knowledge.build_id == first.build_id == follower.current
    # The text an operator reads, after the redacting filter the JSON handler may have applied: the build id survives.
    failures = [record.getMessage() for record in logged if record.levelno == logging.ERROR]
    assert len(failures) == 1 and f"build {second.build_id} cannot be served" in failures[0]

    manifest.write_text(intact)  # the next check tries again
    assert follower.check() is not None and served.knowledge.build_id == second.build_id
    assert served.knowledge.reply(ASKED).answers[0].doc_id == "savings"

    shutil.rmtree(build_folder(desk_settings, second.build_id))  # a promoted build whose folder is gone
    (desk_settings.kb_dir / "kb.serving").write_text("20990101000000-missing")
    assert follower.check() is None and served.knowledge.build_id == second.build_id
    assert "build 20990101000000-missing cannot be served" in logged[-1].getMessage()


def test_a_bot_started_before_any_build_picks_up_the_first_one_promoted(desk_settings: Settings, logged: list[logging.LogRecord]) -> None:
    served = Served()
    follower = KnowledgeFollower(desk_settings, served.serve)
    assert follower.open_promoted() is None and follower.check() is None
    assert [record.getMessage() for record in logged] == ["no knowledge-base build is served as 'kb'"]  # once, not per check

    report = build_knowledge_base(desk_settings)

    assert follower.check() is not None and served.knowledge is not None and served.knowledge.build_id == report.build_id


def test_the_thread_follows_every_refresh_interval_and_never_with_zero(desk_settings: Settings, with_savings: Path) -> None:
    first = build_knowledge_base(desk_settings)
    following, fixed = Served(), Served()
    quick = KnowledgeFollower(desk_settings.model_copy(update={"kb_refresh_seconds": 0.05}), following.serve)
    never = KnowledgeFollower(desk_settings, fixed.serve)  # kb_refresh_seconds 0
    following.knowledge, fixed.knowledge = quick.open_promoted(), never.open_promoted()
    quick.start()
    never.start()
    try:
        second = build_knowledge_base(desk_settings, sources=[with_savings])
        deadline = time.monotonic() + 30
        while following.knowledge.build_id != second.build_id and time.monotonic() < deadline:
            time.sleep(0.05)
        assert following.knowledge.build_id == second.build_id
        assert fixed.knowledge is not None and fixed.knowledge.build_id == first.build_id  # it had the same time, and no thread
        assert fixed.knowledge.reply("I forgot my password").answers[0].doc_id == "account_access"
    finally:
        quick.stop()
        never.stop()
