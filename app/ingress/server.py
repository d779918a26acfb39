"""The ingress HTTP service: authenticate, admit, read, validate, write, answer.

``POST /`` (also ``POST /firehose``) takes one Firehose message. Answers, in the order checked
(error bodies are ``{"error": <reason>, "detail": ...}``, each counted by reason in
``mpcio_ingress_rejected_total``; nothing is logged but the 503s, without payloads):

- 401 ``unauthorized``: not exactly one ``Authorization: Bearer <MPCIO_INGRESS_SECRET>``
  header (the scheme is case-insensitive; a header that is not UTF-8 is just a wrong one);
- 415 ``unsupported_encoding``: a ``Content-Encoding`` other than identity, gzip, deflate;
- 413 ``too_large``: a body (or decoded body) larger than ``MPCIO_INGRESS_MAX_BODY_BYTES``;
- 503 ``overloaded`` with ``Retry-After``: :data:`MAX_IN_FLIGHT` requests are being read,
  validated or written and :data:`MAX_WAITING` more already wait for their turn (answered
  before the body is read; nothing written). A request within those bounds waits;
- 408 ``timeout``: the body did not arrive within :data:`BODY_TIMEOUT_SECONDS`
  (``disconnected``: the caller closed the connection mid-body; counted, not answered);
- 400 ``malformed_json`` (not JSON), ``schema_invalid`` (its published schema's first error)
  or ``invalid_record`` (a record the worker's parser would reject);
- 503 ``broker_unavailable`` with ``Retry-After``: Kafka did not acknowledge every record in
  ``MPCIO_INGRESS_KAFKA_TIMEOUT_SECONDS``;
- 200 with the Firehose response message: every record acknowledged by all in-sync replicas.

Connections whose request headers are not complete within :data:`HEADER_TIMEOUT_SECONDS` are
closed without an answer (no request exists yet to answer or count).

Decoding, schema validation and planning are CPU-bound (seconds for a 10 MB message), so they
run in a small thread pool (:data:`VALIDATION_THREADS`), never on the event loop: the producer,
other requests and ``/healthz`` keep being served meanwhile, and a write's timeout starts only
once its message is validated.

Nothing is written before the whole message passed every check, so a 4xx (and a 503
``overloaded``) changes nothing. A 200 means every record is durable (idempotent producer,
``acks=all``). A 503 ``broker_unavailable`` may follow a partial write: the records are handed
to the producer together (one batch per partition when they fit), but Kafka has no atomic
write across partitions without transactions, and records already handed over when the
timeout fires may still be acknowledged later. mParticle retries the message, and applying a
membership change, attribute update or erasure twice gives the same state, so the retry
completes the write without a visible duplicate.

``GET /metrics`` serves the ingress's own Prometheus registry; ``GET /healthz`` answers 200.
Request bodies, identities and the secret are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.errors import BrokerUnavailableError, FirehoseSchemaError, InvalidRecordError
from app.ingress.messages import Plan, Record, plan_message
from app.ingress.schemas import validate
from app.serving import authorized, listen, quiet_client_errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from app.settings import Settings

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "mpcio_ingress_requests_total",
    "Firehose requests answered, by message type (unknown before validation) and HTTP status.",
    ["type", "status"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "mpcio_ingress_rejected_total",
    "Firehose requests refused, by reason (unauthorized, unsupported_encoding, too_large, "
    "overloaded, timeout, disconnected, malformed_json, schema_invalid, invalid_record, "
    "broker_unavailable).",
    ["reason"],
    registry=REGISTRY,
)
RECORDS = Counter(
    "mpcio_ingress_records_total",
    "Records durably written (acknowledged by Kafka), by topic kind (audiences, erasure).",
    ["topic"],
    registry=REGISTRY,
)
PROFILES = Counter(
    "mpcio_ingress_profiles_total",
    "User profiles of audience membership change requests durably written.",
    registry=REGISTRY,
)
IGNORED = Counter(
    "mpcio_ingress_ignored_total",
    "Valid messages answered 200 that write nothing by design, by why (dsr_access, "
    "dsr_portability).",
    ["reason"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "mpcio_ingress_request_seconds",
    "Time from request to answer, by message type.",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


class Writer(Protocol):
    async def write(self, records: Sequence[Record]) -> None:
        """Return once every record is acknowledged; else raise BrokerUnavailableError."""


class KafkaWriter:
    """Writes records with an idempotent ``acks=all`` producer; topic names from settings.

    ``timeout_seconds`` bounds one message's write (metadata included): past it, or on any
    Kafka error, :class:`BrokerUnavailableError`."""

    def __init__(self, producer: Any, topics: dict[str, str], timeout_seconds: float) -> None:
        self.producer = producer
        self.topics = topics
        self.timeout_seconds = timeout_seconds

    async def write(self, records: Sequence[Record]) -> None:
        from aiokafka.errors import KafkaError  # noqa: PLC0415 - keep the module light

        try:
            await asyncio.wait_for(self._write(records), self.timeout_seconds)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise BrokerUnavailableError(type(exc).__name__) from exc

    async def _write(self, records: Sequence[Record]) -> None:
        pending = []
        for record in records:
            topic = self.topics[record.topic]
            if record.all_partitions:
                partitions = sorted(await self.producer.partitions_for(topic))
                pending.extend(
                    [await self.producer.send(topic, record.value, partition=p) for p in partitions]
                )
            else:
                pending.append(await self.producer.send(topic, record.value, key=record.key))
        await asyncio.gather(*pending)


#: Requests being read, validated or written at once (bodies in memory: at most this many
#: times ``MPCIO_INGRESS_MAX_BODY_BYTES``); more wait, unread, for a slot.
MAX_IN_FLIGHT = 32
#: Requests that may wait for a slot; one more gets 503 ``overloaded`` + Retry-After before its
#: body is read (nothing written).
MAX_WAITING = 256
#: Threads that decode, validate and plan messages (CPU-bound: off the event loop, so the
#: producer and /healthz keep running while a large message is checked).
VALIDATION_THREADS = 2
#: Seconds to receive a whole body once the headers are in: past it, 408 ``timeout``.
BODY_TIMEOUT_SECONDS = 30.0
#: Seconds a connection may stay without a complete request (idle, or headers half-sent)
#: before it is closed (aiohttp's keep-alive timer; no answer can be framed before headers).
HEADER_TIMEOUT_SECONDS = 15.0
#: How the ingress's aiohttp runner is made (tests serve the app the same way): encodings are
#: decoded by the handler after authentication (aiohttp's own decoder answers before it), and
#: the keep-alive timer closes connections whose headers never complete.
RUNNER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "auto_decompress": False,
    "keepalive_timeout": HEADER_TIMEOUT_SECONDS,
}
#: ``Content-Encoding`` values accepted (decoded here, bounded by the body limit); others 415.
ENCODINGS = {"": None, "identity": None, "gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Rejection(Exception):  # noqa: N818 - an answer, not a failure of the service
    """A request answered before anything is written: status, reason, detail, message type
    and extra response headers."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        message_type: str = "unknown",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.message_type = message_type
        self.headers = headers


