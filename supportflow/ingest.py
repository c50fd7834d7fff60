"""Ingest: a ticket export into the lake's `tickets/` area, redacted, deduplicated, partitioned by day.

Idempotent by construction: ids derive from source and content, rows whose id the lake already
holds are skipped, and files are named after their content, so a re-run (after a crash too)
neither duplicates tickets nor overwrites another run's file.
"""

import hashlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pandas as pd
from pydantic import BaseModel, Field

from supportflow.lake import Lake
from supportflow.readers import Format, Reject, open_source
from supportflow.redact import Redactor
from supportflow.settings import Settings
from supportflow.tickets import parse_created_at, to_table, to_tickets

QUARANTINE_COLUMNS = ["source_file", "line", "reason", "raw", "quarantined_at"]


class IngestReport(BaseModel):
    file: str
    source: str
    format: str
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


def existing_ticket_ids(lake: Lake) -> set[str]:
    """Every ticket id in the lake: the only column read, so it stays cheap."""
    ids: set[str] = set()
    for path in lake.files("tickets"):
        ids.update(lake.read_parquet(path, columns=["ticket_id"])["ticket_id"].tolist())
    return ids


def default_source(path: str) -> str:
    return PurePosixPath(path.split("?")[0]).stem.lower().replace(" ", "_")


def _content_name(values: list[str]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for value in values:
        digest.update(value.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    return digest.hexdigest()


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


def ingest_file(
    path: str,
    lake: Lake,
    settings: Settings,
    source: str | None = None,
    fmt: Format | None = None,
    known_ids: set[str] | None = None,
) -> IngestReport:
    """Read one export, land its tickets, quarantine what cannot be read; `known_ids` is updated."""
    source = source or default_source(path)
    opened = open_source(path, fmt, settings.ingest_batch_rows, settings.field_map, settings.zendesk_intent_field_id)
    report = IngestReport(file=path, source=source, format=opened.format, ignored_columns=opened.ignored_columns)
    known = existing_ticket_ids(lake) if known_ids is None else known_ids
    redactor = Redactor()
    now = datetime.now(UTC)
    partition = f"ingest_date={now:%Y-%m-%d}"
    for batch in opened.batches:
        rejects = list(batch.rejects)
        records, bad_dates = parse_created_at(batch.records)
        for line, value in batch.records.loc[bad_dates, "created_at"].items() if bad_dates.any() else []:
            rejects.append(Reject(int(line), f"created_at is not a date: {value!r}", str(batch.records.loc[line].to_dict())))
        records = records.loc[~bad_dates]
        tickets = to_tickets(records, source, settings.default_channel, redactor, now)
        report.rows_read += len(batch.records) + len(batch.rejects)
        fresh = ~tickets["ticket_id"].isin(known) & ~tickets["ticket_id"].duplicated()
        report.duplicates += int((~fresh).sum())
        tickets = tickets.loc[fresh]
        if len(tickets):
            name = _content_name(tickets["ticket_id"].tolist())
            written = lake.write_parquet(to_table(tickets), "tickets", partition, f"{source}-{name}.parquet")
            report.files_written.append(written)
            known.update(tickets["ticket_id"].tolist())
            report.written += len(tickets)
        if rejects:
            report.quarantine_files.append(_write_quarantine(lake, source, path, rejects, now))
            report.quarantined += len(rejects)
    report.redactions = dict(Counter(redactor.counts))
    return report
