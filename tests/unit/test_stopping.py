"""SIGTERM/SIGINT in ``mpcio worker``'s start-up (app.stopping): a clean stop with exit code 0
from the moment ``app.cli`` is imported, instead of Python's default death by the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from app import stopping
from app.stopping import StoppedDuringStartup, install_startup_handlers, is_worker_command


@pytest.fixture
def handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Restores the test process's handlers afterwards; records deadlines instead of arming
    them (a real one would end pytest)."""
    saved = {signum: signal.getsignal(signum) for signum in stopping.STOP_SIGNALS}
    armed: list[float] = []
    monkeypatch.setattr(stopping, "arm_stop_deadline", lambda: armed.append(1.0))
    yield armed
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_only_the_worker_command_gets_the_start_up_handlers() -> None:
    assert is_worker_command(["/usr/local/bin/mpcio", "worker"])
    assert is_worker_command(["/app/app/__main__.py", "worker"])  # python -m app worker
    assert not is_worker_command(["/usr/local/bin/mpcio", "replay", "worker"])
    assert not is_worker_command(["/usr/local/bin/mpcio"])
    assert not is_worker_command(["pytest", "tests/unit"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_in_start_up_exits_cleanly_once(
    handlers: list[float], signum: signal.Signals
) -> None:
    install_startup_handlers()

    with pytest.raises(StoppedDuringStartup) as stopped:
        os.kill(os.getpid(), signum)

    assert stopped.value.code == 0  # a graceful stop's exit code
    assert stopped.value.signum == signum
    assert handlers == [1.0]  # the unwinding is bounded by the stop deadline
    # a second signal while unwinding is ignored, not a death by the signal
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)


def test_the_handlers_are_in_place_once_the_cli_module_is_imported() -> None:
    # the worker's command line, then a SIGTERM right after `app.cli` (and before anything
    # faust) was imported: exit 0 with one line, not -15
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['mpcio', 'worker']\n"
        "import app.cli\n"
        "assert 'faust' not in sys.modules\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "signal.pause()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"mpcio: SIGTERM during start-up; stopping" in result.stderr
