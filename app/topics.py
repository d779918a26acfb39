"""Every Kafka topic of the forwarder, in one place (SPEC §1).

Keys are the mpid as UTF-8 decimal text everywhere, so the input topics, the operations topic
and the ``users`` table changelog are co-partitioned: one user's records meet on the same
partition number in every topic and are handled in order by one worker.

Values: the input topics carry JSON bytes that our own parser validates (so a bad record can be
dead-lettered instead of crashing a faust codec); the operations and dead-letter topics, and
the table changelog, carry Avro in single-object encoding (:mod:`app.core.avro`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings


class ValueFormat(StrEnum):
    JSON = "json"  # parsed by app code, raw bytes on the wire
    AVRO = "avro"  # single-object Avro, schema in schemas/


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What the worker needs to know to create and read one topic."""

    name: str
    partitions: int
    value_format: ValueFormat
    schema: str | None = None  # schemas/<schema>.avsc for Avro values
    compacted: bool = False
    retention_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one deployment, derived from the settings."""

    batches: TopicSpec
    audiences: TopicSpec
    erasure: TopicSpec
    operations: TopicSpec
    deadletter: TopicSpec

    def all(self) -> tuple[TopicSpec, ...]:
        return (self.batches, self.audiences, self.erasure, self.operations, self.deadletter)

    def inputs(self) -> tuple[TopicSpec, ...]:
        """The co-partitioned input topics (same key, same partition count)."""
        return (self.batches, self.audiences, self.erasure)


USERS_TABLE = "users"
ERASURES_TABLE = "erasures"
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000


def changelog_topics(app_id: str) -> tuple[str, ...]:
    """The changelog topics faust creates for our tables (``<app id>-<table>-changelog``)."""
    return tuple(f"{app_id}-{table}-changelog" for table in (USERS_TABLE, ERASURES_TABLE))


def topics_for(settings: Settings) -> Topics:
    """The topic specs for ``settings`` (names and partition count are configurable)."""
    partitions = settings.topic_partitions
    return Topics(
        batches=TopicSpec(settings.topic_batches, partitions, ValueFormat.JSON),
        audiences=TopicSpec(settings.topic_audiences, partitions, ValueFormat.JSON),
        erasure=TopicSpec(settings.topic_erasure, partitions, ValueFormat.JSON),
        operations=TopicSpec(
            settings.topic_operations,
            partitions,
            ValueFormat.AVRO,
            schema="operation_batch",
            retention_ms=SEVEN_DAYS_MS,
        ),
        deadletter=TopicSpec(
            settings.topic_deadletter,
            partitions,
            ValueFormat.AVRO,
            schema="dead_letter",
            retention_ms=THIRTY_DAYS_MS,
        ),
    )
