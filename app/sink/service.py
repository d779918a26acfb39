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
- an unexpected error in a chunk is logged, the chunk is rewound and retried after a pause;
  no exception escapes the loop.
Offsets move only after every operation of a chunk was accepted or its dead letter confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from mode import Service

from app import metrics
from app.core.avro import codec
from app.core.pipeline import SourcePosition, dead_letter, now_ms
from app.customerio.batching import pack
from app.customerio.classify import HttpAnswer
from app.customerio.client import TrackClient
from app.customerio.delivery import FatalDeliveryError, Rejected, RetryPolicy, deliver
from app.customerio.ratelimit import RateLimiter, workspace_share
from app.deadletter_headers import dead_letter_record
from app.errors import InvalidRecordError
from app.logs import log_dead_letters

if TYPE_CHECKING:
    import faust
    from aiokafka import ConsumerRecord

    from app.customerio.delivery import DeliveryReport
    from app.settings import Settings
    from app.topics import Topics

log = logging.getLogger(__name__)

STAGE_SINK = "sink"
MAX_RECORDS_PER_FETCH = 2000
T = TypeVar("T")
UNEXPECTED_ERROR_PAUSE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ItemRef:
    """Where an operation came from, for its dead letter and latency metric."""

    partition: int
    offset: int
    mpid: str
    ingested_at_ms: int


Chunk = dict[TopicPartition, list["ConsumerRecord[bytes, bytes]"]]


