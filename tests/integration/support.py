"""Helpers shared by integration tests: produce, consume until a condition, run a worker."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupCoordinatorNotAvailableError,
    KafkaError,
)

from app.dev.localkafka import free_port
from app.kafka_admin import ensure_topics
from app.settings import load_settings
from app.topics import Topics, topics_for
from tests.integration import reliability_model, workload

REPO = Path(__file__).resolve().parents[2]


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 4,
    configs: dict[str, str] | None = None,
) -> None:
    """Create ``names`` (one replica each), with topic ``configs`` if given."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs or {}) for name in names]
        )
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> None:
    """Send ``(key, value)`` pairs in order and wait until all are acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*sent)  # flush() alone would not raise for a refused record
    finally:
        await producer.stop()


async def send_to_every_partition(
    producer: AIOKafkaProducer, topic: str, value: bytes, partitions: int
) -> list[Any]:
    """Send ``value`` (no key) once to each of the ``partitions`` of ``topic``, as the ingress
    writes a Firehose DSR; the RecordMetadata of each, in partition order."""
    return [
        await producer.send_and_wait(topic, value, partition=partition)
        for partition in range(partitions)
    ]


async def produce_workload(
    deployment: Any,
    sends: Iterable[tuple[str, bytes | None, bytes]],
    rate: float | None = None,
    follows: Mapping[int, int] | None = None,
) -> None:
    """Send a reliability workload's ``(kind, key, value)`` records (kind ``batches`` or
    ``erasure``: :attr:`reliability_model.Workload.sends`) in order, each to that topic of
    ``deployment``, at ``rate`` records per second (``None``: at once).

    Kafka timestamps (ms) increase strictly from record to record, across both topics: the
    worker tells a batch that reached Kafka before an erasure by them (README "Audiences and
    erasure"), so the model's "before" must be the order sent, also within one millisecond.
    ``follows`` (:attr:`reliability_model.Workload.follows`): a batch listed there waits until
    the worker's group has committed the offset of the erasure it follows (so neither reading
    order nor a crash can erase it with its user; README Limits), at most
    ``ERASURE_COMMIT_TIMEOUT_SECONDS``. Raises if the broker refused any record or a wait
    timed out."""
    topics = {
        reliability_model.BATCHES: deployment.topics.batches.name,
        reliability_model.ERASURE: deployment.topics.erasure.name,
    }
    follows = follows or {}
    producer = AIOKafkaProducer(bootstrap_servers=deployment.kafka.bootstrap, acks="all")
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.kafka.bootstrap)
    await producer.start()
    if follows:
        await admin.start()
    try:
        began = time.monotonic()
        stamp = 0
        sent: list[asyncio.Future[Any]] = []
        for index, (kind, key, value) in enumerate(sends):
            if index in follows:
                erasure = await sent[follows[index]]
                await _committed_past(admin, deployment.settings.app_id, erasure)
            if rate is not None and (wait := began + index / rate - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            stamp = max(time.time_ns() // 1_000_000, stamp + 1)
            sent.append(await producer.send(topics[kind], value, key=key, timestamp_ms=stamp))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
        if follows:
            await admin.close()


ERASURE_COMMIT_TIMEOUT_SECONDS = 600.0


async def _committed_past(admin: AIOKafkaAdminClient, group: str, record: Any) -> None:
    """Wait until ``group`` has committed an offset past ``record`` (a RecordMetadata)."""
    partition = TopicPartition(record.topic, record.partition)
    deadline = time.monotonic() + ERASURE_COMMIT_TIMEOUT_SECONDS
    while True:
        try:
            offsets = await asyncio.wait_for(
                admin.list_consumer_group_offsets(group, partitions=[partition]), 10
            )
        except (KafkaError, TimeoutError):  # the group or its coordinator not there yet
            offsets = {}
        committed = offsets.get(partition)
        if committed is not None and committed.offset > record.offset:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{group} did not commit {partition} past {record.offset}")
        await asyncio.sleep(0.2)


def stored_seqs(emulator: Any) -> set[int]:
    """The ``seq`` attributes of the events ``emulator`` (a RunningEmulator) holds now: the
    reliability workload's events (:mod:`tests.integration.reliability_model`)."""
    return {
        seq
        for event in emulator.state.store.events
        if type(seq := event.attributes.get("seq")) is int
    }


