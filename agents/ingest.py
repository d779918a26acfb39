"""Ingest agent: ``mparticle-batches`` → table ``users`` → ``customerio-operations``.

One faust record per input record: the agent reads the user's stored state from the table,
hands everything to :func:`app.pipeline.process_batch_record`, and writes what it returns.
All operations of a record travel as ONE record on the operations topic (key = mpid), so the
per-record cost of faust is paid once per mParticle batch, not once per Customer.io operation
(ARCHITECTURE.md has the measurements behind this).

Delivery semantics (SPEC §7): ``concurrency=1``; the table update and the produced records are
buffered and flushed by faust before it commits this record's offset, so a crash redelivers
the record; folding it again is idempotent and re-sent events carry the same ULIDs. The agent
never lets an exception escape (faust would ack the record and lose it): an unexpected error
dead-letters the record with reason ``internal_error`` and the stream continues.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from app import metrics
from app.pipeline import (
    STAGE_INGEST,
    IngestResult,
    SourcePosition,
    dead_letter,
    now_ms,
    process_batch_record,
)
from app.topics import USERS_TABLE

if TYPE_CHECKING:
    import faust

    from app.settings import Settings
    from app.topics import Topics

log = logging.getLogger(__name__)


def attach_ingest(app: faust.App, settings: Settings, topics: Topics) -> Any:
    """Declare the ``users`` table and the ingest agent on ``app``; return the table."""
    users = app.Table(
        USERS_TABLE,
        partitions=settings.topic_partitions,
        key_type=bytes,  # bytes types select faust's raw codec: values are our Avro bytes
        value_type=bytes,
        help="Per-user state (app.state.UserState as Avro), keyed by mpid.",
    )
    source = _raw_topic(app, topics.batches.name, settings.topic_partitions)
    operations = _raw_topic(app, topics.operations.name, settings.topic_partitions)
    deadletters = _raw_topic(app, topics.deadletter.name, settings.topic_partitions)

    @app.agent(source, name="ingest", concurrency=1)
    async def ingest(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            position = SourcePosition(message.topic, message.partition, message.offset)
            try:
                result = process_batch_record(
                    event.key,
                    event.value,
                    position,
                    lambda mpid: users.get(mpid.encode()),
                    settings,
                )
            except Exception as exc:  # a bug must not lose the record: dead-letter it
                log.exception("ingest failed on %s", position)
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
            for mpid, state in result.states.items():
                users[mpid.encode()] = state
            if result.operations is not None:
                mpid, value = result.operations
                await operations.send(key=mpid.encode(), value=value)
            for mpid, raw in result.rekeyed:
                await source.send(key=mpid.encode(), value=raw)
            for letter in result.dead_letters:
                await deadletters.send(key=event.key, value=letter)
            record_metrics(result)
            yield None

    return users


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, partitions=partitions)


def record_metrics(result: IngestResult) -> None:
    """Apply the increments of one record to the Prometheus counters."""
    for labels, count in result.counts.items():
        kind, *values = labels
        if kind == "batches":
            metrics.BATCHES.labels(*values).inc(count)
        elif kind == "events":
            metrics.EVENTS.labels(*values).inc(count)
        elif kind == "operations":
            metrics.OPERATIONS.labels(*values).inc(count)
        elif kind == "dead_letters":
            metrics.DEAD_LETTERS.labels(*values).inc(count)
        elif kind == "limits":
            metrics.LIMITS.labels(*values).inc(count)
        elif kind == "ignored":
            metrics.IGNORED.labels(*values).inc(count)
