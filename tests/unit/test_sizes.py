"""Record sizes: the one producer limit, and what is cut or dead-lettered to stay under it.

Breaker finding: an input record near the broker's limit (1,040,019 bytes of invalid JSON; a
valid 999,947-byte batch to re-key) made a copy (its dead letter, its re-key record) that the
producer refused, and the worker stopped on every restart."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from app.core.pipeline import IngestResult, bound_rekeyed, count_cut_letters
from app.core.sizes import PRODUCER_MAX_REQUEST_BYTES, fits, kept_bytes, record_bytes
from app.errors import Reason
from app.records import (
    SourcePosition,
    Stage,
    dead_letter,
    dead_letter_record,
    decode_dead_letter,
)

LIMIT = PRODUCER_MAX_REQUEST_BYTES
SOURCE = SourcePosition("mparticle-batches", 3, 17)
BIG_JSON = b'{"mpid": 80, "x": "' + b"z" * 1_040_000  # the breaker's 1,040,019 bytes


@pytest.mark.parametrize(
    ("payload", "excess", "kept"),
    [
        (b"abcdef", 0, 6),  # nothing to cut
        (b"abcdef", -5, 6),  # room to spare
        (b"abcdef", 2, 4),
        (b"abcdef", 6, 0),
        (b"abcdef", 60, 0),  # more than the whole payload
        ("aé".encode(), 1, 1),  # would split é (2 bytes): back to its start
        ("a€".encode(), 1, 1),  # € is 3 bytes: back over 2 continuation bytes
        ("a€".encode(), 2, 1),
        ("€€".encode(), 2, 3),  # the cut is at the second € 's start: kept whole
        (b"\x80\x80\x80\x80\x80", 1, 1),  # not UTF-8: moves back at most 3 bytes
    ],
)
def test_kept_bytes_cuts_by_the_excess_at_a_character_start(
    payload: bytes, excess: int, kept: int
) -> None:
    assert kept_bytes(payload, excess) == kept


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (None, None, []),
        (b"80", b"x" * 1000, []),
        (b"80", b"x" * 200_000, [("mpcio.rekey.kind", b"batches"), ("h", b"")]),
        (b"", b"x" * 63, [("é" * 64, b"y" * 64)]),  # varints at their 1-byte edge
        (b"k" * 64, b"x" * 8191, [("h", b"y" * 8192)]),  # 2- and 3-byte varints
        (b"80", b"x" * 1_048_576, [(f"h{i}", b"v") for i in range(200)]),
    ],
)
def test_record_bytes_is_the_producers_own_estimate(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    expected = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    assert record_bytes(key, value, headers) == expected
    assert record_bytes(key, value, headers) > len(value or b"")  # overhead counted


@pytest.mark.parametrize(
    ("extra", "fit"),
    [(0, True), (1, False), (-1, True)],
)
def test_fits_is_the_limit_inclusive(extra: int, fit: bool) -> None:
    overhead = record_bytes(b"k", b"")
    value = b"v" * (LIMIT - overhead + extra - 2)  # 2: the value's length varint grows to 3
    assert (record_bytes(b"k", value) - LIMIT, fits(b"k", value)) == (extra, fit)


@pytest.mark.parametrize(
    "headers",
    [[], [("mpcio.rekey.kind", b"batches")], [("é" * 30, b"v" * 300), ("h", b"")]],
)
def test_fits_agrees_with_the_exact_size_far_from_and_near_the_limit(
    headers: list[tuple[str, bytes]],
) -> None:
    # the upper bound decides far below the limit, the exact size near it: never differently
    base = LIMIT - record_bytes(b"42", b"", headers)
    for length in (0, 4000, base - 200, *range(base - 40, base + 5)):
        value = b"v" * length
        assert fits(b"42", value, headers) is (record_bytes(b"42", value, headers) <= LIMIT)


def _letter(
    payload: bytes, key: bytes | None = b"80", reason: Reason = Reason.INVALID_JSON, **sink: Any
) -> bytes:
    """An ingest dead letter of ``payload``; ``sink``: the fields of a sink one instead."""
    fields = {"stage": Stage.INGEST, "source": SOURCE, "failed_at_ms": 7, **sink}
    return dead_letter(reason, "unexpected end of data", key=key, payload=payload, **fields)


def test_a_dead_letter_that_fits_is_written_as_it_is() -> None:
    letter = _letter(b'{"mpid": 80')
    record = dead_letter_record(letter, [("trace", b"1")])
    assert (record.value, record.cut_from, record.key) == (letter, None, b"80")
    names = [name for name, _ in record.headers]
    assert "trace" in names
    assert "mpcio.payload.truncated" not in names


@pytest.mark.parametrize(
    ("case", "key", "source_headers", "kept_key", "kept_headers"),
    [
        ("breaker's invalid JSON", b"80", [("trace", b"1")], b"80", True),
        ("source headers too large to keep", b"80", [("big", b"h" * 1_000_000)], b"80", False),
        ("a key too large to keep", b"k" * 600_000, [], None, False),
    ],
)
def test_a_dead_letter_too_large_is_cut_to_fit_and_says_so(
    case: str,
    key: bytes,
    source_headers: list[tuple[str, bytes]],
    kept_key: bytes | None,
    kept_headers: bool,
) -> None:
    payload = BIG_JSON if len(key) < 1000 else b"y" * 400_000
    letter = _letter(payload, key)
    record = dead_letter_record(letter, source_headers)
    assert record_bytes(record.key, record.value, record.headers) <= LIMIT, case
    assert record.cut_from == "invalid_json"
    cut = decode_dead_letter(record.value)
    assert cut["reason"] == "too_large"
    assert cut["payload_bytes"] == len(payload)
    assert payload.startswith(cut["payload"])
    assert len(cut["payload"]) > len(payload) - 100_000 or not kept_headers or len(key) > 1000
    assert (cut["key"], record.key) == (kept_key, kept_key)
    assert (cut["source_topic"], cut["source_partition"], cut["source_offset"]) == (
        "mparticle-batches",
        3,
        17,
    )
    assert "invalid_json: unexpected end of data" in cut["detail"]
    assert "mparticle-batches[3]@17" in cut["detail"]
    headers = dict(record.headers)
    assert headers["mpcio.reason"] == b"too_large"
    assert headers["mpcio.payload.bytes"] == str(len(payload)).encode()
    assert headers["mpcio.payload.truncated"] == b"true"
    assert (headers["mpcio.source.partition"], headers["mpcio.source.offset"]) == (b"3", b"17")
    assert ("trace" in headers or "big" in headers) is kept_headers


def test_the_breakers_letter_keeps_all_but_the_overflow() -> None:
    record = dead_letter_record(_letter(BIG_JSON), [])
    cut = decode_dead_letter(record.value)
    # as much as fits: the record is within a few bytes of the limit
    assert LIMIT - 20 <= record_bytes(record.key, record.value, record.headers) <= LIMIT
    assert len(cut["payload"]) > 999_000


def test_a_sink_letter_too_large_is_cut_too() -> None:
    sink = {"stage": Stage.SINK, "source": SourcePosition("ops", 0, 5), "attempts": 8}
    letter = _letter(b"i" * 999_990, b"42", Reason.RETRIES_EXHAUSTED, http_status=503, **sink)
    record = dead_letter_record(letter)
    cut = decode_dead_letter(record.value)
    assert (record.cut_from, cut["reason"]) == ("retries_exhausted", "too_large")
    assert cut["stage"] == "sink"
    assert (cut["http_status"], cut["attempts"]) == (503, 8)
    assert fits(record.key, record.value, record.headers)


REKEY_HEADERS = [("mpcio.rekey.kind", b"batches"), ("mpcio.rekey.from", b"mparticle-batches/3@17")]


@pytest.mark.parametrize(
    ("parts", "sent", "too_large"),
    [
        ([], [], []),
        ([("1", b"{}"), ("2", b"{}")], ["1", "2"], []),
        ([("1", b"{}"), ("2", b"x" * 999_947)], ["1"], ["2"]),  # the breaker's re-key
        ([("2", b"x" * 999_900), ("3", b"x" * LIMIT)], [], ["2", "3"]),
    ],
)
def test_bound_rekeyed_dead_letters_parts_too_large_to_send(
    parts: list[tuple[str, bytes]], sent: list[str], too_large: list[str]
) -> None:
    result = IngestResult(rekeyed=list(parts))
    result.counts["batches", "rekeyed"] += len(parts)
    bound_rekeyed(result, REKEY_HEADERS, SOURCE, clock=lambda: 7)
    assert [mpid for mpid, _ in result.rekeyed] == sent
    letters = [decode_dead_letter(letter) for letter in result.dead_letters]
    assert [letter["key"] for letter in letters] == [mpid.encode() for mpid in too_large]
    assert {letter["reason"] for letter in letters} <= {"too_large"}
    assert all("re-key record would be" in letter["detail"] for letter in letters)
    assert result.counts["batches", "rekeyed"] == len(sent)
    assert result.counts["batches", "rejected"] == len(too_large)
    assert result.counts["dead_letters", Stage.INGEST, Reason.TOO_LARGE] == len(too_large)
    # each part written as a dead letter fits once cut
    for letter in result.dead_letters:
        record = dead_letter_record(letter, REKEY_HEADERS)
        assert fits(record.key, record.value, record.headers)


def test_count_cut_letters_moves_the_count_to_too_large() -> None:
    counts: Counter[tuple[str, ...]] = Counter({("dead_letters", Stage.INGEST, "invalid_json"): 2})
    records = [dead_letter_record(_letter(BIG_JSON)), dead_letter_record(_letter(b"{"))]
    count_cut_letters(counts, records)
    assert counts["dead_letters", Stage.INGEST, "invalid_json"] == 1
    assert counts["dead_letters", Stage.INGEST, Reason.TOO_LARGE] == 1
