"""Readers for ticket exports: CSV, JSON Lines and Zendesk's JSON export.

Each reader streams the file in batches of raw records (so memory does not grow with the file) and
hands back, beside each batch, the lines it could not read, each with its reason: nothing is
dropped silently. Every reader decodes the file in its source's encoding (supportflow/ingest/decoding.py):
a record with bytes that do not decode is one of those lines, its reason naming where in the file they are. A file
with no field for the ticket text, in any format, is refused whole as it is opened, before anything lands: every
row of it would land without its text.
"""

import csv
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from supportflow.errors import IngestError
from supportflow.ingest.decoding import DEFAULT_ENCODING, TAG_OPEN, DecodedExport, bad_bytes, codec_name, escaped, undecodable
from supportflow.ingest.fields import RAW_FIELDS
from supportflow.ingest.tickets import FIELD_ALIASES, resolve_columns

Format = Literal["csv", "jsonl", "zendesk"]
_NAMES_SHOWN = 30  # of a file's column or field names in an error: enough to recognise the export


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
    encoding: str
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


def open_source(
    path: str,
    fmt: Format | None,
    batch_rows: int,
    field_map: dict[str, str],
    zendesk_intent_field_id: int | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> SourceFile:
    """Check the file exists and is not empty, then stream it in its format and encoding."""
    try:
        encoding = codec_name(encoding)
    except ValueError as error:
        raise IngestError(f"{path}: {error}") from error
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
        opened = _open_csv(path, fs, fs_path, batch_rows, field_map, encoding)
    elif fmt == "jsonl":
        text_field = _plain_text_field(path, field_map)
        batches = _jsonl_batches(path, fs, fs_path, batch_rows, field_map, _plain_record, encoding, text_field)
        opened = SourceFile(path, fmt, encoding, [], _read_first(batches))
    elif fmt == "zendesk":
        opened = _open_zendesk(path, fs, fs_path, batch_rows, zendesk_intent_field_id, encoding)
    else:
        raise IngestError(f"{path}: unknown format {fmt!r}; use one of csv, jsonl, zendesk")
    opened.size = fs.size(fs_path)
    return opened


def _no_text_field(path: str, kind: str, wanted: str, has: str, names: list[str], field_map: dict[str, str], note: str = "") -> str:
    """Why a file is refused whole: without the field that holds the text every row would land without one. The same
    words for every format: what the file has, and how to say which of its fields is the text (with one of them)."""
    listed = f"{names[:_NAMES_SHOWN]}" + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")
    unmapped = [name for name in names if name not in resolve_columns(names, field_map).values()]
    example = json.dumps({"text": unmapped[0] if unmapped else "message"}, ensure_ascii=False)
    return (
        f"{path}: missing {kind} for the ticket text ({wanted}); {has} {listed}; {note}name the {kind} that holds the"
        f" text in the source's field_map in supportflow.yaml or in SUPPORTFLOW_FIELD_MAP (or --field-map), e.g. {example}"
    )


def _text_aliases(field_map: dict[str, str]) -> str:
    return field_map.get("text") or " or ".join(FIELD_ALIASES["text"][:4])


# What spreadsheets separate columns with: a comma; a tab ("Unicode text"); a semicolon where the comma is the
# decimal mark (Excel's "CSV" in most of Europe and Latin America); a bar in some helpdesk and database dumps.
DELIMITERS = (",", "\t", ";", "|")


def csv_delimiter(path: str, header: str) -> str:
    """The delimiter that splits the header into the most columns, quotes respected; a comma on a tie (one column)."""
    if path.lower().endswith(".tsv"):
        return "\t"
    return max(DELIMITERS, key=lambda delimiter: len(next(csv.reader([header], delimiter=delimiter))))


def _open_csv(path: str, fs: Any, fs_path: str, batch_rows: int, field_map: dict[str, str], encoding: str) -> SourceFile:
    """Arrow's streaming CSV reader: fast, bounded memory, and it reports malformed rows instead of failing."""
    with fs.open(fs_path, "rb") as raw:
        sample = DecodedExport(raw, encoding, path).read(64 * 1024).decode("utf-8", "replace")  # a character cut at the end is never read
    first_line = sample.splitlines()[0] if sample.strip() else ""
    if not first_line.strip():
        raise IngestError(f"{path}: the file is empty")
    if first_line.lstrip().startswith(("{", "[")):
        raise IngestError(f"{path}: JSON, not CSV: read it with --format jsonl (an object a line) or --format zendesk (a Zendesk export)")
    delimiter = csv_delimiter(path, first_line)
    header = [escaped(name).strip() for name in next(csv.reader([first_line], delimiter=delimiter))]
    mapping = resolve_columns(header, field_map)
    if "text" not in mapping:
        raise IngestError(_no_text_field(path, "column", _text_aliases(field_map), "the header has", header, field_map))
    if len(set(header)) != len(header):
        raise IngestError(f"{path}: the header repeats a column name: {header}")
    ignored = [name for name in header if name not in mapping.values()]
    return SourceFile(path, "csv", encoding, ignored, _csv_batches(path, fs, fs_path, batch_rows, header, mapping, delimiter, encoding))


def _csv_batches(
    path: str, fs: Any, fs_path: str, batch_rows: int, header: list[str], mapping: dict[str, str], delimiter: str, encoding: str
) -> Iterator[RawBatch]:
    malformed: list[Reject] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        line = row.number if row.number is not None else -1
        malformed.append(Reject(line, f"expected {row.expected_columns} fields, found {row.actual_columns}", escaped(row.text)))
        return "skip"

    names = [f"c{i}" for i in range(len(header))]  # header names may hold undecodable bytes
    wanted = {raw_field: names[header.index(column)] for raw_field, column in mapping.items()}
    options = {
        "read_options": pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=8 << 20),
        "parse_options": pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid_row),
        "convert_options": pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), include_columns=list(wanted.values())),
    }
    row_number = 1  # the header
    pending: pa.Table | None = None
    with fs.open(fs_path, "rb") as raw:
        export = DecodedExport(raw, encoding, path)
        try:
            for block in pacsv.open_csv(export, **options):
                block_table = pa.Table.from_batches([block])
                pending = block_table if pending is None else pa.concat_tables([pending, block_table])
                while pending.num_rows >= batch_rows:
                    batch, row_number = _block_batch(pending.slice(0, batch_rows), wanted, row_number, malformed, encoding, export.tagged)
                    pending, malformed = pending.slice(batch_rows), []
                    yield batch
        except pa.ArrowInvalid as error:
            raise IngestError(f"{path}: unreadable CSV after row {row_number}: {error}") from error
    if (pending is not None and pending.num_rows) or malformed:
        table = pending if pending is not None else pa.table({name: pa.array([], pa.string()) for name in wanted.values()})
        batch, _ = _block_batch(table, wanted, row_number, malformed, encoding, export.tagged)
        yield batch


