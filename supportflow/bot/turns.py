"""The turn log: every turn the bot takes, redacted, in the lake's `turns/` area for the drift monitor.

Turns are buffered and written as one Parquet file per flush (a file per turn would drown the lake in
small files). `record` never touches the lake: a customer's turn must not wait on it, nor fail when it is
down after Rasa already answered. Once `start()`ed, a writer thread flushes when `flush_every` turns wait,
at least every `flush_seconds`, and at `stop()`; a failed write keeps its turns for the next try, up to
`max_buffered` (beyond that the oldest are dropped, and the log says how many).
"""

import logging
import threading
import uuid
from datetime import UTC, date, datetime
from typing import Literal

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

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
    model_version: str | None = None
    latency_ms: float | None = None
    request_id: str | None = None
    ranking: list[IntentScore] = Field(default_factory=list)  # the classifier's top intents, best first
    handoff_reason: str | None = None  # why the bot handed off: the knowledge-gap report counts "nothing relevant"


class TurnLog:
    """Thread-safe buffer of turns, flushed to `turns/date=YYYY-MM-DD/<uuid>.parquet` by its writer thread:
    at least every `flush_seconds`, so a quiet bot does not hold its turns back from the hourly drift monitor."""

    def __init__(self, lake: Lake, flush_every: int = 200, flush_seconds: float = 60.0, max_buffered: int = 100_000) -> None:
        self.lake = lake
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.max_buffered = max_buffered
        self.dropped = 0  # turns lost because the lake stayed down while more than max_buffered waited
        self._buffer: list[Turn] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._full = threading.Event()
        self._writer: threading.Thread | None = None

    def start(self) -> "TurnLog":
        def write_in_background() -> None:
            while not self._stopped.is_set():
                self._full.wait(self.flush_seconds)
                self._full.clear()
                try:
                    self.flush()
                except Exception as error:  # the lake may be down for a while: the turns stay buffered
                    # The class, not the text: a conversion error quotes the value it failed on, a customer's message.
                    logging.getLogger("supportflow.turns").error(
                        "flushing turns failed; they stay buffered", extra={"error": type(error).__name__, "buffered": len(self._buffer)}
                    )

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

    def record(self, turn: Turn) -> None:
        """Keep a turn for the writer; its text is redacted here so no caller can forget to."""
        turn = turn.model_copy(update={"text": redact(turn.text)})
        with self._lock:
            self._buffer.append(turn)
            waiting = len(self._buffer)
        if waiting >= self.flush_every:
            self._full.set()

    def flush(self) -> list[str]:
        with self._lock:
            turns, self._buffer = self._buffer, []
        try:
            return self._write(turns)
        except Exception:
            with self._lock:  # the turns go back in front of any newer ones, as many as the bound keeps
                self._buffer = turns + self._buffer
                over = len(self._buffer) - self.max_buffered
                if over > 0:
                    self._buffer = self._buffer[over:]
                    self.dropped += over
            if over > 0:
                log.error("the lake is still down: %d turns dropped (%d in all), the newest %d kept", over, self.dropped, self.max_buffered)
            raise

    def _write(self, turns: list[Turn]) -> list[str]:
        written = []
        by_day: dict[date, list[Turn]] = {}
        for turn in turns:
            by_day.setdefault(turn.received_at.astimezone(UTC).date(), []).append(turn)
        for day, day_turns in by_day.items():
            frame = pd.DataFrame([t.model_dump() for t in day_turns])
            table = pa.Table.from_pandas(frame, schema=TURN_SCHEMA, preserve_index=False)
            written.append(self.lake.write_parquet(table, "turns", f"date={day:%Y-%m-%d}", f"{uuid.uuid4().hex}.parquet"))
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
