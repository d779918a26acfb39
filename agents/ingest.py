"""Ingest agents: the three input topics → table ``users`` → ``customerio-operations``.

One agent per input topic (``mparticle-batches``, ``mparticle-audiences``,
``mparticle-erasure``) and one for the deployment's re-key topic (``<app id>-rekey``), all
co-partitioned by mpid and sharing the ``users`` table, so one user's batches, membership
changes and erasures meet the same state on the same worker. A record not keyed by its user's
mpid is sent, part by part keyed by each part's mpid, to the re-key topic (never back to an
input topic: those belong to mParticle and ``mpcio ingress``), and the re-key agent processes
each part like a record of the topic it came from (header ``mpcio.rekey.kind``). Each
agent reads the user's stored state, hands the record to its pure function in
:mod:`app.core.pipeline`, and writes what it returns. All operations of a record travel as ONE
record on the operations topic (key = mpid): faust's per-record cost is paid once per input
record, not once per Customer.io operation (ARCHITECTURE.md has the measurements).

Delivery semantics (ARCHITECTURE.md, "Crash safety"): ``concurrency=1``; with
``processing_guarantee="exactly_once"`` everything one record produces — its operations record,
dead letters, re-keyed records and, last, its table changes (local store + changelog) — goes
through the transactional producer of the record's SOURCE partition, the one faust commits the
input offset with. A record's outputs, state and offset are therefore committed together (or
its outputs in an earlier transaction than its state, never later), and the sink reads only
committed operations. The local store is trusted only after a clean stop
(:mod:`app.localstore`). A send that fails stops the process at once (exit code 1): nothing of
the record is committed and the restart redoes it. No exception from the pure step escapes an
agent (faust would ack the record): it dead-letters the record with reason ``internal_error``
and the stream continues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from app import metrics
from app.changelog import changelog_configs
from app.core.erasure import CLOCK_AHEAD_TOLERANCE_MS
from app.core.pipeline import (
    IngestResult,
    bound_rekeyed,
    count_cut_letters,
    from_rekey_topic,
    process_audience_record,
    process_batch_record,
    process_erasure_record,
    unknown_rekey_kind,
)
from app.core.transform import LIMIT_PERSON_CAP
from app.errors import Reason
from app.faust_app import fail_stop, tracked_writes, transactional_id_of, uncommitted_writes
from app.logs import log_dead_letters, log_held_back, mask_mpid
from app.records import (
    SourcePosition,
    Stage,
    as_list,
    dead_letter,
    dead_letter_record,
    now_ms,
)
from app.topics import ERASURES_TABLE, USERS_TABLE, RekeyKind, rekey_headers, rekey_kind
from app.web import kafka_partition
from app.wiring import core_options

if TYPE_CHECKING:
    import faust

    from app.core.options import CoreOptions
    from app.localstore import PendingWrites, UncommittedWrites
    from app.settings import Settings
    from app.topics import Topics

log = logging.getLogger(__name__)

#: One agent's pure step: (faust event, its source position) → what to write.
Step = Callable[[Any, SourcePosition], IngestResult]
#: Called after a record's outputs were written (the benchmark counts with it).
AfterWrite = Callable[[IngestResult], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class IngestTables:
    """The two tables of the ingest agents (faust ``Table``, raw bytes keys and values):
    ``users`` (mpid → encoded ``UserState``) and ``erasures`` (mpid, or an identity marker's
    key ``id:<hash>`` (:func:`~app.core.erasure.identity_marker_key`) → Kafka time of its last
    erasure request, decimal ms).

    Reads see this worker's writes whose transaction is still open (``uncommitted``) before
    the store, which holds committed values only (:class:`app.localstore.UncommittedWrites`).
    """

    users: Any
    erasures: Any
    uncommitted: UncommittedWrites

    def _read(self, table: Any, key: bytes) -> bytes | None:
        held, value = self.uncommitted.get(table, key)
        # The store itself (``table.data``), as RecordWriter's writes go: faust's
        # ``table.get`` adds only sensor calls (two monitors, a labelled Prometheus counter),
        # paid twice per record on the hot path.
        stored: bytes | None = value if held else table.data.get(key)
        return stored

    def load(self, mpid: str) -> bytes | None:
        """A user's stored state (encoded), or None."""
        return self._read(self.users, mpid.encode())

    def erased_at(self, key: bytes | None) -> int | None:
        """When the key's user was last erased (Kafka time, ms), or None."""
        marker = None if key is None else self._read(self.erasures, key)
        return None if marker is None else int(marker)

    def identity_erased_at(self, marker_key: str) -> int | None:
        """When an identity was last erased (its identity marker's key; Kafka time, ms)."""
        return self.erased_at(marker_key.encode())

    def states_of_partition(self, partition: int, partitions: int) -> list[tuple[str, bytes]]:
        """``(mpid, stored state)`` of the users of one input partition (a Firehose DSR names
        no mpid: its erasure scans the users of its own partition)."""
        states = {
            key: value
            for key, value in list(self.users.items())
            if kafka_partition(key, partitions) == partition
        }
        states.update(self.uncommitted.changes(self.users, partition))
        return [(key.decode("ascii"), value) for key, value in states.items() if value is not None]


