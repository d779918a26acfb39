"""Logs never carry raw email addresses or the API key."""

from __future__ import annotations

import logging
import re

import orjson
import pytest

from app.logs import (
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    mask_email,
    mask_mpid,
    redact,
)


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


def _emit(fmt: str, secrets: tuple[str, ...] = ()) -> str:
    """Log through :func:`configure_logging`'s handler into a string; the root is restored."""
    import io  # noqa: PLC0415

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", fmt, secrets=secrets)
    out = io.StringIO()
    root.handlers[0].setStream(out)  # type: ignore[attr-defined]
    try:
        log = logging.getLogger("test.context")
        log.warning(
            "dead letter for %s",
            "eve@example.com",
            extra={
                "topic": "mparticle-batches",
                "partition": 3,
                "offset": 41,
                "mpid": mask_mpid(-8_000_000_000),
                "reason": "rejected eve@example.com with s3cr3t",
            },
        )
        try:
            raise ValueError("bad eve@example.com s3cr3t")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    return out.getvalue()


def test_json_lines_carry_milliseconds_and_masked_context_fields() -> None:
    first, second = (orjson.loads(line) for line in _emit("json", ("s3cr3t",)).splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"]), first
    assert first["level"] == "WARNING"
    assert first["logger"] == "test.context"
    assert first["message"] == f"dead letter for {mask_email('eve@example.com')}"
    assert (first["topic"], first["partition"], first["offset"]) == ("mparticle-batches", 3, 41)
    assert first["mpid"] == mask_mpid("-8000000000")
    assert "8000000000" not in first["mpid"]
    assert first["reason"] == f"rejected {mask_email('eve@example.com')} with **********"
    assert second["message"] == "failed"
    assert "ValueError: bad <email:" in second["exception"]
    assert "s3cr3t" not in second["exception"]


def test_text_lines_are_redacted_too() -> None:
    text = _emit("text", ("s3cr3t",))
    assert "WARNING test.context: dead letter for <email:" in text
    assert "[topic=mparticle-batches partition=3 offset=41 mpid=<mpid:" in text
    assert "ValueError: bad <email:" in text  # the traceback follows its line
    assert "eve@example.com" not in text
    assert "s3cr3t" not in text


def test_masking_a_huge_text_without_an_at_sign_takes_linear_time() -> None:
    """A quadratic scan of a 1 MB payload took hours; linear takes milliseconds."""
    import time  # noqa: PLC0415

    began = time.monotonic()
    text = redact("x" * 1_000_000 + " ada@example.com")
    assert time.monotonic() - began < 10  # hours before the fix: generous on a busy machine
    assert text.endswith(mask_email("ada@example.com"))