async def consume_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout: float = 60.0,
    workers: Iterable[WorkerProcess] = (),
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``done(records)`` holds.

    Fails after ``timeout``, or at once when one of ``workers`` has exited (with its log).
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(records):
            for worker in workers:
                worker.assert_running()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"condition on {topic} not met within {timeout}s; got {len(records)} records"
                )
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for partition_records in batch.values():
                records.extend(partition_records)
        return records
    finally:
        await consumer.stop()


class WorkerProcess:
    """A worker in a subprocess, stopped like an orchestrator would (SIGTERM) or killed.

    Every log file is remembered in ``LOGS`` so the log-hygiene test can read them all."""

    LOGS: ClassVar[list[Path]] = []

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        self.argv = argv
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        WorkerProcess.LOGS.append(self.log)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *self.argv],
                env=self.env,
                cwd=self.log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM and wait; return how long the worker took to exit."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"worker ignored SIGTERM for {timeout}s; log: {self.log}"
            ) from None
        return time.monotonic() - began

    async def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM and wait without blocking the event loop (in-process servers keep serving)."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        while self.process.poll() is None:
            if time.monotonic() - began > timeout:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"worker ignored SIGTERM for {timeout}s; log: {self.log}")
            await asyncio.sleep(0.05)
        return time.monotonic() - began

    def assert_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"worker exited early; log tail:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def poll(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, *workers: WorkerProcess
) -> None:
    """Re-run ``check`` (a query) until it holds; fail after ``timeout`` or if a worker died."""
    deadline = time.monotonic() + timeout
    while not await check():
        for worker in workers:
            worker.assert_running()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.25)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` (cheap, local) until true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def worker_env(broker_url: str, prefix: str, web_port: int, **overrides: str) -> dict[str, str]:
    """``MPCIO_*`` variables for a worker with its own app id and topics (``prefix``-*)."""
    env = {
        "MPCIO_BROKER": broker_url,
        "MPCIO_APP_ID": f"{prefix}-app",
        "MPCIO_TOPIC_BATCHES": f"{prefix}-batches",
        "MPCIO_TOPIC_AUDIENCES": f"{prefix}-audiences",
        "MPCIO_TOPIC_ERASURE": f"{prefix}-erasure",
        "MPCIO_TOPIC_OPERATIONS": f"{prefix}-operations",
        "MPCIO_TOPIC_DEADLETTER": f"{prefix}-deadletter",
        "MPCIO_TOPIC_PARTITIONS": "4",
        "MPCIO_STORE": "memory://",
        "MPCIO_WEB_PORT": str(web_port),
        "MPCIO_FORWARDING_ENABLED": "false",
        "MPCIO_LOG_LEVEL": "INFO",
    }
    env.update({f"MPCIO_{name.upper()}": value for name, value in overrides.items()})
    return env


async def worker_with_topics(broker_url: str, prefix: str) -> tuple[dict[str, str], Topics]:
    """:func:`worker_env` (on a free web port) and the worker's topics, created on the broker."""
    env = worker_env(broker_url, prefix, free_port())
    settings = load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()})
    topics = topics_for(settings)
    await ensure_topics(settings.bootstrap_servers, topics)
    return env, topics


async def inspect_emulator(url: str, what: str) -> Any:
    """GET ``/_emulator/<what>`` (people, events, requests, stats) as JSON."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_emulator/{what}") as r:
        return await r.json()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> int:
    """The sum of the offsets ``group`` has committed on ``topic``: how many of its records
    the group has processed for good (0 before its first commit, also while the broker has no
    group coordinator yet: a fresh broker creates its offsets topic at the first group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        return 0
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


async def message_count(bootstrap: str, topic: str, partitions: int = 4) -> int:
    """How many records ``topic`` holds now (sum of end offsets; nothing is compacted here)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


# What no worker log may hold: every secret the integration tests configure, and raw emails.
LOG_SECRETS = ("key-e2e", "wrong-key", "demo-key", "mpcio-s3cret", "admin-s3cret")
EMAIL = re.compile(rb"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def log_findings(paths: Iterable[Path]) -> list[str]:
    """Secrets of ``LOG_SECRETS`` and raw email addresses found in the files ``paths``."""
    findings = []
    for path in paths:
        if not path.exists():
            continue
        text = path.read_bytes()
        findings += [f"{path}: secret {s!r}" for s in LOG_SECRETS if s.encode() in text]
        findings += [f"{path}: email {m.group(0)[:3]!r}..." for m in EMAIL.finditer(text)]
    return findings


async def judge(
    emulator: Any,
    workload: reliability_model.Workload,
    deployment: Any,
    *,
    stale_explained: bool = False,
    expected_dead_letters: Counter[str] | None = None,
    other_emails: frozenset[str] = frozenset(),
) -> reliability_model.Verdict:
    """The reference model's verdict on what ``emulator`` (a RunningEmulator) holds now and on
    the reasons of ``deployment``'s dead-letter topic (see :func:`reliability_model.check`)."""
    stats = emulator.state.stats()
    observed = reliability_model.Observed(
        people=(await inspect_emulator(emulator.url, "people"))["people"],
        events=(await inspect_emulator(emulator.url, "events"))["events"],
        identifies=(await inspect_emulator(emulator.url, "identifies"))["identifies"],
        duplicates_suppressed=stats["duplicates_suppressed"],
        stale_identifies=stats["stale_identifies"],
        dead_letter_reasons=await dead_letter_reasons(
            deployment.kafka.bootstrap, deployment.topics.deadletter.name
        ),
    )
    return reliability_model.check(
        workload.expected,
        workload.events_in,
        observed,
        stale_explained=stale_explained,
        expected_dead_letters=expected_dead_letters,
        other_emails=other_emails,
    )


async def committed_records(
    bootstrap: str, topic: str, partitions: int = 4, timeout: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record ``topic`` holds now, read up to its end offsets.

    Not :func:`message_count`: under ``exactly_once`` a topic written in transactions holds
    commit markers, which take offsets but are no records."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    # "earliest", not aiokafka's default "latest": assign() starts a reset to the default
    # strategy, and when its answer lands after seek_to_beginning's request, aiokafka applies
    # it anyway (it checks only that *a* reset is awaited), so the read starts at the end and
    # finds nothing (seen: an empty dead-letter topic that held 5 records).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic} not read to its end within {timeout}s")
            batch = await consumer.getmany(timeout_ms=500)
            for partition_records in batch.values():
                records.extend(partition_records)
        return records
    finally:
        await consumer.stop()


async def dead_letter_reasons(bootstrap: str, topic: str) -> list[str]:
    """The ``mpcio.reason`` header of every record on the dead-letter ``topic`` now."""
    records = await committed_records(bootstrap, topic)
    return [
        value.decode()
        for record in records
        for key, value in record.headers
        if key == "mpcio.reason"
    ]


async def worker_metrics(port: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on a worker's ``/metrics``, keyed by (sample name, label set)."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def record_applied(emulator: Any) -> list[dict[str, Any]]:
    """From now on, every v2 item ``emulator`` (a RunningEmulator) carries out, in the order
    it does so (its arrival order): the list fills as the emulator works."""
    store = emulator.state.store
    applied: list[dict[str, Any]] = []
    carry_out = store.apply

    def apply(item: dict[str, Any], received_at: float) -> None:
        applied.append(item)
        carry_out(item, received_at)

    store.apply = apply
    return applied


async def delivery_stopped(
    worker: WorkerProcess, emulator: Any, status: int, timeout: float = 120
) -> None:
    """Wait until the emulator has answered ``status`` (a 401 or a wrong region's 3xx) and the
    worker has logged its fatal stop; then the worker still runs (stopped delivering, not
    crashed) and nothing reached the workspace."""
    answers = emulator.state.stats
    await wait_for(
        lambda: answers()["requests_by_status"].get(str(status), 0) >= 1,
        timeout,
        f"a {status} from the emulator",
    )
    await wait_for(lambda: "delivery stopped" in worker.output(), 60, "the fatal-stop log line")
    worker.assert_running()
    assert emulator.state.store.events == []


def assert_workspace(emulator: Any, items: list[dict[str, Any]]) -> None:
    """The emulator's live people and stored events are exactly what ``items`` make: every
    person's id, attributes and unsubscribed flag, no one else, and every event once, with
    its content and the person it was attributed to (``workload.expected_people`` / ``_events``).
    """
    store = emulator.state.store
    people = {
        person.email: {
            "id": person.id,
            "attributes": person.attributes,
            "unsubscribed": person.unsubscribed,
        }
        for person in store.people
    }
    assert people == workload.expected_people(items)
    expected = workload.expected_events(items)
    events = {}
    for event in store.events:
        by = "person_id" if "person_id" in expected.get(event.id, {}) else "person_email"
        events[event.id] = {
            "action": event.action,
            "name": event.name,
            "timestamp": event.timestamp,
            "attributes": event.attributes,
            by: getattr(event, by),
        }
    assert len(events) == len(store.events), "an event was stored twice"
    assert events == expected
