"""Logs never carry raw email addresses or the API key."""

from __future__ import annotations

import logging

import orjson
import pytest

from app.logs import JsonFormatter, RedactingFilter, mask_email, redact


def test_mask_email_is_stable_and_case_insensitive() -> None:
    assert mask_email("Ada@Example.com") == mask_email("ada@example.com")
    assert "ada" not in mask_email("ada@example.com")


def test_redact_masks_emails_and_secrets() -> None:
    text = redact("user ada@example.com key=s3cr3t", secrets=("s3cr3t",))
    assert "ada@example.com" not in text
    assert "s3cr3t" not in text
    assert mask_email("ada@example.com") in text


def test_filter_rewrites_formatted_message_with_args(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    handler = caplog.handler
    handler.addFilter(RedactingFilter(("topsecret",)))
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            logger.info("identify %s with %s", "bob@example.org", "topsecret")
    finally:
        handler.removeFilter(handler.filters[-1])
    assert "bob@example.org" not in caplog.text
    assert "topsecret" not in caplog.text


def test_json_formatter_writes_one_object() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello world"
    assert entry["level"] == "WARNING"
