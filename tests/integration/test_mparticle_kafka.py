"""mParticle's Kafka output as it is: its topic's partition count and its broker setting.

mParticle's Kafka integration owns the batches topic (it decides the partition count) and
takes "a comma-separated list of bootstrap servers"; the worker must accept both unchanged.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.core.avro import codec
from app.dev.emulator.server import EmulatorConfig, running_emulator
from app.dev.localkafka import free_port
from app.errors import ConfigError
from app.kafka_admin import ensure_topics
from app.settings import load_settings
from app.topics import changelog_topics, topics_for
from tests.integration import workload
from tests.integration.cli import mpcio
from tests.integration.conftest import API_KEY, FAST_RETRIES, SITE_ID
from tests.integration.support import (
    WorkerProcess,
    consume_until,
    create_topics,
    message_count,
    produce,
    wait_for,
    worker_env,
)

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from app.dev.localkafka import LocalKafka
    from app.settings import Settings
    from tests.integration.conftest import Deployment, Names

pytestmark = pytest.mark.integration


def _settings(kafka: LocalKafka, names: Names, **overrides: str) -> Settings:
    env = worker_env(kafka.url, names.prefix, 0, **overrides)
    return load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()})


async def _made(kafka: LocalKafka, topics: list[str], partitions: int) -> None:
    """Create ``topics`` and wait until the broker's metadata shows them (as a long-lived
    topic of mParticle's would be)."""
    await create_topics(kafka.bootstrap, topics, partitions=partitions)
    for _ in range(300):
        if len(await _counts(kafka, topics)) == len(topics):
            return
    raise AssertionError(f"{topics} never showed in the metadata")


async def _counts(kafka: LocalKafka, names: list[str]) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415

    from app.kafka_admin import partition_counts  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        return await partition_counts(admin, names)
    finally:
        await admin.close()


async def test_topics_we_create_take_the_batches_topic_partition_count(
    kafka: LocalKafka, names: Names
) -> None:
    settings = _settings(kafka, names, topic_partitions="8")
    topics = topics_for(settings)
    await _made(kafka, [topics.batches.name], partitions=6)

    count = await ensure_topics(settings.bootstrap_servers, topics)

    assert count == 6
    assert await _counts(kafka, [spec.name for spec in topics.all()]) == {
        spec.name: 6 for spec in topics.all()
    }


async def test_a_mismatch_is_one_error_naming_each_topic_and_nothing_is_created(
    kafka: LocalKafka, names: Names
) -> None:
    settings = _settings(kafka, names)
    topics = topics_for(settings)
    changelog = changelog_topics(settings.app_id)[0]
    await _made(kafka, [topics.batches.name], partitions=6)
    await _made(kafka, [topics.operations.name, changelog], partitions=3)

    with pytest.raises(ConfigError) as caught:
        await ensure_topics(settings.bootstrap_servers, topics, changelogs=[changelog])

    message = str(caught.value)
    assert f"partition count of {topics.batches.name} (6)" in message
    assert f"{topics.operations.name} has 3" in message
    assert f"{changelog} has 3" in message
    assert "\n" not in message
    # nothing half-made: the missing topics are still missing
    present = await _counts(kafka, [spec.name for spec in topics.all()])
    assert set(present) == {topics.batches.name, topics.operations.name}


