"""Where do the event loop's tasks wait? A sampling thread for the faust worker.

Every ``interval`` seconds it walks each task's await chain (``cr_await`` / ``ag_await``) down
to the innermost suspended frame and counts ``file:line function`` per task name, so the
report says e.g. "the agent task spent 70% of samples parked in Stream.__anext__ waiting for
the channel queue". Diagnostic only (it reads another thread's loop without locking), enabled
by ``"task_sampler": true`` in the worker config; the counts go to ``<result>.tasks.json``.
Limitation: a chain through ``async for`` over an async generator is followed via ``gc``
where possible; faust's agent task still often ends at ``Agent._execute_actor``, so read the
fetcher and producer tasks, which resolve fully.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import threading
import time
from pathlib import Path
from typing import Any


def _chain(coro: Any) -> list[str]:
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            short = "/".join(code.co_filename.rsplit("/", 2)[-2:])
            frames.append(f"{short}:{frame.f_lineno} {code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        if coro is not None and type(coro).__name__ == "async_generator_asend":
            # `async for` awaits an asend object; the generator is only reachable via gc
            coro = next((r for r in gc.get_referents(coro) if hasattr(r, "ag_frame")), None)
    return frames


class TaskSampler(threading.Thread):
    def __init__(self, loop: asyncio.AbstractEventLoop, out: Path, interval: float = 0.005):
        super().__init__(daemon=True)
        self.loop = loop
        self.out = out
        self.interval = interval
        self.active = threading.Event()
        self.samples = 0
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            if not self.active.is_set():
                continue
            try:
                tasks = list(asyncio.all_tasks(self.loop))
            except RuntimeError:
                continue
            self.samples += 1
            for task in tasks:
                name = task.get_name()
                coro = task.get_coro()
                top = _chain(coro)
                if not top:
                    continue
                qual = getattr(coro, "__qualname__", name)
                self.counts[(qual, " <- ".join(reversed(top[-4:])))] += 1

    def dump(self) -> None:
        rows = [
            {"task": task, "innermost": where, "share": round(n / max(self.samples, 1), 3)}
            for (task, where), n in self.counts.most_common(60)
        ]
        self.out.write_text(json.dumps({"samples": self.samples, "top": rows}, indent=1))