class OperationsSink(Service):
    """Drains the operations topic into Customer.io (see the module docstring)."""

    def __init__(self, settings: Settings, topics: Topics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topics = topics
        self.stopped_reason: str | None = None
        #: Set by the first partition assignment (an empty one too): the sink is in its group.
        self.joined = False
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._client: TrackClient | None = None
        # Shared with the client; its rate is this worker's share of the workspace limit.
        self._limiter = RateLimiter(settings.rate_limit_per_second)
        self.idle = asyncio.Event()
        self.idle.set()
        self._policy = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            max_seconds=settings.retry_max_seconds,
            initial_backoff=settings.retry_backoff_initial_seconds,
            max_backoff=settings.retry_backoff_max_seconds,
        )

    def apply_rate_share(self, assigned: list[TopicPartition]) -> None:
        """Take this worker's share of the workspace's request limit (on every assignment)."""
        assert self._consumer is not None
        topic = self.topics.operations.name
        total = len(self._consumer.partitions_for_topic(topic) or ())
        mine = sum(1 for tp in assigned if tp.topic == topic)
        share = workspace_share(self.settings.rate_limit_per_second, mine, total)
        if share is not None:
            self._limiter.set_rate(share)
            metrics.SINK_RATE_LIMIT.set(share)
            log.info("sink: %d of %d partitions, %.2f requests/s", mine, total, share)

    @property
    def partitions(self) -> int:
        """Operations partitions assigned to this sink now (0 for a standby)."""
        consumer = self._consumer
        return 0 if consumer is None else len(consumer.assignment())

    async def on_start(self) -> None:
        settings = self.settings
        api_key = settings.customerio_api_key
        if api_key is None or settings.customerio_site_id is None:  # validated by Settings
            raise RuntimeError("sink started without Customer.io credentials")
        self._client = TrackClient(
            settings.customerio_base_url,
            settings.customerio_site_id,
            api_key,
            timeout_seconds=settings.request_timeout_seconds,
            limiter=self._limiter,
            max_connections=settings.sink_lanes * 2,
        )
        await self._client.__aenter__()
        from app import kafka_security  # noqa: PLC0415 - TLS/SASL settings of every client

        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            linger_ms=5,
            **kafka_security.client_kwargs(settings),
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=f"{settings.app_id}-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Only operations whose ingest transaction committed: an aborted one (its record is
            # redone after a crash) would otherwise be delivered as a duplicate or phantom.
            isolation_level="read_committed",
            session_timeout_ms=int(settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(settings.kafka_session_timeout_seconds * 1000 / 3),
            max_poll_records=MAX_RECORDS_PER_FETCH,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **kafka_security.client_kwargs(settings),
        )
        self._consumer.subscribe([self.topics.operations.name], listener=_FinishBeforeRevoke(self))
        await self._consumer.start()

    async def on_stop(self) -> None:
        # Let the chunk in hand finish (delivered chunks get committed); a slower one is
        # simply redelivered after the restart.
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=20)
        except TimeoutError:
            log.warning("sink stopped with a chunk in flight; it will be redelivered")
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._client is not None:
            await self._client.__aexit__()

    @Service.task
    async def _drain(self) -> None:
        while not self.should_stop:
            chunk = await self._next_chunk()
            if not chunk:
                continue
            self.idle.clear()
            try:
                await self._deliver_chunk(chunk)
            except FatalDeliveryError as exc:
                self._rewind(chunk)
                self.idle.set()  # nothing in flight while stopped: rebalances may proceed
                await self._stop_until_credentials_work(exc)
            except Exception:  # never let an error escape: rewind and try the chunk again
                log.exception("sink chunk failed unexpectedly; retrying it")
                self._rewind(chunk)
                await self.sleep(UNEXPECTED_ERROR_PAUSE_SECONDS)
            finally:
                self.idle.set()

    async def _next_chunk(self) -> Chunk:
        assert self._consumer is not None
        chunk: Chunk = await self._consumer.getmany(timeout_ms=500)
        if not chunk:
            return chunk
        # Linger briefly so a trickle still fills requests; a full fetch goes at once.
        deadline = time.monotonic() + self.settings.batch_linger_ms / 1000
        while (
            sum(len(records) for records in chunk.values()) < MAX_RECORDS_PER_FETCH
            and (remaining := deadline - time.monotonic()) > 0
        ):
            more = await self._consumer.getmany(timeout_ms=int(remaining * 1000) or 1)
            if not more:
                break
            for tp, records in more.items():
                chunk.setdefault(tp, []).extend(records)
        return chunk

    async def _deliver_chunk(self, chunk: Chunk) -> None:
        by_partition: dict[int, list[tuple[bytes, ItemRef]]] = defaultdict(list)
        letters: list[bytes] = []
        for tp, records in chunk.items():
            lane = by_partition[tp.partition]
            for record in records:
                try:
                    batch = codec("operation_batch").decode(record.value)
                except InvalidRecordError as exc:
                    letters.append(self._letter_for_record(record, exc))
                    continue
                ref = ItemRef(tp.partition, record.offset, batch["mpid"], batch["ingested_at_ms"])
                lane.extend((operation["item"], ref) for operation in batch["operations"])
        lanes = assign_lanes(by_partition, self.settings.sink_lanes, self.settings.batch_max_items)
        reports = await asyncio.gather(
            *(self._deliver_lane(items) for items in lanes.values()), return_exceptions=True
        )
        fatal = next((r for r in reports if isinstance(r, FatalDeliveryError)), None)
        if fatal is not None:
            raise fatal
        for report in reports:
            if isinstance(report, BaseException):
                raise report
            letters.extend(report)
        await self._write_dead_letters(letters)
        assert self._consumer is not None
        await self._consumer.commit(
            {tp: records[-1].offset + 1 for tp, records in chunk.items() if records}
        )

    async def _deliver_lane(self, items: list[tuple[bytes, ItemRef]]) -> list[bytes]:
        """Deliver one lane's requests in order; return its dead letters (encoded)."""
        assert self._client is not None
        packed = pack(
            items,
            max_items=self.settings.batch_max_items,
            max_bytes=self.settings.batch_max_bytes,
        )
        letters = [
            self._letter_for_rejected(
                Rejected(payload, ref, "item_too_large", "item exceeds 32 KB", None, None, 0)
            )
            for payload, ref in packed.oversized
        ]
        for request in packed.requests:
            metrics.SINK_ITEMS_PER_REQUEST.observe(len(request))
            report = await deliver(request, self._client, self._policy)
            self._record(report, request.refs)
            letters.extend(self._letter_for_rejected(rejected) for rejected in report.rejected)
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
            now = now_ms()
            metrics.SINK_END_TO_END_SECONDS.observe((now - refs[-1].ingested_at_ms) / 1000)
        for rejected in report.rejected:
            metrics.DEAD_LETTERS.labels(STAGE_SINK, rejected.reason).inc()

    async def _write_dead_letters(self, letters: list[bytes]) -> None:
        if not letters:
            return
        assert self._producer is not None
        futures = []
        for letter in letters:
            record = dead_letter_record(letter)
            futures.append(
                await self._producer.send(
                    self.topics.deadletter.name,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                )
            )
        await asyncio.gather(*futures)  # confirmed by the broker before any commit
        log_dead_letters(log, letters)

    def _letter_for_rejected(self, rejected: Rejected[ItemRef]) -> bytes:
        ref = rejected.ref
        return dead_letter(
            rejected.reason,
            rejected.detail,
            stage=STAGE_SINK,
            source=SourcePosition(self.topics.operations.name, ref.partition, ref.offset),
            key=ref.mpid.encode(),
            payload=rejected.payload,
            failed_at_ms=now_ms(),
            http_status=rejected.http_status,
            response=rejected.response,
            attempts=rejected.attempts,
        )

    def _letter_for_record(
        self, record: ConsumerRecord[bytes, bytes], exc: InvalidRecordError
    ) -> bytes:
        metrics.DEAD_LETTERS.labels(STAGE_SINK, exc.reason).inc()
        return dead_letter(
            exc.reason,
            exc.detail,
            stage=STAGE_SINK,
            source=SourcePosition(record.topic, record.partition, record.offset),
            key=record.key,
            payload=record.value or b"",
            failed_at_ms=now_ms(),
        )

    def _rewind(self, chunk: Chunk) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, records in chunk.items():
            if records and tp in assigned:
                self._consumer.seek(tp, records[0].offset)

    async def _stop_until_credentials_work(self, exc: FatalDeliveryError) -> None:
        assert self._consumer is not None
        assert self._client is not None
        self.stopped_reason = str(exc)
        metrics.SINK_FATAL_STOPS.inc()
        metrics.SINK_STOPPED.set(1)
        log.error("delivery stopped: %s", exc)
        self._consumer.pause(*self._consumer.assignment())
        try:
            while not self.should_stop:
                await self.sleep(self.settings.credentials_probe_seconds)
                # Keep polling so the group keeps us as a member; partitions assigned meanwhile
                # are not paused yet: rewind what they returned and pause them too.
                fetched = await self._consumer.getmany(timeout_ms=10)
                if fetched:
                    self._rewind(fetched)
                    self._consumer.pause(*fetched)
                answer = await self._client.check_auth()
                if isinstance(answer, HttpAnswer) and answer.status == 200:
                    log.warning("Customer.io accepts the credentials again; resuming delivery")
                    return
        finally:
            self._consumer.resume(*self._consumer.assignment())
            self.stopped_reason = None
            metrics.SINK_STOPPED.set(0)

    async def lag(self) -> dict[TopicPartition, int]:
        """Records of the operations topic the sink has not taken yet, per assigned partition.

        Highwater (as of the last fetch) minus the consumer's position; both are local, no
        broker round trip. The chunk in flight counts as taken; a stopped sink rewound its
        chunk, so those records count again. Partitions not fetched yet are left out.
        """
        from aiokafka.errors import IllegalStateError  # noqa: PLC0415 - keeps this edit local

        consumer = self._consumer
        if consumer is None:
            return {}
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
            await asyncio.wait_for(self.sink.idle.wait(), timeout=30)
        except TimeoutError:
            log.warning("rebalance while a chunk is in flight; it will be redelivered")

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
            super().__init__(settings, topics, **kwargs)
            handle.instance = self

    app.service(ConfiguredSink)
    return handle


def assign_lanes(
    by_partition: Mapping[int, list[T]], max_lanes: int, max_items: int
) -> dict[int, list[T]]:
    """Lanes of one chunk: partition p's items (in order) go to lane p % n, where n is as many
    lanes as the chunk fills requests of ``max_items``, at most ``max_lanes``.

    Split ``max_lanes`` ways, a chunk that fits one request would cost that many (Customer.io
    limits requests, so under its limit items per request is the throughput). A partition is
    wholly in one lane, so one user's operations keep their order."""
    items = sum(len(partition) for partition in by_partition.values())
    used = min(max_lanes, max(1, -(-items // max_items)))
    lanes: dict[int, list[T]] = defaultdict(list)
    for partition, partition_items in sorted(by_partition.items()):
        lanes[partition % used].extend(partition_items)
    return lanes
