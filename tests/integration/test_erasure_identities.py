"""Erasure requests by identity on the real broker and the emulator (branch fixdsr2 findings):
every identity a request names is erased, an unmatched request deletes by each raw identity,
and a user state folded from pre-erasure records goes when an identity marker drops the user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.web import kafka_partition
from tests.integration import support

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

T = 1_764_400_000_000
REQUESTS = "mpcio_erasure_requests_total"


def _batch(mpid: int, identities: dict[str, str], attributes: dict[str, str], at: int) -> bytes:
    return orjson.dumps(
        {
            "mpid": mpid,
            "timestamp_unixtime_ms": at,
            "user_identities": identities,
            "user_attributes": attributes,
            "events": [
                {
                    "event_type": "custom_event",
                    "data": {"event_name": "Seen", "timestamp_unixtime_ms": at},
                }
            ],
        }
    )


def _requests(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    """``mpcio_erasure_requests_total`` by outcome."""
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in metrics.items()
        if name == REQUESTS
    }


async def _read_requests(port: str) -> dict[str, float]:
    try:
        return _requests(await support.worker_metrics(port))
    except aiohttp.ClientError:
        return {}  # the worker's web server is not listening yet


async def test_every_named_identity_is_erased_and_an_unmatched_one_by_email_too(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    """Two users named by one DSR's list of two emails are both erased (the last of a kind
    only, before); a DSR naming an email and a customer id that match no stored user deletes
    by both, so a person Customer.io knows only by the email (from before this deployment)
    is gone too (a delete by customer id only, before)."""
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    partitions = deployment.settings.topic_partitions
    store = emulator.state.store
    await support.produce(
        kafka,
        topics.batches.name,
        [
            (b"1", _batch(1, {"email": "one@example.com", "customer_id": "c1"}, {}, T)),
            (b"2", _batch(2, {"email": "two@example.com", "customer_id": "c2"}, {}, T)),
        ],
    )
    worker = deployment.start_worker()
    await support.wait_for(
        lambda: store.find(("id", "c1")) is not None and store.find(("id", "c2")) is not None,
        120,
        "people c1 and c2",
    )
    store.identify(("email", "legacy@example.com"), {"plan": "old"})  # known by email only
    both = {
        "subject_request_type": "erasure",
        "subject_identities": [
            {"identity_type": "email", "identity_value": "one@example.com"},
            {"identity_type": "email", "identity_value": "two@example.com"},
        ],
    }
    unmatched = {
        "subject_request_type": "erasure",
        "subject_identities": {
            "email": {"encoding": "raw", "value": "legacy@example.com"},
            "controller_customer_id": {"encoding": "raw", "value": "C-LEGACY"},
        },
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        for request in (both, unmatched):  # to every partition, as the ingress writes a DSR
            await support.send_to_every_partition(
                producer, topics.erasure.name, orjson.dumps(request), partitions
            )
    finally:
        await producer.stop()

    def gone() -> bool:
        return all(
            store.find(identifier) is None
            for identifier in (("id", "c1"), ("id", "c2"), ("email", "legacy@example.com"))
        )

    await support.wait_for(gone, 120, "c1, c2 and the email-only person deleted")
    port = worker.env["MPCIO_WEB_PORT"]
    await support.poll(
        lambda: _total_at_least(port, 2 * partitions), 60, "every copy counted", worker
    )
    # erased: the copies on the partitions holding users 1 and 2; every other copy no_match
    holding = len({kafka_partition(key, partitions) for key in (b"1", b"2")})
    assert await _read_requests(port) == {"erased": holding, "no_match": 2 * partitions - holding}
    assert await support.message_count(kafka, topics.deadletter.name) == 0
    worker.assert_running()


async def _total_at_least(port: str, count: int) -> bool:
    return sum((await _read_requests(port)).values()) >= count


async def test_an_identity_drop_purges_the_state_of_the_users_earlier_anonymous_batch(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    """A DSR by email (no mpid) is read first and matches nobody. The user's batch from
    before it that carries no identity creates a state; their batch from before it that
    carries the email is dropped by the identity marker. That state must go with it: kept,
    its attributes went out with the first identify of the person the user became after the
    DSR (a batch with a new email)."""
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    partitions = deployment.settings.topic_partitions
    dsr = {
        "subject_request_type": "erasure",
        "subject_identities": {"email": {"encoding": "raw", "value": "victim@example.com"}},
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        sent = await support.send_to_every_partition(
            producer, topics.erasure.name, orjson.dumps(dsr), partitions
        )
        worker = deployment.start_worker()
        port = worker.env["MPCIO_WEB_PORT"]
        await support.poll(lambda: _total_at_least(port, partitions), 120, "the DSR read", worker)
        # stamped before the DSR, as if they had waited in the batches topic's lag
        earlier = min(record.timestamp for record in sent) - 1000
        records: list[tuple[bytes, int | None]] = [
            (_batch(8, {}, {"favourite": "secret-data"}, earlier - 10), earlier - 10),
            (_batch(8, {"email": "victim@example.com"}, {}, earlier), earlier),
            (_batch(8, {"email": "new8@example.com"}, {"plan": "new"}, earlier + 2000), None),
        ]
        for value, timestamp_ms in records:
            await producer.send_and_wait(
                topics.batches.name, value, key=b"8", timestamp_ms=timestamp_ms
            )
    finally:
        await producer.stop()

    store = emulator.state.store
    # the last batch (after the DSR) is a new person: once it is there, the two before it
    # (same partition, read before it) have been decided
    await support.wait_for(
        lambda: store.find(("email", "new8@example.com")) is not None, 120, "new8"
    )
    person: Any = store.find(("email", "new8@example.com"))
    assert person.attributes.get("plan") == "new"
    assert "favourite" not in person.attributes
    metrics = await support.worker_metrics(port)
    assert metrics["mpcio_batches_total", frozenset({("outcome", "erased")})] == 1
    worker.assert_running()
