"""The kill loop: a worker SIGKILLed again and again at seeded random moments, then a verdict.

Shared by the CI test (``tests/integration/test_reliability.py``, short form) and the bench
(``python -m bench.killloop``, long form). A paced producer writes the reference workload
(:mod:`tests.integration.reliability_model`: batches, and erasures of some users racing with
their batches or after them) to the batches and erasure topics while a loop starts a worker
on ``rocksdb://`` with ONE data directory kept across restarts, waits a random moment and
SIGKILLs it, again and again; the kills land during start-up and recovery, during ingest and
during delivery (the worker ingests and delivers at once). After the last kill a worker runs
until the emulator holds exactly the expected events and stays quiet; the reference model
then decides: 0 lost, 0 visible duplicates, every person's attributes and unsubscribed flag
right, every erased person gone (or new, from the batches after its erasure alone).

Randomness comes from ``seed`` only (moments and kinds of kill), so a failing run can be
repeated; what happens inside the worker at each moment still depends on the machine.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.integration import reliability_model
from tests.integration.support import (
    judge,
    message_count,
    produce_workload,
    stored_seqs,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment
    from tests.integration.support import WorkerProcess

# Share of kills aimed at start-up and table recovery (before the worker delivers anything);
# the others wait until the worker delivered something new, then a random moment.
EARLY_KILL_SHARE = 0.2
EARLY_KILL_SECONDS = (0.5, 6.0)
LATE_KILL_SECONDS = (0.0, 3.0)
# A worker that makes no progress for this long (session timeouts of the killed one, table
# recovery and a rebalance on a busy 2-core box) is killed anyway: progress is awaited, never
# required, so a loop cannot hang on a slow start.
PROGRESS_TIMEOUT_SECONDS = 90.0
# The final worker: how long it may take in all, and how long a quiet emulator means "done".
FINAL_TIMEOUT_SECONDS = 300.0
QUIET_SECONDS = 30.0


@dataclass(frozen=True)
class KillLoopPlan:
    """What to run: workload size, pace, number of kills and the seed of every random choice.

    ``users`` x ``rounds`` batches of ``events`` custom events, produced at ``rate`` batches/s;
    at least ``kills`` SIGKILLs (more while the producer still runs).
    """

    users: int
    rounds: int
    events: int
    rate: float
    kills: int
    seed: int

    @property
    def batches(self) -> int:
        return self.users * self.rounds


@dataclass
class KillLoopResult:
    """Figures of one kill loop: the verdict and what the loop did to get there."""

    plan: KillLoopPlan
    verdict: reliability_model.Verdict
    kills: int
    early_kills: int
    dead_letters: int
    seconds: float
    identifies: int
    expected_identifies: int
    kill_moments: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"kill loop (seed {self.plan.seed}): kills {self.kills} ({self.early_kills} during "
            f"start-up/recovery), batches {self.plan.batches}, {self.seconds:.0f} s; "
            + self.verdict.summary("verdict", self.dead_letters)
            + f"; identifies {self.identifies} (rules call for {self.expected_identifies})"
        )


async def run_kill_loop(
    deployment: Deployment,
    emulator: RunningEmulator,
    plan: KillLoopPlan,
    *,
    worker_env: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> KillLoopResult:
    """Run ``plan`` against ``deployment`` (its topics exist) and return the figures.

    ``worker_env`` adds settings (lower-case names, as :meth:`Deployment.start_worker` takes);
    every worker gets ``store=rocksdb://`` and the same ``data_dir``. Raises
    :class:`AssertionError` when the final worker cannot deliver the expected events within a
    generous timeout (with the emulator's counters); the verdict itself is returned, not
    asserted, so callers print it first.
    """
    workload = reliability_model.generate(plan.users, plan.rounds, plan.events)
    expected = len(workload.expected.events)
    wanted = workload.expected.events
    rng = random.Random(plan.seed)
    env = {
        "store": "rocksdb://",
        "data_dir": str(deployment.tmp_path / "data"),
        **(worker_env or {}),
    }
    began = time.monotonic()
    producer = asyncio.create_task(
        produce_workload(deployment, workload.sends, plan.rate, workload.follows),
        name="paced producer",
    )
    kills = early = 0
    moments: list[float] = []
    try:
        while kills < plan.kills or not producer.done():
            worker = deployment.start_worker(**env)
            started = time.monotonic()
            if rng.random() < EARLY_KILL_SHARE:
                await _sleep_while_running(worker, rng.uniform(*EARLY_KILL_SECONDS))
                early += 1
            else:
                await _until_progress(emulator, worker)
                await _sleep_while_running(worker, rng.uniform(*LATE_KILL_SECONDS))
            worker.assert_running()
            worker.kill()
            kills += 1
            moments.append(round(time.monotonic() - started, 2))
            progress(
                f"kill {kills}: {moments[-1]:.1f} s after start, "
                f"emulator holds {len(stored_seqs(emulator) & wanted)}/{expected} events"
            )
        await producer
        final = deployment.start_worker(**env)
        await _until_all_delivered(emulator, workload.expected, final)
        await _settle(emulator)
    finally:
        producer.cancel()
    # Kills cause redeliveries: an identify arriving after a newer one is explained.
    verdict = await judge(emulator, workload, deployment, stale_explained=True)
    dead = await message_count(deployment.kafka.bootstrap, deployment.topics.deadletter.name)
    return KillLoopResult(
        plan=plan,
        verdict=verdict,
        kills=kills,
        early_kills=early,
        dead_letters=dead,
        seconds=time.monotonic() - began,
        identifies=emulator.state.store.identifies,
        expected_identifies=workload.expected.identifies,
        kill_moments=moments,
    )


async def _sleep_while_running(worker: WorkerProcess, seconds: float) -> None:
    """Sleep ``seconds`` (the random moment itself), failing early if the worker exits."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        worker.assert_running()
        await asyncio.sleep(min(left, 0.05))


async def _until_progress(emulator: RunningEmulator, worker: WorkerProcess) -> None:
    """Wait until the emulator received a request after ``worker`` started, or time out."""
    requests = emulator.state.stats()["requests"]

    def progressed() -> bool:
        worker.assert_running()
        return bool(emulator.state.stats()["requests"] > requests)

    try:
        await wait_for(progressed, PROGRESS_TIMEOUT_SECONDS, "a request from the new worker")
    except AssertionError:
        worker.assert_running()  # no progress (nothing left to send): kill it all the same


async def _until_all_delivered(
    emulator: RunningEmulator, expected: reliability_model.Expected, worker: WorkerProcess
) -> None:
    """Wait until the emulator holds exactly the expected events (erased ones deleted: see
    :func:`reliability_model.complete`), or until the final worker, after
    delivering something, has sent nothing for ``QUIET_SECONDS`` (what is missing then is
    lost, and the verdict says so), or ``FINAL_TIMEOUT_SECONDS``; fails if the worker exits."""
    began = time.monotonic()
    requests = emulator.state.stats()["requests"]
    delivered = False
    last_change = began
    while not reliability_model.complete(expected, stored_seqs(emulator)):
        worker.assert_running()
        now = time.monotonic()
        current = emulator.state.stats()["requests"]
        if current != requests:
            requests, last_change, delivered = current, now, True
        quiet = delivered and now - last_change > QUIET_SECONDS
        if quiet or now - began > FINAL_TIMEOUT_SECONDS:
            return
        await asyncio.sleep(0.2)


async def _settle(emulator: RunningEmulator) -> None:
    """Wait until no request arrives for two seconds, so late duplicates had their chance."""
    last = -1
    while emulator.state.stats()["requests"] != last:
        last = emulator.state.stats()["requests"]
        await asyncio.sleep(2.0)