def declare_tables(app: faust.App, settings: Settings) -> IngestTables:
    """Declare the users and erasures tables on ``app`` (changelog-backed, co-partitioned)."""
    # bytes key/value types select faust's raw codec: values are our own Avro / decimal text.
    declare = partial(
        app.Table,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
        options=_store_options(settings),
        extra_topic_configs=changelog_configs(settings),
    )
    return IngestTables(
        users=declare(
            USERS_TABLE, help="Per-user state (app.core.state.UserState as Avro), keyed by mpid."
        ),
        erasures=declare(
            ERASURES_TABLE,
            help="mpid or id:<identity hash> -> Kafka time (ms, decimal) of its last erasure.",
        ),
        uncommitted=uncommitted_writes(app),
    )


def batch_step(tables: IngestTables, options: CoreOptions) -> Step:
    """The pure step of ``mparticle-batches`` records (:func:`_erasure_checked_step`)."""
    return _erasure_checked_step(tables, options, process_batch_record, "batches", "batch")


def audience_step(tables: IngestTables, options: CoreOptions) -> Step:
    """The pure step of ``mparticle-audiences`` records (:func:`_erasure_checked_step`)."""
    return _erasure_checked_step(
        tables, options, process_audience_record, "audience_updates", "audience update"
    )


def _erasure_checked_step(
    tables: IngestTables,
    options: CoreOptions,
    process: Callable[..., IngestResult],
    counter: str,
    what: str,
) -> Step:
    """The step of a per-user input topic: ``process`` (``process_batch_record`` or
    ``process_audience_record``) with the key's erasure marker, a reader of identity markers
    and the record's Kafka time, so a record that reached Kafka before its user's erasure (by
    mpid or by one of its identities) is dropped; each one dropped leaves
    one INFO line (masked mpid, both Kafka times; ``what`` names the record, ``counter`` is
    the metric whose ``erased`` count says it was dropped)."""

    def step(event: Any, position: SourcePosition) -> IngestResult:
        erased_ms = tables.erased_at(event.key)
        result = process(
            event.key,
            event.value,
            position,
            tables.load,
            options,
            erased_at_ms=erased_ms,
            record_ms=position.timestamp_ms,
            identity_erased_at=tables.identity_erased_at,
        )
        if result.counts[counter, "erased"]:
            log.info(
                "%s dropped: its user was erased at %s ms, the record's Kafka time is %s ms",
                what,
                # dropped by an identity marker: the mpid marker it put has that time
                next(iter(result.erased.values()), erased_ms),
                position.timestamp_ms,
                extra={**_where(position), "mpid": mask_mpid(event.key), "reason": "erased"},
            )
        return result

    return step


def erasure_step(tables: IngestTables, partitions: int) -> Step:
    """The pure step of ``mparticle-erasure`` records. An erasure whose Kafka time is ahead of
    the worker's clock is recorded at most :data:`~app.core.erasure.CLOCK_AHEAD_TOLERANCE_MS`
    ahead of it (:func:`~app.core.erasure.erasure_time`), and such a clamp is logged (WARNING,
    masked mpid, once per request: its markers share the time). A marker (a user's or an
    identity's) never moves back: an erasure older than the one recorded (read after it:
    re-keyed, redriven, or retried by its source with its old time) keeps the later time, else
    batches between the two would bring the erased person back."""

    def step(event: Any, position: SourcePosition) -> IngestResult:
        result = process_erasure_record(
            event.key,
            event.value,
            position,
            tables.load,
            record_ms=position.timestamp_ms,
            scan_states=lambda: tables.states_of_partition(position.partition, partitions),
        )
        warned = False
        for mpid, erased_ms in result.erased.items():
            recorded = tables.erased_at(mpid.encode())
            if recorded is not None and recorded > erased_ms:
                result.erased[mpid] = recorded
            stamped = position.timestamp_ms
            if not warned and stamped is not None and erased_ms < stamped:  # clamped: ahead
                warned = True
                log.warning(
                    "erasure stamped %.1f s ahead of this worker's clock: recorded %.0f s ahead "
                    "of it (check the erasure source's clock)",
                    (stamped - erased_ms + CLOCK_AHEAD_TOLERANCE_MS) / 1000,
                    CLOCK_AHEAD_TOLERANCE_MS / 1000,
                    extra={**_where(position), "mpid": mask_mpid(mpid), "reason": "clock_ahead"},
                )
        return result

    return step


