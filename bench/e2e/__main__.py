"""``python -m bench.e2e``: end-to-end throughput, latency and cost on the real broker and the
Customer.io emulator, for our worker, the faust ceiling and a per-event forwarder.

Flow: start a local Kafka broker (:class:`~app.dev.localkafka.LocalKafka`) and the Customer.io
emulator (``mpcio emulator``, its own process, so its CPU is not the worker's); pre-produce the
generated workload (:mod:`bench.e2e.workload`) to a 4-partition backlog topic; then, each
contender as its own subprocess, round-robin over the runs, each run's order rotated by one
(:func:`run_order`) so that no contender always gets a round's first window:

- ``throughput``: the contender drains the backlog; events/s = events delivered / (last receipt
  - first receipt) at the emulator (ceiling: first/last output record timestamps);
- ``paced``: warm-up, then records produced at a fixed rate below capacity, each event carrying
  ``sent_at_ms``; latency = emulator ``received_at`` (ceiling: output record timestamp) -
  ``sent_at_ms``;
- ``limited``: ours and the per-event forwarder drain the backlog with the emulator limited to
  100 requests/s (429 beyond), for a capped duration.

Contenders: ``ours`` = ``mpcio worker`` (input topic → table → operations topic → sink →
emulator, MPCIO_* settings); ``ceiling`` = a bare faust agent that decodes each batch and
produces it to an output topic (``bench.ceiling.faust_worker``, case ``faust_produce``, built
with ``app.faust_app.create_app``); ``naive`` = :mod:`bench.e2e.naive`. Issue 19's
measured floor (not in the default set): ``ceiling-eos``, ``floor``, ``floor-pipeline(-mem)``
(faust under exactly_once with ours' writes, without and with ours' pipeline) and ``raw-eos``
(:mod:`bench.e2e.raweos`, plain aiokafka transactions + pipeline + the product's sink); after
the throughput table, every contender against the ceiling of the same run
(:mod:`bench.e2e.ratios`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.dev.localkafka import LocalKafka, free_port
from app.errors import ConfigError
from app.kafka_admin import ensure_topics
from app.records import decode_operation_batch
from app.settings import Settings
from app.topics import topics_for
from app.wiring import settings_as_env
from bench.ceiling.__main__ import create_topics
from bench.e2e import procs
from bench.e2e.profile import summarise_profile
from bench.e2e.ratios import format_ratios, ratios
from bench.e2e.workload import Expected, Record, Shape, expected, generate

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
PARTITIONS = 4
SITE_ID, API_KEY = "bench-site", "bench-key"
CONTENDERS = (
    "ours", "ours-alo", "ours-uvloop", "base", "base-alo", "ceiling", "ceiling-uvloop",
    "base-ceiling", "ceiling-eos", "floor", "floor-pipeline",
    "floor-pipeline-mem", "raw-eos", "naive",
)  # fmt: skip
DEFAULT_CONTENDERS = ("ours", "ours-alo", "ceiling", "naive")
# Our worker with settings of its own: "ours" is the product (exactly_once, Kafka
# transactions), "ours-alo" the same worker with processing_guarantee=at_least_once (no
# transactions), so one run shows what the guarantee costs; "ours-uvloop" the product on
# uvloop instead of Python's own event loop (MPCIO_EVENT_LOOP).
OURS: dict[str, dict[str, str]] = {
    "ours": {"processing_guarantee": "exactly_once"},
    "ours-alo": {"processing_guarantee": "at_least_once"},
    "ours-uvloop": {"processing_guarantee": "exactly_once", "event_loop": "uvloop"},
    "base": {"processing_guarantee": "exactly_once"},
    "base-alo": {"processing_guarantee": "at_least_once"},
}
# "base" / "base-alo" / "base-ceiling": ours / ours-alo / the ceiling running the code of
# another checkout (--baseline, e.g. the starting commit), so a before/after comparison is one
# run with the same noise (the ceiling shares app.faust_app.FAUST_TUNING with ours).
BASELINE = frozenset({"base", "base-alo", "base-ceiling"})
# ours' state record: ~315 B encoded on the default workload (its operations record: ~1.6 KB)
FLOOR_STATE_BYTES = 315
_EOS = {"case": "faust_write", "processing_guarantee": "exactly_once"}
# faust contenders measured at their output topic, each a bench.ceiling.faust_worker config on
# top of the pass-through's: the ceiling on the product's event loop and on uvloop; under
# exactly_once (each record's value sent through its source partition's transactional
# producer, as ours sends), alone ("ceiling-eos"), with a state write per record into ours'
# table store ("floor": ours' Kafka I/O without ours' pipeline and sink), and with ours' real
# ingest step too ("floor-pipeline": bench.ceiling's faust_ingest, i.e. ours without the sink,
# the audience/erasure/re-key agents, the web server and the Prometheus monitor; and the same
# on faust's memory:// store instead of ours' RocksDB: "floor-pipeline-mem").
CEILINGS: dict[str, dict[str, Any]] = {
    "ceiling": {},
    "ceiling-uvloop": {"event_loop": "uvloop"},
    "base-ceiling": {},
    "ceiling-eos": _EOS,
    "floor": {**_EOS, "state_bytes": FLOOR_STATE_BYTES, "ours_store": True},
    "floor-pipeline": {**_EOS, "case": "faust_ingest", "ours_store": True},
    "floor-pipeline-mem": {**_EOS, "case": "faust_ingest"},
}
# Ceilings whose output is written in transactions: counted by reading it read_committed.
TRANSACTIONAL = frozenset({"ceiling-eos", "floor", "floor-pipeline", "floor-pipeline-mem"})
# Ceilings whose output is ours' operations records: counted in delivered events, like ours.
OPERATIONS_OUT = frozenset({"floor-pipeline", "floor-pipeline-mem"})
# The next design's prototype (bench.e2e.raweos): ours' settings and topics, its own process.
RAW_EOS = "raw-eos"
TITLES = {
    "ours": "ours: mpcio worker, exactly_once (transactions)",
    "ours-alo": "ours, at_least_once (no transactions)",
    "ours-uvloop": "ours, exactly_once, on uvloop",
    "base": "ours at --baseline, exactly_once",
    "base-alo": "ours at --baseline, at_least_once",
    "ceiling": "ceiling: faust decode + produce, no HTTP",
    "ceiling-uvloop": "ceiling on uvloop",
    "base-ceiling": "ceiling at --baseline",
    "ceiling-eos": "ceiling, exactly_once (transactional produce)",
    "floor": "floor: faust EOS, ours' writes, no pipeline/HTTP",
    "floor-pipeline": "floor + ours' pipeline (faust EOS, no HTTP)",
    "floor-pipeline-mem": "floor + ours' pipeline, memory:// store",
    "raw-eos": "raw-eos: aiokafka txn + pipeline + our sink",
    "naive": "per-event forwarder (aiokafka + v1, 1 req/event)",
}
PHASES = ("throughput", "paced", "limited")
#: the operations the emulator counts as delivered events
DELIVERED_ACTIONS = frozenset({"event", "screen"})


@dataclass(frozen=True)
class Options:
    shape: Shape
    runs: int
    contenders: tuple[str, ...]
    phases: tuple[str, ...]
    store: str
    cap_seconds: float
    paced_rate: float
    paced_seconds: float
    limited_rate: float
    limited_seconds: float
    startup_timeout: float
    idle_timeout: float
    profile: str | None
    keep_logs: bool
    workers: int = 1
    baseline: Path | None = None
    profiled: tuple[str, ...] = ("ours",)


@dataclass
class RunOutcome:
    """What the watch loop saw."""

    status: str  # complete | capped | stalled | exited | timeout
    delivered: int
    first_seen: float | None
    stopped_at: float


class Emulator:
    """The emulator subprocess and its inspection API."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "emulator.log"
        self.process = procs.spawn(
            [
                sys.executable,
                "-m",
                "app",
                "emulator",
                "--port",
                str(self.port),
                "--site-id",
                SITE_ID,
                "--api-key",
                API_KEY,
            ],
            log=self.log,
        )
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self.stats()
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start; see {self.log}")
            await asyncio.sleep(0.2)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, self.url + path, data=data) as response:
            return orjson.loads(await response.read())

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/_emulator/stats")
        return result

    async def events(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/_emulator/events"))["events"]
        return result

    async def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._call("GET", "/_emulator/requests"))["requests"]
        return result

    async def reset(self, rate_limit: float | None) -> None:
        await self._call("POST", "/_emulator/reset")
        await self._call("DELETE", "/_emulator/faults")
        if rate_limit:
            await self._call(
                "POST", "/_emulator/faults", {"kind": "rate_limit", "per_second": rate_limit}
            )

    async def close(self) -> None:
        procs.stop(self.process, grace=10)
        if self.session is not None:
            await self.session.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[index]


