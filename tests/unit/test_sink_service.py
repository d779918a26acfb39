"""The sink service (app.sink.service) with fakes for its consumer, producer and HTTP client.

Each test drives one chunk through ``OperationsSink.handle`` and reads what the fakes saw, in
order, from one shared journal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from app.customerio.classify import HttpAnswer, TransportFailure
from app.customerio.delivery import RetryPolicy
from app.customerio.ratelimit import RateLimiter
from app.records import SourcePosition, decode_dead_letter, operation_batch
from app.settings import load_settings
from app.sink.service import OperationsSink, SinkIO
from app.topics import topics_for
from tests.unit.operations_records import TOPIC, Fetched, T, chunk_of, record

SETTINGS = load_settings(
    forwarding_enabled=False,
    topic_operations="ops",
    topic_deadletter="dl",
    sink_lanes=2,
    # small requests, so the 16-item chunks below fill two of them and use both lanes
    batch_max_items=8,
    credentials_probe_seconds=0.01,
    sink_unanswered_settle_seconds=0.5,
)
TOPICS = topics_for(SETTINGS)
POLICY = RetryPolicy(max_attempts=1, max_seconds=1.0, initial_backoff=0.0, max_backoff=0.0)
WAIT = 30.0  # generous: only a hang fails it


@dataclass
class FakeConsumer:
    journal: list[Any]
    assigned: set[TopicPartition] = field(
        default_factory=lambda: {TopicPartition("ops", p) for p in range(4)}
    )
    paused: set[TopicPartition] = field(default_factory=set)
    listener: Any = None

    def subscribe(self, topics: list[str], *, listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def getmany(self, *, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.journal.append(("commit", dict(offsets)))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.journal.append(("seek", partition.partition, offset))

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)
        self.journal.append(("pause", sorted(tp.partition for tp in partitions)))

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)
        self.journal.append(("resume", sorted(tp.partition for tp in partitions)))

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {tp.partition for tp in self.assigned}

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    async def position(self, partition: TopicPartition) -> int:
        return 0


@dataclass
class FakeProducer:
    """Sends are confirmed only when ``confirm`` is set (the broker's acknowledgement)."""

    journal: list[Any]
    confirm: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)
    sent_two: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value))
        if len(self.sent) >= 2:
            self.sent_two.set()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def acknowledge() -> None:
            await self.confirm.wait()
            self.journal.append(("confirmed", key))
            future.set_result(None)

        asyncio.get_running_loop().create_task(acknowledge())
        return future


@dataclass
class FakeClient:
    """Answers each POST with ``answer(body)``; ``GET /auth`` with ``auth`` in turn."""

    journal: list[Any]
    answer: Callable[[bytes], HttpAnswer | TransportFailure]
    auth: list[int] = field(default_factory=lambda: [200])
    gate: asyncio.Event | None = None
    posted: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *_: object) -> None: ...

    async def post_batch(self, body: bytes) -> HttpAnswer | TransportFailure:
        items = orjson.loads(body)["batch"]
        self.journal.append(("post", [(item["p"], item["o"], item["i"]) for item in items]))
        self.posted.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(body)

    async def check_auth(self) -> HttpAnswer | TransportFailure:
        status = self.auth.pop(0) if len(self.auth) > 1 else self.auth[0]
        self.journal.append(("auth", status))
        return HttpAnswer(status)


def ok(_: bytes) -> HttpAnswer:
    return HttpAnswer(200, b"{}")


async def started_sink(
    answer: Callable[[bytes], HttpAnswer | TransportFailure] = ok, **client: Any
) -> tuple[OperationsSink, list[Any], FakeConsumer, FakeProducer, FakeClient]:
    journal: list[Any] = []
    consumer, producer = FakeConsumer(journal), FakeProducer(journal)
    fake_client = FakeClient(journal, answer, **client)
    io = SinkIO(consumer, producer, fake_client, RateLimiter(1000.0))
    sink = OperationsSink(SETTINGS, TOPICS, lambda: io, POLICY)
    await sink.on_start()
    return sink, journal, consumer, producer, fake_client


async def test_lanes_deliver_each_partition_in_order_then_commit() -> None:
    sink, journal, *_ = await started_sink()
    chunk = chunk_of(*(record(p, o, items=2) for o in (5, 6) for p in range(4)))

    await asyncio.wait_for(sink.handle(chunk), WAIT)

    posts = [entry[1] for entry in journal if entry[0] == "post"]
    assert len(posts) == 2  # two lanes (partitions 0, 2 and 1, 3), one request each
    for items in posts:
        for partition in {p for p, _, _ in items}:
            mine = [(o, i) for p, o, i in items if p == partition]
            assert mine == [(5, 0), (5, 1), (6, 0), (6, 1)]
        assert len({p % 2 for p, _, _ in items}) == 1
    assert journal[-1] == ("commit", {TopicPartition("ops", p): 7 for p in range(4)})


