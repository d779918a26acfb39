"""Every Kafka topic of the forwarder, in one place (SPEC §1).

Keys are the mpid as UTF-8 decimal text everywhere, so the input topics, the re-key topic, the
operations topic and the ``users`` table changelog are co-partitioned: one user's records meet
on the same partition number in every topic and are handled in order by one worker.

The input topics belong to whoever writes them (mParticle's Kafka integration, ``mpcio
ingress``); the worker never writes to them. An input record not keyed by its user's mpid
(mParticle sends an event without a user id unkeyed, to a random partition; a bulk record holds
several users) is re-sent, part by part keyed by each part's mpid, to the deployment's own
re-key topic (``<app id>-rekey``), and processed from there as a record of the topic it came
from: the header :data:`REKEY_KIND_HEADER` names that topic's role.

Values: the input topics carry JSON bytes that our own parser validates (so a bad record can be
dead-lettered instead of crashing a faust codec); the operations and dead-letter topics, and
the table changelog, carry Avro in single-object encoding (:mod:`app.core.avro`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

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
    rekey: TopicSpec

    def all(self) -> tuple[TopicSpec, ...]:
        return (
            self.batches,
            self.audiences,
            self.erasure,
            self.rekey,
            self.operations,
            self.deadletter,
        )

    def inputs(self) -> tuple[TopicSpec, ...]:
        """The co-partitioned topics the ingest agents read (same key, same partition count):
        the three input topics and the re-key topic."""
        return (self.batches, self.audiences, self.erasure, self.rekey)


#: Which input a record on the re-key topic came from: the :class:`Topics` field of that topic.
RekeyKind = Literal["batches", "audiences", "erasure"]
REKEY_KINDS: tuple[RekeyKind, ...] = ("batches", "audiences", "erasure")
#: Header of every re-key topic record: its :data:`RekeyKind` as ASCII.
REKEY_KIND_HEADER = "mpcio.rekey.kind"
#: Header of every re-key topic record: where it was read, ``<topic>/<partition>@<offset>``.
REKEYED_FROM_HEADER = "mpcio.rekeyed.from"


def rekey_headers(
    source_headers: list[tuple[str, bytes]], kind: RekeyKind | None, origin: str
) -> list[tuple[str, bytes]]:
    """Headers of a re-keyed record: the source record's own (so a dead letter or a redrive
    keeps them), then its ``kind`` (left out when None: the record is then dead-lettered as
    ``rekey_kind_unknown`` when read, not lost) and ``origin``
    (``<topic>/<partition>@<offset>``)."""
    ours = (REKEY_KIND_HEADER, REKEYED_FROM_HEADER)
    return [
        *((name, value) for name, value in source_headers if name not in ours),
        *(() if kind is None else ((REKEY_KIND_HEADER, kind.encode()),)),
        (REKEYED_FROM_HEADER, origin.encode()),
    ]


def rekey_kind(headers: list[tuple[str, bytes]]) -> RekeyKind | None:
    """The :data:`RekeyKind` named by ``headers`` (the last such header), or None when none is."""
    named = [value for name, value in headers if name == REKEY_KIND_HEADER]
    kind = named[-1].decode("ascii", "replace") if named else None
    return next((known for known in REKEY_KINDS if known == kind), None)


USERS_TABLE = "users"
ERASURES_TABLE = "erasures"
SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic faust creates for one of our tables (``<app id>-<table>-changelog``)."""
    return f"{app_id}-{table}-changelog"


def changelog_topics(app_id: str) -> tuple[str, ...]:
    """The changelog topics faust creates for our tables."""
    return tuple(changelog_topic(app_id, table) for table in (USERS_TABLE, ERASURES_TABLE))


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
        # raw input JSON like the topics it relieves; read within seconds, kept like operations
        rekey=TopicSpec(
            settings.topic_rekey, partitions, ValueFormat.JSON, retention_ms=SEVEN_DAYS_MS
        ),
    )
