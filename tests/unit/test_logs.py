"""Logs never carry raw email addresses, secrets or URL credentials."""

from __future__ import annotations

import logging
import re
import sys

import orjson
import pytest

from app import masking
from app.logs import (
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    log_cuts,
    log_held_back,
    mask_mpid,
)
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


def _emit(fmt: str) -> str:
    """Log through :func:`configure_logging`'s handler (with :data:`MASKER` installed) into a
    string; the root logger and the masker are restored."""
    import io  # noqa: PLC0415

    root = logging.getLogger()
    saved = root.handlers[:], root.level, masking.active()
    masking.install(MASKER)
    configure_logging("INFO", fmt)
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
                "reason": "rejected eve@example.com with topsecret",
            },
        )
        try:
            raise ValueError("bad eve@example.com topsecret")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        masking.install(saved[2])
    return out.getvalue()


def test_json_lines_carry_milliseconds_and_masked_context_fields() -> None:
    first, second = (orjson.loads(line) for line in _emit("json").splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"]), first
    assert first["level"] == "WARNING"
    assert first["logger"] == "test.context"
    assert first["message"] == f"dead letter for {MASKER.email('eve@example.com')}"
    assert (first["topic"], first["partition"], first["offset"]) == ("mparticle-batches", 3, 41)
    assert first["mpid"] == MASKER.value("-8000000000")
    assert "8000000000" not in first["mpid"]
    assert first["reason"] == f"rejected {MASKER.email('eve@example.com')} with **********"
    assert second["message"] == "failed"
    assert "ValueError: bad <email:" in second["exception"]
    assert "topsecret" not in second["exception"]


def test_text_lines_are_redacted_too() -> None:
    text = _emit("text")
    assert "WARNING test.context: dead letter for <email:" in text
    assert "[topic=mparticle-batches partition=3 offset=41 mpid=<value:" in text
    assert "ValueError: bad <email:" in text  # the traceback follows its line
    assert "eve@example.com" not in text
    assert "topsecret" not in text


@pytest.mark.parametrize("name", ["faust.topics", "aiokafka.producer.producer", "aiokafka.conn"])
def test_record_dumping_loggers_stay_at_info_at_debug(name: str) -> None:
    """aiokafka.conn at DEBUG prints record bytes and SASL authenticate bytes cut at 100 bytes
    or escaped, which the masker cannot recognise (an address or password cut short)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("DEBUG", "text")
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG)
        assert logging.getLogger("app.worker").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize(("held_back", "lines"), [(0, 0), (1, 1), (105, 1)])
def test_held_back_attributes_are_logged_by_count_and_masked_mpid(
    caplog: pytest.LogCaptureFixture, held_back: int, lines: int
) -> None:
    with caplog.at_level(logging.WARNING, logger="test.held_back"):
        log_held_back(logging.getLogger("test.held_back"), held_back, "8016563786744591001")
    assert len(caplog.records) == lines
    for record in caplog.records:
        assert record.getMessage().startswith(f"{held_back} user attribute(s) not forwarded")
        assert record.mpid == mask_mpid("8016563786744591001")  # type: ignore[attr-defined]
        assert "8016563786744591001" not in record.getMessage()


def test_cuts_are_logged_once_by_kind_count_and_masked_mpid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="test.cuts"):
        log_cuts(
            logging.getLogger("test.cuts"),
            "8016563786744591001",
            {"event_name_truncated": 2, "attribute_value_truncated": 1},
        )
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "value(s) cut or not sent to fit Customer.io's limits: "
        "attribute_value_truncated=1, event_name_truncated=2 "
    )
    assert record.mpid == mask_mpid("8016563786744591001")  # type: ignore[attr-defined]
    assert record.reason == "limits"  # type: ignore[attr-defined]
    assert "8016563786744591001" not in record.getMessage()