class Admission:
    """Backpressure: at most ``limit`` requests admitted at once, at most ``queue`` waiting.

    :meth:`slot` waits for a slot, or raises :class:`Rejection` (503 ``overloaded`` with
    ``retry_after``) at once when ``queue`` requests are already waiting."""

    def __init__(self, limit: int, queue: int, retry_after: dict[str, str]) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self._queue = queue
        self._retry_after = retry_after
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.waiting >= self._queue:
            log.warning("ingress: %d requests waiting; answered 503", self.waiting)
            detail = "too many requests in progress"
            raise Rejection(503, "overloaded", detail, headers=self._retry_after)
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._semaphore.release()


#: The application's :class:`Admission` (its ``waiting`` count, for tests and inspection).
ADMISSION = web.AppKey("admission", Admission)


def prepare(body: bytes, encoding: str, max_bytes: int) -> tuple[str, Plan]:
    """``(message type, plan)`` for one request body (pure; run in a worker thread).

    ``encoding`` is a key of :data:`ENCODINGS`; the decoded body may not exceed ``max_bytes``.
    Raises :class:`Rejection` (413 ``too_large``, 400 ``malformed_json`` / ``schema_invalid``
    / ``invalid_record``)."""
    wbits = ENCODINGS[encoding]
    if wbits is not None:
        decoder = zlib.decompressobj(wbits)
        try:
            body = decoder.decompress(body, max_bytes + 1)
        except zlib.error as exc:
            raise Rejection(400, "malformed_json", f"{encoding}: {exc}") from None
        if len(body) > max_bytes:
            raise Rejection(413, "too_large", f"decoded body over {max_bytes} bytes")
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejection(400, "malformed_json", str(exc)) from None
    if type(message) is not dict:
        raise Rejection(400, "schema_invalid", "(message): is not a JSON object")
    try:
        message_type = validate(message)
    except FirehoseSchemaError as exc:
        raise Rejection(400, "schema_invalid", str(exc)) from None
    try:
        plan = plan_message(
            message_type,
            message,
            now_ms=time.time_ns() // 1_000_000,
            new_id=lambda: str(uuid.uuid4()),
        )
    except InvalidRecordError as exc:
        detail = f"{exc.reason}: {exc.detail}"
        raise Rejection(400, "invalid_record", detail, message_type) from None
    return message_type, plan


def check_headers(request: web.BaseRequest, token: bytes, max_bytes: int) -> str:
    """The request's ``Content-Encoding`` (a key of :data:`ENCODINGS`) once its headers pass:
    authentication first (:func:`authorized`; 401), then the encoding (415), then the declared
    length (413). Raises :class:`Rejection`."""
    if not authorized(request.headers.getall("Authorization", []), token):
        raise Rejection(401, "unauthorized", "")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise Rejection(415, "unsupported_encoding", "use identity, gzip or deflate")
    if (request.content_length or 0) > max_bytes:
        raise Rejection(413, "too_large", "")
    return encoding