def _block_batch(
    table: pa.Table, wanted: dict[str, str], first_row: int, rejects: list[Reject], encoding: str, tagged: bool
) -> tuple[RawBatch, int]:
    """Rows with undecodable bytes in a field the ticket reads are rejected, with their content kept; `tagged` is
    whether the export had any so far (most have none, and their batches are not searched)."""
    rows = pd.Index(range(first_row + 1, first_row + 1 + table.num_rows), name="line")
    bad = np.zeros(table.num_rows, dtype=bool)
    for name in wanted.values() if tagged else ():
        bad |= pc.match_substring(table.column(name), TAG_OPEN).fill_null(False).to_numpy()
    rejects = list(rejects)
    for position in np.flatnonzero(bad):
        values = {field: table.column(name)[int(position)].as_py() or "" for field, name in wanted.items()}
        found = [where for value in values.values() for where in bad_bytes(value)]
        if not found:  # the file's own U+FDD0, not a tag
            bad[position] = False
            continue
        raw = json.dumps({field: escaped(value) for field, value in values.items()}, ensure_ascii=False)
        rejects.append(Reject(int(rows[position]), undecodable(found, encoding), raw))
    records = table.select(list(wanted.values())).rename_columns(list(wanted)).to_pandas(types_mapper=None).astype("object")
    records.index = rows
    return RawBatch(records.loc[~bad], rejects), first_row + table.num_rows


RecordMapper = Any  # (dict, line) -> dict of raw fields, or raises ValueError with the reason


def _plain_record(record: dict[str, Any], field_map: dict[str, str]) -> dict[str, Any]:
    mapping = resolve_columns(list(record), field_map)
    return {raw_field: record[column] for raw_field, column in mapping.items()}


class _TextField:
    """Whether the records of a JSON export have a field that holds the text, as a CSV header says of its columns.

    JSON records need not share their fields, so the records of the first batch decide: a file none of whose first
    records has one is refused (before any row lands) naming the fields they have; one that has it is read on."""

    def __init__(self, holds_text: Callable[[list[str]], bool], refusal: Callable[[list[str]], str]) -> None:
        self._holds_text = holds_text
        self._refusal = refusal
        self._fields: dict[str, None] = {}  # the names seen, in their order
        self._records = 0
        self._settled = False  # a record had the field, or a batch has passed: the rest is not looked at

    def see(self, record: dict[str, Any]) -> None:
        if not self._settled:
            self._settled = self._holds_text(list(record))
            self._fields.update(dict.fromkeys(map(str, record)))
            self._records += 1

    def check(self) -> None:
        """Called before a batch is handed on: the first one with records passes, or the file is refused."""
        if not self._settled and self._records:
            raise IngestError(self._refusal(list(self._fields)))
        self._settled = self._settled or bool(self._records)


ZENDESK_FIELDS = {"tickets", "subject", "description", "custom_fields"}  # a record with one of them is likely Zendesk's


