"""Audiences and erasure on the real broker and the emulator (SPEC §4-§5)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.dev.emulator.faults import parse_faults
from tests.integration import workload
from tests.integration.support import (
    assert_workspace,
    consume_until,
    inspect_emulator,
    message_count,
    poll,
    produce,
    record_applied,
    send_to_every_partition,
    wait_for,
    worker_metrics,
)

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

T = 1_764_400_000_000


def _batch(mpid: int, email: str | None, event: str, at: int) -> tuple[bytes, bytes]:
    identities = {"customer_id": f"c{mpid}", **({"email": email} if email else {})}
    return str(mpid).encode(), orjson.dumps(
        {
            "mpid": mpid,
            "timestamp_unixtime_ms": at,
            "user_identities": identities,
            "user_attributes": {"$FirstName": f"N{mpid}"},
            "events": [
                {
                    "event_type": "custom_event",
                    "data": {
                        "event_name": event,
                        "timestamp_unixtime_ms": at,
                        "source_message_id": f"{mpid}-{at}",
                    },
                }
            ],
        }
    )


def _membership(mpid: int, *changes: tuple[int, str, str]) -> tuple[bytes, bytes]:
    return str(mpid).encode(), orjson.dumps(
        {
            "mpid": mpid,
            "audiences": [
                {"audience_id": i, "audience_name": n, "action": a} for i, n, a in changes
            ],
        }
    )


async def _person(emulator: RunningEmulator, person_id: str) -> dict[str, Any] | None:
    people = (await inspect_emulator(emulator.url, f"people?id={person_id}"))["people"]
    live = [p for p in people if not p["deleted"]]
    return live[0] if live else None


async def test_membership_and_erasure_reach_customerio(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    worker = deployment.start_worker(one_attribute_per_audience="true")

    await produce(
        kafka,
        topics.batches.name,
        [
            _batch(1, "a@example.com", "Start", T),
            _batch(2, None, "Start", T),
            _batch(3, "c@example.com", "Start", T),
        ],
    )
    await wait_for(lambda: emulator.state.store.people_count == 2, 60, "people 1 and 3")
    await produce(
        kafka,
        topics.audiences.name,
        [
            _membership(1, (10, "VIPs", "add"), (20, "Buyers", "add")),
            _membership(2, (10, "VIPs", "add")),
            _membership(1, (20, "Buyers", "delete")),
        ],
    )

    def membership_of(person_id: str) -> Any:
        person = emulator.state.store.find(("id", person_id))
        return None if person is None else person.attributes.get("SegmentMembership")

    await wait_for(lambda: membership_of("c1") == "'10'", 60, "membership of user 1")
    ada = await _person(emulator, "c1")
    assert ada is not None
    assert ada["attributes"]["SegmentMembership"] == "'10'"
    assert ada["attributes"]["In VIPs"] is True
    assert ada["attributes"]["In Buyers"] is False
    assert await _person(emulator, "c2") is None  # no email yet: held in state

    # The email arrives: the held membership goes with the first identify.
    await produce(kafka, topics.batches.name, [_batch(2, "b@example.com", "Later", T + 1000)])
    await wait_for(lambda: emulator.state.store.people_count == 3, 60, "person 2")
    bob = await _person(emulator, "c2")
    assert bob is not None
    assert bob["attributes"]["SegmentMembership"] == "'10'"

    # Erasure of user 3, and one that matches nobody.
    await produce(
        kafka,
        topics.erasure.name,
        [
            (
                b"3",
                orjson.dumps(
                    {"subject_request_type": "erasure", "mpid": 3, "subject_request_id": "r-1"}
                ),
            ),
            (b"99", orjson.dumps({"subject_request_type": "erasure", "mpid": 99})),
        ],
    )
    await wait_for(lambda: len(emulator.state.store.deleted) == 1, 60, "the deletion")
    assert emulator.state.store.deleted[0].id == "c3"
    assert await _person(emulator, "c3") is None

    # A batch after the erasure starts a new user: same attributes, yet a fresh identify,
    # which only happens because the stored state (and its digest) was purged.
    identifies = emulator.state.store.identifies
    await produce(kafka, topics.batches.name, [_batch(3, "c@example.com", "Back", T + 5000)])
    await wait_for(lambda: emulator.state.store.identifies > identifies, 60, "a new identify")
    again = await _person(emulator, "c3")
    assert again is not None
    assert again["attributes"]["first_name"] == "N3"
    assert await message_count(kafka, topics.deadletter.name) == 0
    worker.assert_running()


async def test_erased_email_is_gone_from_emulator_and_compacted_changelog(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    """SPEC §5: after erasure neither Customer.io nor the table's changelog (once Kafka has
    compacted it) holds the user's email."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType  # noqa: PLC0415

    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    email = b"erase.me@example.com"
    worker = deployment.start_worker()
    await produce(kafka, topics.batches.name, [_batch(41, email.decode(), "Start", T)])
    await wait_for(lambda: emulator.state.store.people_count == 1, 60, "the person")
    changelog = f"{deployment.settings.app_id}-users-changelog"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:  # compact as soon as possible: tiny segments, any dirty ratio, tombstones not kept
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    changelog,
                    configs={
                        "cleanup.policy": "compact",  # AlterConfigs replaces them all
                        "segment.ms": "100",
                        "min.cleanable.dirty.ratio": "0.001",
                        "delete.retention.ms": "0",
                        "min.compaction.lag.ms": "0",
                    },
                )
            ]
        )
    finally:
        await admin.close()
    await produce(
        kafka,
        topics.erasure.name,
        [
            (b"41", orjson.dumps({"subject_request_type": "erasure", "mpid": 41})),
        ],
    )
    await wait_for(lambda: len(emulator.state.store.deleted) == 1, 60, "the deletion")
    assert emulator.state.store.find(("email", email.decode())) is None
    assert (
        email.decode()
        not in orjson.dumps(
            (await inspect_emulator(emulator.url, "people"))["people"]
            + (await inspect_emulator(emulator.url, "events"))["events"]
        ).decode()
    )

    # Other users' writes keep rolling segments until the broker's log cleaner (every second
    # on the local broker) has compacted the old value away.
    deadline = asyncio.get_running_loop().time() + 90
    filler = 0
    while True:
        filler += 1
        await produce(kafka, topics.batches.name, [_batch(1000 + filler, "f@x.io", "F", T)])
        records = await _all_records(kafka, changelog)
        if records and not any(email in (r.value or b"") for r in records):
            break
        worker.assert_running()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the changelog still holds the erased email after 90 s")
        await asyncio.sleep(0.5)  # the cleaner is another process: poll, don't spin


