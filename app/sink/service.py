"""Sink: ``customerio-operations`` → Customer.io Track API v2 batch requests.

A faust service (started and stopped with the worker) that drains the operations topic with
its own aiokafka consumer (group ``<app id>-sink``, no auto-commit), because it must commit an
offset only after the operations before it were delivered or dead-lettered, and because a bare
consumer moves operations at many times faust's per-record rate (ARCHITECTURE.md).

Loop: take what is fetched (waiting up to ``batch_linger_ms`` to fill requests), split the
operations into lanes by partition (partition p → lane p % lanes, so a user's operations stay
in order; as many lanes as the chunk fills requests, at most ``sink_lanes``), pack each lane
into v2 requests within Customer.io's limits and deliver the lanes' requests concurrently,
each lane's in order. Then write the dead letters and wait for the broker to confirm them,
then commit the chunk's offsets.

Failure semantics:
- retryable answers are retried inside :func:`~app.customerio.delivery.deliver` until the
  retry budget is spent, then dead-lettered (``retries_exhausted``); 4xx and items named in a
  207 are dead-lettered with status and reason; nothing is dropped silently;
- 401/403/3xx stop delivery: nothing is dead-lettered or committed, the chunk's partitions are
  rewound and paused, one clear error is logged, ``mpcio_sink_stopped`` is 1, and ``GET /auth``
  is re-checked every ``credentials_probe_seconds``; delivery resumes on its own once it passes
  (and, after a restart, from the last committed offsets);
- an attempt that got no answer (timeout, dropped connection) may still be applied by
  Customer.io after its retry and after later requests: a delete of one of its users waits
  until ``sink_unanswered_settle_seconds`` after it (:class:`~app.sink.planning.Unanswered`),
  holding its lane, so such a late copy cannot recreate an erased person;
- an unexpected error in a chunk is logged and counted (``mpcio_sink_unexpected_errors_total``),
  the chunk is rewound and retried after a pause; no exception escapes the loop. After
  :data:`UNEXPECTED_ERRORS_BEFORE_STOP` such failures in a row delivery counts as stopped
  like on a 401 (one error line, ``mpcio_sink_stopped`` is 1, ``/health/ready`` 503) while the
  retries go on; the next chunk delivered clears it;
- a rebalance waits for the chunk in flight (:func:`finish_wait_seconds`: inside the group's
  rebalance timeout); one still unfinished then is abandoned uncommitted (its partitions' next
  owner redelivers it), because from the revoke to the next assignment the worker has no share
  of the rate limit and its rate limiter is closed (:class:`~app.errors.NoRateShareError`).
Offsets move only after every operation of a chunk was accepted or its dead letter confirmed.

Seams: the pure planning (chunk → lanes, undecodable records, offsets) is
:mod:`app.sink.planning`; the Kafka consumer, producer and Customer.io client are built by a
``connect`` callable given to the service (:func:`kafka_io` in production, fakes in
``tests/unit/test_sink_service.py``), called once in ``on_start`` (aiokafka clients need the
running loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import ConsumerStoppedError
from mode import Service

from app import metrics, wiring
from app.core.sizes import PRODUCER_MAX_REQUEST_BYTES
from app.customerio.batching import pack
from app.customerio.classify import HttpAnswer, TransportFailure
from app.customerio.delivery import Rejected, RetryPolicy, deliver
from app.customerio.ratelimit import RateLimiter, workspace_share
from app.errors import FatalDeliveryError, NoRateShareError, Reason
from app.logs import log_dead_letters
from app.records import Stage, dead_letter_record, now_ms
from app.sink.planning import (
    Fetched,
    ItemRef,
    Lane,
    Unanswered,
    commit_offsets,
    letter_for_rejected,
    plan_chunk,
    rewind_offsets,
)

if TYPE_CHECKING:
    import faust

    from app.customerio.delivery import DeliveryReport
    from app.settings import Settings
    from app.topics import Topics

log = logging.getLogger(__name__)

MAX_RECORDS_PER_FETCH = 2000
UNEXPECTED_ERROR_PAUSE_SECONDS = 5.0
#: Unexpected chunk failures in a row after which delivery counts as stopped: a transient
#: fault clears within a few retries, one that persists (e.g. a client that cannot be used
#: with the settings) must show in readiness and alerts, not only in the log.
UNEXPECTED_ERRORS_BEFORE_STOP = 3
#: Of the group's rebalance timeout, what a member needs to rejoin after its wait for the
#: chunk in flight (:func:`finish_wait_seconds`).
REJOIN_SECONDS = 5.0
#: aiokafka's default request timeout; the JoinGroup request of a member that waits for
#: another's chunk lasts up to the rebalance timeout, so it must be longer than that.
KAFKA_REQUEST_TIMEOUT_SECONDS = 40.0


def finish_wait_seconds(settings: Settings) -> float:
    """How long a rebalance waits for the chunk in flight to finish and commit: the group's
    rebalance timeout (``MPCIO_KAFKA_REBALANCE_TIMEOUT_SECONDS``) less the time to rejoin, at
    least 1 s. The sink's consumer sends that timeout too: with aiokafka's default (the 10 s
    session timeout) under a 30 s wait, the broker finished a rebalance without a member still
    waiting and gave its partitions to the others, who sent at their new, larger shares while
    it sent the rest of its chunk at its old one: together above the workspace's limit."""
    return max(settings.kafka_rebalance_timeout_seconds - REJOIN_SECONDS, 1.0)


