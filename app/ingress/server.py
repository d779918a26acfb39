"""The ingress HTTP service: authenticate, size-check, parse, validate, write, answer.

``POST /`` (also ``POST /firehose``) takes one Firehose message. Answers, in the order checked
(error bodies are ``{"error": <reason>, "detail": ...}``, each counted by reason):

- 401 ``unauthorized``: no ``Authorization: Bearer <MPCIO_INGRESS_SECRET>`` header;
- 413 ``too_large``: a body larger than ``MPCIO_INGRESS_MAX_BODY_BYTES``;
- 400 ``malformed_json`` (not JSON), ``schema_invalid`` (its published schema's first error)
  or ``invalid_record`` (a record the worker's parser would reject);
- 503 ``broker_unavailable`` with ``Retry-After``: Kafka did not acknowledge every record in
  ``MPCIO_INGRESS_KAFKA_TIMEOUT_SECONDS``;
- 200 with the Firehose response message: every record acknowledged by all in-sync replicas.

Nothing is written before the whole message passed every check, so a 4xx changes nothing. A
200 means every record is durable (idempotent producer, ``acks=all``). After a 503 some of the
message's records may be written; mParticle retries the message, and applying a membership
change, attribute update or erasure twice gives the same state, so the retry completes the
write without a visible duplicate.

``GET /metrics`` serves the ingress's own Prometheus registry; ``GET /healthz`` answers 200.
Request bodies, identities and the secret are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app.errors import InvalidRecordError
from app.ingress.messages import Plan, Record, plan_message
from app.ingress.schemas import FirehoseSchemaError, validate

if TYPE_CHECKING:
    from collections.abc import Sequence

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
    "Firehose requests refused, by reason (unauthorized, too_large, malformed_json, "
    "schema_invalid, invalid_record, broker_unavailable).",
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
LATENCY = Histogram(
    "mpcio_ingress_request_seconds",
    "Time from request to answer, by message type.",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


class BrokerUnavailableError(Exception):
    """Kafka did not acknowledge every record of a message (the reason, without payloads)."""


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


def build_app(settings: Settings, writer: Writer) -> web.Application:
    """The aiohttp application (routes in the module docstring)."""
    secret = settings.ingress_secret
    if secret is None:
        raise ValueError("build_app needs settings.ingress_secret")
    expected = b"Bearer " + secret.get_secret_value().encode()
    retry_after = str(settings.ingress_retry_after_seconds)

    async def handle(request: web.Request) -> web.Response:
        started = time.perf_counter()
        message_type, response = await _answer(request)
        LATENCY.labels(message_type).observe(time.perf_counter() - started)
        return response

    async def _answer(request: web.Request) -> tuple[str, web.Response]:  # noqa: PLR0911 - one return per answer of the table above
        """``(message type or "unknown", answer)``."""
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return "unknown", _refuse(
                "unknown", 401, "unauthorized", headers={"WWW-Authenticate": "Bearer"}
            )
        if (request.content_length or 0) > settings.ingress_max_body_bytes:
            return "unknown", _refuse("unknown", 413, "too_large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked bodies have no Content-Length
            return "unknown", _refuse("unknown", 413, "too_large")
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return "unknown", _refuse("unknown", 400, "malformed_json", str(exc))
        if type(message) is not dict:
            return "unknown", _refuse(
                "unknown", 400, "schema_invalid", "(message): is not a JSON object"
            )
        try:
            message_type = validate(message)
        except FirehoseSchemaError as exc:
            return "unknown", _refuse("unknown", 400, "schema_invalid", str(exc))
        try:
            plan = plan_message(
                message_type,
                message,
                now_ms=time.time_ns() // 1_000_000,
                new_id=lambda: str(uuid.uuid4()),
            )
        except InvalidRecordError as exc:
            return message_type, _refuse(
                message_type, 400, "invalid_record", f"{exc.reason}: {exc.detail}"
            )
        try:
            await writer.write(plan.records)
        except BrokerUnavailableError as exc:
            log.warning("ingress: Kafka unavailable (%s); answered 503", exc)
            return message_type, _refuse(
                message_type, 503, "broker_unavailable", headers={"Retry-After": retry_after}
            )
        _count_written(plan)
        REQUESTS.labels(message_type, "200").inc()
        return message_type, web.json_response(
            plan.response, dumps=lambda v: orjson.dumps(v).decode()
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=settings.ingress_max_body_bytes)
    app.router.add_post("/", handle)
    app.router.add_post("/firehose", handle)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


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
    for record in plan.records:
        RECORDS.labels(record.topic).inc()
    if any(record.topic == "audiences" for record in plan.records):
        PROFILES.inc(plan.profiles)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run the ingress until SIGTERM/SIGINT: create missing topics, start the producer, serve.

    Raises :class:`~app.errors.BrokerError` when Kafka cannot be reached at start
    (:class:`~app.errors.ConfigError` when it rejects the TLS/SASL settings). On a signal
    it stops accepting, lets requests in flight finish (their writes complete or answer 503),
    then closes the producer."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    from app.kafka_admin import ensure_topics  # noqa: PLC0415
    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415
    from app.topics import topics_for  # noqa: PLC0415

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
    runner = web.AppRunner(build_app(settings, writer), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.ingress_host, settings.ingress_port)
        await site.start()
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