async def _all_records(bootstrap: str, topic: str) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    # "earliest": see support.committed_records ("latest" races seek_to_beginning)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        positions = dict.fromkeys(partitions, 0)
        while any(positions[tp] < end for tp, end in ends.items()):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
            positions = {tp: await consumer.position(tp) for tp in partitions}
        return records
    finally:
        await consumer.stop()


ERASED = (1, 4)  # workload users whose erasure races with their own operations


DELETE = {"type": "person", "action": "delete"}


def _erasures(users: tuple[int, ...]) -> list[tuple[bytes, bytes]]:
    return [
        (
            str(10_000 + user).encode(),
            orjson.dumps({"subject_request_type": "erasure", "mpid": 10_000 + user}),
        )
        for user in users
    ]


def _workload(deployment: Deployment) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]]]:
    """20 users, 2 batches each, and the items Customer.io must get for them."""
    return workload.scenario(deployment.settings, users=20, batches_per_user=2, events_per_batch=3)


def _names_of(user: int) -> set[str]:
    return {f"c-{user}", f"user{user}@example.com"}


def _not_erased(items: list[dict[str, Any]], users: tuple[int, ...]) -> list[dict[str, Any]]:
    erased = set().union(*(_names_of(user) for user in users))
    return [item for item in items if not erased & set(item["identifiers"].values())]


def _assert_never_reappears(applied: list[dict[str, Any]], user: int) -> None:
    """After the first delete of ``user`` reached the emulator, nothing but deletes names them."""
    names = _names_of(user)
    mine = [item for item in applied if names & set(item["identifiers"].values())]
    first = next(i for i, item in enumerate(mine) if item["action"] == "delete")
    assert mine[first - 1]["action"] == "event", mine  # their operations went first
    assert {item["action"] for item in mine[first:]} == {"delete"}, mine[first:]