async def _committed_records(bootstrap: str, topic: str, partitions: int) -> int:
    """How many committed records ``topic`` holds: a topic written in transactions also spends
    offsets on their markers and on aborted records, so its end offsets overcount."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # see support.committed_records: "latest" races the seek
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # the last stable offsets, read_committed
        count = 0
        async with asyncio.timeout(120):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                fetched = await consumer.getmany(timeout_ms=500)
                count += sum(len(records) for records in fetched.values())
        return count
    finally:
        await consumer.stop()


def _as_mparticle_keys_them(
    records: list[tuple[bytes, bytes]], partitions: int
) -> tuple[list[tuple[bytes | None, bytes, int | None]], int]:
    """``records`` (keyed by mpid) as a producer that is not us would key them, and how many
    of them are not keyed by their canonical mpid.

    Per user (by mpid % 8): half keyed by the mpid as mParticle does; no key, the rare event
    without a user id, on a partition of its own (mParticle picks one at random; one per user
    keeps the user's records in an order the test can expect); or a key that is not the
    canonical mpid: leading zeros, hexadecimal, the email."""
    chooser = random.Random(20)
    keyless_partition: dict[int, int] = {}
    out: list[tuple[bytes | None, bytes, int | None]] = []
    for key, value in records:
        mpid = int(key)
        form = mpid % 8
        if form < 4:
            out.append((key, value, None))
        elif form == 4:
            partition = keyless_partition.setdefault(mpid, chooser.randrange(partitions))
            out.append((None, value, partition))
        else:
            email = orjson.loads(value)["user_identities"].get("email", f"x{mpid}@example.com")
            other = {5: b"00" + key, 6: hex(mpid).encode(), 7: email.encode()}[form]
            out.append((other, value, None))
    return out, sum(1 for key, _ in records if int(key) % 8 >= 4)


async def _produce_as_mparticle(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, int | None]]
) -> None:
    """Send ``(key, value, partition)`` in order (partition None: the key's default partition)
    and wait until every record is acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value, key=key, partition=partition)
            for key, value, partition in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def test_worker_plays_mparticles_role_unkeyed_and_odd_keys_reach_customerio_in_order(
    kafka: LocalKafka, names: Names, emulator: RunningEmulator, tmp_path: Path
) -> None:
    # mParticle's role: a 6-partition topic made beforehand, its broker list comma-separated
    # without a scheme, records keyed by mpid, some unkeyed, some keyed otherwise.
    env = worker_env(
        f"{kafka.bootstrap},{kafka.bootstrap}",
        names.prefix,
        free_port(),
        topic_partitions="8",
        forwarding_enabled="true",
        customerio_site_id=SITE_ID,
        customerio_api_key=API_KEY,
        customerio_url=emulator.url,
        **FAST_RETRIES,
    )
    settings = load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()})
    topics = topics_for(settings)
    await _made(kafka, [topics.batches.name], partitions=6)
    workload_records = workload.batches(users=40, batches_per_user=4, events_per_batch=2)
    records, not_canonical = _as_mparticle_keys_them(workload_records, partitions=6)
    await _produce_as_mparticle(kafka.bootstrap, topics.batches.name, records)
    expected = workload.expected_items([value for _, value, _ in records], settings)
    expected_events = [i for i in expected if i["action"] == "event"]

    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    try:

        def delivered() -> bool:
            worker.assert_running()
            return len(emulator.state.store.events) >= len(expected_events)

        await wait_for(delivered, 300, "every event at the emulator")
    finally:
        await worker.stop()

    store = emulator.state.store
    received = [event.id for event in store.events]
    assert Counter(received) == Counter(i["id"] for i in expected_events)  # all, once each
    # in order per user: each user's events arrived in the order mParticle produced them
    user_of = {i["id"]: next(iter(i["identifiers"].values())) for i in expected_events}
    for user in set(user_of.values()):
        mine = [event for event in received if user_of[event] == user]
        assert mine == [i["id"] for i in expected_events if user_of[i["id"]] == user], user
    assert store.stale_identifies == 0  # no user's profile update overtook an older one
    people = [p for p in store.people if p.email]
    assert len(people) == 36  # every 10th user has no email (workload)
    assert {p.attributes["tier"] for p in people} == {1}  # the last round's attribute won
    # nothing written into mParticle's topic: its end offsets are what the test produced
    assert await message_count(kafka.bootstrap, topics.batches.name, 6) == len(records)
    # the records not keyed by their mpid went through our own topic, 6 partitions like it
    assert not_canonical == 4 * 20  # 20 of the 40 users, 4 batches each
    assert await _counts(kafka, [topics.rekey.name, topics.operations.name]) == {
        topics.rekey.name: 6,
        topics.operations.name: 6,
    }
    assert await _committed_records(kafka.bootstrap, topics.rekey.name, 6) == not_canonical


async def test_check_config_sample_reports_key_forms(kafka: LocalKafka, names: Names) -> None:
    env = worker_env(kafka.url, names.prefix, 0)
    settings = load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()})
    await ensure_topics(settings.bootstrap_servers, topics_for(settings))
    keyed = [
        (str(m).encode(), b'{"mpid": %d, "events": []}' % m) for m in range(1, 6)
    ]  # mpid 0 is no user
    keyless: list[tuple[bytes | None, bytes]] = [
        (None, b'{"mpid": %d, "events": []}' % m) for m in range(10, 13)
    ]
    other = [(b"+20", b'{"mpid": 20, "events": []}'), (b"21", b'{"mpid": 22, "events": []}')]
    await produce(
        kafka.bootstrap, settings.topic_batches, [*keyed, *keyless, *other, (b"9", b"{oops")]
    )

    result = await mpcio("check-config", "--sample", "100", env=env)

    assert re.search(
        rf"^key sample: +ok \(11 records of {settings.topic_batches}: 5 keyed by mpid, 3 without "
        rf"a key, 2 with another key -> 5 would be re-keyed through {settings.topic_rekey}, 1 not "
        r"batches \(dead-lettered\)\)$",
        result.out,
        re.MULTILINE,
    ), result.both
    # the re-key topic is one of the deployment's topics, checked like the others
    assert re.search(r"^topics: +ok \(6 topics exist\)$", result.out, re.MULTILINE), result.both
    assert re.search(
        r"^co-partitioning: +ok \(4 topics read by ingest x 4 partitions\)$",
        result.out,
        re.MULTILINE,
    ), result.both
    few = await mpcio("check-config", "--sample", "3", env=env)
    assert re.search(r"^key sample: +ok \(3 records of ", few.out, re.MULTILINE), few.both
    negative = await mpcio("check-config", "--sample", "-5", env=env)
    assert negative.code == 2


