"""The faust application: configuration only; agents are attached by :mod:`agents`.

The app is built by a factory from :class:`~app.settings.Settings` (not at import time) so the
worker, the tests and the benchmarks each get an app with their own id, topics and store.

Delivery semantics (ARCHITECTURE.md, "Crash safety"): ``processing_guarantee`` comes from the
settings (``exactly_once`` by default; ``at_least_once`` stays selectable; ARCHITECTURE.md §4).
Under ``exactly_once`` faust keeps one transactional producer per assigned input partition,
reads with ``read_committed`` and commits the input offsets of a partition inside that
partition's transaction (``send_offsets_to_transaction``); agents send everything a record
produces through the same producer (:class:`agents.ingest.RecordWriter`). Agents run with
``concurrency=1``; faust commits only the contiguous acked prefix, so a crash redoes, never
skips. Narrow overrides of faust, each documented where it is: the consumer re-reads a hole in
an input partition before faust may count it as a gap (:class:`_Consumer`), takes changelog
highwaters from the broker (:class:`_ConsumerThread`), and the producer applies a partition's
held table writes to the store when its transaction commits and discards them when faust drops
it (:class:`_Producer`, :class:`~app.localstore.UncommittedWrites`).
:class:`TrackingTableManager` tells :class:`~app.localstore.PendingWrites` which input offsets
each successful commit covered (the clean-stop marker depends on it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import aiokafka
import faust
import uvloop
from faust.tables import TableManager
from faust.transport.consumer import TopicPartitionGroup, TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.enums import ProcessingGuarantee

from app.core.sizes import PRODUCER_MAX_REQUEST_BYTES
from app.kafka_security import broker_credentials
from app.localstore import PendingWrites, UncommittedWrites
from app.recovery import SafeRecovery, extend_span, position_for_guess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping, MutableMapping
    from collections.abc import Set as AbstractSet

    from faust.transport.consumer import RecordMap
    from faust.types import TP, AppT, Message, TransportT
    from faust.types.transports import TPorTopicSet

    from app.settings import Settings

log = logging.getLogger(__name__)
# Measured by bench/ceiling (ARCHITECTURE.md has the figures). With faust's default fetch
# size the ingest agent stalls about 0.9 s per fetch round once it writes a table or produces
# (~1,500 records/s, the worker mostly idle); 8 MiB per partition makes it CPU-bound
# (~3,000-5,000 records/s). Every other setting tried was within noise.
# producer_linger (seconds): each record's sends go to its partition's producer, which with
# faust's default (0) ships a produce request per loop turn: ~3 records each on a busy box,
# where produce requests took 17-21 % of the worker (py-spy); 0.1 s: ~8 records each. Under
# exactly_once an event waits for the 2.8 s commit anyway, which also flushes what lingers
# (ARCHITECTURE.md §5 "Round 3").
# producer_max_request_size: faust's default, set from the one limit that every record the
# worker produces is bounded by (app/core/sizes.py).
FAUST_TUNING: dict[str, Any] = {
    "consumer_max_fetch_size": 8 * 1024 * 1024,
    "producer_linger": 0.1,
    "producer_max_request_size": PRODUCER_MAX_REQUEST_BYTES,
}
# How long one partition's transactional commit (waiting for its producer's lock, then
# AddOffsetsToTxn + TxnOffsetCommit + EndTxn) may take before the worker gives up and exits 1
# (the restart redoes what was not committed). aiokafka retries some answers of these requests
# forever and never resolves a commit on a producer stopped under it (ARCHITECTURE.md §4);
# half of aiokafka's 60 s transaction timeout, far above a healthy commit (milliseconds; a
# few seconds on a loaded machine).
COMMIT_TIMEOUT_SECONDS = 30.0
# a transactional producer still without a producer id after this long is logged (WARNING,
# at most once per this period for all of them) and makes the worker not ready
COORDINATOR_WARNING_SECONDS = 30.0


def fail_stop(reason: str) -> NoReturn:
    """Exit the process at once (code 1), committing nothing more.

    Used when a record's outputs cannot be written or a transaction cannot commit: continuing
    could commit a record's offset without its outputs, or hang; stopping leaves the record
    uncommitted, so the restart redoes it (its open transaction is aborted by the broker when
    the restarted worker takes over). One CRITICAL log line with ``reason``."""
    log.critical("%s; stopping without committing (the restart redoes the record)", reason)
    logging.shutdown()
    os._exit(1)


def use_event_loop(name: Literal["asyncio", "uvloop"]) -> None:
    """Make ``name`` the loop of every event loop this process creates from now on.

    Call before the worker (or ``asyncio.run``) creates its loop; faust's consumer thread
    creates its own loop from the same policy (``MPCIO_EVENT_LOOP``; README "Benchmarks and
    reliability" has uvloop's measurement)."""
    policy = uvloop.EventLoopPolicy() if name == "uvloop" else asyncio.DefaultEventLoopPolicy()
    asyncio.set_event_loop_policy(policy)


class TrackingTableManager(TableManager):
    """faust's table manager, also reporting each successful commit to ``pending``.

    faust calls ``on_commit`` only after the offsets were committed (inside the transaction
    under ``exactly_once``); a failed commit raises before it and crashes the worker."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.pending = PendingWrites()
        # Not app.in_transaction: faust caches that property, and before the worker starts it
        # is False (the whole run would then go without transactions).
        self.uncommitted = UncommittedWrites(
            hold=ProcessingGuarantee(app.conf.processing_guarantee)
            is ProcessingGuarantee.EXACTLY_ONCE
        )

    def on_commit(self, offsets: MutableMapping[TP, int]) -> None:
        super().on_commit(offsets)
        self.pending.committed({(tp.topic, tp.partition): offset for tp, offset in offsets.items()})

    @property
    def recovery(self) -> SafeRecovery:
        """faust's recovery with our two fixes (:mod:`app.recovery`)."""
        if self._recovery is None:
            self._recovery = SafeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        if not isinstance(self._recovery, SafeRecovery):
            raise TypeError("the table manager's recovery was made elsewhere")
        return self._recovery


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # faust 0.15.3 answers with the consumer's cached last stable offset under
        # transactions, which is None until the partition was fetched once: table recovery
        # then sees a highwater of -1, skips the changelog and starts every table empty.
        # A ListOffsets request with the consumer's read_committed isolation returns the
        # last stable offset from the broker.
        consumer = self._ensure_consumer()
        offsets: Mapping[TP, int] = await consumer.end_offsets(partitions)
        return offsets

    async def _fetch_records(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        active_partitions: set[TP],
        timeout: float | None = None,  # noqa: ASYNC109 - faust's signature
        max_records: int | None = None,
    ) -> RecordMap:
        # Record, per changelog partition, what this fetch read (app.recovery.FetchedSpan):
        # the positions before and after it are taken here, in the thread that fetches, so
        # every committed record between them is in the records returned.
        changelogs = [tp for tp in consumer.assignment() if self.consumer._is_changelog_tp(tp)]
        before = {tp: _position(consumer, tp) for tp in changelogs}
        records: RecordMap = await super()._fetch_records(
            consumer, active_partitions, timeout, max_records
        )
        spans = _tracking_tables(self.app).recovery.fetched_spans
        for tp in changelogs:
            start, end = before[tp], _position(consumer, tp)
            if start is None or end is None:
                spans.pop(tp, None)
                continue
            returned = records.get(tp)
            last = returned[-1].offset if returned else None
            extended = extend_span(spans.get(tp), start, end, last)
            if extended is None:
                spans.pop(tp, None)
            else:
                spans[tp] = extended
        return records

    async def _seek_wait(
        self, consumer: aiokafka.AIOKafkaConsumer, partitions: Mapping[TP, int]
    ) -> None:
        # recovery seeks its changelog partitions here: what was read before says nothing
        spans = _tracking_tables(self.app).recovery.fetched_spans
        for tp in partitions:
            spans.pop(tp, None)
        await super()._seek_wait(consumer, partitions)

    def verify_event_path(self, now: float, tp: TP) -> None:
        # faust's livelock detector reads the partition's fetch position, which aiokafka
        # asserts is set; right after a seek to the beginning (never_committed) or a reset it
        # is not, and the AssertionError crashed the worker (seen in a kill loop). Such a
        # partition has nothing to verify yet.
        if _position(self._ensure_consumer(), tp) is None:
            return
        super().verify_event_path(now, tp)


def _position(consumer: aiokafka.AIOKafkaConsumer, tp: TP) -> int | None:
    """The fetch position of ``tp`` (None: not assigned, or no valid position yet)."""
    state = consumer._fetcher._subscriptions.subscription.assignment.state_value(tp)
    if state is None or not state.has_valid_position:
        return None
    position: int = state.position
    return position


def hole_to_reread(
    expected: int | None, offset: int, seen: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The hole ``(first missing offset, offset)`` to read again before the record at
    ``offset`` is handed out, or None to hand it out.

    ``expected`` is the next offset the partition should deliver (None: unknown, nothing is
    checked); ``seen`` the hole already sought back over once. A hole the broker returns a
    second time holds no data (transaction markers, aborted records) and is accepted.
    """
    if expected is None or offset <= expected:
        return None
    hole = (expected, offset)
    return None if seen == hole else hole


def unprocessed_head(
    committed: int | None, first_acked: int, accepted_holes: Iterable[tuple[int, int]]
) -> bool:
    """True when committing from ``first_acked`` would skip offsets never processed.

    ``committed``: the partition's committed offset (the next one to process; None: never
    committed); ``first_acked``: the lowest offset the agent acknowledged since;
    ``accepted_holes``: the holes ``(first missing, next record)`` the broker returned twice
    since (:func:`hole_to_reread`), EVERY one of them: a backlog read between two commits
    crosses a hole per transaction marker or aborted transaction (the re-key topic, written
    by our own transactions, has one every few records), and the head's hole is only one of
    them. faust commits the acknowledged offsets when the first of them is at most ONE past
    the committed offset (its allowance for a transaction marker there), so a single record
    that never reached the agent would be committed as done; only a hole that spans the
    whole head (from the committed offset to ``first_acked``) proves it holds no record.
    """
    if committed is None or first_acked <= committed:
        return False
    return not any(start <= committed and end >= first_acked for start, end in accepted_holes)


def never_committed(
    read_offsets: Mapping[TP, int | None],
    assigned: AbstractSet[TP],
    is_input: Callable[[str], bool],
) -> list[TP]:
    """The assigned input partitions without a committed offset (``read_offsets`` after
    faust's seek to the committed offsets: None = the group never committed one).

    aiokafka's ``seek_to_committed`` leaves such a partition where its fetcher is, so records
    faust fetched and dropped while it recovered the tables (a partition moved from a
    SIGKILLed worker before its first commit, seen in ``bench.state --failover-cold``) would
    be skipped for good; they are read again from the beginning, as
    ``consumer_auto_offset_reset=earliest`` means.
    """
    return [
        tp
        for tp, offset in read_offsets.items()
        if offset is None and tp in assigned and is_input(tp.topic)
    ]


class _Consumer(faust_aiokafka.Consumer):
    """faust's consumer that re-reads a hole in an input partition before accepting it.

    faust treats any jump in the offsets it reads from an acknowledged partition as a gap of
    transaction markers and aborted records, and counts the gap as acknowledged, so the next
    commit moves the input offset past it. But faust's ``getmany`` also drops fetched records
    without seeking back (a partition paused or revoked while a fetched batch is handed out):
    the next fetch then starts behind them, the hole looks like a gap, and the dropped records
    are committed without ever being processed (seen in the kill loop: offsets 43-64 of a
    partition skipped after a restart). Here a hole is accepted only when the broker returns
    the same hole twice: the first time, the partition is sought back to the first missing
    offset and the rest of its batch is withheld; records in the hole then arrive (they were
    dropped) or the same record after it does (the hole holds no data: faust's gap logic
    takes over). Changelog partitions (table recovery) are passed through unchecked: their
    markers are many and recovery does not commit offsets.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # per input partition: the next offset the fetcher should return (after a record
        # handed out or a seek), the hole seen once and sought back over (from, to), and
        # the holes seen twice (no data in them) not yet behind the committed offset
        self._expected: dict[TP, int] = {}
        self._suspect: dict[TP, tuple[int, int]] = {}
        self._accepted_holes: dict[TP, list[tuple[int, int]]] = {}
        self._seeking = False  # faust's seek of every partition to its committed offset runs
        # input partitions whose records were withheld during a rebalance: sought back to the
        # next offset they should deliver once it has ended (nothing else would re-read them
        # when no newer record arrives to show the hole)
        self._withheld: set[TP] = set()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self._expected[partition] = offset

    async def perform_seek(self) -> None:
        self._seeking = True
        try:
            await super().perform_seek()
        finally:
            self._seeking = False
        # faust's perform_seek leaves each partition's next offset (the committed one) here
        for tp, offset in self._read_offset.items():
            if offset is None:
                self._expected.pop(tp, None)
            else:
                self._expected[tp] = offset
        unread = never_committed(
            self._read_offset, self.assignment(), self.app.topics.acks_enabled_for
        )
        if unread:
            await self._thread.seek_to_beginning(*unread)

    async def position(self, tp: TP) -> int | None:
        """A changelog partition's position is answered only as far as the recovery provably
        applied (:func:`app.recovery.position_for_guess`: faust's "aborted transactions" guess
        reads it; -1 when nothing is proven), at once: that guess iterates a dict the
        recovery rewrites, so this must not give the loop a turn. An input partition's is
        answered as it is (``web.ingest_lag`` reads it before the partition's first commit)."""
        if self._is_changelog_tp(tp):
            recovery = _tracking_tables(self.app).recovery
            return position_for_guess(
                recovery.fetched_spans.get(tp), recovery.active_offsets.get(tp)
            )
        position: int | None = await super().position(tp)
        return position

    async def commit(
        self, topics: TPorTopicSet | None = None, start_new_transaction: bool = True
    ) -> bool:
        """faust's commit, skipped while a rebalance is under way under ``exactly_once``.

        Offsets acked before the rebalance belong to the transactions it aborts (each
        assigned partition gets a fresh producer, :meth:`_Producer.maybe_begin_transaction`);
        committing them on the fresh producer would commit offsets whose outputs were aborted.
        faust seeks every assigned partition back to its committed offset anyway, so the
        records are redone and their offsets committed after the rebalance."""
        if self.in_transaction and self.app.rebalancing:
            return False
        return bool(await super().commit(topics, start_new_transaction))

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        """faust's offsets to commit, without those of a partition whose transaction a last
        commit already ended (:meth:`_Producer.transaction_ended`), under ``exactly_once``.

        faust commits "for the last time" twice at a stop: the app's stop waits for the
        agents and commits with ``start_new_transaction=False``, which ends the transaction of
        every partition it committed; then the consumer's own stop does the same again. When an
        offset was acknowledged in between, the second commit called
        ``send_offsets_to_transaction`` on a producer with no transaction
        (``IllegalOperation('Not in the middle of a transaction')``, in two worker logs of
        earlier runs, one SIGTERMed ~2 s after its restart while it consumed a backlog): the
        consumer's stop failed half-way, before stopping its consumer thread, and one of the
        two exited 1 through the stop deadline. Leaving such an offset uncommitted is the only
        safe answer, not merely a quiet one: every record the agents processed before the last
        commit was acknowledged before it (faust waits for them), and any output sent after it
        would have failed (a transactional send needs an open transaction, and a failed send
        stops the worker), so an offset acknowledged later has no output in Kafka to commit
        with; the next start reads it again from the committed offset. One WARNING names the
        offsets left (topic, partition, offset: nothing personal)."""
        offsets: dict[TP, int] = super()._filter_committable_offsets(tps)
        producer = self.app.producer
        if not (
            self.in_transaction and isinstance(producer, _Producer) and producer.ended_a_transaction
        ):
            return offsets
        ended = {
            tp: offset
            for tp, offset in offsets.items()
            if producer.transaction_ended(
                transactional_id_of(
                    self.app, tp.topic, tp.partition, self.app.assignor.group_for_topic(tp.topic)
                )
            )
        }
        if ended:
            log.warning(
                "stopping: offsets acknowledged after the last commit are left uncommitted "
                "(their transaction has ended; the next start reads them again): %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in ended.items()),
            )
        return {tp: offset for tp, offset in offsets.items() if tp not in ended}

    def ack(self, message: Message) -> bool:
        """faust's ack, refused for an input record that faust's stream dropped unprocessed.

        While the app's flow control is suspended (a stop or a rebalance) or the record is of
        an older consumer generation, faust's stream takes a record from its queue, skips it
        without handing it to the agent, and acks it all the same (``streams.py``: the skip
        path acks "to keep the lag down"). Such a record never reached an agent; it is told
        apart by never having been tracked as in processing (faust tracks a record of an
        acked topic when its stream hands it out, after that check). Counted as acknowledged,
        it could be committed without its outputs, or make the stop's second last commit meet
        a producer whose transaction has ended (above). Refused, it stays uncommitted and is
        read again from the committed offset."""
        if (
            not message.tracked
            and self.app.topics.acks_enabled_for(message.topic)
            and (
                not self.app.flow_control.is_active()
                or message.generation_id != self.app.consumer_generation_id
            )
        ):
            return False
        acked: bool = super().ack(message)
        return acked

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._expected.pop(tp, None)
            self._suspect.pop(tp, None)
            self._accepted_holes.pop(tp, None)
            self._withheld.discard(tp)
        await super().on_partitions_revoked(revoked)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 - faust's signature
        if self._withheld and not self._rebalancing():
            await self._reread_withheld()
        withheld: set[TP] = set()
        async for tp, message in super().getmany(timeout):
            if tp in withheld:
                continue
            if await self._hole_to_reread(tp, message.offset):
                withheld.add(tp)
                continue
            yield tp, message

    async def _hole_to_reread(self, tp: TP, offset: int) -> bool:
        """True when the record at ``offset`` must wait: it jumps over offsets not yet seen
        twice (the partition was sought back to the first of them); False to hand it out."""
        checked = not self._is_changelog_tp(tp) and self.app.topics.acks_enabled_for(tp.topic)
        if checked and self._rebalancing():
            # Until a rebalance ends, a record handed out can be dropped before the agent sees
            # it while counting as read: faust's stream drops records while the app's flow
            # control is suspended, and at the end of table recovery faust resumes the input
            # partitions, seeks them to their committed offsets and only then resumes the flow
            # control, which empties every agent's queue (traced: the record at the committed
            # offset, fetched in between, never reached the agent; faust then committed past
            # it). Withheld, it leaves a hole that is read again after the rebalance; no seek of
            # ours may run meanwhile, or it could land after faust's seek and skip what lies
            # between.
            self._withheld.add(tp)
            return True
        hole = hole_to_reread(
            self._expected.get(tp) if checked else None, offset, self._suspect.get(tp)
        )
        if hole is None:
            suspect = self._suspect.get(tp)
            if suspect is not None and suspect[1] == offset:
                # seen twice: no data in it
                self._accepted_holes.setdefault(tp, []).append(suspect)
            self._accept(tp, offset)
            return False
        if not self.flow_active or tp not in self.assignment():
            return True  # a rebalance is under way: it seeks to the committed offset itself
        await self.seek(tp, hole[0])
        self._suspect[tp] = hole
        return True

    def _rebalancing(self) -> bool:
        """True until a rebalance has ended (faust's seek and flow-control resume included)."""
        return bool(self._seeking or self.app.rebalancing or not self.app.flow_control.is_active())

    async def _reread_withheld(self) -> None:
        """Seek every partition whose records were withheld back to the next offset it should
        deliver (its committed offset, set by faust's seek); never committed: its beginning."""
        withheld, self._withheld = self._withheld, set()
        assigned = self.assignment()
        for tp in withheld:
            if tp not in assigned:
                continue
            expected = self._expected.get(tp)
            if expected is None:
                await self._thread.seek_to_beginning(tp)
            else:
                await self.seek(tp, expected)

    def _accept(self, tp: TP, offset: int) -> None:
        self._suspect.pop(tp, None)
        self._expected[tp] = max(offset + 1, self._expected.get(tp, 0))

    def _new_offset(self, tp: TP) -> int | None:
        """faust's next offset to commit for ``tp``, refused (the worker exits 1) when it would
        skip offsets the agent never processed (:func:`unprocessed_head`).

        Seen in an ``exactly_once`` kill loop: after a restart the first record of a partition
        (its committed offset) never reached the agent, the next ones did, and faust committed
        past it: one batch lost. Whatever dropped it, committing cannot be right; the restart
        reads the partition again from the committed offset. Offsets that hold no record
        (transaction markers, aborted records: a hole the broker returned twice) are committed
        over; holes that end at or before the committed offset are forgotten here (they can
        cover no later head).
        """
        acked = self._acked[tp]
        if acked and not self._is_changelog_tp(tp) and self.app.topics.acks_enabled_for(tp.topic):
            committed = self._committed_offset[tp]
            holes = self._accepted_holes.get(tp, [])
            if committed is not None:
                holes[:] = [hole for hole in holes if hole[1] > committed]
            first = min(acked)
            if unprocessed_head(committed, first, holes):
                fail_stop(
                    f"{tp.topic}[{tp.partition}]: offsets {committed}..{first - 1} were never "
                    "processed but would be committed"
                )
        offset: int | None = super()._new_offset(tp)
        return offset


class _Producer(faust_aiokafka.Producer):
    """faust's producer, with transactional commits that end, and producers retired safely.

    ``commit_transactions`` is faust's, plus: right after a partition's transaction committed,
    still holding faust's per-producer lock (no send can slip in between), the table writes
    held for that partition are applied to the store (:class:`UncommittedWrites`); and the
    whole commit of a partition, lock included, is bounded by :data:`COMMIT_TIMEOUT_SECONDS`,
    after which the worker exits 1 (:func:`fail_stop`) instead of hanging. A commit that fails
    raises as in faust (the worker crashes; the held writes die with it).

    A producer leaves (``stop_transaction``: its partition was revoked;
    ``maybe_begin_transaction``: it is replaced at a rebalance) only after the consumer's
    commit in flight finished and while its lock is held, so no commit or send is left
    waiting on a stopped producer (aiokafka never resolves it: the stall of ARCHITECTURE.md
    §4); then its held table writes are discarded (the next producer with its transactional
    id aborts its open transaction).

    A commit with ``start_new_transaction=False`` (faust's last commit at a stop) leaves its
    producer without a transaction; :meth:`transaction_ended` tells the consumer, which commits
    nothing more through it (:meth:`_Consumer._filter_committable_offsets`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # transactional id -> loop time it began waiting for a producer id
        self.coordinator_waits: dict[str, float] = {}
        self._coordinator_warned = float("-inf")
        # transactional ids whose transaction a last commit (start_new_transaction=False,
        # faust's commit at a stop) ended: their producer has no transaction any more
        self._ended: set[str] = set()

    async def commit_transactions(
        self,
        tid_to_offset_map: Mapping[str, Mapping[TP, int]],
        group_id: str,
        start_new_transaction: bool = True,
    ) -> None:
        for transactional_id, offsets in tid_to_offset_map.items():
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT_SECONDS):
                    await self._commit_one(
                        transactional_id, offsets, group_id, start_new_transaction
                    )
            except TimeoutError:
                fail_stop(
                    f"the transaction of {transactional_id} did not commit within "
                    f"{COMMIT_TIMEOUT_SECONDS:g} s"
                )

    async def _commit_one(
        self,
        transactional_id: str,
        offsets: Mapping[TP, int],
        group_id: str,
        start_new_transaction: bool,
    ) -> None:
        async with self._trn_locks[transactional_id]:
            producer = self._transaction_producers.get(transactional_id)
            if producer is None:
                log.warning("commit invoked for unknown transaction %s", transactional_id)
                return
            await producer.send_offsets_to_transaction(offsets, group_id)
            await producer.commit_transaction()
            uncommitted = uncommitted_writes(self.app)
            for partition in {tp.partition for tp in offsets}:
                uncommitted.committed(partition)
            if start_new_transaction:
                await producer.begin_transaction()
            else:
                self._ended.add(transactional_id)

    @property
    def ended_a_transaction(self) -> bool:
        """True once a last commit ended a transaction (only a stop commits that way)."""
        return bool(self._ended)

    def transaction_ended(self, transactional_id: str) -> bool:
        """True once a last commit (``start_new_transaction=False``: faust's commit at a stop)
        ended the transaction of ``transactional_id``: its producer begins none after it, so
        nothing more can be sent or committed through it (until a rebalance replaces it)."""
        return transactional_id in self._ended

    async def _retire(self, transactional_id: str) -> None:
        """Stop and forget the producer of ``transactional_id`` once nothing uses it."""
        # a commit in flight applies its partition's held writes when it succeeds: let it
        # end first (bounded by COMMIT_TIMEOUT_SECONDS), then discard what is still held
        consumer = self.app.consumer
        if isinstance(consumer, faust_aiokafka.Consumer):
            await consumer.maybe_wait_for_commit_to_finish()
        producer = self._transaction_producers.get(transactional_id)
        if producer is not None:
            async with self._trn_locks[transactional_id]:
                if self._transaction_producers.get(transactional_id) is producer:
                    del self._transaction_producers[transactional_id]
                await producer.stop()
        self._ended.discard(transactional_id)  # the next producer of this id begins its own
        uncommitted_writes(self.app).aborted(_partition_of(transactional_id))

    async def stop_transaction(self, transactional_id: str) -> None:
        await self._retire(transactional_id)

    async def maybe_begin_transaction(self, transactional_id: str) -> None:
        """Start a FRESH producer for a partition assigned by a rebalance, aborting the last one.

        faust calls this for every assigned partition after every rebalance, and begins a
        transaction on the producer it already has: that fails while its transaction is open
        (logged, ignored), and a producer that another worker fenced in between (the partition
        went there and came back) stays in use: its sends fail unseen and its next commit never
        completes, so the worker stops processing (the two-worker stalls). faust also forgets
        what was acked and seeks every assigned partition back to its committed offset, so
        the records of the open transaction are redone anyway. Hence: retire the old producer
        (above) and let faust start a new one, whose initialisation fences the old one and
        aborts its open transaction.
        """
        await self._retire(transactional_id)
        # aiokafka waits for a producer id for ever, silently, while the coordinator is not
        # available (a transaction log that cannot be created or is not in sync): say so
        loop = asyncio.get_running_loop()
        began = self.coordinator_waits.setdefault(transactional_id, loop.time())
        starting = asyncio.ensure_future(super().maybe_begin_transaction(transactional_id))
        try:
            while not (await asyncio.wait({starting}, timeout=COORDINATOR_WARNING_SECONDS))[0]:
                if loop.time() - self._coordinator_warned >= COORDINATOR_WARNING_SECONDS:
                    self._coordinator_warned = loop.time()
                    log.warning(
                        "transactional producer %s has waited %.0f s for Kafka's transaction "
                        "coordinator (InitProducerId; %d producer(s) waiting): is "
                        "__transaction_state creatable and in sync? `mpcio check-config` "
                        "checks the brokers' transaction.state.log.* settings",
                        transactional_id,
                        loop.time() - began,
                        len(self.coordinator_waits),
                    )
        finally:
            starting.cancel()  # only while still waiting: the caller was cancelled
            self.coordinator_waits.pop(transactional_id, None)
        starting.result()

    def coordinator_wait_seconds(self) -> float | None:
        """Seconds the longest-waiting transactional producer has waited for its producer id
        (Kafka's transaction coordinator), or None when none is waiting."""
        if not self.coordinator_waits:
            return None
        return asyncio.get_running_loop().time() - min(self.coordinator_waits.values())


def transactional_id_of(app: AppT, topic: str, partition: int, group: int) -> str:
    """The transactional id whose transaction commits the offsets of input partition
    ``partition`` of ``topic`` in topic group ``group`` (``app.assignor.group_for_topic``):
    faust's own format (``TransactionManager.transactional_id_format``: ``{app id}-{topic
    group}-{partition}``; the input topics, the re-key topic and the changelogs are one
    co-partitioned group)."""
    return str(
        TransactionManager.transactional_id_format.format(
            group_id=app.conf.id, tpg=TopicPartitionGroup(topic, partition, group)
        )
    )


def _partition_of(transactional_id: str) -> int:
    """The input partition of a faust transactional id (``{app id}-{group}-{partition}``)."""
    return int(transactional_id.rsplit("-", 1)[1])


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class ForwarderApp(faust.App):
    """faust's app on a transport whose table recovery works under transactions."""

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)


def _tracking_tables(app: Any) -> TrackingTableManager:
    tables = app.tables
    if not isinstance(tables, TrackingTableManager):
        raise TypeError("the app was not made by app.faust_app.create_app")
    return tables


def tracked_writes(app: faust.App) -> PendingWrites:
    """The :class:`PendingWrites` of an app made by :func:`create_app`."""
    return _tracking_tables(app).pending


def uncommitted_writes(app: Any) -> UncommittedWrites:
    """The :class:`UncommittedWrites` of an app made by :func:`create_app` (faust.App)."""
    return _tracking_tables(app).uncommitted


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A configured faust app for ``settings``; ``overrides`` win over everything else."""
    config: dict[str, Any] = {
        "broker": settings.broker,
        "broker_credentials": broker_credentials(settings),
        "store": settings.store,
        "datadir": settings.data_dir,
        "processing_guarantee": settings.processing_guarantee,
        "broker_session_timeout": settings.kafka_session_timeout_seconds,
        "broker_heartbeat_interval": settings.kafka_session_timeout_seconds / 3,
        # faust's 60 s default: a rebalance waiting for a member that will not rejoin stalls
        # every partition that long (README "Sizing and state").
        "broker_rebalance_timeout": settings.kafka_rebalance_timeout_seconds,
        "table_standby_replicas": settings.standby_replicas,
        "TableManager": TrackingTableManager,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        # web_bind is where faust listens, web_host only the host it advertises (both
        # default to every interface / the host name otherwise).
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        # faust's /router, /table (raw records), /, /assignment and /graph views; /performance
        # (table statistics) stays off in any case. app.web guards them with the token too.
        "web_router_enabled": settings.web_faust_views,
        "web_tables_enabled": settings.web_faust_views,
        "web_stats_enabled": settings.web_faust_views,
        "web_graph_enabled": settings.web_faust_views,
        "web_metrics_enabled": False,
        "web_in_thread": False,
        "autodiscover": False,
        **FAUST_TUNING,
        **overrides,
    }
    return ForwarderApp(settings.app_id, **config)
