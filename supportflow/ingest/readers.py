"""Readers for ticket exports: CSV, JSON Lines and Zendesk's JSON export.

Each reader streams the file in batches of raw records (so memory does not grow with the file) and
hands back, beside each batch, the lines it could not read, each with its reason: nothing is
dropped silently.
"""

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from supportflow.errors import IngestError
from supportflow.ingest.tickets import RAW_FIELDS, resolve_columns

Format = Literal["csv", "jsonl", "zendesk"]


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
    size: int = 0


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
        opened = _open_csv(path, fs, fs_path, batch_rows, field_map)
    elif fmt == "jsonl":
        opened = SourceFile(path, fmt, [], _jsonl_batches(fs, fs_path, batch_rows, field_map, _plain_record))
    elif fmt == "zendesk":
        opened = _open_zendesk(path, fs, fs_path, batch_rows, zendesk_intent_field_id)
    else:
        raise IngestError(f"{path}: unknown format {fmt!r}; use one of csv, jsonl, zendesk")
    opened.size = fs.size(fs_path)
    return opened


def _open_csv(path: str, fs: Any, fs_path: str, batch_rows: int, field_map: dict[str, str]) -> SourceFile:
    """Arrow's streaming CSV reader: fast, bounded memory, and it reports malformed rows instead of failing."""
    with fs.open(fs_path, "rb") as probe:
        sample = probe.read(64 * 1024).decode("utf-8-sig", "surrogateescape")
    first_line = sample.splitlines()[0] if sample.strip() else ""
    if not first_line.strip():
        raise IngestError(f"{path}: the file is empty")
    delimiter = "\t" if path.lower().endswith(".tsv") or first_line.count("\t") > first_line.count(",") else ","
    header = [escape(name).strip() for name in next(csv.reader([first_line], delimiter=delimiter))]
    mapping = resolve_columns(header, field_map)
    if "text" not in mapping:
        wanted = field_map.get("text") or " or ".join(("text", "message", "body", "description"))
        raise IngestError(f"{path}: missing column for the ticket text ({wanted}); the header has {header}")
    if len(set(header)) != len(header):
        raise IngestError(f"{path}: the header repeats a column name: {header}")
    ignored = [name for name in header if name not in mapping.values()]
    return SourceFile(path, "csv", ignored, _csv_batches(path, fs, fs_path, batch_rows, header, mapping, delimiter))


def _csv_batches(
    path: str, fs: Any, fs_path: str, batch_rows: int, header: list[str], mapping: dict[str, str], delimiter: str
) -> Iterator[RawBatch]:
    malformed: list[Reject] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        line = row.number if row.number is not None else -1
        malformed.append(Reject(line, f"expected {row.expected_columns} fields, found {row.actual_columns}", escape(row.text)))
        return "skip"

    names = [f"c{i}" for i in range(len(header))]  # header names may hold undecodable bytes
    wanted = {raw_field: names[header.index(column)] for raw_field, column in mapping.items()}
    options = {
        "read_options": pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=8 << 20),
        "parse_options": pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid_row),
        "convert_options": pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.binary()), include_columns=list(wanted.values())),
    }
    row_number = 1  # the header
    pending: pa.Table | None = None
    with fs.open(fs_path, "rb") as handle:
        try:
            for block in pacsv.open_csv(handle, **options):
                block_table = pa.Table.from_batches([block])
                pending = block_table if pending is None else pa.concat_tables([pending, block_table])
                while pending.num_rows >= batch_rows:
                    batch, row_number = _decode_block(pending.slice(0, batch_rows), wanted, row_number, malformed)
                    pending, malformed = pending.slice(batch_rows), []
                    yield batch
        except pa.ArrowInvalid as error:
            raise IngestError(f"{path}: unreadable CSV after row {row_number}: {error}") from error
    if (pending is not None and pending.num_rows) or malformed:
        table = pending if pending is not None else pa.table({name: pa.array([], pa.binary()) for name in wanted.values()})
        batch, _ = _decode_block(table, wanted, row_number, malformed)
        yield batch


def _decode_block(table: pa.Table, wanted: dict[str, str], first_row: int, rejects: list[Reject]) -> tuple[RawBatch, int]:
    """Binary columns to text; rows with bytes that are not UTF-8 are rejected with their content kept."""
    rows = pd.Index(range(first_row + 1, first_row + 1 + table.num_rows), name="line")
    columns: dict[str, pa.Array] = {}
    bad = np.zeros(table.num_rows, dtype=bool)
    for raw_field, name in wanted.items():
        column = table.column(name)
        try:
            columns[raw_field] = column.cast(pa.string())
        except pa.ArrowInvalid:
            values = column.to_pylist()
            for position, value in enumerate(values):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    bad[position] = True
            columns[raw_field] = pa.array([v.decode("utf-8", "replace") for v in values], pa.string())
    rejects = list(rejects)
    if bad.any():
        for position in np.flatnonzero(bad):
            raw = {field: table.column(name)[int(position)].as_py().decode("utf-8", "backslashreplace") for field, name in wanted.items()}
            rejects.append(Reject(int(rows[position]), "not valid UTF-8", json.dumps(raw, ensure_ascii=False)))
    records = pa.table(columns).to_pandas(types_mapper=None).astype("object")
    records.index = rows
    return RawBatch(records.loc[~bad], rejects), first_row + table.num_rows


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
