"""Stopping child processes: the one helper the local broker and the benchmarks share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from app.dev import demo
from app.dev.localkafka import signal_group_and_wait, signals_deferred
from bench.e2e import procs

if TYPE_CHECKING:
    from pathlib import Path

SLEEPER = "import time; time.sleep(120)"
# Ignores SIGTERM, says so on stdout once it does, then sleeps: only SIGKILL ends it.
STUBBORN = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(120)"
)


def _start(code: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    if code == STUBBORN:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    return process


@pytest.mark.parametrize(
    ("code", "signum", "grace", "exit_code"),
    [
        pytest.param(SLEEPER, signal.SIGTERM, 60.0, -signal.SIGTERM, id="sigterm-obeyed"),
        pytest.param(STUBBORN, signal.SIGTERM, 0.2, -signal.SIGKILL, id="sigterm-ignored"),
        pytest.param(SLEEPER, signal.SIGKILL, 60.0, -signal.SIGKILL, id="sigkill"),
    ],
)
def test_signal_group_and_wait(
    code: str, signum: signal.Signals, grace: float, exit_code: int
) -> None:
    process = _start(code)
    assert signal_group_and_wait(process, signum, grace) == exit_code
    assert process.poll() == exit_code


def test_an_exited_process_is_not_signalled_again() -> None:
    process = _start("pass")
    process.wait(60)
    assert signal_group_and_wait(process, signal.SIGKILL, 1.0) == 0


def test_stop_all_stops_every_child(tmp_path: Path) -> None:
    children = [
        procs.spawn([sys.executable, "-c", SLEEPER], log=tmp_path / f"{i}.log") for i in range(3)
    ]
    procs.stop_all()
    assert [child.poll() for child in children] == [-signal.SIGTERM] * 3


def _raise_stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def test_a_signal_held_by_signals_deferred_is_raised_as_the_block_ends() -> None:
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    ran_to_the_end: list[bool] = []

    def held() -> None:
        with signals_deferred(signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), signal.SIGTERM)
            ran_to_the_end.append(True)  # the handler would have raised before this line

    try:
        with pytest.raises(KeyboardInterrupt):
            held()
        assert ran_to_the_end == [True]
        assert signal.getsignal(signal.SIGTERM) is _raise_stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_while_the_demo_starts_a_child_stops_that_child(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The SIGTERM lands inside ``Popen``, after the fork: the demo still stops the child (it
    once left its emulator running that way)."""
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def popen_then_sigterm(_argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = popen([sys.executable, "-c", SLEEPER], **kwargs)
        started.append(process)
        os.kill(os.getpid(), signal.SIGTERM)
        return process

    monkeypatch.setattr(demo.subprocess, "Popen", popen_then_sigterm)
    with (
        pytest.raises(KeyboardInterrupt),
        demo._stopped_by_signals(),
        demo._child(["emulator"], tmp_path / "child.log"),
    ):
        pytest.fail("the SIGTERM must stop the demo before it uses the child")
    (child,) = started
    assert child.poll() == -signal.SIGTERM


# Stops gracefully (exit 0, after 0.5 s) on the first SIGTERM; a second one while it stops
# ends it by the default action, as a faust worker late in its shutdown.
GRACEFUL_ONCE = (
    "import signal, sys, time\n"
    "def stopping(*_):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_DFL); time.sleep(0.5); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stopping); print('ready', flush=True); time.sleep(120)"
)


def test_a_group_is_sent_one_sigterm_per_process(tmp_path: Path) -> None:
    children = [
        procs.spawn([sys.executable, "-c", GRACEFUL_ONCE], log=tmp_path / f"{i}.log")
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    for i in range(2):  # the handler is installed once it has said so
        while b"ready" not in (tmp_path / f"{i}.log").read_bytes():
            assert children[i].poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.01)  # polling a log file: nothing to await
    assert procs.Group(children).stop(grace=60.0) == [0, 0]