def _plain_text_field(path: str, field_map: dict[str, str]) -> _TextField:
    def refusal(names: list[str]) -> str:
        note = "they look like Zendesk's tickets: read the file with --format zendesk (format: zendesk in supportflow.yaml), or "
        has = "the records have the fields"
        return _no_text_field(path, "field", _text_aliases(field_map), has, names, field_map, note if ZENDESK_FIELDS & set(names) else "")

    return _TextField(lambda names: "text" in resolve_columns(names, field_map), refusal)


def _zendesk_text_field(path: str) -> _TextField:
    wanted, note = "a Zendesk ticket's subject or description", "a Zendesk export is read by Zendesk's own field names: "
    note += "write another desk's export as CSV or JSON Lines and "
    return _TextField(
        lambda names: "subject" in names or "description" in names,
        lambda names: _no_text_field(path, "field", wanted, "the tickets have the fields", names, {}, note),
    )


def _read_first(batches: Iterator[RawBatch]) -> Iterator[RawBatch]:
    """The first batch read now, so that a file its reader refuses is refused as it is opened, as a CSV file is."""
    first = next(batches, None)
    return batches if first is None else itertools.chain([first], batches)


def _jsonl_batches(
    path: str,
    fs: Any,
    fs_path: str,
    batch_rows: int,
    field_map: dict[str, str],
    to_raw: RecordMapper,
    encoding: str,
    text_field: _TextField,
) -> Iterator[RawBatch]:
    with fs.open(fs_path, "rb") as raw:
        records: list[dict[str, Any]] = []
        lines: list[int] = []
        rejects: list[Reject] = []
        for line_number, line in enumerate(DecodedExport(raw, encoding, path), start=1):
            if not line.strip():
                continue
            text = line.decode("utf-8")
            found = bad_bytes(text)
            try:
                if found:
                    raise ValueError(undecodable(found, encoding))
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError(f"a line must hold a JSON object, found {type(record).__name__}")
                text_field.see(record)
                records.append(_scalar_fields(to_raw(record, field_map)))
                lines.append(line_number)
            except json.JSONDecodeError as error:
                rejects.append(Reject(line_number, f"malformed JSON: {error.msg} at column {error.colno}", text.rstrip("\n")))
            except ValueError as error:
                rejects.append(Reject(line_number, str(error), escaped(text).rstrip("\n")))
            if len(records) + len(rejects) >= batch_rows:
                text_field.check()
                yield _records_batch(records, lines, rejects)
                records, lines, rejects = [], [], []
        if records or rejects:
            text_field.check()
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


def _one_object_a_line(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _open_zendesk(path: str, fs: Any, fs_path: str, batch_rows: int, intent_field_id: int | None, encoding: str) -> SourceFile:
    to_raw = lambda ticket, _field_map: zendesk_record(ticket, intent_field_id)  # noqa: E731
    if path.lower().endswith((".jsonl", ".ndjson")):
        batches = _jsonl_batches(path, fs, fs_path, batch_rows, {}, to_raw, encoding, _zendesk_text_field(path))
        return SourceFile(path, "zendesk", encoding, [], _read_first(batches))
    with fs.open(fs_path, "rb") as raw:
        text = DecodedExport(raw, encoding, path).read().decode("utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and _one_object_a_line(text):  # Zendesk's full JSON export: a ticket a line
            batches = _jsonl_batches(path, fs, fs_path, batch_rows, {}, to_raw, encoding, _zendesk_text_field(path))
            return SourceFile(path, "zendesk", encoding, [], _read_first(batches))
        raise IngestError(f"{path}: not a Zendesk JSON export: {error.msg} at line {error.lineno} column {error.colno}") from error
    tickets = document.get("tickets") if isinstance(document, dict) else document
    if not isinstance(tickets, list):
        raise IngestError(f"{path}: a Zendesk export holds a list of tickets or an object with 'tickets'")
    text_field = _zendesk_text_field(path)
    for ticket in tickets:  # all of them: the whole export is in memory already
        if isinstance(ticket, dict):
            text_field.see(ticket)
    text_field.check()

    def batches() -> Iterator[RawBatch]:
        for start in range(0, len(tickets), batch_rows):
            records, lines, rejects = [], [], []
            for number, ticket in enumerate(tickets[start : start + batch_rows], start=start + 1):
                serialised = json.dumps(ticket, ensure_ascii=False, default=str)
                found = bad_bytes(serialised)
                if not isinstance(ticket, dict):
                    rejects.append(Reject(number, "a ticket must be a JSON object", escaped(serialised)))
                elif found:
                    rejects.append(Reject(number, undecodable(found, encoding), escaped(serialised)))
                else:
                    try:
                        records.append(_scalar_fields(to_raw(ticket, {})))
                        lines.append(number)
                    except ValueError as error:
                        rejects.append(Reject(number, str(error), serialised))
            yield _records_batch(records, lines, rejects)

    return SourceFile(path, "zendesk", encoding, [], batches())
