"""The turn log: every turn the bot takes, redacted, in the lake's `turns/` area for the drift monitor.

Turns are buffered and written as one Parquet file per flush (a file per turn would drown the lake in
small files). `record` never touches the lake: a customer's turn must not wait on it, nor fail when it is
down after Rasa already answered. Once `start()`ed, a writer thread flushes when `flush_every` turns wait,
at least every `flush_seconds`, and at `stop()`; a failed write keeps its turns for the next try, up to
`max_buffered` (beyond that the oldest are dropped, and the log says how many).

With a `journal` folder, a turn is also durable before `record` returns: it is appended to the journal's open
segment file and fsynced (a small append: well under a millisecond of the turn on a local disk), so a process
killed with SIGKILL loses none. A segment holds the turns of one flush, and its lake file is named after it;
`start()` writes the segments a dead process left (their file lock is free) to the lake under the same names,
so a replay that is itself interrupted, or a segment whose lake file was written just before the kill, writes
the same file again and never a duplicate. Each process keeps its own segments, so several bot workers can share
one journal folder.
"""

import errno
import fcntl
import hashlib
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO, Literal

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field, ValidationError

from supportflow.lake import Lake
from supportflow.redact import redact

log = logging.getLogger("supportflow.turns")

Route = Literal["kb", "llm", "handoff", "clarify", "dialogue"]

TURN_SCHEMA = pa.schema(
    [
        ("turn_id", pa.string()),
        ("conversation_id", pa.string()),
        ("channel", pa.string()),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("text", pa.string()),
        ("intent", pa.string()),
        ("confidence", pa.float64()),
        ("route", pa.string()),
        ("kb_doc_id", pa.string()),
        ("kb_score", pa.float64()),
        ("kb_build", pa.string()),
        ("model_version", pa.string()),
        ("latency_ms", pa.float64()),
        ("request_id", pa.string()),
        ("ranking", pa.list_(pa.struct([("intent", pa.string()), ("confidence", pa.float64())]))),
        ("handoff_reason", pa.string()),
    ]
)
RANKING_KEPT = 5  # the intents a turn keeps from the classifier's ranking: the review queue's suggestions and margin


class IntentScore(BaseModel):
    intent: str
    confidence: float


class Turn(BaseModel):
    turn_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    conversation_id: str
    channel: str
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    text: str
    intent: str | None = None
    confidence: float | None = None
    route: Route
    kb_doc_id: str | None = None
    kb_score: float | None = None
    kb_build: str | None = None  # the knowledge-base build that answered it (or found nothing to answer with)
    model_version: str | None = None
    latency_ms: float | None = None
    request_id: str | None = None
    ranking: list[IntentScore] = Field(default_factory=list)  # the classifier's top intents, best first
    handoff_reason: str | None = None  # why the bot handed off: the knowledge-gap report counts "nothing relevant"


@dataclass
class _Segment:
    """The turns of one lake file; with a journal, the file that holds them, open and locked, until it is written."""

    name: str
    turns: list[Turn] = field(default_factory=list)
    path: Path | None = None
    file: BinaryIO | None = None

    @classmethod
    def open(cls, journal: Path | None) -> "_Segment":
        name = uuid.uuid4().hex
        if journal is None:
            return cls(name)
        journal.mkdir(parents=True, exist_ok=True)
        path = journal / f"{name}.jsonl"
        file = path.open("ab")
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: no one else holds it; held, no replay takes it
        return cls(name, path=path, file=file)

    @classmethod
    def left_behind(cls, path: Path) -> "_Segment | None":
        """A dead process's segment, locked for this one; None when a live process still holds it."""
        file = path.open("r+b")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        turns = []
        for line in file.read().splitlines():
            try:
                turns.append(Turn.model_validate_json(line))
            except ValidationError:  # the torn last line of a kill mid-append: its `record` never returned
                log.warning("a partly written turn in %s was left out", path.name)
        return cls(path.stem, turns, path, file)

    def append(self, turn: Turn) -> None:
        """Into the segment, and the journal file's OS buffer: `sync` makes it durable."""
        self.turns.append(turn)
        if self.file is not None:
            self.file.write(turn.model_dump_json().encode() + b"\n")
            self.file.flush()

    def sync(self) -> None:
        """Called outside the log's lock, so turns recorded together share the disk's flushes. A file closed meanwhile
        was closed because its segment reached the lake, this turn with it."""
        file = self.file
        if file is None:
            return
        try:
            os.fdatasync(file.fileno())
        except ValueError:  # closed before fileno()
            return
        except OSError as error:
            if error.errno != errno.EBADF:  # closed between fileno() and the sync
                raise

    def keep_newest(self, count: int) -> None:
        """Drop all but the newest `count` turns, from the journal file too (rewritten whole, then swapped in)."""
        self.turns = self.turns[len(self.turns) - count :]
        if self.path is None or self.file is None:
            return
        rewritten = self.path.with_suffix(".rewrite")
        with rewritten.open("wb") as file:
            file.write(b"".join(turn.model_dump_json().encode() + b"\n" for turn in self.turns))
            file.flush()
            os.fdatasync(file.fileno())
        os.replace(rewritten, self.path)
        self.file.close()
        self.file = self.path.open("r+b")
        fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def discard(self) -> None:
        """Its turns are in the lake (or dropped): the journal file goes."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self.file is not None:
            self.file.close()


def journal_folder(run_dir: Path, lake: Lake) -> Path:
    """Where a bot writing to `lake` keeps its journal: one folder per lake (named by its full address, however the
    setting spelt it), so segments are written only to the lake they were recorded for: a smoke test's bot, on a
    scratch lake, shares its run folder with production's."""
    address = lake.fs.unstrip_protocol(lake.root)
    return run_dir / "turn-journal" / hashlib.sha256(address.encode()).hexdigest()[:16]


