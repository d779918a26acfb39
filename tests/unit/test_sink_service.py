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
from prometheus_client import REGISTRY

from app.customerio.classify import HttpAnswer, TransportFailure
from app.customerio.delivery import RetryPolicy
from app.customerio.ratelimit import RateLimiter
from app.errors import NoRateShareError
from app.records import SourcePosition, decode_dead_letter, operation_batch
from app.settings import Settings, load_settings
from app.sink import service
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
    """Answers each POST with ``answer(body)``; ``GET /auth`` with ``auth`` in turn. Like the
    real client, a POST first waits for a slot of ``limiter`` (the sink's)."""

    journal: list[Any]
    answer: Callable[[bytes], HttpAnswer | TransportFailure]
    limiter: RateLimiter
    auth: list[int] = field(default_factory=lambda: [200])
    gate: asyncio.Event | None = None
    posted: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *_: object) -> None: ...

    async def post_batch(self, body: bytes) -> HttpAnswer | TransportFailure:
        await self.limiter.acquire()
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
    answer: Callable[[bytes], HttpAnswer | TransportFailure] = ok,
    settings: Settings = SETTINGS,
    **client: Any,
) -> tuple[OperationsSink, list[Any], FakeConsumer, FakeProducer, FakeClient]:
    """A started sink that was assigned every partition (as its first rebalance does)."""
    journal: list[Any] = []
    consumer, producer = FakeConsumer(journal), FakeProducer(journal)
    limiter = RateLimiter(settings.rate_limit_per_second)
    fake_client = FakeClient(journal, answer, limiter, **client)
    io = SinkIO(consumer, producer, fake_client, limiter)
    sink = OperationsSink(settings, TOPICS, lambda: io, POLICY)
    await sink.on_start()
    await consumer.listener.on_partitions_assigned(consumer.assignment())
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


async def test_a_chunk_that_keeps_failing_unexpectedly_stops_delivery_until_one_goes_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # e.g. aiohttp's ValueError for a URL with credentials: retried for ever, so it must show
    # in a metric, mpcio_sink_stopped and readiness, not only in the log
    monkeypatch.setattr(service, "UNEXPECTED_ERROR_PAUSE_SECONDS", 0.0)
    failing = True

    def answer(_: bytes) -> HttpAnswer:
        if failing:
            raise ValueError("cannot use this client")
        return HttpAnswer(200, b"{}")

    sink, journal, *_ = await started_sink(answer)
    chunk = chunk_of(record(0, 20))
    errors = REGISTRY.get_sample_value("mpcio_sink_unexpected_errors_total") or 0.0

    for attempt in range(1, service.UNEXPECTED_ERRORS_BEFORE_STOP + 1):
        assert sink.stopped_reason is None
        await asyncio.wait_for(sink.handle(chunk), WAIT)
        assert journal[-1] == ("seek", 0, 20)  # rewound, not committed
        assert REGISTRY.get_sample_value("mpcio_sink_unexpected_errors_total") == errors + attempt

    assert sink.stopped_reason is not None
    assert "ValueError" in sink.stopped_reason
    assert "cannot use this client" not in sink.stopped_reason  # the type only
    assert REGISTRY.get_sample_value("mpcio_sink_stopped") == 1

    failing = False
    await asyncio.wait_for(sink.handle(chunk), WAIT)
    assert journal[-1] == ("commit", {TopicPartition("ops", 0): 21})
    assert sink.stopped_reason is None
    assert REGISTRY.get_sample_value("mpcio_sink_stopped") == 0