class Bench:
    def __init__(self, kafka: LocalKafka, emulator: Emulator, options: Options, workdir: Path):
        self.kafka = kafka
        self.emulator = emulator
        self.options = options
        self.workdir = workdir
        self.producer: AIOKafkaProducer | None = None
        self.backlog_topic = "e2e-backlog"
        self.backlog: list[Record] = []
        self.backlog_expected: Expected | None = None
        self.settings_for_expectation = Settings(forwarding_enabled=False)
        self.profiles = workdir / "profiles"
        self.interrupted = False

    # --- set-up --------------------------------------------------------------------------
    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap,
            acks=-1,
            linger_ms=0,
            max_batch_size=512 * 1024,
        )
        await self.producer.start()

    async def close(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), timeout=15)

    async def prepare_backlog(self) -> None:
        began = time.monotonic()
        self.backlog = generate(self.options.shape, prefix="b")
        self.backlog_expected = expected(self.backlog, self.settings_for_expectation)
        await create_topics(self.kafka.bootstrap, [self.backlog_topic])
        await self.produce(self.backlog_topic, self.backlog, "backlog", linger=True)
        sizes = [len(r.encode(0, "backlog")) for r in self.backlog[:500]]
        e = self.backlog_expected
        print(
            f"# backlog: {e.records:,} batches, {e.input_events:,} input events "
            f"(~{statistics.mean(sizes):,.0f} B/batch); ours should deliver {e.ours_events:,} "
            f"events + {e.ours_identifies:,} identifies, the per-event forwarder "
            f"{e.naive_events:,} events + {e.naive_identifies:,} identifies "
            f"({time.monotonic() - began:.1f}s to generate and produce)",
            flush=True,
        )

    async def produce(
        self, topic: str, records: list[Record], phase: str, *, linger: bool = False
    ) -> None:
        assert self.producer is not None
        now = time.time_ns() // 1_000_000
        pending = [
            await self.producer.send(topic, r.encode(now, phase), key=r.key) for r in records
        ]
        if linger:
            await asyncio.gather(*pending)

    # --- contenders ----------------------------------------------------------------------
    def launch(self, contender: str, tag: str, source: str, records: int) -> procs.Group:
        """``--workers`` processes of the contender, all in one consumer group."""
        return procs.Group(
            [
                self.launch_one(contender, tag, source, records, index)
                for index in range(self.options.workers)
            ]
        )

    def launch_one(
        self, contender: str, tag: str, source: str, records: int, index: int
    ) -> subprocess.Popen[bytes]:
        """Worker ``index`` of a contender: same group as its siblings, its own log, data
        directory and web port."""
        name = tag if index == 0 else f"{tag}-w{index}"
        log = self.workdir / f"{name}.log"
        code = self.options.baseline if contender in BASELINE else REPO
        env = {**os.environ, "PYTHONPATH": str(code)}
        if contender in OURS or contender == RAW_EOS:
            settings = self.ours_settings(tag, source, index)
            env.update(settings_as_env(settings.model_copy(update=OURS.get(contender, {}))))
            module = ["app", "worker"]
            if contender == RAW_EOS:
                module = ["bench.e2e.raweos"]
                env["BENCH_CONFIG"] = json.dumps(
                    {
                        "source": source,
                        "changelog": f"{tag}-changelog",
                        "result_file": str(self.workdir / f"{name}.result.json"),
                    }
                )
            return procs.spawn(
                [sys.executable, "-m", *module], log=log, env=env, cwd=self.workdir / tag
            )
        if contender in CEILINGS:
            overrides = dict(CEILINGS[contender])
            if overrides.pop("ours_store", False):
                overrides["store"] = self.options.store
            config = {
                "case": "faust_produce",
                "app_id": f"e2e-{tag}",
                "broker": self.kafka.url,
                "bootstrap": self.kafka.bootstrap,
                "source": source,
                "sink": f"{tag}-out",
                "events": self.options.shape.events_per_batch,
                "records": records,
                "result_file": str(self.workdir / f"{name}.result.json"),
                "data_dir": str(self.workdir / name),
                "store": "memory://",
                "overrides": {},
                "flush": True,
                "loglevel": "warning",
                "event_loop": None,
                **overrides,
            }
            env["BENCH_CONFIG"] = json.dumps(config)
            return procs.spawn(
                [sys.executable, "-m", "bench.ceiling.faust_worker"],
                log=log,
                env=env,
                cwd=self.workdir,
            )
        config = {
            "source": source,
            "bootstrap": self.kafka.bootstrap,
            "group": f"e2e-{tag}",
            "url": self.emulator.url,
            "site_id": SITE_ID,
            "api_key": API_KEY,
        }
        env["BENCH_CONFIG"] = json.dumps(config)
        return procs.spawn([sys.executable, "-m", "bench.e2e.naive"], log=log, env=env)

    def ours_settings(self, tag: str, source: str, index: int = 0) -> Settings:
        data_dir = self.workdir / tag / f"data-{index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        return Settings(
            broker=self.kafka.url,
            app_id=f"e2e-{tag}",
            topic_batches=source,
            topic_audiences=f"{tag}-audiences",
            topic_erasure=f"{tag}-erasure",
            topic_operations=f"{tag}-operations",
            topic_deadletter=f"{tag}-deadletter",
            topic_partitions=PARTITIONS,
            store=self.options.store,
            data_dir=str(data_dir),
            web_port=free_port(),
            customerio_site_id=SITE_ID,
            customerio_api_key=API_KEY,
            customerio_url=self.emulator.url,
            log_level="WARNING",
        )

    async def create_ours_topics(self, tag: str, source: str) -> None:
        """Create the worker's topics before it starts, with the product's own specs.

        The worker would create them itself, but its co-partitioning check right after
        creating can see a just-created topic without partitions yet and stop (seen here
        intermittently); topics that exist already are only checked."""
        settings = self.ours_settings(tag, source)
        for attempt in range(10):
            try:
                await ensure_topics(settings.bootstrap_servers, topics_for(settings))
                return
            except ConfigError:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)

    def store_of(self, contender: str) -> str | None:
        """The table store a contender's worker uses (None: it has no faust table)."""
        if contender in OURS or (contender in CEILINGS and CEILINGS[contender].get("ours_store")):
            return self.options.store
        if contender == RAW_EOS:
            return "dict (in memory)"
        return "memory://" if contender in CEILINGS else None

    def target(self, contender: str, exp: Expected) -> int:
        if contender in OURS or contender in OPERATIONS_OUT or contender == RAW_EOS:
            return exp.ours_events
        return exp.records if contender in CEILINGS else exp.naive_events

    # --- one run -------------------------------------------------------------------------
    async def run(self, contender: str, phase: str, run: int, paced_rate: float) -> dict[str, Any]:
        tag = f"{contender}-{phase}-{run}-{uuid.uuid4().hex[:5]}"
        row: dict[str, Any] = {
            "contender": contender,
            "title": TITLES[contender],
            "phase": phase,
            "run": run,
            "shape": asdict(self.options.shape),
            "store": self.store_of(contender),
            "loadavg_before": os.getloadavg()[0],
            "workers": self.options.workers,
        }
        limited = phase == "limited"
        await self.emulator.reset(self.options.limited_rate if limited else None)
        if phase == "paced":
            source = f"e2e-paced-{tag}"
            await create_topics(self.kafka.bootstrap, [source])
        else:
            source = self.backlog_topic
        out_topic = f"{tag}-out"
        if contender in CEILINGS:
            await create_topics(self.kafka.bootstrap, [out_topic])
        if contender == RAW_EOS:
            await create_topics(self.kafka.bootstrap, [f"{tag}-changelog"])
        assert self.backlog_expected is not None
        exp = self.backlog_expected
        warm: list[Record] = []
        paced: list[Record] = []
        if phase == "paced":
            shape = self.options.shape
            batches = max(
                1, round(paced_rate * self.options.paced_seconds / shape.events_per_batch)
            )
            users = math.ceil(batches / shape.batches_per_user)
            paced = generate(replace(shape, users=users), prefix=f"p{run}{contender}")[:batches]
            warm = generate(
                replace(shape, users=20, batches_per_user=1), prefix=f"w{run}{contender}"
            )
            exp = expected(warm + paced, self.settings_for_expectation)
            row["paced_rate_events_per_s"] = round(paced_rate, 1)
        target = self.target(contender, exp)
        if contender in OURS or contender == RAW_EOS:
            await self.create_ours_topics(tag, source)
        process = self.launch(contender, tag, source, exp.records)
        sampler = procs.Sampler(process.pids, self.kafka_pid, self.emulator.process.pid)
        counter = await self.counter(contender, out_topic)
        spy = None
        pacer: asyncio.Task[None] | None = None
        try:
            if phase == "paced":
                warm_exp = expected(warm, self.settings_for_expectation)
                await self.produce(source, warm, "warm", linger=True)
                outcome = await self.watch(
                    process,
                    sampler,
                    counter,
                    self.target(contender, warm_exp),
                    cap=None,
                    startup=self.options.startup_timeout,
                )
                if outcome.status != "complete":
                    tail = (self.workdir / f"{tag}.log").read_text(errors="replace")[-1500:]
                    row["error"] = (
                        f"warm-up {outcome.status} ({outcome.delivered} delivered); log: {tail}"
                    )
                    return row
                pacer = asyncio.create_task(self.pace(source, paced, paced_rate))
                outcome = await self.watch(
                    process,
                    sampler,
                    counter,
                    target,
                    cap=None,
                    startup=self.options.startup_timeout,
                    extra_idle=self.options.paced_seconds,
                )
                pacer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pacer
            else:
                on_first = None
                if (
                    self.options.profile
                    and contender in self.options.profiled
                    and phase == "throughput"
                    and run == 1
                ):

                    def on_first() -> None:
                        nonlocal spy
                        spy = self.start_profiler(process.pids[0], tag)

                cap = self.options.limited_seconds if limited else self.options.cap_seconds
                outcome = await self.watch(
                    process,
                    sampler,
                    counter,
                    target,
                    cap=cap,
                    startup=self.options.startup_timeout,
                    on_first=on_first,
                )
            row["peak_rss_mb"] = process.peak_rss_mb()
        finally:
            if pacer is not None:
                pacer.cancel()
            sampler.sample()
            exit_codes = await asyncio.to_thread(process.stop)
            row["exit_code"] = exit_codes[0] if len(exit_codes) == 1 else exit_codes
            await counter.close(drain=not self.interrupted)
            if spy is not None:
                await asyncio.to_thread(spy.wait, 60)
                row["profile"] = str(self.profiles / f"{tag}.txt")
            row.update(step_figures(self.workdir / f"{tag}.result.json"))
        row.update(
            status=outcome.status,
            target=target,
            input_records=exp.records,
            input_events=exp.input_events,
        )
        if outcome.status in {"exited", "timeout"} and not outcome.delivered:
            tail = (self.workdir / f"{tag}.log").read_text(errors="replace")[-2000:]
            row["error"] = f"{outcome.status} with nothing delivered: {tail}"
            return row
        await self.measure(row, contender, phase, exp, outcome, sampler, counter)
        return row

    @property
    def kafka_pid(self) -> int | None:
        process = self.kafka._process
        return process.pid if process else None

    async def pace(self, topic: str, records: list[Record], rate: float) -> None:
        assert self.producer is not None
        interval = self.options.shape.events_per_batch / rate
        began = time.monotonic()
        for index, record in enumerate(records):
            delay = began + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.producer.send(
                topic, record.encode(time.time_ns() // 1_000_000, "paced"), key=record.key
            )

    async def counter(self, contender: str, out_topic: str) -> DeliveryCounter:
        if contender in OPERATIONS_OUT:
            counter: DeliveryCounter = OperationsTopicCounter(self.kafka.bootstrap, out_topic)
        elif contender in TRANSACTIONAL:
            counter = CommittedTopicCounter(self.kafka.bootstrap, out_topic)
        elif contender in CEILINGS:
            counter = TopicCounter(self.kafka.bootstrap, out_topic)
        else:
            counter = EmulatorCounter(self.emulator)
        await counter.start()
        return counter

    async def watch(
        self,
        process: procs.Group,
        sampler: procs.Sampler,
        counter: DeliveryCounter,
        target: int,
        *,
        cap: float | None,
        startup: float,
        on_first: Callable[[], None] | None = None,
        extra_idle: float = 0.0,
    ) -> RunOutcome:
        began = time.time()
        first: float | None = None
        delivered = last_change_count = 0
        last_change = began
        next_poll = 0.0
        while True:
            sampler.sample()
            now = time.time()
            if now >= next_poll:
                next_poll = now + 0.25
                delivered = await counter.count()
                if delivered != last_change_count:
                    last_change_count, last_change = delivered, now
                if delivered and first is None:
                    first = now
                    if on_first is not None:
                        on_first()
                if delivered >= target:
                    return RunOutcome("complete", delivered, first, now)
                if first is not None and cap is not None and now - first >= cap:
                    return RunOutcome("capped", delivered, first, now)
                if first is not None and now - last_change > self.options.idle_timeout + extra_idle:
                    return RunOutcome("stalled", delivered, first, now)
                if first is None and now - began > startup + extra_idle:
                    return RunOutcome("timeout", delivered, first, now)
            if process.poll() is not None:
                return RunOutcome("exited", delivered, first, now)
            await asyncio.sleep(0.1)

    def start_profiler(self, pid: int, tag: str) -> Any:
        self.profiles.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        fmt = self.options.profile or "raw"
        suffix = "txt" if fmt == "raw" else fmt
        argv = [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            fmt,
            "-o",
            str(self.profiles / f"{tag}.{suffix}"),
            "--nonblocking",
        ]
        return procs.spawn(argv, log=self.workdir / f"{tag}.py-spy.log")

    # --- figures -------------------------------------------------------------------------
    async def measure(
        self,
        row: dict[str, Any],
        contender: str,
        phase: str,
        exp: Expected,
        outcome: RunOutcome,
        sampler: procs.Sampler,
        counter: DeliveryCounter,
    ) -> None:
        if contender in CEILINGS:
            assert isinstance(counter, TopicCounter)
            receipts = counter.receipts  # (received_at s, sent_at_ms, phase, events, bytes)
        else:
            receipts = [
                (
                    e["received_at"],
                    (e.get("attributes") or {}).get("sent_at_ms"),
                    (e.get("attributes") or {}).get("phase"),
                    1,
                    0,
                )
                for e in await self.emulator.events()
            ]
        if outcome.status == "capped":
            receipts = [r for r in receipts if r[0] <= outcome.stopped_at]
        counted = [r for r in receipts if r[2] == "paced"] if phase == "paced" else receipts
        if not counted:
            row["error"] = f"{outcome.status}: nothing delivered in the measured phase"
            return
        start = min(r[0] for r in counted)
        end = max(r[0] for r in counted)
        events = sum(r[3] for r in counted)
        window = end - start
        row.update(
            events_delivered=events,
            complete=outcome.status == "complete",
            window_seconds=round(window, 3),
            events_per_s=round(events / window, 1) if window > 0 else None,
        )
        if (contender not in CEILINGS or contender in OPERATIONS_OUT) and phase != "paced":
            delivered_share = events / max(self.target(contender, exp), 1)
            row["input_events_per_s"] = (
                round(delivered_share * exp.input_events / window, 1) if window > 0 else None
            )
        elif contender in CEILINGS:
            row["input_events_per_s"] = row["events_per_s"]
        if contender in CEILINGS:
            row["output_bytes_per_event"] = round(sum(r[4] for r in counted) / events, 1)
        if contender not in CEILINGS:
            requests = [r for r in await self.emulator.requests() if r["received_at"] <= end + 0.5]
            statuses = Counter(str(r["status"]) for r in requests)
            ok = sum(1 for r in requests if r["status"] is not None and r["status"] < 300)
            row.update(
                http_requests=len(requests),
                http_requests_2xx=ok,
                http_status=dict(statuses),
                requests_per_1000_events=round(len(requests) / events * 1000, 2),
                requests_2xx_per_1000_events=round(ok / events * 1000, 2),
                bytes_per_event=round(sum(r["bytes"] for r in requests) / events, 1),
            )
            stats = await self.emulator.stats()
            row["emulator_max_requests_per_second"] = stats.get("max_requests_per_second")
            row["duplicates_suppressed"] = stats.get("duplicates_suppressed")
        cpu = sampler.used(start, end, 1)
        row["worker_cpu_seconds"] = round(cpu, 3)
        row["cpu_s_per_1000_events"] = round(cpu / events * 1000, 4)
        row["utilisation"] = sampler.timeline_utilisation(start, end)
        if phase == "paced":
            latencies = [(r[0] * 1000 - r[1]) for r in counted if isinstance(r[1], (int, float))]
            if latencies:
                row.update(
                    latency_samples=len(latencies),
                    latency_ms_p50=round(percentile(latencies, 0.50), 1),
                    latency_ms_p90=round(percentile(latencies, 0.90), 1),
                    latency_ms_p99=round(percentile(latencies, 0.99), 1),
                    latency_ms_max=round(max(latencies), 1),
                )


class DeliveryCounter:
    async def start(self) -> None:
        return None

    async def count(self) -> int:
        raise NotImplementedError

    async def close(self, *, drain: bool = True) -> None:  # noqa: ARG002
        return None


class EmulatorCounter(DeliveryCounter):
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def count(self) -> int:
        return int((await self.emulator.stats()).get("events_stored", 0))


class TopicCounter(DeliveryCounter):
    """Counts the ceiling's output records; at the end reads them all (timestamps, events)."""

    def __init__(self, bootstrap: str, topic: str, isolation_level: str = "read_uncommitted"):
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            isolation_level=isolation_level,
        )
        self.partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.receipts: list[tuple[float, Any, Any, int, int]] = []

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign(self.partitions)

    async def count(self) -> int:
        ends = await self.consumer.end_offsets(self.partitions)
        return int(sum(ends.values()))

    async def close(self, *, drain: bool = True) -> None:
        """Read every output record (``drain``), then stop; bounded to two minutes."""
        try:
            if drain:
                await asyncio.wait_for(self._drain(), timeout=120)
        finally:
            await asyncio.wait_for(self.consumer.stop(), timeout=15)

    async def _drain(self) -> None:
        ends = await self.consumer.end_offsets(self.partitions)
        await self.consumer.seek_to_beginning(*self.partitions)
        while [tp for tp, end in ends.items() if await self._behind(tp, end)]:
            fetched = await self.consumer.getmany(timeout_ms=1000)
            for records in fetched.values():
                for record in records:
                    self._receipt(record)

    async def _behind(self, tp: TopicPartition, end: int) -> bool:
        return bool(await self.consumer.position(tp) < end)

    def _receipt(self, record: Any) -> None:
        batch = orjson.loads(record.value)
        events = batch.get("events") or []
        attributes: dict[str, Any] = next(
            (e["data"]["custom_attributes"] for e in events if "custom_attributes" in e["data"]),
            {},
        )
        self.receipts.append(
            (
                record.timestamp / 1000,
                attributes.get("sent_at_ms"),
                attributes.get("phase"),
                len(events),
                len(record.value),
            )
        )


