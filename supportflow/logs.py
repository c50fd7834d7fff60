"""Structured JSON logs: one object per line, carrying the request id from the channel to the actions.

Logs leave the process (a terminal, a log shipper, a vendor), so what a record carries is redacted on the
handler, before any formatter sees it: the message, its arguments, every extra field and the traceback. A
careless `log.info("got %s", text)` anywhere under `supportflow` then still writes no e-mail, phone, card or IBAN.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO

from supportflow.redact import redact

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _redacted(value: object) -> object:
    """A log field with PII redacted; numbers and booleans as they are, anything else as its redacted text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """Redacts a record in place, so every formatter after it, and every handler after this one, gets it redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                setattr(record, key, _redacted(value))
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None  # the exception's own text is gone; only the redacted one is left to format
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, default=str)


def json_handler(stream: IO[str]) -> logging.Handler:
    """The handler the `supportflow` loggers write through: redacting, then JSON."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    return handler


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send the `supportflow` loggers to stderr as redacted JSON lines (idempotent)."""
    logger = logging.getLogger("supportflow")
    if any(isinstance(handler.formatter, JsonFormatter) for handler in logger.handlers):
        return
    logger.addHandler(json_handler(sys.stderr))
    logger.setLevel(level)
    logger.propagate = False
