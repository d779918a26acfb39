"""The consumer's hole check (app.faust_app.hole_to_reread): re-read a hole once, then accept;
the input partitions it reads from their beginning after a rebalance (never_committed); the
transactional producer's commit bound and safe retirement (_Producer); and a stop's commits
(nothing through a transaction a last commit ended, no ack of a record the stream dropped)."""

from __future__ import annotations

import asyncio
import uuid
from typing import NoReturn

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from app import faust_app
from app.faust_app import (
    _Consumer,
    _Producer,
    create_app,
    hole_to_reread,
    never_committed,
    unprocessed_head,
)
from app.settings import load_settings


def test_contiguous_records_are_handed_out() -> None:
    assert hole_to_reread(43, 43, None) is None
    assert hole_to_reread(None, 65, None) is None  # nothing known yet (first record, changelog)


def test_a_record_behind_the_expected_offset_is_left_to_faust() -> None:
    assert hole_to_reread(43, 40, None) is None  # faust drops or re-reads it by its own offsets


def test_a_first_hole_is_read_again_from_its_first_missing_offset() -> None:
    # the kill loop's case: 27-42 processed, then 65 arrived (43-64 dropped by faust's getmany)
    assert hole_to_reread(43, 65, None) == (43, 65)


def test_the_same_hole_seen_twice_holds_no_data_and_is_accepted() -> None:
    assert hole_to_reread(43, 65, (43, 65)) is None  # transaction markers / aborted records


def test_a_different_hole_is_checked_again() -> None:
    assert hole_to_reread(43, 66, (43, 65)) == (43, 66)


@pytest.mark.parametrize(
    ("committed", "first_acked", "accepted_holes", "unprocessed"),
    [
        # a commit may start at the committed offset or before it
        (96, 96, [], False),
        (96, 90, [], False),  # faust ignores acks below the committed offset
        (None, 7, [], False),  # never committed: read from the beginning
        # the exactly_once kill loop's loss: committed 96, record 96 never processed, 97..
        # acked; faust's own check lets a head hole of one offset through (its allowance for
        # a transaction marker there)
        (96, 97, [], True),
        (96, 110, [], True),
        (96, 97, [(90, 95)], True),  # an older hole says nothing about this one
        # a hole the broker returned twice holds no record and may be committed over
        (96, 97, [(96, 97)], False),  # a transaction marker at 96
        (96, 101, [(96, 101)], False),  # an aborted transaction 96..99 and its marker at 100
        (96, 102, [(96, 101)], True),  # 101 itself was never processed
        # breaker 6's re-key crash loop: a backlog read between two commits crosses a marker
        # every few records; the head's hole must still count when later holes came after it
        (1, 2, [(1, 2), (3, 6), (7, 8)], False),
        (3, 6, [(1, 2), (3, 6), (7, 8)], False),
        (1, 2, [(3, 6), (7, 8)], True),  # none of them spans the head
        (96, 101, [(96, 98), (99, 101)], True),  # two holes do not join: 98 was a record
    ],
)
def test_a_commit_skips_only_offsets_a_hole_seen_twice_proves_empty(
    committed: int | None,
    first_acked: int,
    accepted_holes: list[tuple[int, int]],
    unprocessed: bool,
) -> None:
    assert unprocessed_head(committed, first_acked, accepted_holes) is unprocessed


def test_only_assigned_input_partitions_never_committed_are_read_from_their_beginning() -> None:
    batches = [TP("batches", p) for p in range(3)]
    changelog, revoked = TP("app-users-changelog", 0), TP("batches", 7)
    read_offsets = {batches[0]: 5, batches[1]: None, batches[2]: None, changelog: None}
    read_offsets[revoked] = None
    assigned = {*batches, changelog}

    unread = never_committed(read_offsets, assigned, lambda topic: topic == "batches")

    assert unread == [batches[1], batches[2]]


class _FakeTransactionalProducer:
    """The part of an aiokafka transactional producer a commit or a retirement touches."""

    def __init__(self, offsets_answer: asyncio.Future[None] | None = None) -> None:
        self.offsets_answer = offsets_answer
        self.calls: list[str] = []

    async def send_offsets_to_transaction(self, offsets: object, group_id: str) -> None:
        self.calls.append("send_offsets")
        if self.offsets_answer is not None:
            await self.offsets_answer  # the broker's answer (never, for a stalled commit)

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def stop(self) -> None:
        self.calls.append("stop")


class _StoppedError(Exception):
    """Raised by the test's stand-in for fail_stop (which would exit the process)."""


def _producer_with(
    transactional_id: str, fake: _FakeTransactionalProducer, **settings: str
) -> _Producer:
    app = create_app(
        load_settings(forwarding_enabled=False, processing_guarantee="exactly_once", **settings)
    )
    producer = app.producer
    assert isinstance(producer, _Producer)
    producer._transaction_producers[transactional_id] = fake  # type: ignore[assignment]
    producer._trn_locks[transactional_id] = asyncio.Lock()
    return producer


async def test_a_commit_the_broker_never_answers_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tid = f"app-1-{uuid.uuid4().hex}-0"
    fake = _FakeTransactionalProducer(offsets_answer=asyncio.get_running_loop().create_future())
    producer = _producer_with(tid, fake)
    reasons: list[str] = []

    def stop(reason: str) -> NoReturn:
        reasons.append(reason)
        raise _StoppedError

    monkeypatch.setattr(faust_app, "fail_stop", stop)
    monkeypatch.setattr(faust_app, "COMMIT_TIMEOUT_SECONDS", 0.05)

    with pytest.raises(_StoppedError):
        await producer.commit_transactions({tid: {TP("batches", 0): 5}}, "app")

    assert fake.calls == ["send_offsets"]  # never committed, never began another
    assert reasons == [f"the transaction of {tid} did not commit within 0.05 s"]