class CommittedTopicCounter(TopicCounter):
    """Counts a transactional contender's committed output records by reading them as they
    commit (``read_committed``): offsets cannot count them, as every transaction also leaves a
    commit marker on each partition it wrote. Record timestamps are produce times, so the
    window ends at the last record's send, not at its commit (at most one commit interval)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic, isolation_level="read_committed")

    async def count(self) -> int:
        fetched = await self.consumer.getmany(timeout_ms=0)
        for records in fetched.values():
            for record in records:
                self._receipt(record)
        return len(self.receipts)

    async def _drain(self) -> None:
        """Read on until every partition's position reached its last stable offset, or
        nothing came for three rounds (a position may stop before a trailing marker)."""
        ends = await self.consumer.end_offsets(self.partitions)
        empty = 0
        while empty < 3 and [tp for tp, end in ends.items() if await self._behind(tp, end)]:
            before = len(self.receipts)
            await self.count()
            empty = empty + 1 if len(self.receipts) == before else 0
            await asyncio.sleep(0.2)


class OperationsTopicCounter(CommittedTopicCounter):
    """Counts the events (``event`` and ``screen`` operations: what the emulator would store)
    in committed operations records (Avro ``OperationBatch``), so the count compares with
    ours' delivered events."""

    async def count(self) -> int:
        await super().count()
        return sum(r[3] for r in self.receipts)

    def _receipt(self, record: Any) -> None:
        operations = decode_operation_batch(record.value)["operations"]
        events = sum(1 for o in operations if o["action"] in DELIVERED_ACTIONS)
        self.receipts.append((record.timestamp / 1000, None, None, events, len(record.value)))


