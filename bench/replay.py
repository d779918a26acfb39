"""Replay throughput: ``mpcio replay`` of a generated file into a local broker.

Run: ``.venv/bin/python -m bench.replay [--records N]``. Starts its own local Kafka (loopback),
writes N three-event batches to a JSONL file, replays it with :func:`app.ops.replay.replay_file`
(the code behind ``mpcio replay``) and prints records/s and CPU seconds. Speed is a figure
here, never a test assertion: tests assert behaviour only (DEVELOPERS.md, "Honest tests").
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import resource
import tempfile
from pathlib import Path

import orjson

from app.dev.localkafka import LocalKafka
from app.kafka_admin import ensure_topics
from app.ops.replay import replay_file
from app.settings import Settings
from app.topics import topics_for

T0 = 1_764_400_000_000


def write_batches(path: Path, records: int) -> None:
    """``records`` JSON lines, one three-event batch each, over 1,000 users."""
    with path.open("wb") as out:
        for index in range(records):
            user = index % 1000
            events = [
                {
                    "event_type": "custom_event",
                    "data": {
                        "event_name": f"Event {n}",
                        "timestamp_unixtime_ms": T0 + index * 10 + n,
                        "custom_attributes": {"n": n},
                    },
                }
                for n in range(3)
            ]
            batch = {
                "mpid": 10_000 + user,
                "environment": "production",
                "timestamp_unixtime_ms": T0 + index * 10,
                "user_identities": {"email": f"user{user}@example.com"},
                "events": events,
            }
            out.write(orjson.dumps(batch) + b"\n")


async def run(records: int) -> None:
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader elections of new topics
    with tempfile.TemporaryDirectory(prefix="mpcio-bench-replay-") as folder, LocalKafka() as kafka:
        path = Path(folder) / "batches.jsonl"
        write_batches(path, records)
        settings = Settings(broker=kafka.url, app_id="bench-replay", forwarding_enabled=False)
        await ensure_topics(settings.bootstrap_servers, topics_for(settings))
        cpu_before = _cpu_seconds()
        summary = await replay_file(settings, str(path), errors=io.StringIO())
        cpu = _cpu_seconds() - cpu_before
        print(
            f"replay: {summary.sent:,} records in {summary.seconds:.2f} s = "
            f"{summary.rate:,.0f} records/s, {cpu / max(summary.sent, 1) * 1e6:.1f} CPU µs/record"
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    asyncio.run(run(parser.parse_args().records))


if __name__ == "__main__":
    main()
