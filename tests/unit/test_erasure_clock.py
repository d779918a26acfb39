"""The erasure agent's step clamps a future erasure time and says so; a batch or an audience
update dropped as erased leaves one INFO line (agents.ingest.erasure_step / batch_step /
audience_step), never the mpid in clear."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from agents.ingest import audience_step, batch_step, erasure_step
from app.core.erasure import CLOCK_AHEAD_TOLERANCE_MS as TOLERANCE
from app.records import SourcePosition, now_ms
from app.settings import load_settings
from app.wiring import core_options

HOUR_MS = 3_600_000


@dataclass
class Tables:
    """What the steps read of ``IngestTables``: no state, one erasure marker at most."""

    erased_ms: int | None = None

    def load(self, _mpid: str) -> bytes | None:
        return None

    def erased_at(self, _key: bytes | None) -> int | None:
        return self.erased_ms

    def identity_erased_at(self, _marker_key: str) -> int | None:
        return None

    def states_of_partition(self, _partition: int, _partitions: int) -> list[Any]:
        return []


@dataclass(frozen=True)
class Event:
    key: bytes
    value: bytes


def _at(topic: str, ms: int) -> SourcePosition:
    return SourcePosition(topic, 0, 5, timestamp_ms=ms)


@pytest.mark.parametrize(("ahead_ms", "warned"), [(HOUR_MS, True), (1_000, False)])
def test_an_erasure_stamped_far_ahead_is_clamped_and_said(
    caplog: pytest.LogCaptureFixture, ahead_ms: int, warned: bool
) -> None:
    step = erasure_step(Tables(), 4)  # type: ignore[arg-type]
    request = orjson.dumps({"subject_request_type": "erasure", "mpid": 8123})
    before = now_ms()
    with caplog.at_level(logging.WARNING, logger="agents.ingest"):
        result = step(Event(b"8123", request), _at("erasure", before + ahead_ms))
    if warned:  # clamped to the tolerance ahead of the worker's clock
        assert before + TOLERANCE <= result.erased["8123"] <= now_ms() + TOLERANCE
    else:  # normal skew: the erasure's own time (its source's batches share that clock)
        assert result.erased["8123"] == before + ahead_ms
    warnings = [r for r in caplog.records if getattr(r, "reason", None) == "clock_ahead"]
    assert len(warnings) == warned
    assert all("8123" not in r.getMessage() and r.mpid != "8123" for r in warnings)


BATCH = {"mpid": 8123, "user_identities": {"email": "a@b.co"}, "events": []}
MEMBERSHIP = {
    "mpid": 8123,
    "user_identities": [{"type": "email", "value": "a@b.co"}],
    "audiences": [{"audience_id": 1, "audience_name": "Gold", "action": "add"}],
}


@pytest.mark.parametrize(
    ("make_step", "topic", "value", "counter"),
    [
        (batch_step, "batches", BATCH, "batches"),
        (audience_step, "audiences", MEMBERSHIP, "audience_updates"),
    ],
)
def test_a_record_dropped_as_erased_leaves_one_info_line(
    caplog: pytest.LogCaptureFixture,
    make_step: Any,
    topic: str,
    value: dict[str, Any],
    counter: str,
) -> None:
    options = core_options(load_settings(forwarding_enabled=False))
    step = make_step(Tables(erased_ms=5_000), options)
    with caplog.at_level(logging.INFO, logger="agents.ingest"):
        dropped = step(Event(b"8123", orjson.dumps(value)), _at(topic, 4_999))
        kept = step(Event(b"8123", orjson.dumps(value)), _at(topic, 5_001))
    assert dropped.counts[counter, "erased"] == 1
    assert dropped.operations is None
    assert not dropped.states
    assert kept.counts[counter, "erased"] == 0
    assert kept.states  # a new user from scratch
    lines = [r for r in caplog.records if getattr(r, "reason", None) == "erased"]
    assert len(lines) == 1
    assert "5000" in lines[0].getMessage()
    assert "4999" in lines[0].getMessage()
    assert lines[0].mpid != "8123"


@pytest.mark.parametrize(
    ("recorded_ms", "request_ms", "expected_ms"),
    [
        (None, 5_000, 5_000),  # first erasure of the user
        (4_000, 5_000, 5_000),  # a later erasure moves the marker forward
        (9_000, 5_000, 9_000),  # an older one read after it does not move it back
        (5_000, 5_000, 5_000),
    ],
)
def test_an_erasure_marker_never_moves_back(
    recorded_ms: int | None, request_ms: int, expected_ms: int
) -> None:
    step = erasure_step(Tables(erased_ms=recorded_ms), 4)  # type: ignore[arg-type]
    request = orjson.dumps({"subject_request_type": "erasure", "mpid": 8123})
    result = step(Event(b"8123", request), _at("erasure", request_ms))
    assert result.erased == {"8123": expected_ms}


def test_an_identity_marker_never_moves_back() -> None:
    """A Firehose DSR by email (no mpid) older than the one recorded for that email keeps the
    recorded time on its identity marker, as an mpid marker does."""
    step = erasure_step(Tables(erased_ms=9_000), 4)  # type: ignore[arg-type]
    request = orjson.dumps(
        {"subject_request_type": "erasure", "subject_identities": {"email": {"value": "a@b.co"}}}
    )
    result = step(Event(b"", request), _at("erasure", 5_000))
    assert list(result.erased.values()) == [9_000]
    assert all(key.startswith("id:") for key in result.erased)
