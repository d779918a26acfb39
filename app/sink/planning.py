"""The sink's pure part: a fetched chunk of the operations topic → lanes, dead letters, offsets.

A chunk is what one fetch returned: ``{partition key: [records in offset order]}`` (aiokafka's
``TopicPartition`` → ``ConsumerRecord``; anything with the same attributes in tests).
:func:`plan_chunk` decodes each ``OperationBatch`` record and puts its items, in order, into
lane ``partition % lanes``: one user's operations are always in one partition, so a lane that
sends its requests in order keeps per-user order while lanes run concurrently; a chunk uses
only as many lanes as it fills requests (:func:`assign_lanes`). :class:`Unanswered` says how
long a delete must wait for an earlier request of its user that got no answer. A record that is
not an ``OperationBatch`` becomes a dead letter (stage ``sink``, reason ``avro_decode``) instead
of stopping the sink. :func:`commit_offsets` and :func:`rewind_offsets` say where the chunk's
partitions stand after it is done or must be read again. No I/O: the service
(:mod:`app.sink.service`) sends, writes and commits.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import orjson

from app.errors import InvalidRecordError
from app.records import SourcePosition, Stage, dead_letter, decode_operation_batch

if TYPE_CHECKING:
    from app.customerio.delivery import Rejected


class Fetched(Protocol):
    """One record of the operations topic as the consumer returns it."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


Partition = TypeVar("Partition", bound=Hashable)


@dataclass(frozen=True, slots=True)
class ItemRef:
    """Where an operation came from, for its dead letter and latency metric."""

    partition: int
    offset: int
    mpid: str
    ingested_at_ms: int
    source_ms: int | None = None  # the input record's Kafka time (SourcePosition.timestamp_ms)


Lane = list[tuple[bytes, ItemRef]]


@dataclass(slots=True)
class ChunkPlan:
    """What to deliver for one chunk: ``lanes`` (only the non-empty ones; each a list of
    ``(item JSON, ItemRef)`` in partition-then-offset order) and ``letters`` (encoded dead
    letters of the records that could not be decoded); ``undecodable`` counts them by reason."""

    lanes: list[Lane] = field(default_factory=list)
    letters: list[bytes] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)


def plan_chunk(
    chunk: Mapping[Partition, Sequence[Fetched]],
    lanes: int,
    clock: Callable[[], int],
    *,
    request_items: int,
) -> ChunkPlan:
    """Split ``chunk`` into at most ``lanes`` lanes by partition (:func:`assign_lanes`: as many
    as the chunk fills requests of ``request_items`` items).

    ``clock`` gives the ``failed_at_ms`` of dead letters (ms since the epoch)."""
    by_partition: dict[int, Lane] = {}
    plan = ChunkPlan()
    for records in chunk.values():
        for record in records:
            lane = by_partition.setdefault(record.partition, [])
            try:
                batch = decode_operation_batch(record.value or b"")
            except InvalidRecordError as exc:
                plan.letters.append(letter_for_record(record, exc, clock()))
                plan.undecodable.append(exc.reason)
                continue
            ref = ItemRef(
                record.partition,
                record.offset,
                batch["mpid"],
                batch["ingested_at_ms"],
                batch["source_ms"],
            )
            lane.extend((operation["item"], ref) for operation in batch["operations"])
    plan.lanes = [
        lane for lane in assign_lanes(by_partition, lanes, request_items).values() if lane
    ]
    return plan


Item = TypeVar("Item")


