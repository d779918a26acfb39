"""``python -m bench.ingress``: Firehose ingress throughput, durable user profiles per second.

Flow: start a local Kafka broker (or use ``--broker``), start ``mpcio ingress`` as its own
process (as in production), then POST ``--requests`` ``audience_membership_change_request``
messages of ``--profiles`` user profiles each, ``--concurrency`` at a time. A 200 means every
profile's record was acknowledged by Kafka (``acks=all``), so the figure is durable profiles/s:
profiles answered 200 / wall time from the first request to the last answer. Beside it: the
ingress process's CPU seconds (``/proc``) and profiles per ingress CPU second, and how busy
the whole machine was (a shared machine's other load lowers the wall-clock figure, not the
CPU one). At the end the audiences topic must hold exactly one record per profile (checked).

The first ``--warmup`` requests are not timed (connections, metadata, first batches).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.dev.localkafka import LocalKafka, free_port
from app.kafka_admin import ensure_topics
from app.settings import load_settings
from app.topics import topics_for
from bench.e2e.procs import cpu_seconds, machine_busy, spawn, stop
from tests.integration.support import message_count

SECRET = "bench-secret"
REPO = Path(__file__).resolve().parents[2]


def membership_request(index: int, profiles: int) -> bytes:
    """One request: ``profiles`` users (distinct mpids) joining one audience."""
    return orjson.dumps(
        {
            "type": "audience_membership_change_request",
            "id": str(uuid.uuid4()),
            "timestamp_ms": 1_764_400_000_000 + index,
            "firehose_version": "2.8.1",
            "account": {"account_id": 1},
            "user_profiles": [
                {
                    "mpid": str(index * profiles + n + 1),
                    "user_identities": [
                        {"type": "email", "encoding": "md5", "value": "0" * 32},
                    ],
                    "audiences": [{"audience_id": 456, "audience_name": "Bench", "action": "add"}],
                }
                for n in range(profiles)
            ],
        }
    )


async def post_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[int, list[int]]:
    """POST every body, ``concurrency`` at a time; return (200 count, other statuses)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    ok = 0
    failures: list[int] = []
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    ok += 1
                else:
                    failures.append(response.status)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return ok, failures


async def wait_healthy(url: str, process: Any, limit_seconds: float = 120.0) -> None:
    deadline = time.monotonic() + limit_seconds
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"ingress exited with {process.returncode}")
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("ingress did not become healthy")
            await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    prefix = f"bench-ingress-{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MPCIO_BROKER": f"kafka://{bootstrap}",
        "MPCIO_TOPIC_AUDIENCES": f"{prefix}-audiences",
        "MPCIO_TOPIC_ERASURE": f"{prefix}-erasure",
        "MPCIO_TOPIC_BATCHES": f"{prefix}-batches",
        "MPCIO_TOPIC_OPERATIONS": f"{prefix}-operations",
        "MPCIO_TOPIC_DEADLETTER": f"{prefix}-deadletter",
        "MPCIO_TOPIC_PARTITIONS": str(args.partitions),
        "MPCIO_INGRESS_SECRET": SECRET,
        "MPCIO_INGRESS_PORT": str(port),
        "MPCIO_LOG_LEVEL": "WARNING",
    }
    settings = load_settings(
        **{k.removeprefix("MPCIO_").lower(): v for k, v in env.items() if k.startswith("MPCIO_")},
        forwarding_enabled=False,
    )
    topics = topics_for(settings)
    await ensure_topics(settings.bootstrap_servers, topics)
    process = spawn([sys.executable, "-m", "app", "ingress"], log=workdir / "ingress.log", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy(url, process)
        warmup = [membership_request(i, args.profiles) for i in range(args.warmup)]
        timed = [membership_request(args.warmup + i, args.profiles) for i in range(args.requests)]
        await post_all(url, warmup, args.concurrency)
        began, cpu_began, busy_began = time.perf_counter(), cpu_seconds(process.pid), machine_busy()
        ok, failures = await post_all(url, timed, args.concurrency)
        elapsed = time.perf_counter() - began
        ingress_cpu = cpu_seconds(process.pid) - cpu_began
        machine_cpu = machine_busy() - busy_began
    finally:
        stop(process)
    stored = await message_count(bootstrap, topics.audiences.name, args.partitions)
    expected = (args.warmup + args.requests) * args.profiles
    return {
        "requests": args.requests,
        "profiles_per_request": args.profiles,
        "concurrency": args.concurrency,
        "ok_requests": ok,
        "failed_statuses": sorted(set(failures)),
        "seconds": round(elapsed, 3),
        "requests_per_second": round(ok / elapsed, 1),
        "durable_profiles_per_second": round(ok * args.profiles / elapsed),
        "ingress_cpu_seconds": round(ingress_cpu, 2),
        "profiles_per_ingress_cpu_second": round(ok * args.profiles / max(ingress_cpu, 1e-9)),
        # CPU the whole machine spent (all cores, every process: ours and anyone else's)
        "machine_busy_cores": round(machine_cpu / elapsed, 2),
        "load_average_1m": os.getloadavg()[0],
        "records_on_topic": stored,
        "records_expected": expected,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingress",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=200, help="timed requests")
    parser.add_argument("--profiles", type=int, default=100, help="user profiles per request")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--broker", default=None, help="host:port of a running Kafka")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        workdir = Path(tmp)
        if args.broker:
            result = asyncio.run(run(args, args.broker, workdir))
        else:
            broker = LocalKafka()
            broker.start()
            try:
                result = asyncio.run(run(args, broker.bootstrap, workdir))
            finally:
                broker.close()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    if result["records_on_topic"] != result["records_expected"] or result["failed_statuses"]:
        raise SystemExit("not every profile was durably written exactly once")


if __name__ == "__main__":
    main()
