"""State at scale (issue 22) on the real broker: compaction, restore, data-dir lock, SIGTERM.

- A changelog that existed before the worker (Kafka's default segments) gets the compaction
  configs from the settings, and a key written many times is compacted to one record once its
  segment rolls.
- A worker restarted WITHOUT its data dir rebuilds the users table from the changelog (the
  fast restore) and every user's opt-out survived; a second worker on the same data dir stops
  at once with exit code 2 and one line; the sink stops cleanly on SIGTERM (exit 0, no
  ``ConsumerStoppedError``).
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.dev.localkafka import free_port
from app.topics import changelog_topics
from tests.integration.conftest import Deployment
from tests.integration.support import poll

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration

TOKEN = "state-support-token-0123456789"
USERS = 60


async def _records(bootstrap: str, topic: str, partition: int) -> list[tuple[bytes, int]]:
    """(key, offset) of every record now in one partition, read from its beginning."""
    # "earliest": see support.committed_records ("latest" races seek_to_beginning)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        found: list[tuple[bytes, int]] = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
                found += [(record.key or b"", record.offset) for record in records]
        return found
    finally:
        await consumer.stop()


async def _topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [(_, _, _, _, entries)] = response.resources
        return {entry[0]: entry[1] for entry in entries}
    finally:
        await admin.close()


async def test_existing_changelog_gets_compaction_configs_and_compacts_to_one_record(
    kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> None:
    deployment = Deployment(
        kafka,
        names,
        tmp_path,
        emulator.url,
        changelog_segment_seconds="1",
        changelog_min_cleanable_dirty_ratio="0.01",
    )
    await deployment.prepare()
    users_changelog = changelog_topics(deployment.settings.app_id)[0]
    # created before the worker, with Kafka's default segments (1 GiB, 7 days)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(users_changelog, 4, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    worker = deployment.start_worker()
    try:

        async def aligned() -> bool:
            return (await _topic_configs(kafka.bootstrap, users_changelog)).get(
                "segment.ms"
            ) == "1000"

        await poll(aligned, 120, "the changelog's segment.ms set by the worker", worker)
        configs = await _topic_configs(kafka.bootstrap, users_changelog)
        assert configs["cleanup.policy"] == "compact"
        assert configs["min.cleanable.dirty.ratio"] == "0.01"
        assert configs["segment.bytes"] == str(64 * 1024 * 1024)
    finally:
        await deployment.stop_all()

    # One key written 50 times, then other keys until the cleaner has compacted it: the
    # segment holding the 50 rolls once segment.ms (1 s) passed and a later record arrives.
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for version in range(50):
            await producer.send_and_wait(users_changelog, b"v%d" % version, b"1001", partition=0)
        filler = 0

        async def compacted() -> bool:
            nonlocal filler
            filler += 1
            await producer.send_and_wait(users_changelog, b"x", b"filler-%d" % filler, partition=0)
            keys = [key for key, _ in await _records(kafka.bootstrap, users_changelog, 0)]
            return keys.count(b"1001") == 1

        await poll(compacted, 180, "the 50 versions of one key compacted to one record")
    finally:
        await producer.stop()


def _batch(mpid: int, opted_out: bool) -> bytes:
    events: list[dict[str, object]] = [
        {
            "event_type": "custom_event",
            "data": {
                "event_name": "signup",
                "source_message_id": f"m-{mpid}",
                "timestamp_unixtime_ms": 1_700_000_000_000 + mpid,
            },
        }
    ]
    if opted_out:
        events.append(
            {
                "event_type": "opt_out",
                "data": {"is_opted_out": True, "timestamp_unixtime_ms": 1_700_000_000_001 + mpid},
            }
        )
    return orjson.dumps(
        {
            "mpid": mpid,
            "environment": "production",
            "user_identities": {"email": f"user{mpid}@example.com"},
            "events": events,
        }
    )


async def _user(port: int, mpid: int) -> dict[str, object] | None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/users/{mpid}", headers=headers) as answer,
        ):
            if answer.status != 200:
                return None
            user: dict[str, object] = await answer.json()
            return user
    except aiohttp.ClientConnectionError:
        return None


async def test_restart_without_data_dir_restores_opt_outs_and_stops_cleanly(
    kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> None:
    deployment = Deployment(
        kafka, names, tmp_path, emulator.url, store="rocksdb://", support_token=TOKEN
    )
    await deployment.prepare()
    port = int(deployment.env["MPCIO_WEB_PORT"])
    first_dir = tmp_path / "data-1"
    worker = deployment.start_worker(data_dir=str(first_dir))
    mpids = [20_000 + user for user in range(USERS)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        for mpid in mpids:
            await producer.send(
                deployment.topics.batches.name, _batch(mpid, mpid % 3 == 0), key=str(mpid).encode()
            )
        await producer.flush()
    finally:
        await producer.stop()

    async def all_delivered() -> bool:
        return emulator.state.stats()["people"] >= USERS

    await poll(all_delivered, 180, f"{USERS} people at the emulator", worker)

    # a second worker on the same data dir stops at once, exit 2, one line naming the cause
    second = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "worker",
        env={**worker.env, "MPCIO_DATA_DIR": str(first_dir), "MPCIO_WEB_PORT": str(free_port())},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(second.communicate(), timeout=120)
    assert second.returncode == 2, err[-2000:]
    assert b"is in use by another worker" in err
    assert b"is locked" not in out + err

    assert await worker.stop() < 30
    assert worker.process is not None
    assert worker.process.returncode == 0
    first_log = worker.output()
    assert "ConsumerStoppedError" not in first_log
    assert "Crashed" not in first_log

    # a new worker on an EMPTY data dir: the fast restore rebuilds every user's state
    restarted = deployment.start_worker(data_dir=str(tmp_path / "data-2"))

    async def restored() -> bool:
        user = await _user(port, mpids[0])
        return user is not None

    await poll(restored, 180, "the restarted worker serving user state", restarted)
    for mpid in mpids:
        user = await _user(port, mpid)
        assert user is not None, mpid
        assert user["opted_out"] is (mpid % 3 == 0), (mpid, user)
    assert "table store restored from the changelogs" in restarted.output()
    assert await restarted.stop() < 30
    assert restarted.process is not None
    assert restarted.process.returncode == 0
    assert "ConsumerStoppedError" not in restarted.output()
