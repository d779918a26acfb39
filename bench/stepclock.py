"""Where a worker's CPU goes per record: its per-record step vs the rest of its main thread
vs its other threads (issue 19, round 6).

:class:`StepClock` wraps the step a benchmark worker calls for every record
(``process_batch_record`` and what feeds it) and adds up the main thread's CPU time inside it
(``time.thread_time``: this thread only, so time other threads or processes take while the
step runs is not counted); :meth:`StepClock.mark` notes the main thread's and the whole
process's CPU time (all threads, ``getrusage``) at the first and the latest processed record.
:mod:`bench.ceiling.faust_worker` (faust contenders) and :mod:`bench.e2e.raweos` (plain
aiokafka) write :meth:`StepClock.summary` to their result file, so :mod:`bench.e2e` can show
the same step's cost inside faust's agent and outside it, from the same run. Overhead: two
``thread_time`` calls per record (about a microsecond), two ``getrusage`` per mark.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def process_cpu() -> float:
    """CPU seconds of the whole process so far (user + system, every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StepClock:
    """Main-thread CPU inside the step, and the main thread's and process's CPU between the
    first and the latest :meth:`mark`. Not thread-safe: the step and the marks run on the
    worker's event loop thread."""

    def __init__(self) -> None:
        self.step_seconds = 0.0
        self.steps = 0
        self.first: tuple[float, float] | None = None  # (main thread, process) CPU s
        self.latest: tuple[float, float] | None = None

    def timed(self, step: Callable[P, R]) -> Callable[P, R]:
        """``step``, adding the main thread's CPU time spent in each call to the clock."""

        def clocked(*args: P.args, **kwargs: P.kwargs) -> R:
            began = time.thread_time()
            try:
                return step(*args, **kwargs)
            finally:
                self.step_seconds += time.thread_time() - began
                self.steps += 1

        return clocked

    def mark(self) -> None:
        """Note the CPU times now: the first call starts the measured span, every call ends it."""
        self.latest = (time.thread_time(), process_cpu())
        if self.first is None:
            self.first = self.latest

    def summary(self) -> dict[str, Any]:
        """``steps``, ``step_cpu_seconds`` (main thread, inside the step), and over the span
        of the marks ``main_thread_cpu_seconds`` and ``process_cpu_seconds``; the span's
        figures are 0 before two marks."""
        first = self.first or (0.0, 0.0)
        latest = self.latest or first
        return {
            "steps": self.steps,
            "step_cpu_seconds": round(self.step_seconds, 4),
            "main_thread_cpu_seconds": round(latest[0] - first[0], 4),
            "process_cpu_seconds": round(latest[1] - first[1], 4),
        }