def _where(position: SourcePosition) -> dict[str, Any]:
    """The ``extra`` fields of a log line about the record at ``position``."""
    return {"topic": position.topic, "partition": position.partition, "offset": position.offset}


def rekey_step(steps: Mapping[RekeyKind, Step]) -> Step:
    """The pure step of the re-key topic's records: each is processed by ``steps`` of the kind
    it came from (header ``mpcio.rekey.kind``) and re-keys nothing again
    (:func:`~app.core.pipeline.from_rekey_topic`); one without a known kind is dead-lettered
    (:func:`~app.core.pipeline.unknown_rekey_kind`)."""

    def step(event: Any, position: SourcePosition) -> IngestResult:
        kind = rekey_kind(as_list(event.message.headers))
        if kind is None:
            return unknown_rekey_kind(event.key, event.value, position)
        return from_rekey_topic(steps[kind](event, position), position)

    return step


#: The input agents: (agent name, input topic of ``Topics``, its step from the tables, the
#: core options and the partition count). :func:`attach_ingest` adds ``ingest_rekeyed``.
AGENTS: tuple[tuple[str, RekeyKind, Callable[[IngestTables, CoreOptions, int], Step]], ...] = (
    ("ingest_batches", "batches", lambda tables, options, _: batch_step(tables, options)),
    ("ingest_audiences", "audiences", lambda tables, options, _: audience_step(tables, options)),
    ("ingest_erasure", "erasure", lambda tables, _, partitions: erasure_step(tables, partitions)),
)


def attach_ingest(app: faust.App, settings: Settings, topics: Topics) -> Any:
    """Declare the tables, the input agents (:data:`AGENTS`) and the re-key topic's agent
    (``ingest_rekeyed``, :func:`rekey_step`) on ``app``; return the users table."""
    partitions = settings.topic_partitions
    tables = declare_tables(app, settings)
    writer = RecordWriter(app, tables.users, tables.erasures, topics)
    options = core_options(settings)
    steps: dict[RekeyKind, Step] = {}
    for name, kind, make_step in AGENTS:
        steps[kind] = make_step(tables, options, partitions)
        source = getattr(topics, kind).name
        _add_agent(app, name, source, partitions, steps[kind], writer, kind)
    _add_agent(
        app, "ingest_rekeyed", topics.rekey.name, partitions, rekey_step(steps), writer, None
    )
    return tables.users


def _add_agent(  # noqa: PLR0917 - the agent's whole wiring, each argument needed
    app: faust.App,
    name: str,
    source: str,
    partitions: int,
    step: Step,
    writer: RecordWriter,
    kind: RekeyKind | None,
) -> None:
    topic = app.topic(source, key_type=bytes, value_type=bytes, partitions=partitions)

    async def agent(stream: Any) -> AsyncIterator[None]:
        await ingest_stream(stream, step, writer, kind=kind)
        yield None

    app.agent(topic, name=name, concurrency=1)(agent)


async def ingest_stream(
    stream: Any,
    step: Step,
    writer: RecordWriter,
    *,
    kind: RekeyKind | None,
    after_write: AfterWrite | None = None,
) -> None:
    """The loop of one ingest agent: each record → ``step`` → :func:`write_record`, in the
    turn of its partition (``writer.turns``, :class:`Turns`).

    ``kind``: the role of the stream's input topic, named on the records it re-keys; None for
    the re-key topic (its positions are marked ``rekeyed`` for the redelivery guard).

    An exception from ``step`` (a bug) dead-letters the record with reason
    ``internal_error`` instead of escaping, which would make faust ack it."""
    async for event in stream.events():
        message = event.message
        position = SourcePosition(
            message.topic,
            message.partition,
            message.offset,
            rekeyed=kind is None,
            timestamp_ms=_record_ms(event),
        )
        # The step reads what earlier records wrote (state, erasure marker), and the write
        # yields between its operations record and its table changes: the partition's other
        # agents wait, or a batch stepped before an erasure's marker is put would send its
        # events after that erasure's deletes (issue 13: an erased person back).
        async with writer.turns(message.partition):
            try:
                result = step(event, position)
            except Exception as exc:  # a bug must not lose the record: dead-letter it
                log.exception(
                    "ingest failed on %s",
                    position,
                    extra={
                        "topic": position.topic,
                        "partition": position.partition,
                        "offset": position.offset,
                        "mpid": mask_mpid(event.key),
                        "reason": Reason.INTERNAL_ERROR,
                    },
                )
                result = _internal_error(event, position, exc)
            await write_record(writer, event, result, kind)
        if after_write is not None:
            await after_write(result)


