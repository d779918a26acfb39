"""Deterministic ULIDs: encoding checked against the ULID spec with an independent decoder."""

from __future__ import annotations

import random

import pytest

from app.core.ulid import CROCKFORD_ALPHABET, MAX_TIME_MS, event_ulid, ulid


def decode_ulid(text: str) -> tuple[int, bytes]:
    """Reference decoder written from the spec: 26 Crockford digits, 48-bit time, 80-bit rest."""
    value = 0
    for char in text:
        value = value * 32 + CROCKFORD_ALPHABET.index(char)
    return value >> 80, (value & ((1 << 80) - 1)).to_bytes(10, "big")


@pytest.mark.parametrize(
    ("time_ms", "randomness", "expected"),
    [
        pytest.param(0, bytes(10), "00000000000000000000000000", id="all-zero"),
        pytest.param(MAX_TIME_MS, b"\xff" * 10, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ", id="max"),
        # The ULID spec's README: ulid(1469918176385) starts with 01ARYZ6S41.
        pytest.param(1469918176385, bytes(10), "01ARYZ6S410000000000000000", id="spec-time"),
        pytest.param(0, b"\x00" * 9 + b"\x01", "00000000000000000000000001", id="lowest-bit"),
        pytest.param(1, bytes(10), "00000000010000000000000000", id="time-1ms"),
    ],
)
def test_ulid_known_vectors(time_ms: int, randomness: bytes, expected: str) -> None:
    assert ulid(time_ms, randomness) == expected


@pytest.mark.parametrize(
    ("time_ms", "randomness"),
    [
        pytest.param(1_700_000_000_123, bytes(range(10)), id="ascending-bytes"),
        pytest.param(281474976710654, b"\x80" + bytes(9), id="near-max-time"),
        pytest.param(1558388284131, b"\x12\x34\x56\x78\x9a\xbc\xde\xf0\x0f\xed", id="mixed"),
    ],
)
def test_ulid_round_trips_through_reference_decoder(time_ms: int, randomness: bytes) -> None:
    text = ulid(time_ms, randomness)
    assert len(text) == 26
    assert set(text) <= set(CROCKFORD_ALPHABET)
    assert text[0] in "01234567"
    assert decode_ulid(text) == (time_ms, randomness)


def test_ulids_sort_by_time() -> None:
    earlier = ulid(1_000, b"\xff" * 10)
    later = ulid(1_001, bytes(10))
    assert earlier < later


@pytest.mark.parametrize(
    ("time_ms", "randomness"),
    [
        pytest.param(-1, bytes(10), id="negative-time"),
        pytest.param(MAX_TIME_MS + 1, bytes(10), id="time-over-48-bits"),
        pytest.param(0, bytes(9), id="short-randomness"),
        pytest.param(0, bytes(11), id="long-randomness"),
    ],
)
def test_ulid_rejects_out_of_range_parts(time_ms: int, randomness: bytes) -> None:
    with pytest.raises(ValueError, match="ULID"):
        ulid(time_ms, randomness)


def test_event_ulid_is_deterministic_and_keyed_by_identity() -> None:
    first = event_ulid(1_700_000_000_000, b"m\x00abc")
    assert first == event_ulid(1_700_000_000_000, b"m\x00abc")
    assert first != event_ulid(1_700_000_000_000, b"m\x00abd")
    assert decode_ulid(first)[0] == 1_700_000_000_000


def test_event_ulid_without_time_uses_time_zero() -> None:
    assert event_ulid(None, b"x")[:10] == "0000000000"


def encode_ulid(time_ms: int, randomness: bytes) -> str:
    """Reference encoder written from the spec: 130 bits (two zero bits first), 5 at a time."""
    value = (time_ms << 80) | int.from_bytes(randomness, "big")
    return "".join(CROCKFORD_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))


def test_ulid_matches_the_reference_encoder_on_random_parts() -> None:
    """The encoding is a C++ library's (ulid_transform): every bit position is checked."""
    rng = random.Random(19)
    for _ in range(2000):
        time_ms, randomness = rng.randint(0, MAX_TIME_MS), rng.randbytes(10)
        assert ulid(time_ms, randomness) == encode_ulid(time_ms, randomness)
