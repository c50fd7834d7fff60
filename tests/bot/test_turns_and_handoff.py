import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from supportflow.bot.engine import SupportBot
from supportflow.bot.handoff import HandoffError, HandoffQueue, HandoffStoreError
from supportflow.bot.llm import LLMResponder
from supportflow.bot.turns import Turn, TurnLog, journal_folder, read_turns
from supportflow.keys import ConversationKeys
from supportflow.lake import Lake, open_lake
from supportflow.logs import json_handler
from supportflow.settings import Settings
from supportflow.validate.catalogue import load_catalogue
from supportflow.validate.snapshot import validate_lake

ROOT = Path(__file__).resolve().parents[2]


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
    with pytest.raises(NotADirectoryError, match="not-a-folder/turns"):  # the lake's folder is a file: the write fails
        broken.flush()
    broken.lake = local_lake  # the lake is back: the buffered turn is written
    broken.flush()
    assert sorted(read_turns(local_lake)["conversation_id"]) == ["kept", "quiet"]


def test_an_empty_turn_log_reads_as_an_empty_frame(local_lake: Lake) -> None:
    turns = read_turns(local_lake)
    assert turns.empty and "confidence" in turns.columns


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request: pytest.FixtureRequest, local_lake: Lake, local_settings: Settings, tmp_path: Path) -> HandoffQueue:
    """The queue on one machine's SQLite file, and on the PostgreSQL server replicas share (tests/servers.py)."""
    url = f"sqlite:///{tmp_path / 'handoff.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres").new_database()
    return HandoffQueue(url, local_lake, load_catalogue(local_settings.catalogue_file).intents)


def test_an_agent_claims_answers_and_resolves_and_the_label_reaches_training(
    queue: HandoffQueue, local_lake: Lake, local_settings: Settings, banking77_sample
) -> None:
    from supportflow.ingest.load import ingest_file

    ingest_file(str(banking77_sample), local_lake, local_settings)
    handoff = queue.enqueue(
        "conv-1",
        "webchat",
        [("customer", "hi"), ("bot", "Hello!"), ("customer", "my card got eaten by the cash machine"), ("bot", "Let me get a colleague.")],
        "low confidence",
        "card_swallowed",
        question="my card got eaten by the cash machine",
    )
    assert queue.enqueue("conv-1", "webchat", [("customer", "hello?")], "low confidence", None) == handoff
    assert [h["id"] for h in queue.page("waiting").handoffs] == [handoff]

    queue.claim(handoff, "agent-ann")
    with pytest.raises(HandoffError, match="cannot be claimed by agent-bo"):
        queue.claim(handoff, "agent-bo")
    queue.answer(handoff, "agent-ann", "We have blocked the card and ordered a new one.")
    assert queue.undelivered_replies("conv-1") == ["We have blocked the card and ordered a new one."]
    assert queue.undelivered_replies("conv-1") == []
    assert [h["id"] for h in queue.page("answered").handoffs] == [handoff]
    queue.add_customer_message(handoff, "thanks, when will it arrive?")  # the customer waits again: ann's to answer
    assert [h["id"] for h in queue.page("claimed").handoffs] == [handoff] and queue.page("answered").handoffs == []
    with pytest.raises(HandoffError, match="not in the intent catalogue"):
        queue.resolve(handoff, "agent-ann", "eaten_by_atm")
    resolved = queue.resolve(handoff, "agent-ann", "card_swallowed")

    assert resolved["status"] == "resolved" and [m["role"] for m in resolved["transcript"]] == [
        "customer",
        "bot",
        "customer",
        "bot",
        "customer",
        "agent",
        "customer",
    ]
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


def labels_in(lake: Lake) -> list[tuple[str, str]]:
    frames = [lake.read_parquet(p) for p in lake.files("tickets") if "agent_label-" in p]
    return [(row.text, row.intent) for frame in frames for row in frame.itertuples()]


