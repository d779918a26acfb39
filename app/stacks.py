"""Where a process waits: every thread's stack and every asyncio task's chain of awaits.

Written when a graceful stop overruns its deadline (:func:`app.worker.arm_stop_deadline`),
just before the process exits: a worker that hangs inside a record (seen once in CI: faust's
"Wait for streams..." never ended, with nothing in the log to say what the agent awaited)
then leaves the code location of each wait in its log.

Only code locations are written (file, line, function, the type of the awaited object), never
a value, so no personal data and no secret can appear. Reading another thread's frames and
tasks is racy by nature; a report that fails says so in one line instead of raising (the
process must still exit).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


def stack_report(frames: Mapping[int, types.FrameType], tasks: Iterable[asyncio.Task[Any]]) -> str:
    """The report: for each thread (``frames``: thread id → its current frame, as
    ``sys._current_frames()``), its stack outermost first; then for each task, its name and
    its chain of awaits outermost first (:func:`await_chain`), ending with what it waits on."""
    lines: list[str] = []
    for thread_id, frame in frames.items():
        lines.append(f"thread {thread_id}:")
        stack: list[str] = []
        current: types.FrameType | None = frame
        while current is not None:
            stack.append(_location(current))
            current = current.f_back
        lines.extend(reversed(stack))
    for task in tasks:
        lines.append(f"task {task.get_name()}:")
        lines.extend(await_chain(task.get_coro()))
    return "\n".join(lines) + "\n"


def await_chain(awaitable: Any) -> list[str]:
    """The frames of ``awaitable`` (a coroutine, async generator or generator) and of what
    it awaits, down to the innermost, then ``awaiting <type>`` of the object that is not a
    coroutine (a future, an event's waiter); ``[]`` for None.

    An ``async for`` suspends on an object that exposes no frame (``async_generator_asend``);
    the async generator it drives is found among that object's references (``gc``)."""
    lines: list[str] = []
    seen: set[int] = set()
    current = awaitable
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frame = _frame_of(current)
        if frame is None:
            inner = _driven_generator(current)
            if inner is None:
                lines.append(f"  awaiting {type(current).__name__}")
                break
            current = inner
            continue
        lines.append(_location(frame))
        current = _awaited_by(current)
    return lines


def _frame_of(awaitable: Any) -> types.FrameType | None:
    for attribute in ("cr_frame", "ag_frame", "gi_frame"):
        frame = getattr(awaitable, attribute, None)
        if frame is not None:
            return frame  # type: ignore[no-any-return]
    return None


def _awaited_by(awaitable: Any) -> Any:
    for attribute in ("cr_await", "ag_await", "gi_yieldfrom"):
        awaited = getattr(awaitable, attribute, None)
        if awaited is not None:
            return awaited
    return None


def _driven_generator(awaitable: Any) -> Any:
    """The async generator or coroutine that a frameless awaitable drives, or None."""
    if isinstance(awaitable, asyncio.Future):
        return None
    kinds = (types.AsyncGeneratorType, types.CoroutineType, types.GeneratorType)
    return next((ref for ref in gc.get_referents(awaitable) if isinstance(ref, kinds)), None)


def _location(frame: types.FrameType) -> str:
    code = frame.f_code
    return f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}'


def report_now(loop: asyncio.AbstractEventLoop | None) -> str:
    """:func:`stack_report` of this process (the tasks of ``loop``; none without a loop), or
    one line saying why it could not be made."""
    try:
        tasks = asyncio.all_tasks(loop) if loop is not None else set()
        return stack_report(sys._current_frames(), tasks)
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not keep the process alive
        return f"(no stack report: {exc!r})\n"
