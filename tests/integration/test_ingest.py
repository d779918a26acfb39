"""Ingest on the real broker: mParticle batches in, exact Customer.io operations out."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import orjson
import pytest

from app.core.avro import codec
from tests.integration import workload
from tests.integration.support import (
    REPO,
    WorkerProcess,
    consume_until,
    produce,
    worker_with_topics,
)

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration

SAMPLE = REPO / "samples" / "mparticle-batches.jsonl"


def _key(line: bytes) -> bytes | None:
    """The record key mParticle would set: the batch's mpid (none for unparseable lines)."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    first = document[0] if isinstance(document, list) else document
    return str(first.get("mpid")).encode()


async def test_sample_batches_become_exact_operations_and_dead_letters(
    kafka: LocalKafka, names: Names, tmp_path: Path
) -> None:
    env, topics = await worker_with_topics(kafka.url, names.prefix)
    lines = [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]
    await produce(kafka.bootstrap, topics.batches.name, [(_key(line), line) for line in lines])

    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    try:
        expected = workload.golden_items("sample.json")  # hand-reviewed (tests/golden)
        expected_count = len(expected)
        op_records = await consume_until(
            kafka.bootstrap,
            topics.operations.name,
            lambda rs: (
                sum(len(codec("operation_batch").decode(r.value)["operations"]) for r in rs)
                >= expected_count
            ),
            workers=[worker],
        )
        dead = await consume_until(
            kafka.bootstrap, topics.deadletter.name, lambda rs: len(rs) >= 3, workers=[worker]
        )
    finally:
        stop_seconds = worker.terminate()
    assert stop_seconds < 30

    # Per user, the operations are exactly what the pure pipeline computes, in order.
    received: dict[str, list[dict]] = defaultdict(list)
    for record in op_records:
        batch = codec("operation_batch").decode(record.value)
        assert record.key == batch["mpid"].encode()
        received[batch["mpid"]].extend(orjson.loads(op["item"]) for op in batch["operations"])
    assert sorted(map(orjson.dumps, expected)) == sorted(
        orjson.dumps(item) for items in received.values() for item in items
    )
    for items in received.values():  # per-user order preserved across batches
        positions = [expected.index(item) for item in items]
        assert positions == sorted(positions)

    # Rule checks on what actually went through Kafka.
    ada = received["8016563786744591001"]
    assert [(i["action"], i.get("name")) for i in ada] == [
        ("identify", None),
        ("screen", "Home"),
        ("event", "Add_To_Cart"),
        ("event", "Purchase"),
    ]
    bob = received["-4432100987654321"]
    assert [i["identifiers"] for i in bob if i["action"] == "identify"] == [
        {"email": "bob@example.org"},
        {"id": "cust-bob"},
    ]
    assert bob[2]["attributes"]["newsletter"] == ""  # deleted attribute
    dee = received["9002"]
    assert dee[0]["attributes"]["unsubscribed"] is True
    assert [i["attributes"]["sku"] for i in dee if i["action"] == "event"] == ["B-2", "B-4"]
    assert "7001" in received  # Cy: skipped until an email arrived, then forwarded
    assert received["7001"][0]["attributes"]["email"] == "cy@example.net"

    letters = [codec("dead_letter").decode(r.value) for r in dead]
    assert sorted(letter["reason"] for letter in letters) == [
        "events_not_a_list",
        "invalid_json",
        "mpid_invalid",
    ]
    for letter in letters:
        assert letter["source_topic"] == topics.batches.name
        assert letter["payload"] in lines
        assert letter["stage"] == "ingest"
    assert "Traceback" not in worker.output()
