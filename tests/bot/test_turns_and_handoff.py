import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from supportflow.bot.handoff import HandoffError, HandoffQueue
from supportflow.bot.turns import Turn, TurnLog, read_turns
from supportflow.lake import Lake
from supportflow.settings import Settings
from supportflow.validate.catalogue import load_catalogue
from supportflow.validate.snapshot import validate_lake


def test_turns_are_redacted_partitioned_by_day_and_read_back_by_window(lake: Lake) -> None:
    log = TurnLog(lake, flush_every=3, flush_seconds=3600).start()  # only a full buffer wakes the writer within the test
    now = datetime(2026, 5, 2, 12, tzinfo=UTC)
    for i, when in enumerate([now - timedelta(days=1), now, now + timedelta(minutes=5)]):
        log.record(
            Turn(conversation_id=f"c{i}", channel="webchat", received_at=when, text=f"mail me at a{i}@x.io", route="kb", confidence=0.9)
        )
    deadline = time.monotonic() + 30
    while len(lake.files("turns")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    log.record(Turn(conversation_id="c9", channel="sms", received_at=now, text="still buffered", route="handoff"))

    stored = read_turns(lake)
    assert len(stored) == 3 and set(stored["text"]) == {"mail me at <EMAIL>"}
    assert sorted({p.split("date=")[1][:10] for p in lake.files("turns")}) == ["2026-05-01", "2026-05-02"]
    assert list(read_turns(lake, start=now, end=now + timedelta(hours=1))["conversation_id"]) == ["c1", "c2"]

    log.stop()
    assert len(read_turns(lake)) == 4


def test_a_quiet_bot_still_writes_its_turns_and_a_failed_write_loses_none(local_lake: Lake, tmp_path: Path) -> None:
    log = TurnLog(local_lake, flush_every=1000, flush_seconds=0.2).start()
    log.record(Turn(conversation_id="quiet", channel="webchat", text="where is my card", route="kb"))
    deadline = time.monotonic() + 10
    while not local_lake.files("turns") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_turns(local_lake)["conversation_id"].tolist() == ["quiet"]
    log.stop()

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the lake should be")
    broken = TurnLog(Lake(fs=local_lake.fs, root=str(blocked), url=str(blocked)), flush_every=1000)
    broken.record(Turn(conversation_id="kept", channel="sms", text="hello", route="handoff"))
    with pytest.raises(Exception):  # noqa: B017 - whatever the filesystem raises
        broken.flush()
    broken.lake = local_lake  # the lake is back: the buffered turn is written
    broken.flush()
    assert sorted(read_turns(local_lake)["conversation_id"]) == ["kept", "quiet"]


def test_an_empty_turn_log_reads_as_an_empty_frame(local_lake: Lake) -> None:
    turns = read_turns(local_lake)
    assert turns.empty and "confidence" in turns.columns


@pytest.fixture
def queue(local_lake: Lake, local_settings: Settings, tmp_path) -> HandoffQueue:
    return HandoffQueue(f"sqlite:///{tmp_path / 'handoff.db'}", local_lake, load_catalogue(local_settings.catalogue_file).intents)


def test_an_agent_claims_answers_and_resolves_and_the_label_reaches_training(
    queue: HandoffQueue, local_lake: Lake, local_settings: Settings, banking77_sample
) -> None:
    from supportflow.ingest.load import ingest_file

    ingest_file(str(banking77_sample), local_lake, local_settings)
    handoff = queue.enqueue(
        "conv-1",
        "webchat",
        [("customer", "my card got eaten by the cash machine"), ("bot", "Let me get a colleague.")],
        "low confidence",
        "card_swallowed",
    )
    assert queue.enqueue("conv-1", "webchat", [("customer", "hello?")], "low confidence", None) == handoff
    assert [h["id"] for h in queue.handoffs("waiting")] == [handoff]

    queue.claim(handoff, "agent-ann")
    with pytest.raises(HandoffError, match="cannot be claimed by agent-bo"):
        queue.claim(handoff, "agent-bo")
    queue.answer(handoff, "agent-ann", "We have blocked the card and ordered a new one.")
    assert queue.undelivered_replies("conv-1") == ["We have blocked the card and ordered a new one."]
    assert queue.undelivered_replies("conv-1") == []
    with pytest.raises(HandoffError, match="not in the intent catalogue"):
        queue.resolve(handoff, "agent-ann", "eaten_by_atm")
    resolved = queue.resolve(handoff, "agent-ann", "card_swallowed")

    assert resolved["status"] == "resolved" and [m["role"] for m in resolved["transcript"]] == ["customer", "bot", "customer", "agent"]
    labels = [local_lake.read_parquet(p) for p in local_lake.files("tickets") if "agent_label-" in p]
    assert len(labels) == 1 and labels[0].iloc[0][["source", "text", "intent"]].tolist() == [
        "agent_label",
        "my card got eaten by the cash machine",
        "card_swallowed",
    ]
    snapshot = validate_lake(local_lake, local_settings)
    train = pd.concat(
        [
            pd.read_parquet(local_lake.fs.open(local_lake.path("snapshots", snapshot.snapshot_id, f"{s}.parquet")))
            for s in ("train", "validation", "test")
        ]
    )
    assert "agent_label" in set(train["source"])


def test_unknown_handoffs_and_wrong_agents_are_clear_errors(queue: HandoffQueue) -> None:
    with pytest.raises(HandoffError, match="no handoff with id 42"):
        queue.claim(42, "agent-ann")
    handoff = queue.enqueue("conv-2", "sms", [("customer", "help")], "asked for a human", None)
    with pytest.raises(HandoffError, match="not claimed by agent-bo; claim it first"):
        queue.answer(handoff, "agent-bo", "hi")
