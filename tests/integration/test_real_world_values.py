"""Real-world values on the real broker (breaker7 findings 3, 7, 8, 10): an unusable person id
is a dead letter, a big integer keeps every digit, a byte order mark is ignored, mpid 0 is no
user, and what is cut is logged, masked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import pytest

from app.core.avro import codec
from tests.integration.support import WorkerProcess, consume_until, produce, worker_with_topics

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration

T = 1_764_400_000_000
BIG = b"123456789012345678901234567890"
LONG_ID = "c" * 200


def _batch(mpid: int, identities: dict[str, str], **fields: object) -> bytes:
    return orjson.dumps(
        {
            "mpid": mpid,
            "environment": "production",
            "timestamp_unixtime_ms": T,
            "user_identities": identities,
            "events": [
                {"event_type": "custom_event",
                 "data": {"event_name": "e", "timestamp_unixtime_ms": T,
                          "source_message_id": f"m{mpid}", "custom_attributes": {"n": 2}}}
            ],
            **fields,
        }
    )  # fmt: skip


async def test_real_world_values_reach_customerio_or_the_dead_letter_topic(
    kafka: LocalKafka, names: Names, tmp_path: Path
) -> None:
    env, topics = await worker_with_topics(kafka.url, names.prefix)
    big = _batch(11, {"email": "big@example.com"}, user_attributes={"id_big": 1})
    big = big.replace(b'"id_big":1', b'"id_big":' + BIG).replace(b'"n":2', b'"n":' + BIG)
    records = [
        (b"11", big),
        (b"12", b"\xef\xbb\xbf" + _batch(12, {"email": "bom@example.com"})),
        (b"13", _batch(13, {"email": "long@example.com", "customer_id": LONG_ID})),
        (b"0", _batch(0, {"email": "nobody@example.com"})),
        (b"14", _batch(14, {"email": "cut@example.com"}, user_attributes={"bio": "b" * 1001})),
    ]
    await produce(kafka.bootstrap, topics.batches.name, records)

    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    try:
        ops = await consume_until(
            kafka.bootstrap, topics.operations.name, lambda rs: len(rs) >= 3, workers=[worker]
        )
        dead = await consume_until(
            kafka.bootstrap, topics.deadletter.name, lambda rs: len(rs) >= 2, workers=[worker]
        )
    finally:
        worker.terminate()

    items = {
        record.key: [
            orjson.loads(op["item"])
            for op in codec("operation_batch").decode(record.value)["operations"]
        ]
        for record in ops
    }
    assert set(items) == {b"11", b"12", b"14"}
    identify, event = items[b"11"]
    assert identify["attributes"]["id_big"] == BIG.decode()  # every digit, as text
    assert event["attributes"] == {"n": BIG.decode()}
    assert items[b"12"][0]["identifiers"] == {"email": "bom@example.com"}
    letters = {r.key: codec("dead_letter").decode(r.value) for r in dead}
    assert {key: letter["reason"] for key, letter in letters.items()} == {
        b"13": "person_id_invalid",
        b"0": "mpid_missing",
    }
    log = worker.output()
    assert "dead letter person_id_invalid" in log
    assert (
        "value(s) cut or not sent to fit Customer.io's limits: attribute_value_truncated=1" in log
    )
    assert LONG_ID not in log
    assert "b" * 1001 not in log