# --- summary ---------------------------------------------------------------------------------
def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def _med(rows: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in rows if r.get(field) is not None]
    return statistics.median(values) if values else None


def _util(rows: list[dict[str, Any]], key: str) -> str:
    values = [r["utilisation"][key] for r in rows if r.get("utilisation", {}).get(key) is not None]
    return f"{statistics.median(values) * 100:.0f}" if values else "-"


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def print_tables(rows: list[dict[str, Any]], options: Options) -> None:
    def group(phase: str, contender: str) -> list[dict[str, Any]]:
        return [
            r
            for r in rows
            if r["phase"] == phase and r["contender"] == contender and "error" not in r
        ]

    def failed(phase: str, contender: str) -> int:
        return sum(
            1 for r in rows if r["phase"] == phase and r["contender"] == contender and "error" in r
        )

    if "throughput" in options.phases:
        print(
            f"\nThroughput ({options.workers} worker process(es) per contender, one group; "
            "pre-produced backlog; median [min-max] of the runs; utilisation %: 100 = one "
            "core, box 200 = both cores busy; wrk% and CPU s/1k ev: all workers together)"
        )
        header = (
            f"{'contender':<50} {'delivered ev/s':>24} {'input ev/s':>10} {'req/1k ev':>9} "
            f"{'B/ev':>6} {'CPU s/1k ev':>11} {'RSS MB':>7} {'wrk%':>5} {'emu%':>5} {'JVM%':>5} "
            f"{'box%':>5} {'done':>5}"
        )
        print(header)
        print("-" * len(header))
        for contender in options.contenders:
            ok = group("throughput", contender)
            if not ok:
                print(f"{TITLES[contender]:<50} FAILED ({failed('throughput', contender)} runs)")
                continue
            done = sum(1 for r in ok if r.get("complete"))
            bytes_ev = _med(ok, "bytes_per_event") or _med(ok, "output_bytes_per_event")
            print(
                f"{TITLES[contender]:<50} {_spread([r['events_per_s'] for r in ok]):>24} "
                f"{_fmt(_med(ok, 'input_events_per_s'), ',.0f'):>10} "
                f"{_fmt(_med(ok, 'requests_per_1000_events'), '.2f'):>9} "
                f"{_fmt(bytes_ev, '.0f'):>6} {_fmt(_med(ok, 'cpu_s_per_1000_events'), '.3f'):>11} "
                f"{_fmt(_med(ok, 'peak_rss_mb'), '.0f'):>7} {_util(ok, 'worker'):>5} "
                f"{_util(ok, 'emulator'):>5} {_util(ok, 'broker'):>5} {_util(ok, 'box'):>5} "
                f"{done}/{len(ok):<3}"
            )
    if "throughput" in options.phases and "ceiling" in options.contenders:
        print("\n" + format_ratios(ratios(rows)))
    if "paced" in options.phases:
        print(
            "\nLatency (paced input, produce → emulator receipt; ceiling: → output record; "
            "samples: events, ceiling: records; median of the runs' percentiles)"
        )
        header = (
            f"{'contender':<50} {'rate ev/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'samples':>7} {'CPU s/1k ev':>11} {'box%':>5}"
        )
        print(header)
        print("-" * len(header))
        for contender in options.contenders:
            ok = [r for r in group("paced", contender) if "latency_ms_p50" in r]
            if not ok:
                print(f"{TITLES[contender]:<50} FAILED ({failed('paced', contender)} runs)")
                continue
            print(
                f"{TITLES[contender]:<50} {_fmt(_med(ok, 'paced_rate_events_per_s'), ',.0f'):>9} "
                f"{_fmt(_med(ok, 'latency_ms_p50'), '.1f'):>8} "
                f"{_fmt(_med(ok, 'latency_ms_p90'), '.1f'):>8} "
                f"{_fmt(_med(ok, 'latency_ms_p99'), '.1f'):>8} "
                f"{_fmt(max(r['latency_ms_max'] for r in ok), '.1f'):>8} "
                f"{_fmt(_med(ok, 'latency_samples'), '.0f'):>7} "
                f"{_fmt(_med(ok, 'cpu_s_per_1000_events'), '.3f'):>11} {_util(ok, 'box'):>5}"
            )
    if "limited" in options.phases:
        print(
            f"\nUnder Customer.io's fair-use limit (emulator: {options.limited_rate:.0f} "
            f"requests/s, 429 beyond; each run capped at {options.limited_seconds:.0f}s)"
        )
        header = (
            f"{'contender':<50} {'delivered ev/s':>24} {'requests':>9} {'429s':>7} "
            f"{'max req/s':>9} {'box%':>5} {'done':>5}"
        )
        print(header)
        print("-" * len(header))
        for contender in options.contenders:
            if contender in CEILINGS:
                continue
            ok = group("limited", contender)
            if not ok:
                print(f"{TITLES[contender]:<50} FAILED ({failed('limited', contender)} runs)")
                continue
            done = sum(1 for r in ok if r.get("complete"))
            throttled = [r["http_status"].get("429", 0) for r in ok]
            print(
                f"{TITLES[contender]:<50} {_spread([r['events_per_s'] for r in ok]):>24} "
                f"{_fmt(_med(ok, 'http_requests'), ',.0f'):>9} "
                f"{statistics.median(throttled):>7,.0f} "
                f"{_fmt(_med(ok, 'emulator_max_requests_per_second'), '.0f'):>9} "
                f"{_util(ok, 'box'):>5} {done}/{len(ok):<3}"
            )
    print(flush=True)