def assign_lanes(
    by_partition: Mapping[int, list[Item]], max_lanes: int, max_items: int
) -> dict[int, list[Item]]:
    """Lanes of one chunk: partition p's items (in order) go to lane p % n, where n is as many
    lanes as the chunk fills requests of ``max_items``, at most ``max_lanes``.

    Split ``max_lanes`` ways, a chunk that fits one request would cost that many (Customer.io
    limits requests, so under its limit items per request is the throughput). A partition is
    wholly in one lane, so one user's operations keep their order."""
    items = sum(len(partition) for partition in by_partition.values())
    used = min(max_lanes, max(1, -(-items // max_items)))
    lanes: dict[int, list[Item]] = {}
    for partition, partition_items in sorted(by_partition.items()):
        lanes.setdefault(partition % used, []).extend(partition_items)
    return lanes


@dataclass(slots=True)
class Unanswered:
    """Users whose items went out in an attempt that got no answer (a timeout, a dropped
    connection): Customer.io may have received it and may still apply it after the client gave
    up, after its retry and after anything sent later, a delete included, which that late copy
    would undo (an event or identify recreates the person). ``until``: mpid → the monotonic
    time (s) up to which such a copy is presumed applicable: noted + ``settle_seconds``.

    A delete of such a user is sent only after that time (:meth:`hold_seconds`); other items
    are not held (a late identify loses to a newer one by its timestamp, a late event is
    recognised by its id). In memory only: after a restart the chunk is redelivered without
    this memory, so a copy abandoned by a dead worker is not waited for."""

    settle_seconds: float
    until: dict[str, float] = field(default_factory=dict)

    def note(self, mpids: Iterable[str], now: float) -> None:
        """Remember ``mpids`` (the users of a request with an unanswered attempt) at ``now``."""
        deadline = now + self.settle_seconds
        for mpid in mpids:
            self.until[mpid] = deadline

    def hold_seconds(self, items: Iterable[tuple[bytes, ItemRef]], now: float) -> float:
        """How long to wait before sending ``items`` (one request: item JSON, ref): until the
        last unanswered request of a user it deletes is settled; 0.0 when there is none.
        Forgets what has settled by ``now``; reads an item only when its user is remembered."""
        if not self.until:  # the usual case: no unanswered attempt, nothing to look at
            return 0.0
        self.until = {mpid: end for mpid, end in self.until.items() if end > now}
        ends = [
            self.until[ref.mpid]
            for payload, ref in items
            if ref.mpid in self.until and orjson.loads(payload).get("action") == "delete"
        ]
        return max(ends, default=now) - now


def commit_offsets(chunk: Mapping[Partition, Sequence[Fetched]]) -> dict[Partition, int]:
    """The offsets to commit once the whole chunk is done: each partition's last offset + 1."""
    return {tp: records[-1].offset + 1 for tp, records in chunk.items() if records}


def rewind_offsets(chunk: Mapping[Partition, Sequence[Fetched]]) -> dict[Partition, int]:
    """Where to seek to read the chunk again: each partition's first offset."""
    return {tp: records[0].offset for tp, records in chunk.items() if records}


def letter_for_record(record: Fetched, exc: InvalidRecordError, failed_at_ms: int) -> bytes:
    """The dead letter of an operations record that is not an ``OperationBatch``: its raw value
    and key, its own position."""
    return dead_letter(
        exc.reason,
        exc.detail,
        stage=Stage.SINK,
        source=SourcePosition(record.topic, record.partition, record.offset),
        key=record.key,
        payload=record.value or b"",
        failed_at_ms=failed_at_ms,
    )


def letter_for_rejected(rejected: Rejected[ItemRef], topic: str, failed_at_ms: int) -> bytes:
    """The dead letter of one item Customer.io did not accept (or that was never sendable):
    the item JSON as payload, the mpid as key, the operations record's position in ``topic``,
    Customer.io's status, response and the attempts made."""
    ref = rejected.ref
    return dead_letter(
        rejected.reason,
        rejected.detail,
        stage=Stage.SINK,
        source=SourcePosition(topic, ref.partition, ref.offset, timestamp_ms=ref.source_ms),
        key=ref.mpid.encode(),
        payload=rejected.payload,
        failed_at_ms=failed_at_ms,
        http_status=rejected.http_status,
        response=rejected.response,
        attempts=rejected.attempts,
    )