async def test_erasure_while_the_users_operations_wait_in_the_operations_topic(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    records, expected = _workload(deployment)
    forwarded = sum(1 for _, value in records if b'"email"' in value)
    # Customer.io refuses the key, so the sink holds every operation in the operations topic.
    refused, _ = parse_faults({"kind": "status", "status": 401, "count": None})
    emulator.faults.add(refused)
    applied = record_applied(emulator)
    await produce(kafka, topics.batches.name, records)
    worker = deployment.start_worker(credentials_probe_seconds="1")
    await consume_until(
        kafka, topics.operations.name, lambda rs: len(rs) >= forwarded, workers=[worker]
    )
    await produce(kafka, topics.erasure.name, _erasures(ERASED))
    await consume_until(  # each erasure: deletes by customer id and by email, in one record
        kafka, topics.operations.name, lambda rs: len(rs) >= forwarded + 2, workers=[worker]
    )
    assert emulator.state.store.events == []  # nothing delivered yet: all of it waits

    emulator.faults.clear()
    expected_events = sum(1 for item in _not_erased(expected, ERASED) if item["action"] == "event")
    await wait_for(
        lambda: (
            len(emulator.state.store.deleted) == len(ERASED)
            and len(emulator.state.store.events) >= expected_events
        ),
        180,
        "the deletions and everyone else's events",
    )
    for user in ERASED:
        assert emulator.state.store.find(("id", f"c-{user}")) is None
        assert emulator.state.store.find(("email", f"user{user}@example.com")) is None
        _assert_never_reappears(applied, user)
    assert_workspace(emulator, _not_erased(expected, ERASED))
    assert await message_count(kafka, topics.deadletter.name) == 0
    worker.assert_running()


async def test_sink_crash_between_delete_and_commit_redelivers_the_delete(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    records, expected = _workload(deployment)
    applied = record_applied(emulator)
    await produce(kafka, topics.batches.name, records)
    env = {"kafka_session_timeout_seconds": "6"}
    first = deployment.start_worker(**env)
    events = sum(1 for item in expected if item["action"] == "event")
    await wait_for(lambda: len(emulator.state.store.events) >= events, 120, "every event")

    # The emulator carries out the delete, and the worker dies before it hears the answer: the
    # sink cannot have committed the delete's offset (SIGKILL, in the request's own handler).
    store = emulator.state.store
    delete = store.delete

    def delete_then_crash(identifier: tuple[str, str]) -> None:
        delete(identifier)
        if identifier == ("id", "c-1") and first.process is not None:
            first.process.kill()

    store.delete = delete_then_crash  # type: ignore[method-assign]
    await produce(kafka, topics.erasure.name, _erasures((1,)))
    await wait_for(
        lambda: first.process is not None and first.process.poll() is not None,
        120,
        "the worker killed at the delete",
    )
    second = deployment.start_worker(**env)

    def redelivered() -> bool:
        second.assert_running()
        return all(
            sum(1 for item in applied if item == {**DELETE, "identifiers": named}) >= 2
            for named in ({"id": "c-1"}, {"email": "user1@example.com"})
        )

    await wait_for(redelivered, 180, "both deletes delivered again after the restart")
    assert store.find(("id", "c-1")) is None
    assert store.find(("email", "user1@example.com")) is None
    _assert_never_reappears(applied, 1)
    assert_workspace(emulator, _not_erased(expected, (1,)))
    assert await message_count(kafka, topics.deadletter.name) == 0


async def test_an_unanswered_request_applied_late_does_not_undo_an_erasure(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    """Customer.io may apply a request after the client gave up on it (the emulator's ``delay``
    fault: held 10 s while the client times out after 1 s and retries it). The erasure that
    follows the retry must still be the last word on the person: its delete waits until the
    abandoned request can no longer be applied (``MPCIO_SINK_UNANSWERED_SETTLE_SECONDS``)."""
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    held, _ = parse_faults({"kind": "delay", "delay_seconds": 10, "count": 1})
    emulator.faults.add(held)
    store = emulator.state.store
    worker = deployment.start_worker(
        request_timeout_seconds="1", sink_unanswered_settle_seconds="15"
    )
    await produce(kafka, topics.batches.name, [_batch(51, "late@example.com", "Start", T)])
    await wait_for(lambda: store.find(("id", "c51")) is not None, 60, "the retried request")
    await produce(
        kafka,
        topics.erasure.name,
        [(b"51", orjson.dumps({"subject_request_type": "erasure", "mpid": 51}))],
    )
    await wait_for(
        lambda: store.deleted and emulator.state.stats()["faults_injected"].get("delay") == 1,
        60,
        "the deletion and the late application of the abandoned request",
    )
    assert store.find(("id", "c51")) is None
    assert store.find(("email", "late@example.com")) is None
    worker.assert_running()


async def test_an_audience_update_sent_before_the_erasure_and_read_after_it_is_dropped(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    """The audiences and erasure topics are read in no set order: an update that reached Kafka
    before its user's erasure but is read after it carries the user's email, and must not
    recreate the erased person; one sent after the erasure starts a new person."""
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    await produce(kafka, topics.batches.name, [_batch(9, "nine@example.com", "Signed Up", T)])
    worker = deployment.start_worker()
    await wait_for(lambda: emulator.state.store.find(("id", "c9")) is not None, 120, "person c9")
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        erasure = {"subject_request_type": "erasure", "mpid": 9}
        sent = await producer.send_and_wait(topics.erasure.name, orjson.dumps(erasure), key=b"9")
        await wait_for(lambda: emulator.state.store.find(("id", "c9")) is None, 120, "c9 gone")

        def update(mpid: int, audience: int) -> bytes:
            identities = [
                {"type": "email", "value": f"u{mpid}@example.com"},
                {"type": "customer_id", "value": f"c{mpid}"},
            ]
            changes = [{"audience_id": audience, "audience_name": "A", "action": "add"}]
            return orjson.dumps({"mpid": mpid, "user_identities": identities, "audiences": changes})

        # stamped a second before the erasure, as if it had waited on the audiences topic
        await producer.send_and_wait(
            topics.audiences.name, update(9, 1), key=b"9", timestamp_ms=sent.timestamp - 1000
        )
        await producer.send_and_wait(topics.audiences.name, update(9, 2), key=b"9")
    finally:
        await producer.stop()

    # the update sent after the erasure is a new person: once it is there, the older one
    # (same partition, read before it) has been decided
    await wait_for(
        lambda: emulator.state.store.find(("id", "c9")) is not None, 120, "the new person c9"
    )
    person = await _person(emulator, "c9")
    assert person is not None
    assert person["attributes"]["SegmentMembership"] == "'2'"  # audience 1's update dropped
    metrics = await worker_metrics(worker.env["MPCIO_WEB_PORT"])
    assert metrics["mpcio_audience_updates_total", frozenset({("outcome", "erased")})] == 1
    worker.assert_running()


async def test_a_firehose_erasure_read_before_the_users_earlier_batch_does_not_recreate_them(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    """breaker6 finding 1: a DSR by email (no mpid, written to every partition as the ingress
    does) read while nothing of the user is on the partition yet matches nobody; the user's
    batch that reached Kafka before it but is read after it (lag) must not recreate the
    person. It leaves an identity marker, so that batch is dropped; a batch sent after the DSR
    starts a new person."""
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    partitions = deployment.settings.topic_partitions
    requests = "mpcio_erasure_requests_total"
    delivered = "mpcio_sink_items_delivered_total", frozenset()
    dsr = {
        "subject_request_type": "erasure",
        "subject_identities": {"email": {"encoding": "raw", "value": "Victim.A@example.com"}},
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        sent = await send_to_every_partition(
            producer, topics.erasure.name, orjson.dumps(dsr), partitions
        )
        worker = deployment.start_worker()
        port = worker.env["MPCIO_WEB_PORT"]

        async def applied_everywhere() -> bool:
            try:
                metrics = await worker_metrics(port)
            except aiohttp.ClientError:
                return False  # the worker's web server is not listening yet
            # Matching nobody, each copy still deletes the raw email (counted ``no_match``).
            # Wait until those deletes are delivered: they go out in the lanes of their
            # partitions, and one sent after the new person below would delete them again.
            read = sum(v for (name, _), v in metrics.items() if name == requests)
            return read >= partitions and metrics.get(delivered, 0) >= partitions

        await poll(applied_everywhere, 120, "the DSR applied and its deletes sent", worker)

        def batch(event: str, attributes: dict[str, str], at: int) -> bytes:
            _, value = _batch(8, "victim.a@example.com", event, at)
            document = orjson.loads(value)
            document["user_attributes"] = attributes
            return orjson.dumps(document)

        # stamped a second before the DSR, as if it had waited in the batches topic's lag
        earlier = min(record.timestamp for record in sent) - 1000
        secret = batch("secret_purchase", {"favourite": "secret-data"}, earlier)
        await producer.send_and_wait(topics.batches.name, secret, key=b"8", timestamp_ms=earlier)
        later = batch("came_back", {"plan": "new"}, earlier + 2000)
        await producer.send_and_wait(topics.batches.name, later, key=b"8")
    finally:
        await producer.stop()

    # the batch sent after the DSR is a new person: once its event is there, the earlier batch
    # (same partition, read before it) has been decided
    def names() -> set[str]:
        return {event.name for event in emulator.state.store.events}

    await wait_for(lambda: "came_back" in names(), 120, "the new person's event")
    person = await _person(emulator, "c8")
    assert person is not None
    assert "favourite" not in person["attributes"]
    assert person["attributes"]["plan"] == "new"
    assert "secret_purchase" not in names()
    metrics = await worker_metrics(port)
    assert metrics["mpcio_batches_total", frozenset({("outcome", "erased")})] == 1
    worker.assert_running()
