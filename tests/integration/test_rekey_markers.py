"""The re-key topic is written in transactions (by the workers themselves), so its offsets hold
commit markers and aborted records between the records; a worker must commit over them and keep
running, while never committing over a record it did not process (ARCHITECTURE.md §4, "a hole in
an input partition is re-read before it is accepted")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from app.topics import REKEY_KIND_HEADER
from tests.integration import workload
from tests.integration.conftest import Deployment
from tests.integration.support import poll, wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration


async def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    """The offset ``group`` has committed on ``tp`` (None: none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def test_markers_and_aborted_records_of_the_rekey_topic_are_committed_over(
    kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> None:
    # One partition, so every record and marker below is on the partition the worker reads.
    deployment = Deployment(kafka, names, tmp_path, emulator.url, topic_partitions="1")
    await deployment.prepare()
    rekey = TopicPartition(deployment.topics.rekey.name, 0)
    # users 0-7 each one batch, each in a transaction of its own (a commit or an abort marker
    # after each record), as workers write the topic; the transactions of users 2 and 5 abort
    records = workload.batches(users=8, batches_per_user=1, events_per_batch=1)
    aborted = {2, 5}
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, transactional_id=f"{names.prefix}-writer"
    )
    await producer.start()
    offsets = []
    try:
        for user, (key, value) in enumerate(records):
            await producer.begin_transaction()
            sent = await producer.send_and_wait(
                rekey.topic,
                value,
                key=key,
                partition=0,
                headers=[(REKEY_KIND_HEADER, b"batches")],
            )
            offsets.append(sent.offset)
            if user in aborted:
                await producer.abort_transaction()
            else:
                await producer.commit_transaction()
    finally:
        await producer.stop()
    # The group committed user 0's record, as a worker does: the offset after it, which holds
    # its transaction's commit marker. Every later record then follows a marker or an abort.
    group = deployment.settings.app_id
    committer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    await committer.start()
    try:
        committer.assign([rekey])
        await committer.commit({rekey: OffsetAndMetadata(offsets[0] + 1, "")})
    finally:
        await committer.stop()

    worker = deployment.start_worker()
    store = emulator.state.store
    expected = {
        f"user{user}@example.com" for user in range(len(records)) if user not in aborted | {0}
    }

    def delivered() -> bool:
        worker.assert_running()
        return {person.email for person in store.people} >= expected

    await wait_for(delivered, 240, "every committed user past the committed offset")

    async def committed_to_the_end() -> bool:
        # faust commits the offset after the last record processed: the last commit marker
        return await _committed(kafka.bootstrap, group, rekey) == offsets[-1] + 1

    await poll(committed_to_the_end, 120, "the re-key partition committed to its end", worker)
    worker.assert_running()
    await deployment.stop_all()
    # user 0 was committed before, users 2 and 5 aborted: none of them reaches Customer.io
    assert {person.email for person in store.people} == expected
    assert "were never processed" not in worker.output()
