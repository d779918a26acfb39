"""Nothing consumed silently, on the real broker: tombstones, empty, too-deep, too-large records.

Each of these, on each input topic, becomes a dead letter with its reason and is counted in
``mpcio_dead_letters_total`` and the topic's ``rejected`` outcome; valid batches behind them
are still delivered (the stream does not stop).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import orjson
import pytest

from app.core.avro import codec
from tests.integration.support import consume_until, produce, wait_for, worker_metrics

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

T0 = 1_764_400_000_000
DEEP_ATTRIBUTES = b'{"n":' * 1000 + b"1" + b"}" * 1000


def _batch(mpid: int, name: str) -> bytes:
    return orjson.dumps(
        {
            "mpid": mpid,
            "timestamp_unixtime_ms": T0,
            "user_identities": {"email": f"u{mpid}@example.com"},
            "events": [
                {
                    "event_type": "custom_event",
                    "data": {"event_name": name, "source_message_id": name, "x": 0},
                }
            ],
        }
    )


def _many_events(mpid: int, count: int) -> bytes:
    events = [{"event_type": "custom_event", "data": {"event_name": f"e{i}"}} for i in range(count)]
    return orjson.dumps(
        {"mpid": mpid, "user_identities": {"email": f"u{mpid}@example.com"}, "events": events}
    )


async def test_tombstones_empty_and_deep_records_are_dead_lettered_and_counted(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    topics = deployment.topics
    bootstrap = deployment.kafka.bootstrap
    deep = _batch(3, "deep").replace(b'"x":0', b'"custom_attributes":' + DEEP_ATTRIBUTES)
    batches: list[tuple[bytes | None, bytes | None]] = [
        (b"1", _batch(1, "before")),
        (b"1", None),
        (b"1", b"[]"),
        (b"1", b"{}"),
        (b"3", deep),
        (b"4", _many_events(4, 10_000)),  # ~0.5 MB in, its operations would be ~1.2 MB
        (b"1", _batch(1, "after")),
    ]
    await produce(bootstrap, topics.batches.name, batches)
    await produce(
        bootstrap, topics.audiences.name, [(b"1", None), (b"1", b'{"user_profiles": []}')]
    )
    await produce(bootstrap, topics.erasure.name, [(b"1", None), (b"1", b"{}")])
    worker = deployment.start_worker()

    dead = await consume_until(
        bootstrap, topics.deadletter.name, lambda rs: len(rs) >= 9, workers=[worker]
    )
    letters = [codec("dead_letter").decode(record.value) for record in dead]
    assert Counter((d["source_topic"], d["reason"]) for d in letters) == {
        (topics.batches.name, "tombstone"): 1,
        (topics.batches.name, "empty_record"): 1,
        (topics.batches.name, "mpid_missing"): 1,
        (topics.batches.name, "too_deep"): 1,
        (topics.batches.name, "too_large"): 1,
        (topics.audiences.name, "tombstone"): 1,
        (topics.audiences.name, "empty_record"): 1,
        (topics.erasure.name, "tombstone"): 1,
        (topics.erasure.name, "erasure_invalid"): 1,
    }
    for letter in letters:
        assert letter["key"] in (b"1", b"3", b"4")
        if letter["reason"] == "tombstone":
            assert letter["payload"] == b""
        if letter["reason"] == "too_deep":
            assert letter["payload"] == deep  # intact, for a redrive once fixed

    # the stream went on: the batch behind the bad records was delivered
    def delivered() -> set[str]:
        worker.assert_running()
        return {event.name for event in emulator.state.store.events}

    await wait_for(lambda: {"before", "after"} <= delivered(), 60, "both valid batches")

    metrics = await worker_metrics(deployment.env["MPCIO_WEB_PORT"])

    def count(name: str, **labels: str) -> float:
        return metrics.get((name, frozenset(labels.items())), 0.0)

    reasons = {"tombstone": 3, "empty_record": 2, "mpid_missing": 1, "too_deep": 1, "too_large": 1}
    for reason, expected in reasons.items():
        assert count("mpcio_dead_letters_total", stage="ingest", reason=reason) == expected
    assert count("mpcio_batches_total", outcome="rejected") == 5
    assert count("mpcio_audience_updates_total", outcome="rejected") == 2
    assert count("mpcio_erasure_requests_total", outcome="rejected") == 2
    assert count("mpcio_batches_total", outcome="forwarded") == 2
    assert "internal_error" not in worker.output()
