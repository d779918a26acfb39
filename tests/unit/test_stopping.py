"""SIGTERM/SIGINT in ``mpcio worker``'s start-up (app.stopping): a clean stop with exit code 0
from the moment ``app.cli`` is imported, instead of Python's default death by the signal."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from app.stopping import is_worker_command


def test_only_the_worker_command_gets_the_start_up_handlers() -> None:
    assert is_worker_command(["/usr/local/bin/mpcio", "worker"])
    assert is_worker_command(["/app/app/__main__.py", "worker"])  # python -m app worker
    assert not is_worker_command(["/usr/local/bin/mpcio", "replay", "worker"])
    assert not is_worker_command(["/usr/local/bin/mpcio"])
    assert not is_worker_command(["pytest", "tests/unit"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_handlers_are_in_place_once_the_cli_module_is_imported(signum: int) -> None:
    # the worker's command line, then a stop signal right after `app.cli` (and before anything
    # faust) was imported: exit 0 with one line, not -15, and no unwinding (the `finally`
    # would print)
    code = (
        "import os, signal, sys\n"
        "sys.argv = ['mpcio', 'worker']\n"
        "import app.cli\n"
        "assert 'faust' not in sys.modules\n"
        "try:\n"
        f"    os.kill(os.getpid(), {int(signum)})\n"
        "    signal.pause()\n"
        "finally:\n"
        "    print('unwound', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    name = signal.Signals(signum).name.encode()
    line = b"mpcio: " + name + b" during start-up; stopped (nothing consumed yet)\n"
    assert result.stderr == line