async def test_two_deployments_on_one_broker_with_default_topic_names_deliver_only_their_users(
    kafka: LocalKafka, names: Names, emulator: RunningEmulator, tmp_path: Path
) -> None:
    # Production and staging, or two workspaces: one broker, two app ids, the topics we own at
    # their default names; the inputs differ, as two mParticle connections would.
    records = workload.batches(users=40, batches_per_user=2, events_per_batch=2)
    shares = {
        "prod": [r for r in records if int(r[0]) % 40 < 20],
        "staging": [r for r in records if int(r[0]) % 40 >= 20],
    }
    async with running_emulator(EmulatorConfig(site_id=SITE_ID, api_key=API_KEY)) as second:
        emulators = {"prod": emulator, "staging": second}
        envs = {
            name: {
                "MPCIO_BROKER": kafka.bootstrap,
                "MPCIO_APP_ID": f"{names.prefix}-{name}",
                **{
                    f"MPCIO_TOPIC_{role.upper()}": names.topic(f"{name}-{role}")
                    for role in ("batches", "audiences", "erasure")
                },
                "MPCIO_STORE": "memory://",
                "MPCIO_WEB_PORT": str(free_port()),
                "MPCIO_CUSTOMERIO_SITE_ID": SITE_ID,
                "MPCIO_CUSTOMERIO_API_KEY": API_KEY,
                "MPCIO_CUSTOMERIO_URL": emulators[name].url,
                **{f"MPCIO_{k.upper()}": v for k, v in FAST_RETRIES.items()},
            }
            for name in shares
        }
        expected: dict[str, list[str]] = {}
        for name, share in shares.items():
            settings = load_settings(
                **{k.removeprefix("MPCIO_").lower(): v for k, v in envs[name].items()}
            )
            assert settings.topic_operations == f"{names.prefix}-{name}-operations"
            assert settings.topic_rekey == f"{names.prefix}-{name}-rekey"
            keyed, _ = _as_mparticle_keys_them(share, partitions=4)
            await _made(kafka, [settings.topic_batches], partitions=4)
            await _produce_as_mparticle(kafka.bootstrap, settings.topic_batches, keyed)
            items = workload.expected_items([value for _, value in share], settings)
            expected[name] = [i["id"] for i in items if i["action"] == "event"]
        workers = {
            name: WorkerProcess(["-m", "app", "worker"], env, tmp_path / f"{name}.log").start()
            for name, env in envs.items()
        }
        try:

            def delivered() -> bool:
                for worker in workers.values():
                    worker.assert_running()
                return all(
                    len(emulators[name].state.store.events) >= len(expected[name])
                    for name in shares
                )

            await wait_for(delivered, 300, "every event at its deployment's emulator")
        finally:
            for worker in workers.values():
                await worker.stop()
        for name, share in shares.items():
            store = emulators[name].state.store
            assert Counter(event.id for event in store.events) == Counter(expected[name])
            own = {
                email
                for _, value in share
                if (email := orjson.loads(value)["user_identities"].get("email"))
            }
            assert {person.email for person in store.people} == own, name


async def test_rekeyed_audience_and_erasure_records_are_processed_as_their_kind(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    kafka, topics = deployment.kafka, deployment.topics
    ada, bea = workload.batches(users=2, batches_per_user=1, events_per_batch=1)
    await produce(kafka.bootstrap, topics.batches.name, [ada, bea])
    # written by something that is not a worker: no kind header
    await produce(kafka.bootstrap, topics.rekey.name, [(b"10000", ada[1])])
    worker = deployment.start_worker()
    store = emulator.state.store

    def both_known() -> bool:
        worker.assert_running()
        return {p.email for p in store.people} == {"user0@example.com", "user1@example.com"}

    await wait_for(both_known, 240, "both users at the emulator")
    membership = {
        "mpid": 10000,
        "audiences": [{"audience_id": 123, "audience_name": "VIPs", "action": "add"}],
    }
    erasure = {
        "subject_request_type": "erasure",
        "mpid": 10001,
        "subject_identities": [{"identity_type": "email", "identity_value": "user1@example.com"}],
    }
    await produce(kafka.bootstrap, topics.audiences.name, [(None, orjson.dumps(membership))])
    await produce(kafka.bootstrap, topics.erasure.name, [(b"+10001", orjson.dumps(erasure))])

    def applied() -> bool:
        worker.assert_running()
        people = {p.email: p for p in store.people}
        vip = people.get("user0@example.com")
        return vip is not None and "SegmentMembership" in vip.attributes and len(people) == 1

    await wait_for(applied, 240, "the re-keyed membership and erasure applied")
    assert len(store.deleted) == 1
    letters = await consume_until(
        kafka.bootstrap, topics.deadletter.name, lambda rs: len(rs) >= 1, workers=[worker]
    )
    await deployment.stop_all()
    [letter] = [codec("dead_letter").decode(record.value) for record in letters]
    assert (letter["reason"], letter["source_topic"]) == ("rekey_kind_unknown", topics.rekey.name)
    # the inputs hold what was produced, the re-key topic the two parts and the stray record
    for topic in (topics.audiences, topics.erasure):
        assert await message_count(kafka.bootstrap, topic.name) == 1, topic.name
    assert await _committed_records(kafka.bootstrap, topics.rekey.name, 4) == 3