# --- command line ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=(__doc__ or "").split("\n\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    shape = parser.add_argument_group("workload")
    shape.add_argument("--users", type=int, default=4000, help="users in the backlog")
    shape.add_argument("--batches-per-user", type=int, default=5, help="batches per user")
    shape.add_argument(
        "--events-per-batch", type=int, default=5, help="events per batch (1 in 4 a screen view)"
    )
    shape.add_argument(
        "--attributes-per-user", type=int, default=10, help="user attributes per batch"
    )
    shape.add_argument("--device-types", type=int, default=3, help="distinct device types (1-8)")
    shape.add_argument("--no-email-share", type=float, default=0.1, help="users without email")
    shape.add_argument("--opted-out-share", type=float, default=0.05, help="users who opt out")
    shape.add_argument("--seed", type=int, default=7, help="workload random seed")
    run = parser.add_argument_group("runs")
    run.add_argument("--runs", type=int, default=3, help="runs per contender and phase")
    run.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help="any of " + ",".join(CONTENDERS),
    )
    run.add_argument("--phases", default=",".join(PHASES), help="any of throughput,paced,limited")
    run.add_argument("--store", default="rocksdb://", help="ours' table store (or memory://)")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes per contender, all in one consumer group (the backlog topic has "
        f"{PARTITIONS} partitions, so at most {PARTITIONS} do work)",
    )
    run.add_argument(
        "--cap-seconds",
        type=float,
        default=25.0,
        help="throughput: stop a run this long after its first delivery "
        "(the per-event forwarder never drains the backlog in time)",
    )
    run.add_argument(
        "--paced-rate",
        type=float,
        default=500.0,
        help="paced phase input rate, events/s (lowered to half a contender's "
        "median throughput when that is below it)",
    )
    run.add_argument("--paced-seconds", type=float, default=15.0, help="paced phase length")
    run.add_argument(
        "--limited-rate",
        type=float,
        default=100.0,
        help="emulator rate limit (requests/s) in the limited phase",
    )
    run.add_argument(
        "--limited-seconds",
        type=float,
        default=20.0,
        help="limited phase: stop a run this long after its first delivery",
    )
    run.add_argument(
        "--startup-timeout", type=float, default=120.0, help="seconds to the first delivery"
    )
    run.add_argument(
        "--idle-timeout",
        type=float,
        default=15.0,
        help="end a run when nothing new arrived for this long",
    )
    run.add_argument(
        "--profile",
        nargs="?",
        const="raw",
        choices=["raw", "speedscope", "flamegraph"],
        help="py-spy record the worker of each --profiled contender in throughput run 1 "
        "(raw: also print a summary)",
    )
    run.add_argument(
        "--profiled",
        default="ours",
        help="the contenders --profile records (comma-separated), e.g. floor,floor-pipeline",
    )
    run.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit (e.g. `git archive main | tar -x -C DIR`): the "
        "base / base-alo / base-ceiling contenders run its code",
    )
    run.add_argument("--keep-logs", action="store_true", help="copy every process log to results/")
    run.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1,000 users, 1 run, 8 s paced, 10 s limited, 10 s cap",
    )
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; flags given explicitly still win
        quick = {"users": 1000, "runs": 1, "paced_seconds": 8.0, "limited_seconds": 10.0,
                 "cap_seconds": 10.0}  # fmt: skip
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def options_from(args: argparse.Namespace) -> Options:
    contenders = tuple(c for c in args.contenders.split(",") if c)
    phases = tuple(p for p in args.phases.split(",") if p)
    if unknown := [c for c in contenders if c not in CONTENDERS] + [
        p for p in phases if p not in PHASES
    ]:
        raise SystemExit(f"unknown contenders/phases: {unknown}")
    profiled = tuple(c for c in args.profiled.split(",") if c)
    if unknown := [c for c in profiled if c not in CONTENDERS]:
        raise SystemExit(f"unknown --profiled contenders: {unknown}")
    if args.baseline is None and BASELINE.intersection(contenders):
        raise SystemExit("contenders base / base-alo / base-ceiling need --baseline DIR")
    return Options(
        shape=Shape(
            users=args.users,
            batches_per_user=args.batches_per_user,
            events_per_batch=args.events_per_batch,
            attributes_per_user=args.attributes_per_user,
            device_types=args.device_types,
            no_email_share=args.no_email_share,
            opted_out_share=args.opted_out_share,
            seed=args.seed,
        ),
        runs=args.runs,
        contenders=contenders,
        phases=phases,
        store=args.store,
        cap_seconds=args.cap_seconds,
        paced_rate=args.paced_rate,
        paced_seconds=args.paced_seconds,
        limited_rate=args.limited_rate,
        limited_seconds=args.limited_seconds,
        startup_timeout=args.startup_timeout,
        idle_timeout=args.idle_timeout,
        profile=args.profile,
        keep_logs=args.keep_logs,
        workers=args.workers,
        baseline=args.baseline,
        profiled=profiled,
    )