def build_app(
    settings: Settings,
    writer: Writer,
    *,
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS,
    max_in_flight: int = MAX_IN_FLIGHT,
    max_waiting: int = MAX_WAITING,
) -> web.Application:
    """The aiohttp application (routes in the module docstring). Its validation thread pool
    is shut down on the application's cleanup. A request aiohttp cannot parse is logged as one
    WARNING line (:func:`~app.serving.quiet_client_errors`)."""
    secret = settings.ingress_secret
    if secret is None:
        raise ValueError("build_app needs settings.ingress_secret")
    quiet_client_errors()
    token = secret.get_secret_value().encode()
    retry_after = {"Retry-After": str(settings.ingress_retry_after_seconds)}
    max_bytes = settings.ingress_max_body_bytes
    pool = ThreadPoolExecutor(VALIDATION_THREADS, thread_name_prefix="ingress-validate")
    admission = Admission(max_in_flight, max_waiting, retry_after)

    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            encoding = check_headers(request, token, max_bytes)
            async with admission.slot():
                message_type, response = await _answer(request, encoding)
        except Rejection as refused:
            message_type, response = refused.message_type, _rejected(refused)
        LATENCY.labels(message_type).observe(time.perf_counter() - started)
        return response

    async def _answer(request: web.Request, encoding: str) -> tuple[str, web.Response]:
        """``(message type, answer)`` of an admitted request; raises :class:`Rejection`."""
        try:
            body = await asyncio.wait_for(request.read(), body_timeout_seconds)
        except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length
            raise Rejection(413, "too_large", "") from None
        except TimeoutError:
            detail = f"body not received in {body_timeout_seconds} s"
            raise Rejection(408, "timeout", detail) from None
        except ConnectionResetError:  # the caller left mid-body: counted, nothing to answer
            raise Rejection(400, "disconnected", "connection closed before the body") from None
        message_type, plan = await asyncio.get_running_loop().run_in_executor(
            pool, prepare, body, encoding, max_bytes
        )
        try:
            await writer.write(plan.records)
        except BrokerUnavailableError as exc:
            log.warning("ingress: Kafka unavailable (%s); answered 503", exc)
            return message_type, _refuse(
                message_type, 503, "broker_unavailable", headers=retry_after
            )
        _count_written(plan)
        REQUESTS.labels(message_type, "200").inc()
        return message_type, web.json_response(
            plan.response, dumps=lambda v: orjson.dumps(v).decode()
        )

    async def shutdown_pool(_: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=max_bytes)
    app[ADMISSION] = admission
    app.router.add_post("/", handle)
    app.router.add_post("/firehose", handle)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(shutdown_pool)
    return app


async def metrics(_: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _rejected(refused: Rejection) -> web.Response:
    return _refuse(
        refused.message_type,
        refused.status,
        refused.reason,
        refused.detail or None,
        headers={"WWW-Authenticate": "Bearer"} if refused.status == 401 else refused.headers,
    )


def _refuse(
    message_type: str,
    status: int,
    reason: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    REJECTED.labels(reason).inc()
    REQUESTS.labels(message_type, str(status)).inc()
    body = {"error": reason} if detail is None else {"error": reason, "detail": detail}
    return web.json_response(body, status=status, headers=headers)


def _count_written(plan: Plan) -> None:
    if plan.ignored is not None:
        IGNORED.labels(plan.ignored).inc()
    for record in plan.records:
        RECORDS.labels(record.topic).inc()
    if any(record.topic == "audiences" for record in plan.records):
        PROFILES.inc(plan.profiles)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run the ingress until SIGTERM/SIGINT: bind the port, create missing topics, start the
    producer, serve.

    Raises :class:`~app.errors.ConfigError` when the port cannot be bound (before any topic or
    producer exists) or Kafka rejects the TLS/SASL settings, and
    :class:`~app.errors.BrokerError` when Kafka cannot be reached at start. On a signal it
    stops accepting, lets requests in flight finish (their writes complete or answer 503), then
    closes the producer."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    from app.kafka_admin import ensure_topics  # noqa: PLC0415
    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415
    from app.topics import topics_for  # noqa: PLC0415

    sock = listen(settings.ingress_host, settings.ingress_port)
    with contextlib.closing(sock):
        topics = topics_for(settings)
        await ensure_topics(
            settings.bootstrap_servers,
            topics,
            settings.topic_replication_factor,
            security=client_kwargs(settings),
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            request_timeout_ms=int(settings.ingress_kafka_timeout_seconds * 1000),
            **client_kwargs(settings),
        )
        await start_client(producer, settings)
        writer = KafkaWriter(
            producer,
            {"audiences": topics.audiences.name, "erasure": topics.erasure.name},
            settings.ingress_kafka_timeout_seconds,
        )
        runner = web.AppRunner(build_app(settings, writer), **RUNNER_OPTIONS)
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await web.SockSite(runner, sock).start()
            log.info("ingress listening on %s:%s", settings.ingress_host, settings.ingress_port)
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
            with contextlib.suppress(Exception):
                await producer.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
