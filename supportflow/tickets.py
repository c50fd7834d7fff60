"""The ticket schema, and how raw records from any export become tickets.

A ticket's id is a hash of its source and its (redacted) content, so the same ticket ingested
twice gets the same id and lands once.
"""

import hashlib
import json
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

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

# Raw fields a reader may deliver; `external_id` (an id in the source system) only feeds the hash.
RAW_FIELDS = ("text", "intent", "entities", "response", "channel", "created_at", "external_id")

# Column names that common exports use for each raw field, first match wins.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text", "message", "body", "description", "utterance", "query", "instruction"),
    "intent": ("intent", "category", "label", "intent_name"),
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
    present = {column.strip().lower(): column for column in columns}
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


def normalise_entities(value: object) -> str:
    """Entities as canonical JSON text: parsed when the export holds JSON, kept verbatim otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "[]"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def ticket_id(source: str, external_id: str, text: str, intent: str, response: str, created_at: str) -> str:
    content = "\x1f".join((source, external_id, text, intent, response, created_at))
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


def _optional_text(series: pd.Series) -> pd.Series:
    """Empty cells mean 'no value': None, so the contract can tell them from real text."""
    cleaned = series.astype("object").where(series.notna(), None)
    return cleaned.map(lambda value: None if value is None or (isinstance(value, str) and value == "") else value)


def to_tickets(
    raw: pd.DataFrame, source: str, default_channel: str, redactor: Redactor, ingested_at: datetime | None = None
) -> pd.DataFrame:
    """Raw records (string columns named after RAW_FIELDS) to the ticket schema, PII redacted.

    `created_at` must already be parsed (see `parse_created_at`).
    """
    n = len(raw)
    ingested_at = (ingested_at or datetime.now(UTC)).astimezone(UTC)
    column = lambda name: _optional_text(raw[name]) if name in raw else pd.Series([None] * n, index=raw.index, dtype="object")  # noqa: E731
    text = pd.Series(redactor.redact_all(raw["text"].tolist() if "text" in raw else [None] * n), index=raw.index, dtype="object")
    intent = column("intent").map(lambda value: value.strip() if isinstance(value, str) else value)
    response = pd.Series(redactor.redact_all(column("response").tolist()), index=raw.index, dtype="object")
    created_at = raw["created_at"] if "created_at" in raw else pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us, UTC]")
    external_id = column("external_id")
    channel = column("channel").map(lambda value: normalise_channel(value, default_channel))
    entities = column("entities").map(normalise_entities) if "entities" in raw else pd.Series(["[]"] * n, index=raw.index)
    ids = [
        ticket_id(source, ext or "", txt or "", lab or "", resp or "", "" if pd.isna(ts) else ts.isoformat())
        for ext, txt, lab, resp, ts in zip(external_id, text, intent, response, created_at, strict=True)
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
    values = _optional_text(raw["created_at"])
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed").astype("datetime64[us, UTC]")
    bad = values.notna() & parsed.isna()
    out = raw.copy()
    out["created_at"] = parsed
    return out, bad


def to_table(tickets: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(tickets, schema=TICKET_SCHEMA, preserve_index=False)
