"""Ingest agents: the three input topics → table ``users`` → ``customerio-operations``.

One agent per input topic (``mparticle-batches``, ``mparticle-audiences``,
``mparticle-erasure``), all co-partitioned by mpid and sharing the ``users`` table, so one
user's batches, membership changes and erasures meet the same state on the same worker. Each
agent reads the user's stored state, hands the record to its pure function in
:mod:`app.pipeline`, and writes what it returns. All operations of a record travel as ONE
record on the operations topic (key = mpid): faust's per-record cost is paid once per input
record, not once per Customer.io operation (ARCHITECTURE.md has the measurements).

Delivery semantics (SPEC §7): ``concurrency=1``; table updates and produced records are
buffered and flushed by faust before it commits the record's offset, so a crash redelivers the
record; folding it again is idempotent and re-sent events carry the same ULIDs. No exception
escapes an agent (faust would ack the record and lose it): an unexpected error dead-letters
the record with reason ``internal_error`` and the stream continues.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from app import metrics
from app.logs import log_dead_letters, mask_mpid
from app.pipeline import (
    STAGE_INGEST,
    IngestResult,
    SourcePosition,
    dead_letter,
    now_ms,
    process_audience_record,
    process_batch_record,
    process_erasure_record,
)
from app.topics import ERASURES_TABLE, USERS_TABLE
from app.web import kafka_partition

if TYPE_CHECKING:
    import faust

    from app.settings import Settings
    from app.topics import Topics

log = logging.getLogger(__name__)

Process = Callable[[Any, SourcePosition], IngestResult]


def attach_ingest(app: faust.App, settings: Settings, topics: Topics) -> Any:
    """Declare the tables and the three ingest agents on ``app``; return the users table."""
    partitions = settings.topic_partitions
    # bytes key/value types select faust's raw codec: values are our own Avro / decimal text.
    users = app.Table(
        USERS_TABLE,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        help="Per-user state (app.state.UserState as Avro), keyed by mpid.",
        options=_store_options(settings),
    )
    erasures = app.Table(
        ERASURES_TABLE,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        help="mpid -> Kafka time (ms, decimal) of its last erasure request.",
        options=_store_options(settings),
    )
    batches = _raw_topic(app, topics.batches.name, partitions)
    audiences = _raw_topic(app, topics.audiences.name, partitions)
    erasure = _raw_topic(app, topics.erasure.name, partitions)
    operations = _raw_topic(app, topics.operations.name, partitions)
    deadletters = _raw_topic(app, topics.deadletter.name, partitions)

    def load(mpid: str) -> bytes | None:
        value: bytes | None = users.get(mpid.encode())
        return value

    def states_of_partition(partition: int) -> list[tuple[str, bytes]]:
        # Firehose DSRs name no mpid: the erasure of one partition looks at its own users.
        return [
            (key.decode("ascii"), value)
            for key, value in list(users.items())
            if kafka_partition(key, partitions) == partition
        ]

    def erased_at(key: bytes | None) -> int | None:
        marker = None if key is None else erasures.get(key)
        return None if marker is None else int(marker)

    async def run(stream: Any, process: Process, rekey_topic: Any) -> None:
        async for event in stream.events():
            message = event.message
            position = SourcePosition(message.topic, message.partition, message.offset)
            try:
                result = process(event, position)
            except Exception as exc:  # a bug must not lose the record: dead-letter it
                log.exception(
                    "ingest failed on %s",
                    position,
                    extra={
                        "topic": position.topic,
                        "partition": position.partition,
                        "offset": position.offset,
                        "mpid": mask_mpid(event.key),
                        "reason": "internal_error",
                    },
                )
                result = IngestResult(
                    dead_letters=[
                        dead_letter(
                            "internal_error",
                            repr(exc)[:1000],
                            stage=STAGE_INGEST,
                            source=position,
                            key=event.key,
                            payload=event.value,
                            failed_at_ms=now_ms(),
                        )
                    ]
                )
                result.counts["dead_letters", STAGE_INGEST, "internal_error"] += 1
            # Operations go to the producer before the table's changelog write, so the state
            # that records them as sent can never be stored ahead of the operations themselves.
            if result.operations is not None:
                mpid, value = result.operations
                await operations.send(key=mpid.encode() or None, value=value)
            for mpid, state in result.states.items():
                users[mpid.encode()] = state
            for mpid in result.purged:
                users.pop(mpid.encode(), None)  # tombstone in the changelog
            for mpid, erased_ms in result.erased.items():
                erasures[mpid.encode()] = str(erased_ms).encode()
            for mpid, raw in result.rekeyed:
                await rekey_topic.send(key=mpid.encode(), value=raw)
            for letter in result.dead_letters:
                await deadletters.send(key=event.key, value=letter)
            log_dead_letters(log, result.dead_letters)
            record_metrics(result)

    @app.agent(batches, name="ingest_batches", concurrency=1)
    async def ingest_batches(stream: Any) -> AsyncIterator[None]:
        await run(
            stream,
            lambda event, position: process_batch_record(
                event.key,
                event.value,
                position,
                load,
                settings,
                erased_at_ms=erased_at(event.key),
                record_ms=_record_ms(event),
            ),
            batches,
        )
        yield None

    @app.agent(audiences, name="ingest_audiences", concurrency=1)
    async def ingest_audiences(stream: Any) -> AsyncIterator[None]:
        await run(
            stream,
            lambda event, position: process_audience_record(
                event.key,
                event.value,
                position,
                load,
                settings,
            ),
            audiences,
        )
        yield None

    @app.agent(erasure, name="ingest_erasure", concurrency=1)
    async def ingest_erasure(stream: Any) -> AsyncIterator[None]:
        await run(
            stream,
            lambda event, position: process_erasure_record(
                event.key,
                event.value,
                position,
                load,
                record_ms=_record_ms(event),
                scan_states=lambda: states_of_partition(position.partition),
            ),
            erasure,
        )
        yield None

    return users


def _store_options(settings: Settings) -> dict[str, Any] | None:
    """RocksDB memory bounds per table partition (faust opens one database per partition)."""
    if not settings.store.startswith("rocksdb"):
        return None
    mib = 1024 * 1024
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mib,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * mib,
    }


def _record_ms(event: Any) -> int | None:
    """The record's Kafka timestamp in ms (faust gives seconds as a float)."""
    seconds = event.message.timestamp
    return None if seconds is None else round(seconds * 1000)


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, partitions=partitions)


_COUNTERS: dict[str, Any] = {
    "batches": metrics.BATCHES,
    "audience_updates": metrics.AUDIENCE_UPDATES,
    "erasures": metrics.ERASURES,
    "events": metrics.EVENTS,
    "operations": metrics.OPERATIONS,
    "dead_letters": metrics.DEAD_LETTERS,
    "limits": metrics.LIMITS,
    "ignored": metrics.IGNORED,
}


def record_metrics(result: IngestResult) -> None:
    """Apply the increments of one record to the Prometheus counters."""
    for (kind, *values), count in result.counts.items():
        _COUNTERS[kind].labels(*values).inc(count)
