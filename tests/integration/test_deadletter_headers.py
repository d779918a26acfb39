"""Dead letters carry their error context in Kafka headers, readable by any Kafka client.

A worker on the real broker dead-letters one unparsable input record (ingest) and one item
Customer.io (the emulator) rejects (sink); a plain aiokafka consumer, knowing nothing of Avro,
reads both with their ``mpcio.*`` headers. ``mpcio deadletter redrive`` then sends the ingest
record back with its original header and ``mpcio.redriven.from``, without the error context.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.core.avro import codec
from app.records import CONTEXT
from tests.integration.cli import mpcio
from tests.integration.support import consume_until

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

TRACE = ("trace-id", b"4bf92f3577b34da6")


def _headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


def _poison_operations() -> bytes:
    """One operations record whose only item names two identifiers (the emulator 207s it)."""
    two_ids = {"id": "p1", "email": "two@ids.example"}
    item = {"type": "person", "identifiers": two_ids, "action": "event", "name": "x"}
    return codec("operation_batch").encode(
        {
            "mpid": "7",
            "source_topic": "test",
            "source_partition": 0,
            "source_offset": 0,
            "ingested_at_ms": int(time.time() * 1000),
            "operations": [{"action": "event", "person_id": "p1", "item": orjson.dumps(item)}],
        }
    )


async def test_dead_letters_have_context_headers_and_redrive_restores_the_source_headers(
    deployment: Deployment,
) -> None:
    bootstrap = deployment.kafka.bootstrap
    topics = deployment.topics
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        bad = await producer.send_and_wait(
            topics.batches.name, b"{not json", key=b"42", headers=[TRACE]
        )
        await producer.send_and_wait(topics.operations.name, _poison_operations(), key=b"7")
    finally:
        await producer.stop()
    worker = deployment.start_worker()

    records = await consume_until(
        bootstrap, topics.deadletter.name, lambda rs: len(rs) >= 2, workers=[worker]
    )

    by_stage = {_headers(r)["mpcio.stage"]: r for r in records}
    assert set(by_stage) == {"ingest", "sink"}
    ingest = _headers(by_stage["ingest"])
    assert ingest["mpcio.reason"] == "invalid_json"
    assert ingest["mpcio.source.topic"] == topics.batches.name
    assert ingest["mpcio.source.partition"] == str(bad.partition)
    assert ingest["mpcio.source.offset"] == str(bad.offset)
    assert ingest["mpcio.attempts"] == "0"
    assert ingest["mpcio.value.schema"] == "io.mpcio.DeadLetter"
    assert ingest["mpcio.detail"]
    assert "mpcio.http.status" not in ingest
    assert ingest[TRACE[0]] == TRACE[1].decode()  # the source record's own header is kept
    assert by_stage["ingest"].key == b"42"
    sink = _headers(by_stage["sink"])
    assert by_stage["sink"].key == b"7"  # keyed by mpid, like the ingest ones
    assert sink["mpcio.reason"] == "customerio_rejected_item"
    assert sink["mpcio.http.status"] == "207"
    assert sink["mpcio.source.topic"] == topics.operations.name
    assert int(sink["mpcio.attempts"]) >= 1
    assert "two@ids.example" not in sink["mpcio.detail"]  # no raw email in a header
    # the value is still the Avro dead letter, and agrees with its headers
    assert codec("dead_letter").decode(by_stage["sink"].value)["http_status"] == 207

    env = {**deployment.env, "MPCIO_FORWARDING_ENABLED": "false"}
    redriven = await mpcio("deadletter", "redrive", "--reason", "invalid_json", env=env)
    assert redriven.code == 0, redriven.both

    inputs = await consume_until(bootstrap, topics.batches.name, lambda rs: len(rs) >= 2)
    letter_at = f"{by_stage['ingest'].partition}@{by_stage['ingest'].offset}"
    origin = f"{topics.deadletter.name}/{letter_at}"
    sent_back = [r for r in inputs if r.headers != ((TRACE[0], TRACE[1]),)]
    assert len(sent_back) == 1
    assert sent_back[0].key == b"42"
    assert sent_back[0].value == b"{not json"
    assert _headers(sent_back[0]) == {TRACE[0]: TRACE[1].decode(), "mpcio.redriven.from": origin}
    assert not {name for name, _ in sent_back[0].headers} & set(CONTEXT)
    # failing again, its new dead letter still says where it was redriven from
    letters = await consume_until(
        bootstrap, topics.deadletter.name, lambda rs: len(rs) >= 3, workers=[worker]
    )
    redone = [h for r in letters if "mpcio.redriven.from" in (h := _headers(r))]
    assert len(redone) == 1
    assert redone[0]["mpcio.redriven.from"] == origin
    assert redone[0]["mpcio.reason"] == "invalid_json"
    assert redone[0][TRACE[0]] == TRACE[1].decode()