class TurnLog:
    """Thread-safe buffer of turns, flushed to `turns/date=YYYY-MM-DD/<segment>.parquet` by its writer thread:
    at least every `flush_seconds`, so a quiet bot does not hold its turns back from the hourly drift monitor."""

    def __init__(
        self, lake: Lake, flush_every: int = 200, flush_seconds: float = 60.0, max_buffered: int = 100_000, journal: Path | None = None
    ) -> None:
        self.lake = lake
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self.journal = journal
        self.dropped = 0  # turns lost because the lake stayed down while more than max_buffered waited
        self._current: _Segment | None = None  # where `record` appends
        self._sealed: list[_Segment] = []  # waiting for the lake, oldest first
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: the writer's and a caller's
        self._stopped = threading.Event()
        self._full = threading.Event()
        self._writer: threading.Thread | None = None

    def start(self) -> "TurnLog":
        """Take over the segments a killed process left in the journal, then start the writer (which writes them first)."""
        if self.journal is not None and self.journal.is_dir():
            left = [segment for path in sorted(self.journal.glob("*.jsonl")) if (segment := _Segment.left_behind(path)) is not None]
            with self._lock:
                self._sealed = left + self._sealed
            if left:
                log.info("turns left by a stopped process will be written", extra={"turns": sum(len(s.turns) for s in left)})
                self._full.set()

        def write_in_background() -> None:
            while not self._stopped.is_set():
                self._full.wait(self.flush_seconds)
                self._full.clear()
                try:
                    self.flush()
                except Exception as error:  # the lake may be down for a while: the turns stay buffered
                    # The class, not the text: a conversion error quotes the value it failed on, a customer's message.
                    log.error("flushing turns failed; they stay buffered", extra={"error": type(error).__name__, "buffered": self.waiting})

        self._writer = threading.Thread(target=write_in_background, name="turn-log-writer", daemon=True)
        self._writer.start()
        return self

    def stop(self) -> list[str]:
        """The writer's last try ends first, so no turns are in its hands when the final flush runs."""
        self._stopped.set()
        self._full.set()
        if self._writer is not None:
            self._writer.join(timeout=60)
        return self.flush()

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(segment.turns) for segment in [*self._sealed, *([self._current] if self._current else [])])

    def record(self, turn: Turn) -> None:
        """Keep a turn for the writer (in the journal first, when there is one); its text is redacted here so no
        caller can forget to."""
        turn = turn.model_copy(update={"text": redact(turn.text)})
        with self._lock:
            if self._current is None:
                self._current = _Segment.open(self.journal)
            segment = self._current
            segment.append(turn)
            full = len(segment.turns) >= self.flush_every
        segment.sync()  # durable before the reply goes
        if full:
            self._full.set()

    def flush(self) -> list[str]:
        with self._flushing:
            with self._lock:
                if self._current is not None and self._current.turns:
                    self._sealed.append(self._current)
                    self._current = None
                pending = list(self._sealed)
            written = []
            for segment in pending:
                try:
                    written += self._write(segment.turns, segment.name)
                except Exception:
                    self._bound()
                    raise
                with self._lock:
                    self._sealed.remove(segment)
                segment.discard()
            return written

    def _bound(self) -> None:
        """Keep at most `max_buffered` waiting turns, the newest: the oldest segments go first."""
        with self._lock:
            over = sum(len(segment.turns) for segment in self._sealed) - self.max_buffered
            if over <= 0:
                return
            self.dropped += over
            for segment in list(self._sealed):
                if over <= 0:
                    break
                if len(segment.turns) <= over:
                    over -= len(segment.turns)
                    self._sealed.remove(segment)
                    segment.discard()
                else:
                    segment.keep_newest(len(segment.turns) - over)
                    over = 0
        log.error("the lake is still down: turns dropped (%d in all), the newest %d kept", self.dropped, self.max_buffered)

    def _write(self, turns: list[Turn], name: str) -> list[str]:
        written = []
        by_day: dict[date, list[Turn]] = {}
        for turn in turns:
            by_day.setdefault(turn.received_at.astimezone(UTC).date(), []).append(turn)
        for day, day_turns in by_day.items():
            frame = pd.DataFrame([t.model_dump() for t in day_turns])
            table = pa.Table.from_pandas(frame, schema=TURN_SCHEMA, preserve_index=False)
            written.append(self.lake.write_parquet(table, "turns", f"date={day:%Y-%m-%d}", f"{name}.parquet"))
        return written


def read_turns(lake: Lake, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """Turns received in [start, end), from the day partitions that can hold them."""
    frames = []
    for path in lake.files("turns"):
        day = path.split("date=")[1][:10]
        if start is not None and day < f"{start.astimezone(UTC):%Y-%m-%d}":
            continue
        if end is not None and day > f"{end.astimezone(UTC):%Y-%m-%d}":
            continue
        frames.append(lake.read_parquet(path))
    if not frames:
        return pa.Table.from_pylist([], schema=TURN_SCHEMA).to_pandas()
    turns = pd.concat(frames, ignore_index=True)
    if start is not None:
        turns = turns[turns["received_at"] >= pd.Timestamp(start)]
    if end is not None:
        turns = turns[turns["received_at"] < pd.Timestamp(end)]
    return turns.sort_values("received_at", ignore_index=True)
