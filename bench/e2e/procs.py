"""Child processes that never outlive the benchmark, and CPU/memory readings from ``/proc``.

Every child is started in its own session (a Ctrl-C in the terminal reaches only the
benchmark, which then stops the children in order) and with ``PR_SET_PDEATHSIG`` = SIGTERM
(if the benchmark itself dies, even by SIGKILL, the kernel stops them). :func:`stop_all`
SIGTERMs what is still running, waits, then SIGKILLs the process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from app.dev.localkafka import signal_group_and_wait

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_CHILDREN: list[subprocess.Popen[bytes]] = []


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], *, log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
            **kwargs,
        )
    _CHILDREN.append(process)
    return process


def stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> int | None:
    """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL the group."""
    signal_group_and_wait(process, signal.SIGTERM, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group
    if process in _CHILDREN:
        _CHILDREN.remove(process)
    return process.returncode


class Group:
    """The N processes of one contender (``--workers N``: one consumer group)."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes
        self.pids = [process.pid for process in processes]

    def poll(self) -> int | None:
        """The exit code of the first process that has exited, None while all run."""
        for process in self.processes:
            if process.poll() is not None:
                return process.returncode
        return None

    def stop(self, grace: float = 30.0) -> list[int | None]:
        """SIGTERM all at once (a rebalance per stopped worker would slow the rest), wait up to
        ``grace`` seconds for all, then SIGKILL what is left (and each group's leftovers); the
        exit codes in launch order. One SIGTERM each: a second one, while a worker is still
        stopping, ends it by the signal's default action (exit code -15, seen with N = 2)."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(deadline - time.monotonic(), 0.0))
        return [stop(process, grace=0.0) for process in self.processes]

    def peak_rss_mb(self) -> float | None:
        """Sum of the processes' peak resident sets (MiB); None if none could be read."""
        peaks = [peak for pid in self.pids if (peak := peak_rss_mb(pid)) is not None]
        return sum(peaks) if peaks else None


def stop_all() -> None:
    while _CHILDREN:  # stop() removes each (iterating the list itself would skip every other)
        stop(_CHILDREN[0], grace=10.0)


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all threads), from ``/proc/<pid>/stat``; 0 when gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores), from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float | None:
    """``VmHWM`` (peak resident set) of a running process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """Samples (wall time, workers' CPU, broker CPU, emulator CPU, machine busy) on demand;
    the workers' column is the sum over all of a contender's processes."""

    def __init__(self, workers: list[int], broker: int | None, emulator: int | None) -> None:
        self.workers = workers
        self.broker, self.emulator = broker, emulator
        self.samples: list[tuple[float, float, float, float, float]] = []
        # a worker that exited keeps the CPU it had used (/proc has nothing for it any more)
        self.worker_cpu = dict.fromkeys(workers, 0.0)

    def sample(self) -> None:
        for pid in self.workers:
            self.worker_cpu[pid] = max(self.worker_cpu[pid], cpu_seconds(pid))
        self.samples.append(
            (
                time.time(),
                sum(self.worker_cpu.values()),
                cpu_seconds(self.broker),
                cpu_seconds(self.emulator),
                machine_busy(),
            )
        )

    def at(self, wall: float, column: int) -> float:
        """Column value interpolated at ``wall`` (clamped to the sampled span)."""
        samples = self.samples
        if not samples:
            return 0.0
        if wall <= samples[0][0]:
            return samples[0][column]
        for before, after in itertools.pairwise(samples):
            if before[0] <= wall <= after[0]:
                span = after[0] - before[0]
                share = 0.0 if span <= 0 else (wall - before[0]) / span
                return before[column] + share * (after[column] - before[column])
        return samples[-1][column]

    def used(self, start: float, end: float, column: int) -> float:
        return self.at(end, column) - self.at(start, column)

    def timeline_utilisation(self, start: float, end: float) -> dict[str, float | None]:
        """Average utilisation (1.0 = one core) of each process and the box over a window."""
        span = end - start
        if span < 0.3 or len([s for s in self.samples if start <= s[0] <= end]) < 2:
            return {"worker": None, "broker": None, "emulator": None, "box": None}
        return {
            name: round(self.used(start, end, column) / span, 3)
            for name, column in (("worker", 1), ("broker", 2), ("emulator", 3), ("box", 4))
        }