async def test_a_207_dead_letters_exactly_the_named_items() -> None:
    def partial(body: bytes) -> HttpAnswer:
        errors = [{"batch_index": 1, "reason": "invalid", "field": "name", "message": "bad"}]
        return HttpAnswer(207, orjson.dumps({"errors": errors}))

    sink, journal, _, producer, _ = await started_sink(partial)
    producer.confirm.set()
    chunk = chunk_of(record(0, 10, items=3))

    await asyncio.wait_for(sink.handle(chunk), WAIT)

    assert [(topic, key) for topic, key, _ in producer.sent] == [("dl", b"100")]
    letter = decode_dead_letter(producer.sent[0][2])
    assert orjson.loads(letter["payload"]) == {"p": 0, "o": 10, "i": 1}
    assert (letter["reason"], letter["http_status"], letter["stage"]) == (
        "customerio_rejected_item",
        207,
        "sink",
    )
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
        "ops",
        0,
        10,
    )
    assert journal[-1] == ("commit", {TopicPartition("ops", 0): 11})


async def test_offsets_commit_only_after_the_dead_letters_are_confirmed() -> None:
    sink, journal, _, producer, _ = await started_sink(lambda _: HttpAnswer(400, b"no"))
    handling = asyncio.create_task(sink.handle(chunk_of(record(1, 3), record(1, 4))))

    await asyncio.wait_for(producer.sent_two.wait(), WAIT)
    await asyncio.sleep(0.05)  # give a wrong implementation time to commit early
    assert not any(entry[0] == "commit" for entry in journal)
    producer.confirm.set()
    await asyncio.wait_for(handling, WAIT)

    kinds = [entry[0] for entry in journal if entry[0] in {"confirmed", "commit"}]
    assert kinds == ["confirmed", "confirmed", "commit"]
    assert journal[-1] == ("commit", {TopicPartition("ops", 1): 5})


@pytest.mark.parametrize("status", [401, 403, 301])
async def test_a_fatal_answer_rewinds_and_pauses_without_committing(status: int) -> None:
    sink, journal, consumer, producer, _ = await started_sink(
        lambda _: HttpAnswer(status), auth=[status, status, 200]
    )
    chunk = chunk_of(record(0, 20), record(0, 21), record(3, 7))

    await asyncio.wait_for(sink.handle(chunk), WAIT)

    assert not any(entry[0] == "commit" for entry in journal)
    assert producer.sent == []  # nothing dead-lettered
    assert ("seek", 0, 20) in journal
    assert ("seek", 3, 7) in journal
    pause = journal.index(("pause", [0, 1, 2, 3]))
    auths = [i for i, entry in enumerate(journal) if entry[0] == "auth"]
    assert len(auths) == 3  # re-probed until GET /auth passed
    assert pause < auths[0] < auths[-1] < journal.index(("resume", [0, 1, 2, 3]))
    assert consumer.paused == set()
    assert sink.stopped_reason is None


async def test_a_rebalance_waits_for_the_chunk_in_flight_to_finish_and_commit() -> None:
    gate = asyncio.Event()
    sink, journal, consumer, _, client = await started_sink(gate=gate)
    handling = asyncio.create_task(sink.handle(chunk_of(record(2, 30))))
    await asyncio.wait_for(client.posted.wait(), WAIT)
    revoking = asyncio.create_task(
        consumer.listener.on_partitions_revoked([TopicPartition("ops", 2)])
    )
    await asyncio.sleep(0.05)  # a listener that did not wait would be done by now
    assert not revoking.done()
    gate.set()
    await asyncio.wait_for(revoking, WAIT)
    journal.append(("revoked",))
    await asyncio.wait_for(handling, WAIT)

    assert journal[-2:] == [("commit", {TopicPartition("ops", 2): 31}), ("revoked",)]


async def test_a_delete_after_an_unanswered_request_of_its_user_waits_for_it_to_settle() -> None:
    # Customer.io may apply an attempt the client gave up on after everything sent later: a
    # delete sent before then would be undone by that late copy (recreating the person).
    posted_at: list[float] = []

    def answer(_: bytes) -> HttpAnswer | TransportFailure:
        posted_at.append(time.monotonic())
        if len(posted_at) == 1:
            return TransportFailure("timeout", "TimeoutError()")
        return HttpAnswer(200, b"{}")

    sink, _, _, producer, _ = await started_sink(answer)
    producer.confirm.set()
    await asyncio.wait_for(sink.handle(chunk_of(record(1, 3))), WAIT)  # user 101's event
    delete = orjson.dumps({"p": 1, "o": 4, "i": 0, "action": "delete"})
    value = operation_batch("101", [("delete", "101", delete)], SourcePosition("b", 1, 4), T)

    await asyncio.wait_for(sink.handle(chunk_of(Fetched(TOPIC, 1, 4, b"101", value))), WAIT)

    assert len(posted_at) == 2
    assert posted_at[1] - posted_at[0] >= SETTINGS.sink_unanswered_settle_seconds