async def run_all(
    kafka: LocalKafka, options: Options, workdir: Path, save: Callable[[list[dict[str, Any]]], None]
) -> list[dict[str, Any]]:
    emulator = Emulator(workdir)
    bench = Bench(kafka, emulator, options, workdir)
    rows: list[dict[str, Any]] = []
    # Ctrl-C / SIGTERM cancel the benchmark task, so every `finally` below runs while the
    # Kafka clients' own tasks are still alive (a KeyboardInterrupt would cancel those too).
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        bench.interrupted = True
        main_task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, interrupt)
    try:
        await emulator.start()
        print(f"# Customer.io emulator on {emulator.url} (pid {emulator.process.pid})", flush=True)
        await bench.start()
        await bench.prepare_backlog()
        for phase in options.phases:
            contenders = [
                c for c in options.contenders if not (phase == "limited" and c in CEILINGS)
            ]
            for run in range(1, options.runs + 1):
                for contender in run_order(contenders, run):
                    rate = paced_rate_for(rows, contender, options)
                    began = time.monotonic()
                    row = await bench.run(contender, phase, run, rate)
                    row["wall_seconds"] = round(time.monotonic() - began, 1)
                    rows.append(row)
                    save(rows)
                    print(f"# {phase:<10} run {run} {contender:<8} {describe(row)}", flush=True)
    except asyncio.CancelledError:
        if not bench.interrupted:
            raise
    finally:
        await bench.close()
        await emulator.close()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    if bench.interrupted:
        rows.append({"interrupted": True})
    return rows