async def test_unexpected_failures_after_a_401_stop_stop_delivery_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the 401 stop's recovery starts a fresh count: failures after it must reach the
    # threshold again, not pass it unseen (breaker finding)
    monkeypatch.setattr(service, "UNEXPECTED_ERROR_PAUSE_SECONDS", 0.0)
    answers = iter(
        [ValueError("x")] * service.UNEXPECTED_ERRORS_BEFORE_STOP
        + [HttpAnswer(401)]
        + [ValueError("y")] * service.UNEXPECTED_ERRORS_BEFORE_STOP
    )

    def answer(_: bytes) -> HttpAnswer:
        given = next(answers)
        if isinstance(given, Exception):
            raise given
        return given

    sink, *_ = await started_sink(answer, auth=[200])
    chunk = chunk_of(record(0, 20))
    for _ in range(service.UNEXPECTED_ERRORS_BEFORE_STOP):
        await asyncio.wait_for(sink.handle(chunk), WAIT)
    assert sink.stopped_reason is not None
    await asyncio.wait_for(sink.handle(chunk), WAIT)  # the 401: stopped, probed, resumed
    assert sink.stopped_reason is None
    for _ in range(service.UNEXPECTED_ERRORS_BEFORE_STOP):
        await asyncio.wait_for(sink.handle(chunk), WAIT)
    assert sink.stopped_reason is not None
    assert REGISTRY.get_sample_value("mpcio_sink_stopped") == 1


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


def _rate_gauge() -> float | None:
    return REGISTRY.get_sample_value("mpcio_sink_rate_limit_per_second")


async def test_the_rate_share_follows_the_assignment_and_is_none_without_partitions() -> None:
    """No share before the first assignment or without partitions: the limiter is closed (a
    request raises) and the gauge shows 0; otherwise the partitions' part of the limit."""
    journal: list[Any] = []
    consumer = FakeConsumer(journal)
    limiter = RateLimiter(SETTINGS.rate_limit_per_second)
    io = SinkIO(consumer, FakeProducer(journal), FakeClient(journal, ok, limiter), limiter)
    sink = OperationsSink(SETTINGS, TOPICS, lambda: io, POLICY)
    await sink.on_start()
    assert limiter.closed
    assert _rate_gauge() == 0

    everything = consumer.assignment()
    half = {tp for tp in everything if tp.partition < 2}
    await consumer.listener.on_partitions_assigned(half)
    assert not limiter.closed
    assert _rate_gauge() == SETTINGS.rate_limit_per_second / 2
    assert limiter.interval == pytest.approx(1.05 / (SETTINGS.rate_limit_per_second / 2))

    await consumer.listener.on_partitions_revoked(half)
    assert limiter.closed  # between the revoke and the next assignment: no share
    assert _rate_gauge() == 0
    await consumer.listener.on_partitions_assigned(set())
    assert limiter.closed  # a worker that holds nothing keeps no stale share
    assert _rate_gauge() == 0
    with pytest.raises(NoRateShareError):
        await limiter.acquire()
    await consumer.listener.on_partitions_assigned(everything)
    assert _rate_gauge() == SETTINGS.rate_limit_per_second


async def test_a_chunk_unfinished_when_the_rebalance_wait_ends_is_abandoned() -> None:
    """Its next request is never sent (the partitions' next owner sends it, at its own share)
    and nothing is committed; the chunk is rewound for whoever holds its partitions next."""
    gate = asyncio.Event()
    # the shortest rebalance timeout (6 s) leaves the chunk 1 s before the member rejoins
    settings = SETTINGS.model_copy(update={"kafka_rebalance_timeout_seconds": 6.0})
    assert service.finish_wait_seconds(settings) == 1.0
    sink, journal, consumer, producer, client = await started_sink(gate=gate, settings=settings)
    producer.confirm.set()
    # 16 items of one partition: two requests of 8, one after the other in one lane
    handling = asyncio.create_task(sink.handle(chunk_of(record(2, 40, items=16))))
    await asyncio.wait_for(client.posted.wait(), WAIT)

    await asyncio.wait_for(consumer.listener.on_partitions_revoked(consumer.assignment()), WAIT)
    gate.set()  # the first request's answer arrives after the revoke
    await asyncio.wait_for(handling, WAIT)

    assert [entry[0] for entry in journal].count("post") == 1
    assert not any(entry[0] == "commit" for entry in journal)
    assert producer.sent == []
    assert journal[-1] == ("seek", 2, 40)
    assert sink.idle.is_set()
