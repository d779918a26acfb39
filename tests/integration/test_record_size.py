"""Input records too large to copy, on the real broker under ``exactly_once`` (the default).

Breaker finding: the broker takes records up to 1,048,588 bytes, the worker's producer sends
at most 1,000,000. A 1,040,019-byte record of invalid JSON (its dead letter: 1,040,497 bytes)
and a valid 999,947-byte batch keyed by an email (its re-key record: 1,000,084 bytes) each
made the worker exit 1 on every start, the partition stuck for ever. Now each is a
``too_large`` dead letter, its payload cut to fit and its headers saying so, and the valid
batch behind it on the same partition is delivered; the worker never exits.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from app.core.avro import codec
from app.web import kafka_partition
from tests.integration.cli import mpcio
from tests.integration.support import consume_until, produce, wait_for, worker_metrics

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

EMAIL_KEY = b"big81@example.com"
PRODUCER_LIMIT = 1_000_000  # faust's producer_max_request_size (app/core/sizes.py)
BAD_JSON = b'{"mpid": 80, "x": "' + b"z" * 1_040_000  # the breaker's 1,040,019 bytes


def _batch(mpid: int, name: str, pad: int = 0) -> bytes:
    event = {"event_type": "custom_event", "data": {"event_name": name, "source_message_id": name}}
    if pad:
        event["data"]["custom_attributes"] = {"p": "y" * pad}
    return orjson.dumps(
        {
            "mpid": mpid,
            "environment": "production",
            "user_identities": {"email": f"u{mpid}@example.com"},
            "events": [event],
        }
    )


def _padded(mpid: int, name: str, size: int) -> bytes:
    """A valid one-event batch of exactly ``size`` bytes."""
    return _batch(mpid, name, pad=size - len(_batch(mpid, name, pad=1)) + 1)


async def test_records_too_large_to_copy_are_cut_dead_letters_and_the_stream_goes_on(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    topics = deployment.topics
    bootstrap = deployment.kafka.bootstrap
    big_valid = _padded(81, "big", 999_947)
    assert (len(BAD_JSON), len(big_valid)) == (1_040_019, 999_947)
    await produce(
        bootstrap,
        topics.batches.name,
        [
            (b"80", BAD_JSON),
            (b"80", _batch(80, "after-bad-json")),  # same key: same partition, behind it
            (EMAIL_KEY, big_valid),  # keyed by an email: must be re-keyed
            (EMAIL_KEY, _batch(82, "after-big-rekey")),
        ],
    )
    worker = deployment.start_worker()

    def delivered() -> set[str]:
        worker.assert_running()
        return {event.name for event in emulator.state.store.events}

    await wait_for(
        lambda: {"after-bad-json", "after-big-rekey"} <= delivered(), 120, "both valid batches"
    )
    dead = await consume_until(
        bootstrap, topics.deadletter.name, lambda rs: len(rs) >= 2, workers=[worker]
    )
    by_key = {record.key: record for record in dead}
    partitions = int(deployment.env["MPCIO_TOPIC_PARTITIONS"])
    shared = kafka_partition(b"80", partitions) == kafka_partition(EMAIL_KEY, partitions)
    offsets = {b"80": 0, b"81": 2 if shared else 0}  # where each big record was written
    assert sorted(by_key) == [b"80", b"81"]  # the re-keyed part's dead letter: key = its mpid
    for key, original, first in ((b"80", BAD_JSON, "invalid_json"), (b"81", big_valid, "")):
        record = by_key[key]
        letter = codec("dead_letter").decode(record.value)
        headers = dict(record.headers)
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            record.key, record.value, list(record.headers)
        )
        assert size <= PRODUCER_LIMIT  # what the worker's producer sends
        assert letter["reason"] == "too_large"
        assert letter["payload_bytes"] == len(original)
        assert 990_000 < len(letter["payload"]) < len(original)
        assert original.startswith(letter["payload"])
        assert (letter["source_topic"], letter["source_offset"]) == (
            topics.batches.name,
            offsets[key],
        )
        assert headers["mpcio.reason"] == b"too_large"
        assert headers["mpcio.payload.truncated"] == b"true"
        assert headers["mpcio.payload.bytes"] == str(len(original)).encode()
        assert headers["mpcio.source.topic"] == topics.batches.name.encode()
        assert headers["mpcio.source.offset"] == str(letter["source_offset"]).encode()
        assert first in letter["detail"]
    assert "big" not in delivered()  # nothing of the cut re-key part was forwarded
    metrics = await worker_metrics(deployment.env["MPCIO_WEB_PORT"])
    too_large = frozenset({"stage": "ingest", "reason": "too_large"}.items())
    assert metrics.get(("mpcio_dead_letters_total", too_large)) == 2
    worker.assert_running()
    assert "stopping" not in worker.output()

    # the operator tools say it is cut, and redrive refuses it
    env = deployment.env
    listed = await mpcio("deadletter", "list", "--reason", "too_large", env=env)
    assert listed.code == 0, listed.both
    assert listed.out.count("[TRUNCATED ") == 2, listed.out
    position = listed.out.split()[0]
    shown = json.loads((await mpcio("deadletter", "show", position, env=env)).out)
    assert shown["payload_truncated"] is True
    assert shown["original_payload_bytes"] in (len(BAD_JSON), len(big_valid))
    assert "the whole record is at" in shown["truncation"]
    redriven = await mpcio("deadletter", "redrive", "--reason", "too_large", env=env)
    assert redriven.code == 0, redriven.both
    assert "0 sent, 2 skipped" in redriven.err, redriven.both
    assert redriven.out.count("cannot be redriven") == 2, redriven.out
