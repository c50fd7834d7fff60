"""Ingest: a ticket export into the lake's `tickets/` area, redacted, deduplicated, partitioned by day.

Idempotent by construction: ids derive from source and content, rows whose id the lake already
holds are skipped, and files are named after their content, so a re-run (after a crash too)
neither duplicates tickets nor overwrites another run's file.
"""

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

from supportflow.ingest.decoding import DEFAULT_ENCODING
from supportflow.ingest.readers import Format, RawBatch, Reject, open_source
from supportflow.ingest.tickets import KnownIds, has_text, id_keys, parse_created_at, to_table, to_tickets
from supportflow.lake import Lake
from supportflow.parallel import ordered_map, process_pool
from supportflow.redact import Redactor
from supportflow.settings import Settings

QUARANTINE_COLUMNS = ["source_file", "line", "reason", "raw", "quarantined_at"]
NO_TEXT = "no ticket text: it is missing, empty, or only whitespace or markup"


class IngestReport(BaseModel):
    file: str
    source: str
    format: str
    encoding: str = DEFAULT_ENCODING
    rows_read: int = 0
    written: int = 0
    duplicates: int = 0
    quarantined: int = 0
    redactions: dict[str, int] = Field(default_factory=dict)
    ignored_columns: list[str] = Field(default_factory=list)
    files_written: list[str] = Field(default_factory=list)
    quarantine_files: list[str] = Field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.written + self.duplicates + self.quarantined

    def lines(self) -> list[str]:
        encoding = f" ({self.encoding})" if self.encoding != DEFAULT_ENCODING else ""
        lines = [
            f"{self.file}{encoding}: read {self.rows_read:,} = written {self.written:,} + duplicates {self.duplicates:,}"
            f" + quarantined {self.quarantined:,}; redactions {self.redactions or 'none'}"
        ]
        if self.ignored_columns:
            lines.append(f"  ignored columns: {', '.join(self.ignored_columns)}")
        lines += [f"  quarantine: {path}" for path in self.quarantine_files]
        return lines

    @staticmethod
    def markdown(reports: list["IngestReport"]) -> str:
        """One table for a run's files: a run ingests several, and a person compares them side by side."""
        rows = "\n".join(f"| {r.file} | {r.rows_read} | {r.written} | {r.duplicates} | {r.quarantined} | {r.redactions} |" for r in reports)
        return "| file | read | written | duplicates | quarantined | redactions |\n|---|---|---|---|---|---|\n" + rows


def existing_ticket_ids(lake: Lake) -> KnownIds:
    """Every ticket id in the lake: the only column read, kept as 64-bit keys."""
    known = KnownIds()
    for path in lake.files("tickets"):
        known.add(id_keys(lake.read_parquet(path, columns=["ticket_id"])["ticket_id"]))
    return known


def default_source(path: str) -> str:
    return PurePosixPath(path.split("?")[0]).stem.lower().replace(" ", "_")


def _content_name(values: list[str]) -> str:
    return hashlib.blake2b("\x1e".join(values).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _write_quarantine(lake: Lake, source: str, path: str, rejects: list[Reject], now: datetime) -> str:
    frame = pd.DataFrame(
        {
            "source_file": path,
            "line": [reject.line for reject in rejects],
            "reason": [reject.reason for reject in rejects],
            "raw": [reject.raw for reject in rejects],
            "quarantined_at": pd.Timestamp(now),
        },
        columns=QUARANTINE_COLUMNS,
    )
    name = _content_name([path, *(f"{r.line}:{r.reason}:{r.raw}" for r in rejects)])
    return lake.write_parquet(frame, "quarantine", "ingest", f"source={source}", f"{name}.parquet")


@dataclass
class _Prepared:
    tickets: pa.Table
    rejects: list[Reject]
    rows_read: int
    redactions: Counter[str]


def _prepare(job: tuple[RawBatch, str, str, datetime]) -> _Prepared:
    """The costly part of a batch (dates, markup, redaction, ids), run in a worker process.

    A row without text is rejected here rather than landed: all such rows of one intent would hash to one id, so
    all but one would be counted as duplicates of a ticket that is not one, and that one would fail validation."""
    batch, source, default_channel, now = job
    rejects = list(batch.rejects)
    records, bad_dates = parse_created_at(batch.records)
    if bad_dates.any():
        for line, value in batch.records.loc[bad_dates, "created_at"].items():
            raw = json.dumps(batch.records.loc[line].to_dict(), default=str)
            rejects.append(Reject(int(line), f"created_at is not a date: {value!r}", raw))
        records = records.loc[~bad_dates]
    redactor = Redactor()
    tickets = to_tickets(records, source, default_channel, redactor, now)
    table = to_table(tickets)
    present = has_text(table.column("text"))
    if not present.all():
        lines = tickets.index[~present]
        for line, record in zip(lines, batch.records.loc[lines].to_dict("records"), strict=True):
            rejects.append(Reject(int(line), NO_TEXT, json.dumps(record, default=str)))
        table = table.filter(pa.array(present))
    return _Prepared(table, rejects, len(batch.records) + len(batch.rejects), redactor.counts)


def ingest_file(
    path: str,
    lake: Lake,
    settings: Settings,
    source: str | None = None,
    fmt: Format | None = None,
    known_ids: KnownIds | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> IngestReport:
    """Read one export, land its tickets, quarantine what cannot be read; `known_ids` is updated."""
    source = source or default_source(path)
    opened = open_source(path, fmt, settings.ingest_batch_rows, settings.field_map, settings.zendesk_intent_field_id, encoding)
    report = IngestReport(file=path, source=source, format=opened.format, encoding=opened.encoding, ignored_columns=opened.ignored_columns)
    known = existing_ticket_ids(lake) if known_ids is None else known_ids
    redactions: Counter[str] = Counter()
    now = datetime.now(UTC)
    partition = f"ingest_date={now:%Y-%m-%d}"
    pool = process_pool(settings.workers if opened.size >= settings.parallel_min_bytes else 1)
    jobs = ((batch, source, settings.default_channel, now) for batch in opened.batches)
    try:
        for prepared in ordered_map(pool, _prepare, jobs, in_flight=settings.workers + 1):
            report.rows_read += prepared.rows_read
            redactions.update(prepared.redactions)
            tickets = prepared.tickets
            keys = id_keys(tickets.column("ticket_id").to_pylist())
            fresh = ~known.contains(keys) & ~pd.Series(keys).duplicated().to_numpy()
            report.duplicates += int(len(fresh) - fresh.sum())
            tickets, keys = tickets.filter(pa.array(fresh)), keys[fresh]
            if tickets.num_rows:
                name = _content_name(tickets.column("ticket_id").to_pylist())
                written = lake.write_parquet(tickets, "tickets", partition, f"{source}-{name}.parquet")
                report.files_written.append(written)
                known.add(keys)
                report.written += tickets.num_rows
            if prepared.rejects:
                report.quarantine_files.append(_write_quarantine(lake, source, path, prepared.rejects, now))
                report.quarantined += len(prepared.rejects)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.redactions = dict(redactions)
    return report
