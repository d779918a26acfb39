"""mParticle's Kafka output as it is: its topic's partition count and its broker setting.

mParticle's Kafka integration owns the batches topic (it decides the partition count) and
takes "a comma-separated list of bootstrap servers"; the worker must accept both unchanged.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING

import pytest

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
    from tests.integration.conftest import Names

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


async def test_worker_runs_on_mparticles_topic_with_a_comma_separated_broker_list(
    kafka: LocalKafka, names: Names, emulator: RunningEmulator, tmp_path: Path
) -> None:
    # mParticle's role: a 6-partition topic made beforehand, records keyed by mpid.
    env = worker_env(
        f"{kafka.bootstrap},{kafka.bootstrap}",  # mParticle's form: no scheme, commas
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
    records = workload.batches(users=30, batches_per_user=2, events_per_batch=2)
    await produce(kafka.bootstrap, topics.batches.name, records)
    expected = workload.expected_items([value for _, value in records], settings)
    expected_events = Counter(i["id"] for i in expected if i["action"] == "event")

    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    try:

        def delivered() -> bool:
            worker.assert_running()
            return len(emulator.state.store.events) >= sum(expected_events.values())

        await wait_for(delivered, 240, "every event at the emulator")
    finally:
        await worker.stop()
    assert Counter(e.id for e in emulator.state.store.events) == expected_events
    assert await _counts(kafka, [topics.operations.name]) == {topics.operations.name: 6}
    # we wrote nothing into mParticle's topic
    assert await message_count(kafka.bootstrap, topics.batches.name, 6) == len(records)


async def test_check_config_sample_reports_key_forms(kafka: LocalKafka, names: Names) -> None:
    env = worker_env(kafka.url, names.prefix, 0)
    settings = load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()})
    await ensure_topics(settings.bootstrap_servers, topics_for(settings))
    keyed = [(str(m).encode(), b'{"mpid": %d, "events": []}' % m) for m in range(5)]
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
        r"a key, 2 with another key -> 5 would be re-keyed, 1 not batches \(dead-lettered\)\)$",
        result.out,
        re.MULTILINE,
    ), result.both
    few = await mpcio("check-config", "--sample", "3", env=env)
    assert re.search(r"^key sample: +ok \(3 records of ", few.out, re.MULTILINE), few.both
    negative = await mpcio("check-config", "--sample", "-5", env=env)
    assert negative.code == 2
