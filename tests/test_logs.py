"""The JSON logs leave the process: whatever a log call carries, the handler writes no personal data."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from supportflow.logs import json_handler

PHONE, CARD, EMAIL = "+33 6 12 34 56 78", "4111.1111.1111.1111", "josé.garcía@correo.es"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    logger = logging.getLogger("supportflow.test_logs")
    handler = json_handler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def test_the_message_its_arguments_and_every_extra_field_are_redacted(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.info(
        "customer wrote %s",
        f"call me on {PHONE}",
        extra={"text": f"card {CARD}", "detail": {"emails": [EMAIL], "count": 2}, "error": ValueError(f"bad value {EMAIL!r}"), "ms": 1.5},
    )

    entry = json.loads(stream.getvalue())
    assert entry["message"] == "customer wrote call me on <PHONE>"
    assert (entry["text"], entry["detail"], entry["error"], entry["ms"]) == (
        "card <CARD>",
        {"emails": ["<EMAIL>"], "count": 2},
        "bad value '<EMAIL>'",
        1.5,
    )


def test_a_traceback_is_redacted_too(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    try:
        raise RuntimeError(f"could not store {CARD} for {EMAIL}")
    except RuntimeError:
        logger.exception("store failed")

    entry = json.loads(stream.getvalue())
    assert entry["error"].startswith("Traceback") and "RuntimeError: could not store <CARD> for <EMAIL>" in entry["error"]
    assert not [value for value in (PHONE, CARD, EMAIL) if value in stream.getvalue()]


def test_a_handler_after_the_json_one_gets_the_redacted_record(logged: tuple[logging.Logger, io.StringIO]) -> None:
    """The record is redacted in place, so a plain handler added later (a file, a shipper) cannot leak it either."""
    logger, _ = logged
    plain = io.StringIO()
    later = logging.StreamHandler(plain)
    later.setFormatter(logging.Formatter("%(message)s | %(text)s"))
    logger.addHandler(later)
    try:
        logger.warning("from %s", EMAIL, extra={"text": PHONE})
    finally:
        logger.removeHandler(later)
    assert plain.getvalue() == "from <EMAIL> | <PHONE>\n"
