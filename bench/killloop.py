"""The long kill loop: ``python -m bench.killloop`` (defaults: 40 kills over 4,000 batches).

Starts a local Kafka broker (its own data directory), the Customer.io emulator in this process
and the worker topics, then runs :func:`tests.integration.killloop.run_kill_loop`: the
reference workload (batches, and erasures of a seeded share of users) produced at a steady pace
while a worker on ``rocksdb://`` (one data
directory across restarts) is SIGKILLed at seeded random moments and restarted, then the
reference model's verdict. Prints one line per kill and the figures (kills, events in,
delivered, lost, duplicates the emulator suppressed, visible duplicates, wrong people,
erasures, people deleted, reappeared); exits 1
when the verdict is not clean. CI runs the short form (tests/integration/test_reliability.py).

``--guarantee`` picks the worker's processing guarantee: ``exactly_once`` (Kafka transactions,
the product's default, ARCHITECTURE.md §4) or ``at_least_once``.
Stops everything it started, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from app.dev.emulator.server import EmulatorConfig, running_emulator
from app.dev.localkafka import LocalKafka
from tests.integration.conftest import API_KEY, SITE_ID, Deployment, Names
from tests.integration.killloop import KillLoopPlan, run_kill_loop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.killloop", description=__doc__)
    parser.add_argument("--kills", type=int, default=40, help="at least this many SIGKILLs")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=8, help="batches per user")
    parser.add_argument("--events", type=int, default=2, help="custom events per batch")
    parser.add_argument("--rate", type=float, default=20.0, help="batches produced per second")
    parser.add_argument("--seed", type=int, default=1311)
    parser.add_argument(
        "--guarantee", choices=("exactly_once", "at_least_once"), default="exactly_once"
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> bool:
    plan = KillLoopPlan(
        users=args.users,
        rounds=args.rounds,
        events=args.events,
        rate=args.rate,
        kills=args.kills,
        seed=args.seed,
    )
    print(
        f"kill loop: {plan.batches} batches at {plan.rate:g}/s, >= {plan.kills} kills, "
        f"seed {plan.seed}, {args.guarantee}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mpcio-killloop-") as temp:
        workdir = Path(temp)
        broker = LocalKafka(data_dir=workdir / "kafka")
        broker.start()
        try:
            async with running_emulator(
                EmulatorConfig(site_id=SITE_ID, api_key=API_KEY)
            ) as emulator:
                names = Names(f"killloop-{uuid.uuid4().hex[:8]}")
                deployment = Deployment(broker, names, workdir, emulator.url)
                await deployment.prepare()
                try:
                    result = await run_kill_loop(
                        deployment,
                        emulator,
                        plan,
                        worker_env={
                            "batch_max_items": "50",
                            "kafka_session_timeout_seconds": "6",
                            "processing_guarantee": args.guarantee,
                        },
                        progress=lambda line: print(line, flush=True),
                    )
                finally:
                    for worker in deployment.workers:
                        worker.kill()
        finally:
            broker.close()
    print(result.summary(), flush=True)
    print(f"kill moments (s after start): {result.kill_moments}", flush=True)
    return result.verdict.ok


def main(argv: list[str] | None = None) -> None:
    ok = asyncio.run(run(parse_args(argv)))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
