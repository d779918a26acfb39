"""One faust contender in its own process: ``python -m bench.ceiling.faust_worker``.

Configured by the JSON in ``$BENCH_CONFIG`` (written by :mod:`bench.ceiling.__main__`). The
agent counts records; at the first one it notes the monotonic clock and the process CPU time
(all threads), at the last one (after flushing the producer, for the cases that produce) it
notes both again and writes them to ``result_file``. The parent then stops the worker.

:mod:`bench.e2e` runs it too, for its faust contenders (cases ``faust_produce``,
``faust_write``, ``faust_ingest``; ``processing_guarantee`` in the config, at_least_once by
default); ``faust_write`` exists for that (its floor: ours' writes without the pipeline).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.worker import Worker

from agents.ingest import RecordWriter, batch_step, declare_tables, ingest_stream
from app.core.pipeline import IngestResult
from app.dev.localkafka import free_port
from app.faust_app import create_app, use_event_loop
from app.logs import configure_logging
from app.records import SourcePosition
from app.settings import Settings
from app.topics import topics_for
from app.wiring import core_options
from bench.ceiling.tasksampler import TaskSampler
from bench.stepclock import StepClock, process_cpu


class Progress:
    """Counts records and events; writes the measurement once the expected count is reached."""

    def __init__(self, app: faust.App, config: dict[str, Any]) -> None:
        self.app = app
        self.expected = int(config["records"])
        self.result_file = Path(config["result_file"])
        self.flush = bool(config.get("flush"))
        self.records = 0
        self.events = 0
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.done = False
        self.sampler: Any = None
        # the ingest cases' step, timed (main thread CPU inside it, bench.stepclock)
        self.clock = StepClock()

    def start(self) -> None:
        if self.sampler is not None:
            self.sampler.active.set()
        self.t0 = time.monotonic()
        self.cpu0 = process_cpu()
        self.clock.mark()
        # tells the parent processing has begun (it may attach a profiler now)
        self.result_file.with_suffix(".started").write_text(str(os.getpid()), encoding="utf-8")

    async def add(self, records: int, events: int) -> None:
        if not self.records:
            self.start()
        self.records += records
        self.events += events
        if self.records >= self.expected and not self.done:
            self.done = True
            if self.flush:
                await self.app.producer.flush()
            t1, cpu1 = time.monotonic(), process_cpu()
            self.clock.mark()
            if self.sampler is not None:
                self.sampler.active.clear()
                self.sampler.dump()
            out = {
                "records": self.records,
                "events": self.events,
                "t0": self.t0,
                "t1": t1,
                "seconds": t1 - self.t0,
                "cpu_seconds": cpu1 - self.cpu0,
                **self.clock.summary(),
            }
            tmp = self.result_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(out), encoding="utf-8")
            tmp.replace(self.result_file)


EVENTS = ("events", "all", "forwarded")


def pass_through(state_bytes: int) -> Callable[[Any, SourcePosition], IngestResult]:
    """An ingest step without the pipeline: decode the batch (as the ceiling does), write the
    record's value unchanged as its operations record and, when ``state_bytes`` > 0, its first
    ``state_bytes`` bytes as the user's state (one changelog record, like ours' state). The
    event count goes in ``counts[EVENTS]``. Pure; raises on a value that is not a JSON batch."""

    def step(event: Any, position: SourcePosition) -> IngestResult:  # noqa: ARG001
        events = len(orjson.loads(event.value)["events"])
        mpid = event.key.decode()
        states = {mpid: event.value[:state_bytes]} if state_bytes > 0 else {}
        return IngestResult(
            states=states, operations=(mpid, event.value), counts=Counter({EVENTS: events})
        )

    return step


def build(config: dict[str, Any]) -> faust.App:
    settings = Settings(
        app_id=config["app_id"],
        broker=config["broker"],
        store=config.get("store", "memory://"),
        data_dir=config["data_dir"],
        forwarding_enabled=False,
        topic_partitions=4,
        web_port=free_port(),
        # The ceiling is faust's plain pass-through; bench.e2e shows ours under both guarantees
        # and runs the faust_write cases (its ceiling-eos and floor) under exactly_once.
        processing_guarantee=config.get("processing_guarantee", "at_least_once"),
        topic_batches=config["source"],
        topic_operations=config["sink"],
    )
    app = create_app(settings, web_enabled=False, **config.get("overrides", {}))
    if config.get("no_sensors"):
        original = app.on_init_dependencies

        def without_monitor() -> Any:
            deps = original()
            app.sensors._sensors.clear()
            return deps

        app.on_init_dependencies = without_monitor  # type: ignore[method-assign]

    source = app.topic(config["source"], key_serializer="raw", value_serializer="raw")
    sink = app.topic(config["sink"], key_serializer="raw", value_serializer="raw")
    # The plain table cases' table (the ingest case declares the worker's own tables).
    users: Any = (
        None
        if config["case"] in {"faust_ingest", "faust_write"}
        else app.Table("users", partitions=4, key_type=bytes, value_type=bytes)
    )
    progress = Progress(app, config)
    if config.get("task_sampler"):

        @app.task
        async def _sample() -> None:
            progress.sampler = TaskSampler(
                asyncio.get_running_loop(), progress.result_file.with_suffix(".tasks.json")
            )
            progress.sampler.start()

    case = config["case"]

    if case == "faust_decode":

        @app.agent(source, concurrency=1)
        async def decode(stream: Any) -> None:
            async for value in stream:
                batch = orjson.loads(value)
                await progress.add(1, len(batch["events"]))

    elif case == "faust_table":

        @app.agent(source, concurrency=1)
        async def table(stream: Any) -> None:
            async for key, value in stream.items():
                batch = orjson.loads(value)
                users[key] = value[:200]
                await progress.add(1, len(batch["events"]))

    elif case == "faust_produce":

        @app.agent(source, concurrency=1)
        async def produce(stream: Any) -> None:
            async for key, value in stream.items():
                batch = orjson.loads(value)
                await sink.send(key=key, value=value)
                await progress.add(1, len(batch["events"]))

    elif case == "faust_take":
        take_n = int(config.get("take_n", 500))
        within = float(config.get("take_within", 0.1))

        @app.agent(source, concurrency=1)
        async def take(stream: Any) -> None:
            async for values in stream.take(take_n, within=within):
                events = sum(len(orjson.loads(v)["events"]) for v in values)
                await progress.add(len(values), events)

    elif case == "faust_ingest":
        # The worker's own ingest: the real step, tables and write step (agents.ingest).
        tables = declare_tables(app, settings)
        writer = RecordWriter(app, tables.users, tables.erasures, topics_for(settings))
        step = progress.clock.timed(batch_step(tables, core_options(settings)))

        async def counted(result: IngestResult) -> None:
            events = sum(n for (kind, *_), n in result.counts.items() if kind == "events")
            await progress.add(1, events)

        @app.agent(source, concurrency=1)
        async def ingest_agent(stream: Any) -> None:
            await ingest_stream(stream, step, writer, kind="batches", after_write=counted)

    elif case == "faust_write":
        # The worker's own agent loop and write step (agents.ingest: turns, RecordWriter, the
        # source partition's transactional producer under exactly_once, held table changes)
        # with the pipeline replaced by pass_through: our Kafka I/O without our per-record work.
        tables = declare_tables(app, settings)
        writer = RecordWriter(app, tables.users, tables.erasures, topics_for(settings))
        step = progress.clock.timed(pass_through(int(config.get("state_bytes", 0))))

        async def written(result: IngestResult) -> None:
            await progress.add(1, result.counts[EVENTS])

        @app.agent(source, concurrency=1)
        async def write_agent(stream: Any) -> None:
            await ingest_stream(stream, step, writer, kind="batches", after_write=written)

    elif case == "faust_table_produce":

        @app.agent(source, concurrency=1)
        async def table_produce(stream: Any) -> None:
            async for key, value in stream.items():
                batch = orjson.loads(value)
                users[key] = value[:200]
                await sink.send(key=key, value=value[:300])
                await progress.add(1, len(batch["events"]))

    else:
        raise SystemExit(f"unknown faust case {case!r}")
    return app


class BenchWorker(Worker):
    """faust's worker with the product's logging (:func:`app.logs.configure_logging`, as
    ``app.worker.ForwarderWorker`` sets it up) instead of mode's. mode's set-up leaves its
    start-up spinner's handler on the root logger at DEBUG, so every ``log.debug`` of faust,
    mode and aiokafka (two per produced record) built and handled a record that no handler
    printed: 3-6 % of a faust contender's CPU that ours' worker does not pay (issue 19,
    round 6)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:  # noqa: ARG002
        configure_logging(logging.getLevelName(level), "text")


def main() -> None:
    config = json.loads(os.environ["BENCH_CONFIG"])
    # the product's loop unless the run says otherwise (--sweep's event_loop=... variants)
    use_event_loop(config.get("event_loop") or Settings.model_fields["event_loop"].default)
    app = build(config)
    loglevel = config.get("loglevel", "warning")
    BenchWorker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