async def write_record(
    writer: RecordWriter, event: Any, result: IngestResult, kind: RekeyKind | None
) -> None:
    """The write step of one input record: its outputs and table changes in the crash-safe
    order (:meth:`RecordWriter.write`: operations → dead letters → re-keys → states, purges
    and erasure markers), then its metrics. A failed send stops the process (``fail_stop``)."""
    await writer.write(event, result, kind)
    record_metrics(result)
    # .get: a Counter's missing key costs a __missing__ call; a rare case, skipped cheaply
    held_back = result.counts.get(("limits", LIMIT_PERSON_CAP))
    if held_back:
        log_held_back(log, held_back, next(iter(result.states), None))


class Turns:
    """One lock per input partition number, shared by the agents of every input topic (their
    partition p holds the same users): one record of a partition is stepped and written at a
    time, so a record's step sees every earlier record's table changes, and records' outputs
    reach the operations topic in the order they were stepped. Uncontended, a turn does not
    yield."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}

    def __call__(self, partition: int) -> asyncio.Lock:
        lock = self._locks.get(partition)
        if lock is None:  # not setdefault: that would build a lock per record
            lock = self._locks[partition] = asyncio.Lock()
        return lock


def _internal_error(event: Any, position: SourcePosition, exc: Exception) -> IngestResult:
    """The dead letter of a record the pure step failed on (``internal_error``)."""
    result = IngestResult(
        dead_letters=[
            dead_letter(
                Reason.INTERNAL_ERROR,
                repr(exc)[:1000],
                stage=Stage.INGEST,
                source=position,
                key=event.key,
                payload=event.value,
                failed_at_ms=now_ms(),
            )
        ]
    )
    result.counts["dead_letters", Stage.INGEST, Reason.INTERNAL_ERROR] += 1
    return result


class RecordWriter:
    """Writes what one input record produced, in the one order that keeps redelivery safe.

    Order: operations record, dead letters, re-keyed records, then the table changes (each
    sent, explicitly, to its changelog partition = the source partition, then handed to
    :class:`~app.localstore.UncommittedWrites`, which applies it to the local store when that
    transaction commits and drops it when it is aborted).
    State goes last so that a transaction can hold a record's outputs without its state (the
    record is then redone: its operations are sent again with the same event ids, which
    Customer.io drops) but never its state without its outputs — the state is what makes the
    redelivery guard skip a record. Every send uses the transactional producer of the source
    partition (``exactly_once``), so the source offset commits with it; under
    ``at_least_once`` (kept for measurement) the same sends go through faust's plain producer,
    flushed by faust before each offset commit.

    Table values bypass faust's table API (the store is written via ``table.data``) and the
    changelog record is sent here, not by faust: faust queues table changelog writes in a
    buffer that its commit does not flush under transactions, so a state could land in a later
    transaction than the offset of its record; and faust writes its store at once, so after an
    aborted transaction (crash, rebalance) the store would be ahead of Kafka.
    """

    def __init__(self, app: faust.App, users: Any, erasures: Any, topics: Topics) -> None:
        self.app = app
        self.users = users
        self.erasures = erasures
        self.topics = topics
        self.pending: PendingWrites = tracked_writes(app)
        self.uncommitted: UncommittedWrites = uncommitted_writes(app)
        self.turns = Turns()
        self._transactional_ids: dict[tuple[str, int, int], str] = {}

    async def write(self, event: Any, result: IngestResult, kind: RekeyKind | None) -> None:
        """Write ``result`` of ``event`` (see the class docstring). ``kind``: the role of the
        event's topic, named on the records it re-keys; None for the re-key topic, whose
        records re-key nothing (:func:`~app.core.pipeline.from_rekey_topic`).

        Nothing copied from the input record can be too large to send (which would stop the
        worker on every restart, :mod:`app.core.sizes`): a re-keyed part that would be is a
        ``too_large`` dead letter (:func:`~app.core.pipeline.bound_rekeyed`), a dead letter
        that would be is cut to fit (:func:`~app.records.dead_letter_record`)."""
        message = event.message
        send = partial(self._send, self._transactional_id(message.topic, message.partition))
        headers: list[tuple[str, bytes]] = []
        if result.rekeyed:
            # never back to the input topic (its owner's): to ours, with the record's own
            # Kafka time, so that erasure markers compare it as the record it came from
            origin = f"{message.topic}/{message.partition}@{message.offset}"
            headers = rekey_headers(as_list(message.headers), kind, origin)
            # before anything is sent: a part too large to send becomes a dead letter
            position = SourcePosition(message.topic, message.partition, message.offset)
            bound_rekeyed(result, headers, position)
        if result.operations is not None:
            mpid, operations = result.operations
            await send(self.topics.operations.name, mpid.encode() or None, operations)
        if result.dead_letters:  # rare: skip the calls (and the logger's import) otherwise
            records = [
                dead_letter_record(letter, message.headers) for letter in result.dead_letters
            ]
            for record in records:
                await send(
                    self.topics.deadletter.name, record.key, record.value, headers=record.headers
                )
            count_cut_letters(result.counts, records)
            log_dead_letters(log, [record.value for record in records])
        if result.rekeyed:
            for mpid, raw in result.rekeyed:
                await send(
                    self.topics.rekey.name,
                    mpid.encode(),
                    raw,
                    headers=headers,
                    timestamp=message.timestamp,
                )
        changes: list[tuple[Any, bytes, bytes | None]] = [
            *((self.users, mpid.encode(), state) for mpid, state in result.states.items()),
            *((self.users, mpid.encode(), None) for mpid in result.purged),
            *(
                (self.erasures, mpid.encode(), str(erased_ms).encode())
                for mpid, erased_ms in result.erased.items()
            ),
        ]
        for table, key, value in changes:
            changelog = table.changelog_topic.get_topic_name()
            sent = await send(changelog, key, value, message.partition)  # None: a tombstone
            # no await since the send: its transaction cannot have committed in between
            self.uncommitted.put(message.partition, table, key, value, sent)
        if changes:
            self.pending.wrote(message.topic, message.partition, message.offset)

    def _transactional_id(self, topic: str, partition: int) -> str | None:
        """faust's transactional id for the source partition (None without transactions):
        ``<app id>-<topic group>-<partition>``, as faust's ``TransactionManager`` names the
        partition's producer.

        Cached by (topic, partition, topic group): building it costs ~2.6 % of the worker's
        CPU per record (``str.format``, a ``TopicPartitionGroup``, ``app.conf`` reads). Safe
        across rebalances: the app id and the processing guarantee are fixed for the app's
        life, and the group — the one part a rebalance could change, as the leader numbers the
        co-partitioned topic groups afresh each time — is read from faust's assignor on every
        call and is part of the key, so a renumbered group gets its own, new id."""
        app = self.app
        if not app.in_transaction:
            return None
        group = app.assignor.group_for_topic(topic)
        ids = self._transactional_ids
        tid = ids.get((topic, partition, group))
        if tid is None:
            tid = ids[topic, partition, group] = transactional_id_of(app, topic, partition, group)
        return tid

    async def _send(
        self,
        transactional_id: str | None,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        *,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: float | None = None,
    ) -> Awaitable[Any]:
        """Queue one record in the transaction; returns the future of its RecordMetadata.
        ``timestamp``: the record's Kafka time in seconds (None: the time of the send)."""
        try:
            sent: Awaitable[Any] = await self.app.producer.send(
                topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
            )
        except Exception as exc:  # noqa: BLE001 - any failed send: stop before anything commits
            fail_stop(f"sending to {topic} failed: {exc!r}")
        return sent


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


#: labelled counter children by counts key: prometheus_client's ``labels()`` validates and
#: locks on every call, several times per record on the hot path (bench.e2e profile)
_CHILDREN: dict[tuple[str, ...], Any] = {}


def record_metrics(result: IngestResult) -> None:
    """Apply the increments of one record to the Prometheus counters."""
    for key, count in result.counts.items():
        child = _CHILDREN.get(key)
        if child is None:
            kind, *values = key
            child = _CHILDREN[key] = _COUNTERS[kind].labels(*values)
        child.inc(count)
