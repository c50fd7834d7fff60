"""The ticket schema, and how raw records from any export become tickets.

A ticket's id is a hash of its source and its content as it lands (markup taken out, PII redacted), so the same
ticket ingested twice gets the same id and lands once, and so does a message exported once as HTML and once as text.
"""

import hashlib
import json
import re
import string
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from supportflow.ingest.fields import RAW_FIELDS, header_key
from supportflow.ingest.markup import plain_text
from supportflow.redact import Redactor

TICKET_SCHEMA = pa.schema(
    [
        ("ticket_id", pa.string()),
        ("source", pa.string()),
        ("channel", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("text", pa.string()),
        ("intent", pa.string()),
        ("entities", pa.string()),
        ("response", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)
TICKET_COLUMNS = TICKET_SCHEMA.names

# Column names that common exports use for each raw field, first match wins; a header is compared in lower case with
# its spaces and hyphens as underscores ("Ticket Description" is ticket_description).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "text": (
        "text",
        "message",
        "body",
        "description",
        "utterance",
        "query",
        "instruction",
        "question",
        "content",
        "ticket_description",
        "ticket_text",
        "customer_message",
    ),
    "intent": ("intent", "category", "label", "intent_name", "topic", "ticket_type", "contact_reason", "issue_type"),
    "entities": ("entities", "slots"),
    "response": ("response", "answer", "reply", "agent_response"),
    "channel": ("channel", "via"),
    "created_at": ("created_at", "timestamp", "date", "created"),
    "external_id": ("id", "ticket_id", "external_id"),
}

CHANNEL_SYNONYMS = {
    "web": "webchat",
    "chat": "webchat",
    "web_widget": "webchat",
    "messaging": "webchat",
    "mail": "email",
    "voice": "phone",
    "call": "phone",
    "text": "sms",
    "facebook": "social",
    "twitter": "social",
    "instagram": "social",
}


def resolve_columns(columns: list[str], field_map: dict[str, str]) -> dict[str, str]:
    """Map raw ticket fields to the source's column names: explicit mapping first, then aliases."""
    present = {header_key(column): column for column in columns}
    resolved: dict[str, str] = {}
    for field in RAW_FIELDS:
        if field in field_map:
            if field_map[field] in columns:
                resolved[field] = field_map[field]
            continue
        for alias in FIELD_ALIASES[field]:
            if alias in present:
                resolved[field] = present[alias]
                break
    return resolved


def normalise_channel(value: str | None, default: str) -> str:
    if value is None or not str(value).strip():
        return default
    channel = str(value).strip().lower()
    return CHANNEL_SYNONYMS.get(channel, channel)


@lru_cache(maxsize=65536)
def normalise_entities(value: str | None) -> str:
    """Entities as canonical JSON text: parsed when the export holds JSON, kept verbatim otherwise."""
    if value is None or not value.strip():
        return "[]"
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(parsed, ensure_ascii=False, sort_keys=True)


def ticket_id(source: str, external_id: str, text: str, intent: str, response: str, created_at: str) -> str:
    content = "\x1f".join((source, external_id, text, intent, response, created_at))
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def _optional_text(raw: pd.DataFrame, name: str) -> list[str | None]:
    """A raw field as a list of strings; an absent column or an empty cell means 'no value'."""
    if name not in raw:
        return [None] * len(raw)
    return [None if value is None or value == "" or value != value else value for value in raw[name].tolist()]


def _plain_texts(values: list[str | None]) -> list[str | None]:
    """Markup taken out of a column (`plain_text` returns a value without any as it is). A value that held nothing but
    markup (`<p></p>`) has no value left, as an empty cell has none."""
    return [None if value is None else plain_text(value) or None for value in values]


def has_text(texts: pa.ChunkedArray) -> np.ndarray:
    """Which tickets have words in their text: an absent, empty or all-whitespace text has none. Arrow's whitespace
    is Python's (`str.isspace`, which the contract's `text_not_blank` regex uses) for every code point."""
    blank = pc.or_kleene(pc.equal(pc.utf8_length(texts), 0), pc.utf8_is_space(texts))
    return pc.invert(blank).fill_null(False).to_numpy(zero_copy_only=False)


def _entities_text(value: object) -> str:
    if value is None or isinstance(value, str):
        return normalise_entities(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)  # already parsed (JSON Lines, Zendesk)


def to_tickets(raw: pd.DataFrame, source: str, default_channel: str, redactor: Redactor, ingested_at: datetime) -> pd.DataFrame:
    """Raw records (columns named after RAW_FIELDS) to the ticket schema, PII redacted.

    `created_at` must already be parsed (see `parse_created_at`). Markup goes before redaction, so an entity cannot
    hide PII from it (`ann&#64;example.com`), and before the id, which hashes the text as it lands.
    """
    ingested_at = ingested_at.astimezone(UTC)
    text = redactor.redact_all(_plain_texts(_optional_text(raw, "text")))
    response = redactor.redact_all(_plain_texts(_optional_text(raw, "response")))
    intent = [value.strip() if value is not None else None for value in _optional_text(raw, "intent")]
    external_id = _optional_text(raw, "external_id")
    channels: dict[str | None, str] = {}
    channel = [channels.get(v) or channels.setdefault(v, normalise_channel(v, default_channel)) for v in _optional_text(raw, "channel")]
    entities = [_entities_text(value) for value in raw["entities"].tolist()] if "entities" in raw else ["[]"] * len(raw)
    if "created_at" in raw:
        created_at = raw["created_at"]
        created_text = created_at.astype("string").fillna("").tolist()
    else:
        created_at = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
        created_text = [""] * len(raw)
    ids = [
        ticket_id(source, ext or "", txt or "", lab or "", resp or "", ts)
        for ext, txt, lab, resp, ts in zip(external_id, text, intent, response, created_text, strict=True)
    ]
    return pd.DataFrame(
        {
            "ticket_id": ids,
            "source": source,
            "channel": channel,
            "created_at": created_at,
            "text": text,
            "intent": intent,
            "entities": entities,
            "response": response,
            "ingested_at": pd.Timestamp(ingested_at).as_unit("us"),
        },
        index=raw.index,
    )[TICKET_COLUMNS]


def parse_created_at(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Parse `created_at` to UTC; returns the frame and a mask of values that are not dates."""
    if "created_at" not in raw:
        return raw, pd.Series(False, index=raw.index)
    values = pd.Series(_optional_text(raw, "created_at"), index=raw.index, dtype="object")
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed").astype("datetime64[us, UTC]")
    bad = values.notna() & parsed.isna()
    out = raw.copy()
    out["created_at"] = parsed
    return out, bad


def to_table(tickets: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(tickets, schema=TICKET_SCHEMA, preserve_index=False)


def id_keys(ids: pd.Series | list[str]) -> np.ndarray:
    """64-bit keys of ticket ids: eight bytes a ticket, so id sets of millions stay small in memory.

    Ids are hex digests already, so the key is their first 16 hex digits; any other id is hashed.
    """
    values = ids.tolist() if isinstance(ids, pd.Series) else list(ids)
    try:
        return np.frombuffer(bytes.fromhex("".join(value[:16].rjust(16, "0") for value in values)), dtype=">u8").astype(np.uint64)
    except (ValueError, TypeError):
        return pd.util.hash_pandas_object(pd.Series(values, dtype="object"), index=False).to_numpy()


def wording_keys(texts: pd.Series) -> np.ndarray:
    """64-bit keys of what a text says, whatever its case, spacing and punctuation: desks get the same message
    ("Where is my refund?", "where is my refund") from many customers, under as many ticket ids.

    The wording is Python's: `casefold()`, then each run of `[\\W_]` one space, stripped. Validation keys every row,
    so an ASCII text, where that is lower case and `[^a-z0-9]`, is mapped byte by byte in Arrow's buffer; the rest
    (accents, other scripts: "Straße" and "STRASSE" say the same) go through Python itself."""
    texts = texts.fillna("").astype(str)
    array = pa.array(texts.to_numpy(dtype=object), type=pa.large_string())
    validity, offsets, data = array.buffers()
    mapped = _ASCII_WORDING[np.frombuffer(data, dtype=np.uint8)] if data is not None else np.empty(0, np.uint8)
    spaced = pa.LargeStringArray.from_buffers(len(array), offsets, pa.py_buffer(mapped), validity, array.null_count)
    split = pc.ascii_split_whitespace(pc.ascii_trim_whitespace(spaced))  # untrimmed, an edge's space would split off ""
    words = pc.binary_join(split, pa.scalar(" ", pa.large_string())).to_numpy(zero_copy_only=False)
    other = np.flatnonzero(~pc.string_is_ascii(array).to_numpy(zero_copy_only=False))
    words[other] = [_NOT_A_WORD.sub(" ", text.casefold()).strip() for text in texts.to_numpy(dtype=object)[other]]
    return pd.util.hash_array(words, categorize=False)


_NOT_A_WORD = re.compile(r"[\W_]+")
_ASCII_WORDING = np.full(256, ord(" "), dtype=np.uint8)  # an ASCII byte's wording: lower-case letters and digits, else a space
_LOWER, _UPPER, _DIGITS = (np.frombuffer(s.encode(), np.uint8) for s in (string.ascii_lowercase, string.ascii_uppercase, string.digits))
_ASCII_WORDING[_LOWER] = _ASCII_WORDING[_UPPER] = _LOWER
_ASCII_WORDING[_DIGITS] = _DIGITS


class KnownIds:
    """The ids a lake already holds, as sorted chunks of 64-bit keys (8 bytes a ticket).

    Adding a batch sorts only that batch; the chunks are merged once there are many of them.
    """

    MAX_CHUNKS = 16

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self._chunks: list[np.ndarray] = [] if keys is None else [np.unique(keys)]

    def __len__(self) -> int:
        return sum(len(chunk) for chunk in self._chunks)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for chunk in self._chunks:
            positions = np.searchsorted(chunk, keys).clip(max=len(chunk) - 1)
            found |= chunk[positions] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        if len(keys):
            self._chunks.append(np.sort(keys))
        if len(self._chunks) > self.MAX_CHUNKS:
            self._chunks = [np.unique(np.concatenate(self._chunks))]