def run_order(contenders: list[str], run: int) -> list[str]:
    """The order of ``contenders`` in run ``run`` (1-based): rotated left by ``run - 1``.

    Over as many runs as contenders each one runs once in every position. Why: the machine's
    load drifts within a round (other work starts and stops), and with a fixed order the first
    contender always got the round's first window; round 7's paired runs could not tell a
    change from that (ARCHITECTURE §5 Round 7).
    """
    shift = (run - 1) % len(contenders) if contenders else 0
    return contenders[shift:] + contenders[:shift]


def paced_rate_for(rows: list[dict[str, Any]], contender: str, options: Options) -> float:
    measured: list[float] = [
        r["events_per_s"]
        for r in rows
        if r["contender"] == contender and r["phase"] == "throughput" and r.get("events_per_s")
    ]
    if measured and statistics.median(measured) < options.paced_rate * 2:
        return max(statistics.median(measured) / 2, 1.0)
    return options.paced_rate


def step_figures(path: Path) -> dict[str, Any]:
    """The per-record step's CPU from a worker's result file (:mod:`bench.stepclock`: the
    faust contenders' and raw-eos'), as row fields; nothing when the file is missing (ours,
    the forwarder, a run that ended early) or has no timed step. ``step_us_per_record``: main
    thread CPU inside the step per record; ``step_share_of_process``: the step's CPU over the
    whole process's between the first and the last record (all threads)."""
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    steps, process = figures.get("steps", 0), figures.get("process_cpu_seconds", 0)
    if not steps or not process:
        return {}
    return {
        "stepclock": figures,
        "step_us_per_record": round(figures["step_cpu_seconds"] / steps * 1e6, 1),
        "step_share_of_process": round(figures["step_cpu_seconds"] / process, 3),
    }