async def test_a_commit_that_answers_commits_applies_held_writes_and_begins_the_next() -> None:
    tid = f"app-1-{uuid.uuid4().hex}-0"
    fake = _FakeTransactionalProducer()
    producer = _producer_with(tid, fake)

    await producer.commit_transactions({tid: {TP("batches", 0): 5}}, "app")

    assert fake.calls == ["send_offsets", "commit", "begin"]


async def test_a_producer_is_retired_only_after_the_send_or_commit_holding_its_lock() -> None:
    tid = f"app-1-{uuid.uuid4().hex}-0"
    fake = _FakeTransactionalProducer()
    producer = _producer_with(tid, fake)
    lock = producer._trn_locks[tid]

    await lock.acquire()  # a send or a commit in flight on the old producer
    retiring = asyncio.create_task(producer.stop_transaction(tid))
    for _ in range(5):
        await asyncio.sleep(0)
    assert fake.calls == []  # not stopped under the send / commit in flight
    lock.release()
    await retiring

    assert fake.calls == ["stop"]
    assert tid not in producer._transaction_producers


async def test_a_producer_waiting_for_its_producer_id_is_reported_until_it_gets_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tid = f"app-1-{uuid.uuid4().hex}-0"
    producer = _producer_with(tid, _FakeTransactionalProducer())
    coordinator = asyncio.get_running_loop().create_future()  # InitProducerId's answer
    warnings: list[str] = []
    warned = asyncio.Event()

    async def begin(self: object, transactional_id: str) -> None:
        await coordinator

    def warning(message: str, *args: object) -> None:
        warnings.append(message % args)
        warned.set()

    monkeypatch.setattr(faust_aiokafka.Producer, "maybe_begin_transaction", begin)
    monkeypatch.setattr(faust_app.log, "warning", warning)
    monkeypatch.setattr(faust_app, "COORDINATOR_WARNING_SECONDS", 0.05)
    assert producer.coordinator_wait_seconds() is None

    starting = asyncio.create_task(producer.maybe_begin_transaction(tid))
    await asyncio.wait_for(warned.wait(), 30)
    waited = producer.coordinator_wait_seconds()
    assert waited is not None
    assert waited >= 0.05
    assert warnings[0].startswith(f"transactional producer {tid} has waited 0 s for Kafka's")

    coordinator.set_result(None)
    await starting
    assert producer.coordinator_wait_seconds() is None


async def test_a_last_commit_ends_its_transaction_and_nothing_more_is_committed_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # faust commits "for the last time" twice at a stop; an offset acknowledged in between
    # made the second call send offsets to a producer with no transaction (IllegalOperation)
    app_id = f"app-{uuid.uuid4().hex}"
    tid = f"{app_id}-1-0"  # topic group 1, partition 0 (faust's transactional id)
    fake = _FakeTransactionalProducer()
    producer = _producer_with(tid, fake, app_id=app_id)
    app = producer.app
    consumer = app.consumer
    assert isinstance(consumer, _Consumer)
    consumer.in_transaction = True  # as in a worker under exactly_once
    monkeypatch.setattr(app.assignor, "_topic_groups", {"batches": 1})
    ended, open_ = TP("batches", 0), TP("batches", 1)  # partition 1: a transaction still open
    warnings: list[str] = []
    monkeypatch.setattr(faust_app.log, "warning", lambda msg, *a: warnings.append(msg % a))

    await producer.commit_transactions({tid: {ended: 5}}, "app", start_new_transaction=False)

    assert fake.calls == ["send_offsets", "commit"]  # no new transaction begun
    assert producer.transaction_ended(tid)
    consumer._committed_offset.update({ended: 5, open_: 3})
    consumer._acked[ended].extend([5, 6])  # acknowledged after the last commit
    consumer._acked[open_].append(3)
    assert consumer._filter_committable_offsets([ended, open_]) == {open_: 4}
    (warning,) = warnings
    assert warning.startswith("stopping: offsets acknowledged after the last commit are left")
    assert warning.endswith(
        "(their transaction has ended; the next start reads them again): batches[0]@7"
    )

    await producer.stop_transaction(tid)  # a rebalance replaces the producer
    assert not producer.transaction_ended(tid)


def _record(topic: str, offset: int, generation_id: int) -> ConsumerMessage:
    return ConsumerMessage(
        topic, 0, offset, 0.0, 0, None, b"k", b"v", None, generation_id=generation_id
    )


def test_a_record_the_stream_dropped_unprocessed_is_not_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(load_settings(forwarding_enabled=False, processing_guarantee="exactly_once"))
    consumer = app.consumer
    assert isinstance(consumer, _Consumer)
    monkeypatch.setattr(app.topics, "_acking_topics", {"batches"})
    generation = app.consumer_generation_id
    tp = TP("batches", 0)
    assert not app.flow_control.is_active()  # suspended, as at a stop or a rebalance

    # taken from a queue while the flow control is suspended: faust's stream skips it and
    # acks it without handing it to the agent (never tracked)
    assert consumer.ack(_record("batches", 7, generation)) is False
    assert list(consumer._acked[tp]) == []

    processed = _record("batches", 7, generation)
    processed.tracked = True  # handed to the agent, which finished it
    assert consumer.ack(processed) is True
    assert list(consumer._acked[tp]) == [7]

    app.flow_control.resume()
    assert consumer.ack(_record("batches", 8, generation - 1)) is False  # an older generation
    assert list(consumer._acked[tp]) == [7]
    # flowing, same generation: faust's own ack (e.g. its conductor's, on a decode error)
    assert consumer.ack(_record("batches", 8, generation)) is True
    assert list(consumer._acked[tp]) == [7, 8]
