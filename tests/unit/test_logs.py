"""Logs never carry raw email addresses, secrets or URL credentials."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from app.logs import JsonFormatter, RedactingFilter
from app.masking import Masker

MASKER = Masker("k" * 32, ("topsecret",))


def test_filter_rewrites_formatted_message_with_args(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    handler = caplog.handler
    handler.addFilter(RedactingFilter(MASKER))
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            logger.info("identify %s with %s", "Bob@Example.org", "topsecret")
    finally:
        handler.removeFilter(handler.filters[-1])
    assert "Bob@Example.org" not in caplog.text
    assert "topsecret" not in caplog.text
    assert MASKER.email("bob@example.org") in caplog.text


def test_filter_masks_tracebacks_before_any_formatter_sees_them() -> None:
    try:
        raise ValueError("bad address Müller.Jörg@bücher.example, key topsecret")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactingFilter(MASKER).filter(record)
    for formatter in (logging.Formatter(), JsonFormatter()):
        line = formatter.format(record)
        assert "ValueError" in line
        assert "bücher" not in line
        assert "topsecret" not in line


def test_json_formatter_writes_one_object() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello world"
    assert entry["level"] == "WARNING"
