"""Readers for ticket exports: CSV, JSON Lines and Zendesk's JSON export.

Each reader streams the file in batches of raw records (so memory does not grow with the file) and
hands back, beside each batch, the lines it could not read, each with its reason: nothing is
dropped silently.
"""

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import fsspec
import pandas as pd

from supportflow.errors import IngestError
from supportflow.tickets import RAW_FIELDS, resolve_columns

Format = Literal["csv", "jsonl", "zendesk"]
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    raw: str


@dataclass
class RawBatch:
    records: pd.DataFrame  # columns named after RAW_FIELDS, index = line numbers in the source
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class SourceFile:
    path: str
    format: Format
    ignored_columns: list[str]
    batches: Iterator[RawBatch]


def detect_format(path: str) -> Format:
    suffixes = PurePosixPath(path.split("?")[0]).suffixes
    suffix = suffixes[-1].lower() if suffixes else ""
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "zendesk"
    raise IngestError(f"{path}: cannot tell the format from the name; pass one of csv, jsonl, zendesk")


def escape(text: str) -> str:
    """Text that may hold undecodable bytes (as surrogates), made storable without losing them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_clean_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def open_source(
    path: str, fmt: Format | None, batch_rows: int, field_map: dict[str, str], zendesk_intent_field_id: int | None = None
) -> SourceFile:
    """Check the file exists and is not empty, then stream it in its format."""
    try:
        fs, fs_path = fsspec.core.url_to_fs(path)
        if not fs.exists(fs_path):
            raise IngestError(f"{path}: no such file")
        if fs.isdir(fs_path):
            raise IngestError(f"{path}: is a folder, not a file")
        if fs.size(fs_path) == 0:
            raise IngestError(f"{path}: the file is empty")
    except IngestError:
        raise
    except Exception as error:
        raise IngestError(f"{path}: cannot be opened: {type(error).__name__}: {error}") from error
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        return _open_csv(path, fs, fs_path, batch_rows, field_map)
    if fmt == "jsonl":
        return SourceFile(path, fmt, [], _jsonl_batches(fs, fs_path, batch_rows, field_map, _plain_record))
    if fmt == "zendesk":
        return _open_zendesk(path, fs, fs_path, batch_rows, zendesk_intent_field_id)
    raise IngestError(f"{path}: unknown format {fmt!r}; use one of csv, jsonl, zendesk")


def _open_csv(path: str, fs: Any, fs_path: str, batch_rows: int, field_map: dict[str, str]) -> SourceFile:
    handle = io.TextIOWrapper(fs.open(fs_path, "rb"), encoding="utf-8-sig", errors="surrogateescape", newline="")
    sample = handle.read(64 * 1024)
    handle.seek(0)
    delimiter = "\t" if path.lower().endswith(".tsv") or (sample.count("\t") > sample.count(",")) else ","
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise IngestError(f"{path}: the file is empty") from None
    header = [escape(name).strip() for name in header]
    mapping = resolve_columns(header, field_map)
    if "text" not in mapping:
        handle.close()
        wanted = field_map.get("text") or " or ".join(("text", "message", "body", "description"))
        raise IngestError(f"{path}: missing column for the ticket text ({wanted}); the header has {header}")
    ignored = [name for name in header if name not in mapping.values()]
    positions = {raw_field: header.index(column) for raw_field, column in mapping.items()}

    def batches() -> Iterator[RawBatch]:
        with handle:
            rows: list[list[str]] = []
            lines: list[int] = []
            rejects: list[Reject] = []
            width = len(header)
            try:
                for row in reader:
                    line = reader.line_num
                    if not row:
                        continue
                    if len(row) != width:
                        rejects.append(Reject(line, f"expected {width} fields, found {len(row)}", escape(json.dumps(row))))
                    elif not all(_is_clean_utf8(value) for value in row):
                        rejects.append(Reject(line, "not valid UTF-8", escape(json.dumps(row, ensure_ascii=False))))
                    else:
                        rows.append(row)
                        lines.append(line)
                    if len(rows) + len(rejects) >= batch_rows:
                        yield _csv_batch(rows, lines, positions, rejects)
                        rows, lines, rejects = [], [], []
            except csv.Error as error:
                raise IngestError(f"{path}: unreadable CSV at line {reader.line_num}: {error}") from error
            if rows or rejects:
                yield _csv_batch(rows, lines, positions, rejects)

    return SourceFile(path, "csv", ignored, batches())


def _csv_batch(rows: list[list[str]], lines: list[int], positions: dict[str, int], rejects: list[Reject]) -> RawBatch:
    records = pd.DataFrame({name: [row[i] for row in rows] for name, i in positions.items()}, index=pd.Index(lines, name="line"))
    return RawBatch(records, rejects)


RecordMapper = Any  # (dict, line) -> dict of raw fields, or raises ValueError with the reason


def _plain_record(record: dict[str, Any], field_map: dict[str, str]) -> dict[str, Any]:
    mapping = resolve_columns(list(record), field_map)
    return {raw_field: record[column] for raw_field, column in mapping.items()}


def _jsonl_batches(fs: Any, fs_path: str, batch_rows: int, field_map: dict[str, str], to_raw: RecordMapper) -> Iterator[RawBatch]:
    with fs.open(fs_path, "rb") as handle:
        records: list[dict[str, Any]] = []
        lines: list[int] = []
        rejects: list[Reject] = []
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                rejects.append(Reject(line_number, "not valid UTF-8", line.decode("utf-8", "backslashreplace").rstrip("\n")))
                continue
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError(f"a line must hold a JSON object, found {type(record).__name__}")
                records.append(_scalar_fields(to_raw(record, field_map)))
                lines.append(line_number)
            except json.JSONDecodeError as error:
                rejects.append(Reject(line_number, f"malformed JSON: {error.msg} at column {error.colno}", text.rstrip("\n")))
            except ValueError as error:
                rejects.append(Reject(line_number, str(error), text.rstrip("\n")))
            if len(records) + len(rejects) >= batch_rows:
                yield _records_batch(records, lines, rejects)
                records, lines, rejects = [], [], []
        if records or rejects:
            yield _records_batch(records, lines, rejects)


def _scalar_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Text-like fields as strings; a list or object where text belongs is a reason to reject."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "entities" or value is None:
            out[name] = value
        elif isinstance(value, (dict, list)):
            raise ValueError(f"field {name!r} must be a string, found {type(value).__name__}")
        else:
            out[name] = str(value)
    return out


def _records_batch(records: list[dict[str, Any]], lines: list[int], rejects: list[Reject]) -> RawBatch:
    frame = (
        pd.DataFrame.from_records(records, index=pd.Index(lines, name="line"), columns=list(RAW_FIELDS))
        if records
        else pd.DataFrame(columns=list(RAW_FIELDS))
    )
    frame = frame.astype("object").where(frame.notna(), None)
    return RawBatch(frame, rejects)


def zendesk_record(ticket: dict[str, Any], intent_field_id: int | None) -> dict[str, Any]:
    """One ticket of a Zendesk export (API or NDJSON) to raw ticket fields."""
    subject = (ticket.get("subject") or "").strip()
    description = (ticket.get("description") or "").strip()
    text = description if not subject or description.startswith(subject) else f"{subject}\n{description}" if description else subject
    tags = [str(tag) for tag in ticket.get("tags") or []]
    intent = None
    entities: list[dict[str, Any]] = []
    for tag in tags:
        for prefix in ("intent:", "intent__"):
            if tag.startswith(prefix):
                intent = tag[len(prefix) :]
                break
        else:
            entities.append({"entity": "tag", "value": tag})
    for custom in ticket.get("custom_fields") or ticket.get("fields") or []:
        if not isinstance(custom, dict) or custom.get("value") in (None, "", []):
            continue
        if intent_field_id is not None and custom.get("id") == intent_field_id:
            intent = str(custom["value"])
        else:
            entities.append({"entity": f"zendesk_field_{custom.get('id')}", "value": custom["value"]})
    via = ticket.get("via")
    return {
        "external_id": ticket.get("id"),
        "text": text or None,
        "intent": intent,
        "entities": entities,
        "channel": via.get("channel") if isinstance(via, dict) else via,
        "created_at": ticket.get("created_at"),
    }


def _open_zendesk(path: str, fs: Any, fs_path: str, batch_rows: int, intent_field_id: int | None) -> SourceFile:
    to_raw = lambda ticket, _field_map: zendesk_record(ticket, intent_field_id)  # noqa: E731
    if path.lower().endswith((".jsonl", ".ndjson")):
        return SourceFile(path, "zendesk", [], _jsonl_batches(fs, fs_path, batch_rows, {}, to_raw))
    with fs.open(fs_path, "rb") as handle:
        text = handle.read().decode("utf-8", "surrogateescape")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise IngestError(f"{path}: not a Zendesk JSON export: {error.msg} at line {error.lineno} column {error.colno}") from error
    tickets = document.get("tickets") if isinstance(document, dict) else document
    if not isinstance(tickets, list):
        raise IngestError(f"{path}: a Zendesk export holds a list of tickets or an object with 'tickets'")

    def batches() -> Iterator[RawBatch]:
        for start in range(0, len(tickets), batch_rows):
            records, lines, rejects = [], [], []
            for number, ticket in enumerate(tickets[start : start + batch_rows], start=start + 1):
                serialised = json.dumps(ticket, ensure_ascii=False, default=str)
                if not isinstance(ticket, dict):
                    rejects.append(Reject(number, "a ticket must be a JSON object", escape(serialised)))
                elif not _is_clean_utf8(serialised):
                    rejects.append(Reject(number, "not valid UTF-8", escape(serialised)))
                else:
                    try:
                        records.append(_scalar_fields(to_raw(ticket, {})))
                        lines.append(number)
                    except ValueError as error:
                        rejects.append(Reject(number, str(error), serialised))
            yield _records_batch(records, lines, rejects)

    return SourceFile(path, "zendesk", [], batches())
