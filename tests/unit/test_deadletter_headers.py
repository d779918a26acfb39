"""Kafka headers of dead letters (app.records) and what redrive does with them."""

from __future__ import annotations

from app.ops.deadletters import Position, Redrive, decode_stored, plan_redrive
from app.records import (
    CONTEXT,
    DETAIL_MAX_CHARS,
    REDRIVEN_FROM,
    SourcePosition,
    as_list,
    dead_letter,
    dead_letter_record,
    redrive_headers,
)
from app.settings import load_settings

T = 1_764_400_000_000
SETTINGS = load_settings(forwarding_enabled=False, topic_operations="ops", topic_deadletter="dl")


def _letter(stage: str = "ingest", payload: bytes = b'{"mpid": 42', **extra: object) -> bytes:
    """An encoded dead letter (reason ``invalid_json``, source ``batches[2]@40``)."""
    return dead_letter(
        "invalid_json",
        "broken near zoe@example.com",
        stage=stage,
        source=SourcePosition("batches", 2, 40),
        key=b"42",
        payload=payload,
        failed_at_ms=T,
        **extra,  # type: ignore[arg-type]
    )


def test_ingest_letter_headers_name_the_context_and_keep_the_source_headers() -> None:
    letter = _letter()
    source = [("trace-id", b"abc"), ("mpcio.reason", b"stale")]
    key, value, headers, cut_from = dead_letter_record(letter, source)
    assert (key, value, cut_from) == (b"42", letter, None)  # keyed by the source record's key
    named = dict(headers)
    assert named["trace-id"] == b"abc"
    assert named["mpcio.reason"] == b"invalid_json"  # replaced, not duplicated
    assert [name for name, _ in headers].count("mpcio.reason") == 1
    assert named["mpcio.stage"] == b"ingest"
    assert named["mpcio.source.topic"] == b"batches"
    assert named["mpcio.source.partition"] == b"2"
    assert named["mpcio.source.offset"] == b"40"
    assert named["mpcio.attempts"] == b"0"
    assert named["mpcio.value.schema"] == b"io.mpcio.DeadLetter"
    assert "mpcio.http.status" not in named
    assert b"zoe@example.com" not in named["mpcio.detail"]  # emails masked in headers


def test_sink_letter_headers_carry_status_and_attempts() -> None:
    named = dict(dead_letter_record(_letter(stage="sink", http_status=400, attempts=3)).headers)
    assert named["mpcio.http.status"] == b"400"
    assert named["mpcio.attempts"] == b"3"
    assert all(name.startswith("mpcio.") for name in named)


def test_long_details_are_cut_in_the_header() -> None:
    letter = dead_letter(
        "retries_exhausted",
        "x" * 2000,
        stage="sink",
        source=SourcePosition("ops", 0, 1),
        key=None,
        payload=b"{}",
        failed_at_ms=T,
    )
    detail = dict(dead_letter_record(letter).headers)["mpcio.detail"].decode()
    assert len(detail) == DETAIL_MAX_CHARS
    assert detail.endswith("…")


def test_unknown_source_position_leaves_its_headers_out() -> None:
    letter = dead_letter(
        "state_corrupt",
        "bad",
        stage="ingest",
        source=SourcePosition("batches", None, None),  # type: ignore[arg-type]
        key=None,
        payload=b"",
        failed_at_ms=T,
    )
    named = dict(dead_letter_record(letter).headers)
    assert "mpcio.source.partition" not in named
    assert "mpcio.source.offset" not in named


def test_headers_from_faust_mappings_and_none() -> None:
    assert as_list(None) == []
    assert as_list({"a": b"1"}) == [("a", b"1")]
    assert as_list((("a", b"1"), ("b", None))) == [("a", b"1"), ("b", b"")]  # type: ignore[arg-type]


def test_redrive_drops_the_context_and_says_where_from() -> None:
    headers = dead_letter_record(_letter(), [("trace-id", b"abc"), (REDRIVEN_FROM, b"old")]).headers
    again = redrive_headers(headers, "dl/1@5")
    assert again == [("trace-id", b"abc"), (REDRIVEN_FROM, b"dl/1@5")]
    assert not {name for name, _ in again} & set(CONTEXT)


def test_planned_redrives_carry_the_source_headers() -> None:
    letter = _letter()
    headers = dead_letter_record(letter, [("trace-id", b"abc")]).headers
    stored = decode_stored(Position.parse("1@5"), T, b"42", letter, headers)
    plan = plan_redrive(stored, SETTINGS)
    assert isinstance(plan, Redrive)
    assert plan.headers == [("trace-id", b"abc"), (REDRIVEN_FROM, b"dl/1@5")]
    item = b'{"type":"person","identifiers":{"id":"c1"},"action":"identify"}'
    sink = decode_stored(Position.parse("0@9"), T, b"42", _letter(stage="sink", payload=item))
    planned = plan_redrive(sink, SETTINGS, now_ms=T)
    assert isinstance(planned, Redrive)
    assert planned.topic == "ops"
    assert planned.headers == [(REDRIVEN_FROM, b"dl/0@9")]