def describe(row: dict[str, Any]) -> str:
    if "error" in row:
        return "ERROR " + str(row["error"])[:400]
    parts = [
        f"{row['status']:<8}",
        f"{row['events_delivered']:>7,} ev",
        f"{row['events_per_s'] or 0:>9,.0f} ev/s",
    ]
    if "latency_ms_p50" in row:
        parts.append(f"p50 {row['latency_ms_p50']:.0f} ms p99 {row['latency_ms_p99']:.0f} ms")
    if "requests_per_1000_events" in row:
        parts.append(f"{row['requests_per_1000_events']:.1f} req/1k ev")
    parts.append(f"{row['cpu_s_per_1000_events']:.3f} CPU s/1k ev")
    if row.get("step_us_per_record") is not None:
        parts.append(
            f"step {row['step_us_per_record']:.0f} µs/rec "
            f"({row['step_share_of_process']:.0%} of its CPU)"
        )
    box = row.get("utilisation", {}).get("box")
    if box is not None:
        parts.append(f"box {box * 100:.0f}%")
    return "  ".join(parts)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = options_from(args)

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    # a topic created a moment ago answers "not leader" once or twice; the clients retry
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with `&`
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_file = RESULTS / f"e2e-{stamp}.json"
    began = time.monotonic()

    def save(rows: list[dict[str, Any]]) -> None:
        out_file.write_text(json.dumps(rows, indent=1), encoding="utf-8")

    rows: list[dict[str, Any]] = []
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, LocalKafka() as kafka:
            workdir = Path(tmp)
            print(
                f"# Kafka {kafka.version} at {kafka.bootstrap} ({kafka.started_in:.1f}s to start)",
                flush=True,
            )
            try:
                rows = asyncio.run(run_all(kafka, options, workdir, save))
                if rows and rows[-1].get("interrupted"):
                    rows.pop()
                    raise KeyboardInterrupt
            finally:
                procs.stop_all()
                keep(workdir, stamp, options)
    except KeyboardInterrupt:
        procs.stop_all()
        print("\n# interrupted; everything it started is stopped", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        procs.stop_all()
    print(
        f"\n# {len(rows)} runs in {time.monotonic() - began:.0f}s; per-run JSON: "
        f"{out_file.relative_to(REPO)}"
    )
    print(f"# load average {os.getloadavg()[0]:.2f} at the end")
    print_tables(rows, options)
    profiled = [r["profile"] for r in rows if r.get("profile")]
    for path in profiled:
        kept = RESULTS / f"profiles-e2e-{stamp}" / Path(path).name
        if kept.exists() and kept.suffix == ".txt":
            print(summarise_profile(kept))


def keep(workdir: Path, stamp: str, options: Options) -> None:
    import shutil  # noqa: PLC0415

    if (workdir / "profiles").exists():
        target = RESULTS / f"profiles-e2e-{stamp}"
        shutil.copytree(workdir / "profiles", target, dirs_exist_ok=True)
        print(f"# profiles in {target.relative_to(REPO)}")
    if options.keep_logs:
        target = RESULTS / f"logs-e2e-{stamp}"
        target.mkdir(exist_ok=True)
        for log in workdir.glob("*.log"):
            shutil.copy(log, target / log.name)
        print(f"# logs in {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