def test_a_person_asked_for_labels_what_the_customer_writes_next_or_the_message_the_agent_names(
    queue: HandoffQueue, local_lake: Lake
) -> None:
    """A request for a person is not the question: the label goes on what the customer then says they need. Before,
    it went on the transcript's first message, here "I want to talk to a human", and taught the model that."""
    handoff = queue.enqueue("conv-h", "webchat", [("customer", "I want to talk to a human")], "asked for a person", "ask_human")
    assert queue.get(handoff)["question_id"] is None
    queue.claim(handoff, "agent-ann")
    with pytest.raises(HandoffError, match="no question to label: it was opened at the customer's request"):
        queue.resolve(handoff, "agent-ann", "card_swallowed")
    queue.add_customer_message(handoff, "the machine kept my card")
    queue.add_customer_message(handoff, "are you there?")  # the question is already known: this one is not it
    view = queue.get(handoff)
    said = {m["text"]: m["id"] for m in view["transcript"]}
    assert view["question_id"] == said["the machine kept my card"]
    queue.resolve(handoff, "agent-ann", "card_swallowed")
    assert labels_in(local_lake) == [("the machine kept my card", "card_swallowed")]

    other = queue.enqueue(
        "conv-h2",
        "sms",
        [("customer", "my card is stuck in the atm"), ("bot", "Here is how to get it back."), ("customer", "a person please")],
        "asked for a person",
        "ask_human",
    )
    queue.claim(other, "agent-ann")
    ids = {(m["role"], m["text"]): m["id"] for m in queue.get(other)["transcript"]}
    with pytest.raises(HandoffError, match="is not one of the customer's messages"):
        queue.resolve(other, "agent-ann", "card_swallowed", message_id=ids[("bot", "Here is how to get it back.")])
    with pytest.raises(HandoffError, match="a message_id names the message an intent labels"):
        queue.resolve(other, "agent-ann", None, message_id=ids[("customer", "my card is stuck in the atm")])
    resolved = queue.resolve(other, "agent-ann", "card_swallowed", message_id=ids[("customer", "my card is stuck in the atm")])
    assert resolved["question_id"] == ids[("customer", "my card is stuck in the atm")]
    labelled = [("my card is stuck in the atm", "card_swallowed"), ("the machine kept my card", "card_swallowed")]
    assert sorted(labels_in(local_lake)) == labelled


