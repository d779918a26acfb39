"""The local broker dies with the process that launched it (README Development, `make test`).

The broker runs in its own session, so neither a terminal's Ctrl-C nor the launcher's death
reaches it; its watchdog (``app.dev.localkafka.watch_parent``) stops it once the launcher is
gone, even when the launcher is killed before any cleanup code runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.support import REPO

pytestmark = pytest.mark.integration

LAUNCHER = """
import sys, time
from pathlib import Path
from app.dev.localkafka import LocalKafka
broker = LocalKafka(data_dir=Path(sys.argv[1]))
broker.start()
print(broker._process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_broker_whose_launcher_is_killed_stops(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "kafka")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    java = 0
    try:
        assert launcher.stdout is not None
        java = int(launcher.stdout.readline())
        assert _alive(java)
        launcher.kill()  # SIGKILL: no finally, no atexit, nothing of the launcher runs
        launcher.wait(30)
        deadline = time.monotonic() + 90  # generous: the watchdog's TERM, then a graceful stop
        while _alive(java) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(java), "the broker outlived the process that launched it"
    finally:
        launcher.kill()
        if java:  # never leave a broker behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.killpg(java, signal.SIGKILL)