Chunk = dict[TopicPartition, list[Fetched]]


class SinkConsumer(Protocol):
    """The part of ``AIOKafkaConsumer`` the sink uses."""

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def getmany(self, *, timeout_ms: int) -> Mapping[TopicPartition, Sequence[Any]]: ...
    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    async def position(self, partition: TopicPartition) -> int: ...


class SinkProducer(Protocol):
    """The part of ``AIOKafkaProducer`` the sink uses: ``send`` returns the delivery future."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]: ...


class SinkClient(Protocol):
    """The part of :class:`~app.customerio.client.TrackClient` the sink uses."""

    async def __aenter__(self) -> Any: ...
    async def __aexit__(self, *_: object) -> None: ...
    async def post_batch(self, body: bytes) -> HttpAnswer | TransportFailure: ...
    async def check_auth(self) -> HttpAnswer | TransportFailure: ...


@dataclass(frozen=True, slots=True)
class SinkIO:
    """The sink's connections (not started): what it reads, writes and sends with.
    ``limiter`` is the one the client waits on; the sink sets it to its share."""

    consumer: SinkConsumer
    producer: SinkProducer
    client: SinkClient
    limiter: RateLimiter


def kafka_io(settings: Settings) -> SinkIO:
    """The production connections: aiokafka clients (TLS/SASL from the settings) and the Track
    API client. Call inside the running loop."""
    from app import kafka_security  # noqa: PLC0415 - TLS/SASL settings of every client

    limiter = wiring.rate_limiter(settings)
    rebalance_timeout = settings.kafka_rebalance_timeout_seconds
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_request_size=PRODUCER_MAX_REQUEST_BYTES,  # what dead_letter_record cuts to
        **kafka_security.client_kwargs(settings),
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=f"{settings.app_id}-sink",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Only operations whose ingest transaction committed: an aborted one (its record is
        # redone after a crash) would otherwise be delivered as a duplicate or phantom.
        isolation_level="read_committed",
        session_timeout_ms=int(settings.kafka_session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.kafka_session_timeout_seconds * 1000 / 3),
        rebalance_timeout_ms=int(rebalance_timeout * 1000),
        request_timeout_ms=int(max(KAFKA_REQUEST_TIMEOUT_SECONDS, rebalance_timeout + 5) * 1000),
        max_poll_records=MAX_RECORDS_PER_FETCH,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **kafka_security.client_kwargs(settings),
    )
    client = wiring.track_client(settings, limiter, max_connections=settings.sink_lanes * 2)
    return SinkIO(consumer, producer, client, limiter)


class OperationsSink(Service):
    """Drains the operations topic into Customer.io (see the module docstring).

    ``connect`` builds the connections (:func:`kafka_io`); ``policy`` is the retry policy of
    every request."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        connect: Callable[[], SinkIO],
        policy: RetryPolicy,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topics = topics
        self.stopped_reason: str | None = None
        self._unexpected_in_a_row = 0  # chunks that failed unexpectedly since one went through
        #: Set by the first partition assignment (an empty one too): the sink is in its group.
        self.joined = False
        self._connect = connect
        self._io: SinkIO | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self._policy = policy
        self._unanswered = Unanswered(settings.sink_unanswered_settle_seconds)

    @property
    def io(self) -> SinkIO:
        """The connections (after ``on_start``)."""
        assert self._io is not None, "sink used before on_start"
        return self._io

    def apply_rate_share(self, assigned: Collection[TopicPartition]) -> None:
        """Take this worker's share of the workspace's request limit (on every assignment):
        the limiter at the share, or closed when it is 0 (no partition held)."""
        topic = self.topics.operations.name
        total = len(self.io.consumer.partitions_for_topic(topic) or ())
        mine = sum(1 for tp in assigned if tp.topic == topic)
        share = workspace_share(self.settings.rate_limit_per_second, mine, total)
        if share > 0:
            self.io.limiter.set_rate(share)
            metrics.SINK_RATE_LIMIT.set(share)
        else:
            self.drop_rate_share()
        log.info("sink: %d of %d partitions, %.2f requests/s", mine, total, share)

    def drop_rate_share(self) -> None:
        """Hold no share (from a revoke to the next assignment): the limiter closed, so nothing
        is sent, not even by a chunk whose partitions may now be another worker's."""
        self.io.limiter.close()
        metrics.SINK_RATE_LIMIT.set(0)

    @property
    def partitions(self) -> int:
        """Operations partitions assigned to this sink now (0 for a standby)."""
        return 0 if self._io is None else len(self._io.consumer.assignment())

    async def on_start(self) -> None:
        self._io = io = self._connect()
        self.drop_rate_share()  # no share before the first assignment
        await io.client.__aenter__()
        await io.producer.start()
        io.consumer.subscribe([self.topics.operations.name], listener=_FinishBeforeRevoke(self))
        await io.consumer.start()

    async def on_stop(self) -> None:
        # Let the chunk in hand finish (delivered chunks get committed); a slower one is
        # simply redelivered after the restart.
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=20)
        except TimeoutError:
            log.warning("sink stopped with a chunk in flight; it will be redelivered")
        if self._io is not None:
            await self._io.consumer.stop()
            await self._io.producer.stop()
            await self._io.client.__aexit__()

    @Service.task
    async def _drain(self) -> None:
        try:
            await self._drain_until_stopped()
        except ConsumerStoppedError:
            # on_stop stops the consumer while this loop may wait in getmany: that is the
            # clean stop (SIGTERM), not a crash; any other time it is one
            if not self.should_stop:
                raise

    async def _drain_until_stopped(self) -> None:
        while not self.should_stop:
            chunk = await self._next_chunk()
            if chunk:
                await self.handle(chunk)

    async def handle(self, chunk: Chunk) -> None:
        """Deliver one chunk and commit it; on a fatal answer rewind it and wait (paused) until
        the credentials work; on any other error rewind it and pause. Never raises."""
        self.idle.clear()
        try:
            await self._deliver_chunk(chunk)
        except FatalDeliveryError as exc:
            self._rewind(chunk)
            self.idle.set()  # nothing in flight while stopped: rebalances may proceed
            await self._stop_until_credentials_work(exc)
        except NoRateShareError:
            # a rebalance took the partitions before the chunk finished: nothing of it was
            # committed, so their next owner (maybe this worker again) redelivers it
            log.warning("sink: chunk abandoned at a rebalance; it will be redelivered")
            self._rewind(chunk)
        except Exception as exc:  # never let an error escape: rewind and try the chunk again
            log.exception("sink chunk failed unexpectedly; retrying it")
            self._rewind(chunk)
            self._unexpected_failure(exc)
            await self.sleep(UNEXPECTED_ERROR_PAUSE_SECONDS)
        else:
            self._delivered_again()
        finally:
            self.idle.set()

    def _unexpected_failure(self, exc: Exception) -> None:
        """Count one unexpected chunk failure; the :data:`UNEXPECTED_ERRORS_BEFORE_STOP`-th in
        a row marks delivery stopped (readiness 503, ``mpcio_sink_stopped`` 1). The reason
        names the exception's type only: its text may hold what a caller must not see."""
        metrics.SINK_UNEXPECTED_ERRORS.inc()
        self._unexpected_in_a_row += 1
        if self._unexpected_in_a_row == UNEXPECTED_ERRORS_BEFORE_STOP:
            self.stopped_reason = (
                f"every sink chunk fails unexpectedly ({type(exc).__name__}, "
                f"{self._unexpected_in_a_row} times in a row; see the log); retrying"
            )
            metrics.SINK_STOPPED.set(1)
            log.error("delivery stopped: %s", self.stopped_reason)

    def _delivered_again(self) -> None:
        """A chunk went through: clear a stop that unexpected failures caused."""
        if self._unexpected_in_a_row >= UNEXPECTED_ERRORS_BEFORE_STOP:
            log.warning("sink chunk delivered again; delivery resumes")
            self.stopped_reason = None
            metrics.SINK_STOPPED.set(0)
        self._unexpected_in_a_row = 0

    async def _next_chunk(self) -> Chunk:
        consumer = self.io.consumer
        chunk: Chunk = {
            tp: list(records) for tp, records in (await consumer.getmany(timeout_ms=500)).items()
        }
        if not chunk:
            return chunk
        # Linger briefly so a trickle still fills requests; a full fetch goes at once.
        deadline = time.monotonic() + self.settings.batch_linger_ms / 1000
        while (
            sum(len(records) for records in chunk.values()) < MAX_RECORDS_PER_FETCH
            and (remaining := deadline - time.monotonic()) > 0
        ):
            more = await consumer.getmany(timeout_ms=int(remaining * 1000) or 1)
            if not more:
                break
            for tp, records in more.items():
                chunk.setdefault(tp, []).extend(records)
        return chunk

    async def _deliver_chunk(self, chunk: Chunk) -> None:
        plan = plan_chunk(
            chunk, self.settings.sink_lanes, now_ms, request_items=self.settings.batch_max_items
        )
        for reason in plan.undecodable:
            metrics.DEAD_LETTERS.labels(Stage.SINK, reason).inc()
        reports = await asyncio.gather(
            *(self._deliver_lane(lane) for lane in plan.lanes), return_exceptions=True
        )
        fatal = next((r for r in reports if isinstance(r, FatalDeliveryError)), None)
        if fatal is not None:
            raise fatal
        letters = plan.letters
        for report in reports:
            if isinstance(report, BaseException):
                raise report
            letters.extend(report)
        await self._write_dead_letters(letters)
        await self.io.consumer.commit(commit_offsets(chunk))

    async def _deliver_lane(self, items: Lane) -> list[bytes]:
        """Deliver one lane's requests in order; return its dead letters (encoded)."""
        packed = pack(
            items,
            max_items=self.settings.batch_max_items,
            max_bytes=self.settings.batch_max_bytes,
        )
        oversized = [
            Rejected(payload, ref, Reason.ITEM_TOO_LARGE, "item exceeds 32 KB", None, None, 0)
            for payload, ref in packed.oversized
        ]
        self._count_rejected(oversized)
        letters = [self._letter(rejected) for rejected in oversized]
        for request in packed.requests:
            metrics.SINK_ITEMS_PER_REQUEST.observe(len(request))
            hold = self._unanswered.hold_seconds(
                zip(request.payloads, request.refs, strict=True), time.monotonic()
            )
            if hold > 0:
                log.info(
                    "sink: a delete waits %.1fs for an unanswered request of its user to settle",
                    hold,
                )
                await self.sleep(hold)
            report = await deliver(request, self.io.client, self._policy)
            if any(decision.status is None for decision in report.decisions):
                self._unanswered.note((ref.mpid for ref in request.refs), time.monotonic())
            self._record(report, request.refs)
            letters.extend(self._letter(rejected) for rejected in report.rejected)
        return letters

    def _record(self, report: DeliveryReport[ItemRef], refs: list[ItemRef]) -> None:
        for decision, seconds in zip(report.decisions, report.seconds, strict=True):
            metrics.SINK_REQUEST_SECONDS.observe(seconds)
            metrics.SINK_REQUESTS.labels(decision.status_class).inc()
            if decision.status == 429:
                metrics.SINK_THROTTLED.inc()
        if report.attempts > 1:
            metrics.SINK_RETRIES.inc(report.attempts - 1)
        if report.delivered:
            metrics.SINK_ITEMS_DELIVERED.inc(report.delivered)
            metrics.SINK_END_TO_END_SECONDS.observe((now_ms() - refs[-1].ingested_at_ms) / 1000)
        self._count_rejected(report.rejected)

    @staticmethod
    def _count_rejected(rejected: list[Rejected[ItemRef]]) -> None:
        for item in rejected:
            metrics.DEAD_LETTERS.labels(Stage.SINK, item.reason).inc()

    def _letter(self, rejected: Rejected[ItemRef]) -> bytes:
        return letter_for_rejected(rejected, self.topics.operations.name, now_ms())

    async def _write_dead_letters(self, letters: list[bytes]) -> None:
        if not letters:
            return
        records = [dead_letter_record(letter) for letter in letters]  # cut to fit if need be
        futures = [
            await self.io.producer.send(
                self.topics.deadletter.name, record.value, key=record.key, headers=record.headers
            )
            for record in records
        ]
        await asyncio.gather(*futures)  # confirmed by the broker before any commit
        log_dead_letters(log, [record.value for record in records])

    def _rewind(self, chunk: Mapping[TopicPartition, Sequence[Fetched]]) -> None:
        consumer = self.io.consumer
        assigned = consumer.assignment()
        for tp, offset in rewind_offsets(chunk).items():
            if tp in assigned:
                consumer.seek(tp, offset)

    async def _stop_until_credentials_work(self, exc: FatalDeliveryError) -> None:
        consumer, client = self.io.consumer, self.io.client
        self.stopped_reason = str(exc)
        metrics.SINK_FATAL_STOPS.inc()
        metrics.SINK_STOPPED.set(1)
        log.error("delivery stopped: %s", exc)
        consumer.pause(*consumer.assignment())
        try:
            while not self.should_stop:
                await self.sleep(self.settings.credentials_probe_seconds)
                # Keep polling so the group keeps us as a member; partitions assigned meanwhile
                # are not paused yet: rewind what they returned and pause them too.
                fetched = await consumer.getmany(timeout_ms=10)
                if fetched:
                    self._rewind(fetched)
                    consumer.pause(*fetched)
                answer = await client.check_auth()
                if isinstance(answer, HttpAnswer) and answer.status == 200:
                    log.warning("Customer.io accepts the credentials again; resuming delivery")
                    return
        finally:
            consumer.resume(*consumer.assignment())
            self.stopped_reason = None
            metrics.SINK_STOPPED.set(0)
            # a fresh count: else failures after this stop would pass the threshold unseen
            self._unexpected_in_a_row = 0

    async def lag(self) -> dict[TopicPartition, int]:
        """Records of the operations topic the sink has not taken yet, per assigned partition.

        Highwater (as of the last fetch) minus the consumer's position; both are local, no
        broker round trip. The chunk in flight counts as taken; a stopped sink rewound its
        chunk, so those records count again. Partitions not fetched yet are left out.
        """
        from aiokafka.errors import IllegalStateError  # noqa: PLC0415 - keeps this edit local

        if self._io is None:
            return {}
        consumer = self._io.consumer
        highwaters = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
        lags: dict[TopicPartition, int] = {}
        for tp, highwater in highwaters.items():
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), timeout=1.0)
            except (TimeoutError, IllegalStateError):  # revoked or being reset meanwhile
                continue
            lags[tp] = max(highwater - position, 0)
        return lags


