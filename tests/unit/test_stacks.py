"""The stack report written when a graceful stop overruns (app/stacks.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from app.stacks import await_chain, report_now, stack_report


async def _stuck_send(gate: asyncio.Event) -> None:
    await gate.wait()


async def _records(gate: asyncio.Event) -> AsyncIterator[int]:
    # like an ingest agent: an async generator stuck inside a record's send
    await _stuck_send(gate)
    yield 1


async def _slurp(gate: asyncio.Event) -> None:
    # like faust's agent task: an ``async for`` over the agent's generator
    async for _ in _records(gate):
        pass


async def test_a_task_stuck_under_an_async_for_names_every_await_down_to_the_future() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(_slurp(gate), name="agent-task")
    await asyncio.sleep(0)  # the task runs until it waits on the gate
    try:
        chain = await_chain(task.get_coro())
        functions = [line.rsplit(" in ", 1)[-1] for line in chain[:-1]]
        # _records is reached through the frameless async_generator_asend of the async for
        assert functions == ["_slurp", "_records", "_stuck_send", "wait"], chain
        assert chain[-1] == "  awaiting FutureIter", chain  # the event's future
        report = stack_report({}, [task])
        assert report.startswith("task agent-task:\n"), report
        assert f'File "{__file__}"' in report
    finally:
        gate.set()
        await task


async def test_the_report_of_this_process_has_this_thread_and_the_running_tasks() -> None:
    report = report_now(asyncio.get_running_loop())
    this_test = "test_the_report_of_this_process_has_this_thread_and_the_running_tasks"
    assert report.count(f"in {this_test}") == 2, report  # as a thread's frame and as a task
    assert report.splitlines()[0].startswith("thread "), report


def test_without_a_loop_only_threads_are_reported() -> None:
    report = report_now(None)
    assert "task " not in report
    assert report.count("thread ") == len(sys._current_frames()), report
    assert "in test_without_a_loop_only_threads_are_reported" in report


def test_an_unreadable_task_gives_one_line_instead_of_raising() -> None:
    class Broken:
        def get_name(self) -> str:
            raise RuntimeError("gone")

    report_failed = report_now_with([Broken()])
    assert report_failed == "(no stack report: RuntimeError('gone'))\n"


def report_now_with(tasks: list[object]) -> str:
    """report_now's failure path with ``tasks`` in place of the loop's."""
    loop = asyncio.new_event_loop()
    original = asyncio.all_tasks
    try:
        asyncio.all_tasks = lambda _loop=None: tasks  # type: ignore[assignment,return-value]
        return report_now(loop)
    finally:
        asyncio.all_tasks = original
        loop.close()
