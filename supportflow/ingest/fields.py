"""The ticket fields an export may carry, the field maps that name their columns, and how a header is read.

Apart from `tickets.py` (which needs pandas and pyarrow) because the settings check `SUPPORTFLOW_FIELD_MAP` with it
when they are read, in every process, the bot's included.
"""

import re

# Raw fields a reader may deliver; `external_id` (an id in the source system) only feeds the hash.
RAW_FIELDS = ("text", "intent", "entities", "response", "channel", "created_at", "external_id")


def field_map_problem(field_map: object) -> str | None:
    """Why `field_map` cannot say which column holds which ticket field, or None when it can. A misspelt field
    would otherwise be ignored, and its column read under an alias or not at all."""
    if not isinstance(field_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in field_map.items()):
        return 'a field map is an object from ticket field to column name, e.g. {"text": "message", "intent": "category"}'
    if unknown := sorted(set(field_map) - set(RAW_FIELDS)):
        return f"{', '.join(map(repr, unknown))} is not a ticket field; the fields are {', '.join(RAW_FIELDS)}"
    return None


def header_key(column: str) -> str:
    """A column's header as an alias is matched against it: "Ticket ID", "ticket-id" and "ticket_id" are one field, as
    spreadsheets written for people name them. The knowledge base's FAQ spreadsheets are read the same way."""
    return re.sub(r"[\s\-]+", "_", column.strip().lower())
