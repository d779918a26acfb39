"""Soak: run the whole forwarder for a while at a steady rate and watch memory, lag, dead letters.

``.venv/bin/python -m bench.soak --minutes 10 --rate 200`` starts a local Kafka broker, the
Customer.io emulator and an ``mpcio worker`` (RocksDB store), produces mParticle batches for a
fixed population of users at ``--rate`` batches/s, and every ``--every`` seconds records the
worker's RSS, the ingest and sink consumer lag, the dead letters and what Customer.io holds to
``bench/results/soak-<stamp>.csv``, then plots RSS and lag over time to a PNG beside it and
prints whether RSS stayed flat (within 10 % after the warm-up, the first 20 % of the run).

Not a test: it runs for minutes and prints figures. Stops everything it started, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from app.dev.demo import local_emulator
from app.dev.localkafka import LocalKafka, free_port
from app.kafka_admin import ensure_topics
from app.settings import Settings
from app.topics import topics_for
from app.wiring import settings_as_env

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_764_400_000_000


def batch(user: int, sequence: int, events: int) -> tuple[bytes, bytes]:
    mpid = 700_000 + user
    now = T0 + sequence
    return str(mpid).encode(), orjson.dumps(
        {
            "mpid": mpid,
            "environment": "production",
            "timestamp_unixtime_ms": now,
            "user_identities": {"customer_id": f"s-{user}", "email": f"soak{user}@example.com"},
            "user_attributes": {"$FirstName": f"S{user}", "visits": sequence // 1000},
            "application_info": {"os": "IOS" if user % 2 else "Android"},
            "events": [
                {
                    "event_type": "custom_event",
                    "data": {
                        "event_name": f"Step {i}",
                        "timestamp_unixtime_ms": now + i,
                        "source_message_id": f"soak-{sequence}-{i}",
                        "custom_attributes": {"i": i},
                    },
                }
                for i in range(events)
            ],
        }
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def lag(
    admin: AIOKafkaAdminClient, consumer_ends: Any, group: str, topic: str, partitions: int
) -> int:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    except KafkaError:
        return -1  # the group has not joined yet
    ends = await consumer_ends(tps)
    return sum(
        max(
            0,
            ends[tp]
            - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0),
        )
        for tp in tps
    )


async def soak(args: argparse.Namespace) -> Path:
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{stamp}.csv"
    workdir = Path(tempfile.mkdtemp(prefix="mpcio-soak-"))
    with LocalKafka() as broker, local_emulator(workdir) as emulator:
        emulator_url = emulator.url
        settings = Settings(
            broker=broker.url,
            store=args.store,
            data_dir=str(workdir / "data"),
            topic_partitions=4,
            web_port=free_port(),
            customerio_site_id="demo-site",
            customerio_api_key="demo-key",
            customerio_url=emulator_url,
            log_level="WARNING",
        )
        topics = topics_for(settings)
        await ensure_topics(settings.bootstrap_servers, topics)
        log = (workdir / "worker.log").open("wb")
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop
            [sys.executable, "-m", "app", "worker"],
            env={**os.environ, **settings_as_env(settings)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        ends_reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        await admin.start()
        await ends_reader.start()
        rows: list[dict[str, float]] = []
        try:
            began = time.monotonic()
            sent = 0
            next_sample = began
            with out.open("w", newline="") as handle:
                writer = csv.DictWriter(
                    handle,
                    fieldnames=[
                        "seconds",
                        "batches_sent",
                        "rss_mb",
                        "ingest_lag",
                        "sink_lag",
                        "dead_letters",
                        "events_stored",
                    ],
                )
                writer.writeheader()
                while (elapsed := time.monotonic() - began) < args.minutes * 60:
                    if worker.poll() is not None:
                        raise SystemExit(f"worker exited; see {workdir / 'worker.log'}")
                    due = int(elapsed * args.rate)
                    while sent < due:
                        key, value = batch(sent % args.users, sent, args.events)
                        await producer.send(topics.batches.name, value, key=key)
                        sent += 1
                    if time.monotonic() >= next_sample:
                        next_sample += args.every
                        row = {
                            "seconds": round(elapsed, 1),
                            "batches_sent": sent,
                            "rss_mb": round(rss_mb(worker.pid), 1),
                            "ingest_lag": await lag(
                                admin,
                                ends_reader.end_offsets,
                                settings.app_id,
                                topics.batches.name,
                                4,
                            ),
                            "sink_lag": await lag(
                                admin,
                                ends_reader.end_offsets,
                                f"{settings.app_id}-sink",
                                topics.operations.name,
                                4,
                            ),
                            "dead_letters": sum(
                                (
                                    await ends_reader.end_offsets(
                                        [
                                            TopicPartition(topics.deadletter.name, p)
                                            for p in range(4)
                                        ]
                                    )
                                ).values()
                            ),
                            "events_stored": _stats(emulator_url).get("events_stored", 0),
                        }
                        writer.writerow(row)
                        handle.flush()
                        rows.append(row)
                        print(f"\r{row}", end="", flush=True)
                    await asyncio.sleep(0.01)
            print()
        finally:
            await producer.stop()
            await admin.close()
            await ends_reader.stop()
            worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(30)
            if worker.poll() is None:
                worker.kill()
            log.close()
    _plot(rows, out.with_suffix(".png"))
    _summary(rows)
    return out


def _stats(url: str) -> dict[str, Any]:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(url + "/_emulator/stats", timeout=5) as response:
        result: dict[str, Any] = orjson.loads(response.read())
        return result


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    seconds = [r["seconds"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(seconds, [r["rss_mb"] for r in rows], color="tab:blue")
    top.set_ylabel("worker RSS (MB)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    bottom.plot(seconds, [r["ingest_lag"] for r in rows], label="ingest lag (records)")
    bottom.plot(seconds, [r["sink_lag"] for r in rows], label="sink lag (records)")
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("consumer lag")
    bottom.legend()
    bottom.grid(alpha=0.3)
    fig.suptitle("mpcio soak: worker memory and lag")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def _summary(rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    warm = [r for r in rows if r["seconds"] >= rows[-1]["seconds"] * 0.2]
    rss = [r["rss_mb"] for r in warm]
    low, high = min(rss), max(rss)
    change = (high - low) / low * 100 if low else float("nan")
    verdict = "flat" if change <= 10 else "GROWING"
    late = [r["rss_mb"] for r in rows if r["seconds"] >= rows[-1]["seconds"] * 0.5]
    late_change = (max(late) - min(late)) / min(late) * 100 if late and min(late) else 0.0
    print(
        f"RSS over the second half: {min(late):.1f}-{max(late):.1f} MB ({late_change:.1f}% spread)"
    )  # RocksDB fills its caches for minutes
    print(
        f"RSS after warm-up: {low:.1f}-{high:.1f} MB ({change:.1f}% spread: {verdict}); "
        f"max ingest lag {max(r['ingest_lag'] for r in rows)}, max sink lag "
        f"{max(r['sink_lag'] for r in rows)}, dead letters {rows[-1]['dead_letters']}, "
        f"batches sent {rows[-1]['batches_sent']}, events stored {rows[-1]['events_stored']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="batches per second")
    parser.add_argument("--users", type=int, default=5000, help="fixed user population")
    parser.add_argument("--events", type=int, default=5, help="events per batch")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--store", default="rocksdb://", help="worker table store")
    args = parser.parse_args()
    print(f"results: {asyncio.run(soak(args))}")


if __name__ == "__main__":
    main()