def test_a_queue_made_before_questions_were_kept_opens_and_its_handoffs_are_labelled_by_the_agents_choice(
    local_lake: Lake, local_settings: Settings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    queue = HandoffQueue(url, local_lake, load_catalogue(local_settings.catalogue_file).intents)
    with queue.engine.begin() as connection:  # the queue as it was: no questions table, one handoff waiting
        connection.exec_driver_sql("DROP TABLE handoff_questions")
        connection.exec_driver_sql(
            "INSERT INTO handoffs (id, conversation_id, channel, status, reason, created_at, updated_at) "
            "VALUES (7, 'old', 'webchat', 'waiting', 'low confidence', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"
        )
        connection.exec_driver_sql(
            "INSERT INTO handoff_messages (id, handoff_id, role, text, at, delivered) VALUES "
            "(1, 7, 'customer', 'hello', '2026-11-01 00:00:00', 0), (2, 7, 'customer', 'where is my new card', '2026-11-01 00:00:01', 0)"
        )
    reopened = HandoffQueue(url, local_lake, queue.intents)
    assert reopened.get(7)["question_id"] is None
    reopened.claim(7, "agent-ann")
    with pytest.raises(HandoffError, match="Name the customer's message the intent is for"):
        reopened.resolve(7, "agent-ann", "card_arrival")
    reopened.resolve(7, "agent-ann", "card_arrival", message_id=2)
    assert labels_in(local_lake) == [("where is my new card", "card_arrival")]


def test_unknown_handoffs_and_wrong_agents_are_clear_errors(queue: HandoffQueue) -> None:
    with pytest.raises(HandoffError, match="no handoff with id 42"):
        queue.claim(42, "agent-ann")
    handoff = queue.enqueue("conv-2", "sms", [("customer", "help")], "asked for a human", None)
    with pytest.raises(HandoffError, match="not claimed by agent-bo; claim it first"):
        queue.answer(handoff, "agent-bo", "hi")
    with pytest.raises(HandoffError, match="a page holds 1-100 handoffs from an offset >= 0; asked for 1000 from 0"):
        queue.page(limit=1000)


# Personal data a customer may type, as issue 13 found the redactor missed it; none may reach a store or a log.
PII = ["07 12 34 56 78", "4111.1111.1111.1111", "de89 3704 0044 0532 0130 00", "josé.garcía@correo.es"]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The bot's JSON log, as the service configures it, written to a buffer for the test to read."""
    stream = io.StringIO()
    logger = logging.getLogger("supportflow")
    handler, level = json_handler(stream), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_turn_with_personal_data_leaves_none_in_the_turn_log_the_handoff_queue_or_the_logs(
    queue: HandoffQueue, local_lake: Lake, json_log: io.StringIO
) -> None:
    bot = SupportBot(
        None,
        LLMResponder(Settings(openai_api_key=None)),
        queue,
        TurnLog(local_lake, flush_every=1),
        "http://127.0.0.1:9",
        keys=ConversationKeys(b"k" * 32),
        rasa_timeout_s=1,
    )

    first = bot.chat("c-pii", f"call me on {PII[0]} about card {PII[1]}")  # Rasa is down: a handoff with the transcript
    second = bot.chat("c-pii", f"refund to {PII[2]} or write to {PII[3]}")  # added to the open handoff
    bot.turns.stop()  # the turns reach the lake from the writer, at the latest when it stops

    assert (first.route, second.route) == ("handoff", "handoff")
    turns = read_turns(local_lake)["text"].tolist()
    assert turns == ["call me on <PHONE> about card <CARD>", "refund to <IBAN> or write to <EMAIL>"]
    (handoff,) = queue.page().handoffs
    customer = [m["text"] for m in handoff["transcript"] if m["role"] == "customer"]
    assert customer == turns
    with queue.engine.connect() as connection:  # the database itself, not only what the queue shows
        stored = " ".join(text for (text,) in connection.exec_driver_sql("SELECT text FROM handoff_messages"))
    logged = json_log.getvalue()
    assert [line["message"] for line in map(json.loads, logged.splitlines())].count("turn") == 2
    assert not [value for value in PII for where in (stored, logged, json.dumps(handoff, ensure_ascii=False)) if value in where]


def test_what_the_agent_and_the_bot_wrote_is_kept_whole(queue: HandoffQueue) -> None:
    """Only the customer's words are redacted: an agent's reply must reach the customer as written."""
    handoff = queue.enqueue("c-agent", "webchat", [("customer", f"ring {PII[0]}"), ("bot", "A colleague will call.")], "asked", None)
    queue.claim(handoff, "agent-ann")
    queue.answer(handoff, "agent-ann", "Call us back on 020 7946 0958.")
    assert [m["text"] for m in queue.get(handoff)["transcript"]] == [
        "ring <PHONE>",
        "A colleague will call.",
        "Call us back on 020 7946 0958.",
    ]


def test_a_database_error_names_its_class_and_handoff_never_the_message(queue: HandoffQueue, caplog: pytest.LogCaptureFixture) -> None:
    with queue.engine.begin() as connection:  # the messages table is gone: the handoff is written, its messages fail
        # (and on PostgreSQL the questions' reference to it, which SQLite does not enforce)
        connection.exec_driver_sql("DROP TABLE handoff_messages" + (" CASCADE" if queue.engine.dialect.name == "postgresql" else ""))
    typed = f"my card {PII[1]}, call {PII[0]}"

    with caplog.at_level(logging.ERROR, logger="supportflow.bot.handoff"), pytest.raises(HandoffStoreError) as raised:
        queue.enqueue("c-db", "webchat", [("customer", typed), ("bot", "one moment")], "low confidence", None)

    error = {"sqlite": "OperationalError", "postgresql": "ProgrammingError"}[queue.engine.dialect.name]  # a missing table, as each says
    (record,) = caplog.records
    assert (record.error, record.handoff_ids) == (error, [1])
    assert str(raised.value) == f"the handoff store failed ({error}; handoffs [1])"
    told = "".join(traceback.format_exception(raised.value)) + caplog.text + " ".join(map(str, record.__dict__.values()))
    assert not [value for value in [typed, *PII, "<CARD>"] if value in told]  # not even the redacted text


def test_a_failed_turn_flush_logs_the_error_class_not_its_text(local_lake: Lake, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the lake should be")
    log = TurnLog(Lake(fs=local_lake.fs, root=str(blocked), url=str(blocked)), flush_every=1000, flush_seconds=0.1)
    log.record(Turn(conversation_id="c-flush", channel="webchat", text=f"call {PII[0]}", route="handoff"))
    with caplog.at_level(logging.ERROR, logger="supportflow.turns"):
        log.start()
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
        log._stopped.set()
    record = caplog.records[0]
    assert (record.getMessage(), record.buffered) == ("flushing turns failed; they stay buffered", 1)
    assert record.error in {"NotADirectoryError", "FileExistsError"} and str(blocked) not in caplog.text


# The turn log's journal: a turn is durable before `record` returns (issue 14).

RECORDER = """
import sys
from pathlib import Path
from supportflow.bot.turns import Turn, TurnLog
from supportflow.lake import open_lake
from supportflow.settings import Settings

log = TurnLog(open_lake(Settings(lake_url=sys.argv[1])), flush_every=7, flush_seconds=3600, journal=Path(sys.argv[2])).start()
for number in range(int(sys.argv[3])):
    log.record(Turn(turn_id=f"turn-{number}", conversation_id=f"c{number % 3}", channel="webchat", text=f"message {number}", route="kb"))
    print(number, flush=True)  # the turn is accepted: its reply would go now
sys.stdin.read()  # serving, until it is killed
"""


def journal_turn(number: int) -> Turn:
    return Turn(turn_id=f"turn-{number}", conversation_id="c", channel="webchat", text=f"message {number}", route="kb")


def record_and_die(lake: Lake, journal: Path, accepted: int) -> None:
    """A bot process that accepts `accepted` turns (each answered only once `record` returned), then is killed with SIGKILL."""
    recorder = subprocess.Popen(
        [sys.executable, "-c", RECORDER, lake.url, str(journal), str(accepted)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert recorder.stdout is not None
        said = [recorder.stdout.readline().strip() for _ in range(accepted)]
        assert said[-1] == str(accepted - 1), said[-3:]
    finally:
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(timeout=30)
    assert recorder.returncode == -signal.SIGKILL


def test_a_bot_killed_with_sigkill_loses_no_accepted_turn_and_a_replay_duplicates_none(local_lake: Lake, tmp_path: Path) -> None:
    journal, accepted = tmp_path / "journal", 100
    record_and_die(local_lake, journal, accepted)
    in_lake = set(read_turns(local_lake)["turn_id"])
    assert len(in_lake) < accepted and list(journal.glob("*.jsonl"))  # some turns were only in the journal when it died

    for _ in range(2):  # the restart writes them; a second start finds nothing left to write
        TurnLog(local_lake, journal=journal).start().stop()
        turns = read_turns(local_lake)
        assert sorted(turns["turn_id"]) == sorted(f"turn-{number}" for number in range(accepted)) and turns["turn_id"].is_unique
        assert not list(journal.glob("*.jsonl"))


def test_a_segment_whose_lake_file_was_written_just_before_a_kill_is_not_written_twice(local_lake: Lake, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    log = TurnLog(local_lake, journal=journal)
    for number in range(3):
        log.record(journal_turn(number))
    (segment,) = journal.glob("*.jsonl")
    kept = segment.read_bytes()
    log.flush()  # the lake file is written and the segment deleted: a kill between the two leaves the segment
    segment.write_bytes(kept + b'{"turn_id": "turn-3", "conversation_id"')  # and a turn cut mid-append, whose record never returned
    TurnLog(local_lake, journal=journal).start().stop()
    assert sorted(read_turns(local_lake)["turn_id"]) == ["turn-0", "turn-1", "turn-2"]


def test_a_live_processs_journal_is_not_taken_by_another_starting_beside_it(local_lake: Lake, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    serving = TurnLog(local_lake, flush_seconds=3600, journal=journal).start()
    serving.record(journal_turn(0))
    TurnLog(local_lake, journal=journal).start().stop()  # a second worker sharing the folder
    assert read_turns(local_lake).empty  # the turn is still the serving process's to write
    serving.stop()
    assert read_turns(local_lake)["turn_id"].tolist() == ["turn-0"] and not list(journal.glob("*.jsonl"))


def test_each_lake_has_its_own_journal_however_its_address_is_spelt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A smoke test's bot writes to a scratch lake from production's run folder: a journal it leaves must never be
    written to production's lake, nor production's to the scratch one."""
    monkeypatch.chdir(tmp_path)
    production = open_lake(Settings(lake_url=str(tmp_path / "lake")))
    spelt_otherwise = open_lake(Settings(lake_url="lake"))
    scratch = open_lake(Settings(lake_url=str(tmp_path / "scratch" / "lake")))
    run = tmp_path / "run"
    assert journal_folder(run, production) == journal_folder(run, spelt_otherwise) != journal_folder(run, scratch)

    record_and_die(scratch, journal_folder(run, scratch), 1)
    TurnLog(production, journal=journal_folder(run, production)).start().stop()
    assert read_turns(production).empty
    TurnLog(scratch, journal=journal_folder(run, scratch)).start().stop()
    assert read_turns(scratch)["turn_id"].tolist() == ["turn-0"]
