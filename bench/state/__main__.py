"""``python -m bench.state``: how long a worker without its data dir takes to rebuild its state.

Flow, on a local broker (:class:`~app.dev.localkafka.LocalKafka`) and an in-process Customer.io
emulator, for each ``--users`` N:

1. load: N users' states (one mParticle batch each, :mod:`bench.e2e.workload`, 5% opted out;
   parsed and folded by :mod:`app.core.state` and Avro-encoded, exactly what the ingest
   stores) are produced straight to the users changelog (created with the changelog configs);
2. the changelogs' records and bytes are read from the broker (end offsets, log dir sizes);
3. for each restore path (``faust``: ``MPCIO_FAST_RESTORE=false``, faust's own recovery;
   ``fast``: :mod:`app.restore`), a worker starts on an EMPTY data dir, forwarding to the
   emulator; one probe batch (a new user) is produced as it starts. Measured: seconds to
   ``/health/ready`` and to the probe's delivery (first item the emulator accepts), and the
   changelog records/s = records / (seconds to ready - the same worker's start-up on an empty
   changelog, measured once);
4. ``--kill``: a ready worker is killed with SIGKILL and restarted at once on its data dir
   (a crash discards the store: :mod:`app.localstore`); seconds from the kill to the probe's
   delivery, for ``--kill-env`` "before" settings and the defaults.

Results are printed as JSON lines and written to ``bench/results/state-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.changelog import changelog_configs
from app.core.mparticle import parse_batch
from app.core.state import encode_state, fold
from app.dev.emulator.server import EmulatorConfig, RunningEmulator, running_emulator
from app.dev.localkafka import LocalKafka, free_port
from app.kafka_admin import ensure_topics
from app.settings import load_settings
from app.topics import changelog_topics, topics_for
from bench.e2e.workload import Shape, generate

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
PARTITIONS = 8
SITE_ID, API_KEY = "bench-site", "bench-key"
#: The worker's settings before this benchmark's work (faust's rebalance timeout, faust's
#: recovery), for the "before" kill -9 figure.
#: How long a probe may take to be delivered before it counts as stalled.
PROBE_WAIT_SECONDS = 300.0
BEFORE = {"MPCIO_FAST_RESTORE": "false", "MPCIO_KAFKA_REBALANCE_TIMEOUT_SECONDS": "60"}


class Run:
    """One benchmark run's broker, emulator, names and worker processes."""

    def __init__(self, kafka: LocalKafka, emulator: RunningEmulator, users: int) -> None:
        self.kafka = kafka
        self.emulator = emulator
        self.users = users
        self.prefix = f"state-{users}-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
        self.env = {
            "MPCIO_BROKER": kafka.url,
            "MPCIO_APP_ID": f"{self.prefix}-app",
            "MPCIO_TOPIC_BATCHES": f"{self.prefix}-batches",
            "MPCIO_TOPIC_AUDIENCES": f"{self.prefix}-audiences",
            "MPCIO_TOPIC_ERASURE": f"{self.prefix}-erasure",
            "MPCIO_TOPIC_PARTITIONS": str(PARTITIONS),
            "MPCIO_STORE": "rocksdb://",
            "MPCIO_WEB_PORT": str(self.port),
            "MPCIO_CUSTOMERIO_SITE_ID": SITE_ID,
            "MPCIO_CUSTOMERIO_API_KEY": API_KEY,
            "MPCIO_CUSTOMERIO_URL": emulator.url,
            "MPCIO_RATE_LIMIT_PER_SECOND": "1000",
            "MPCIO_LOG_LEVEL": "INFO",
        }
        settings = load_settings(
            **{k.removeprefix("MPCIO_").lower(): v for k, v in self.env.items()}
        )
        self.settings = settings
        self.topics = topics_for(settings)
        self.workers = 0

    def spawn(self, data_dir: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        self.workers += 1
        log = self.tmp / f"worker-{self.workers}.log"
        full = {**os.environ, **self.env, "MPCIO_DATA_DIR": str(data_dir), **env}
        full["PYTHONPATH"] = str(REPO)
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "app", "worker"],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        return process, log

    async def produce(self, records: list[tuple[bytes, bytes]]) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.kafka.bootstrap, linger_ms=20, max_batch_size=1 << 20
        )
        await producer.start()
        try:
            futures = [
                await producer.send(self.topics.batches.name, value, key=key)
                for key, value in records
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def changelog_size(self) -> dict[str, float]:
        """Records (end offsets) and bytes on disk of the changelog topics."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka.bootstrap)
        await consumer.start()
        try:
            names = changelog_topics(self.settings.app_id)
            tps = [TopicPartition(name, p) for name in names for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        size = sum(
            f.stat().st_size
            for name in names
            for p in range(PARTITIONS)
            for f in (self.kafka.data_dir / "kraft" / f"{name}-{p}").glob("*.log")
        )
        return {"changelog_records": sum(ends.values()), "changelog_mb": round(size / 1e6, 2)}

    async def ready(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.port}/health/ready") as answer,
            ):
                return answer.status == 200
        except aiohttp.ClientError:
            return False


def probe_record(tag: str) -> tuple[bytes, bytes]:
    """One batch of a new user with an email (the emulator gets an identify and an event)."""
    shape = Shape(
        users=1, batches_per_user=1, events_per_batch=1, no_email_share=0.0, opted_out_share=0.0
    )
    record = generate(shape, prefix=f"probe-{tag}")[0]
    return record.key, orjson.dumps(record.batch)


async def until(
    check: Any, limit: float, what: str, process: subprocess.Popen[bytes], every: float = 0.05
) -> float:
    """Await ``check()`` (polled ``every`` seconds); return the monotonic time it held."""
    deadline = time.monotonic() + limit
    while not await check():
        if process.poll() is not None:
            raise RuntimeError(f"worker exited ({process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(every)
    return time.monotonic()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def restart(
    run: Run, env: dict[str, str], data_dir: Path, t0: float | None = None
) -> dict[str, Any]:
    """Start a worker on ``data_dir`` and send a probe; seconds to ready and to its delivery."""
    accepted = run.emulator.state.items_accepted
    began = time.monotonic() if t0 is None else t0
    process, log = run.spawn(data_dir, **env)
    try:
        await run.produce([probe_record(uuid.uuid4().hex[:8])])

        async def delivered() -> bool:
            return run.emulator.state.items_accepted > accepted

        ready_at = await until(run.ready, 3600, "readiness", process)
        try:
            delivered_at: float | None = await until(
                delivered, PROBE_WAIT_SECONDS, "the probe's delivery", process
            )
        except TimeoutError:  # seen with faust's recovery: a record fetched meanwhile stalls
            delivered_at = None
    finally:
        stop(process)
    restored = [
        json.loads(line.split("from the changelogs: ", 1)[1].replace("'", '"'))
        for line in log.read_text(errors="replace").splitlines()
        if "table store restored from the changelogs: " in line
    ]
    result: dict[str, Any] = {
        "ready_s": round(ready_at - began, 2),
        "first_delivery_s": None if delivered_at is None else round(delivered_at - began, 2),
    }
    if restored:
        result["restore"] = restored[-1]
    return result


async def load(run: Run) -> dict[str, float]:
    """Write N users' states straight into the users changelog, as the ingest would.

    Each state is what the pipeline stores for the user's one batch (parsed, folded, Avro);
    feeding N batches through a worker instead would take minutes on a busy 2-core box
    and measure the ingest, not the recovery."""
    shape = Shape(users=run.users, batches_per_user=1, events_per_batch=1, attributes_per_user=6)
    began = time.monotonic()
    names = changelog_topics(run.settings.app_id)
    admin = AIOKafkaAdminClient(bootstrap_servers=run.kafka.bootstrap)
    await admin.start()
    try:
        configs = changelog_configs(run.settings)
        await admin.create_topics(
            [NewTopic(name, PARTITIONS, 1, topic_configs=configs) for name in names]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=run.kafka.bootstrap, linger_ms=50, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        pending = []
        for record in generate(shape, prefix=run.prefix):
            state = encode_state(fold(None, parse_batch(record.batch)))
            pending.append(await producer.send(names[0], state, key=record.key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {"load_s": round(time.monotonic() - began, 1)}


async def kill_restart(run: Run, env: dict[str, str]) -> float | None:
    """Seconds from a SIGKILL of a ready worker to the delivery of a probe sent at once."""
    data_dir = run.tmp / f"kill-{run.workers}"
    process, _ = run.spawn(data_dir, **env)
    await until(run.ready, 3600, "readiness before the kill", process)
    await asyncio.sleep(2)  # let the sink commit what it delivered (nothing in flight)
    process.kill()
    process.wait(10)
    killed = time.monotonic()
    result = await restart(run, env, data_dir, t0=killed)
    delivered: float | None = result["first_delivery_s"]
    return delivered


async def bench(users: int, paths: list[str], kill: bool, kafka: LocalKafka) -> dict[str, Any]:
    async with running_emulator(EmulatorConfig(site_id=SITE_ID, api_key=API_KEY)) as emulator:
        run = Run(kafka, emulator, users)
        await ensure_topics([kafka.bootstrap], run.topics)
        result: dict[str, Any] = {"users": users, **await load(run), **await run.changelog_size()}
        for path in paths:
            env = {"MPCIO_FAST_RESTORE": "true" if path == "fast" else "false"}
            figures = await restart(run, env, run.tmp / f"restart-{path}")
            result[path] = figures
        if kill:
            result["kill9_before_s"] = await kill_restart(run, BEFORE)
            result["kill9_after_s"] = await kill_restart(run, {})
        return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.state", description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--paths", nargs="*", default=["faust", "fast"], choices=["faust", "fast"])
    parser.add_argument("--kill", action="store_true", help="also measure kill -9 restarts")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    with LocalKafka() as kafka:
        for users in args.users:
            result = asyncio.run(bench(users, args.paths, args.kill, kafka))
            print(json.dumps(result), flush=True)
            results.append(result)
    out = RESULTS / f"state-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