class _FinishBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """On a rebalance, let the chunk in flight finish and commit before partitions move."""

    def __init__(self, sink: OperationsSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:  # noqa: ARG002
        if not self.sink.idle.is_set():
            log.info("sink: rebalance waits for the chunk in flight to finish and commit")
        try:
            await asyncio.wait_for(
                self.sink.idle.wait(), timeout=finish_wait_seconds(self.sink.settings)
            )
        except TimeoutError:
            log.warning("sink: the chunk in flight did not finish before the rebalance")
        # Closed whether or not a chunk is still in flight: it stops at its next request
        # (handle() abandons it) instead of sending beside the partitions' next owner.
        self.sink.drop_rate_share()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.sink.joined = True
        self.sink.apply_rate_share(assigned)


class SinkHandle:
    """Lets the web endpoints reach the sink the app instantiates at start-up."""

    instance: OperationsSink | None = None


def attach_sink(app: faust.App, settings: Settings, topics: Topics) -> SinkHandle:
    """Have the app create, start and stop the sink with the worker."""
    handle = SinkHandle()

    class ConfiguredSink(OperationsSink):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(
                settings,
                topics,
                lambda: kafka_io(settings),
                wiring.retry_policy(settings),
                **kwargs,
            )
            handle.instance = self

    app.service(ConfiguredSink)
    return handle
