"""SIGTERM at several moments of a worker's start-up (real Kafka, ``exactly_once``, RocksDB
store): each is a clean, quick stop with exit code 0 (app.stopping), never a death by the
signal (-15, as the chaos runs saw for workers 0.2-10.4 s old)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from app.dev.localkafka import LocalKafka, free_port
from app.localstore import MARKER
from tests.integration.conftest import Names
from tests.integration.support import WorkerProcess, wait_for, worker_env

# what the worker has reached when the SIGTERM is sent: None = its handler is in place
# (still importing); then log lines of the start-up in their order
MOMENTS = {
    "importing": None,
    "transactions checked": "app.worker: Kafka transactions:",
    "settings loaded": "app.worker: settings:",
    "faust starting": "[^ForwarderWorker]: Starting...",
}
pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs /proc to see the worker's handlers"
)
START_TIMEOUT = 120.0  # a loaded machine; the condition is awaited, not the time
EXIT_TIMEOUT = 60.0  # well above the 25 s stop deadline, which would exit 1


def _catches_sigterm(pid: int) -> bool:
    """True once process ``pid`` has a handler for SIGTERM (Linux: /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("moment", list(MOMENTS))
async def test_sigterm_during_start_up_stops_the_worker_cleanly(
    kafka: LocalKafka, names: Names, tmp_path: Path, moment: str
) -> None:
    data_dir = tmp_path / "data"
    env = worker_env(
        kafka.url,
        names.prefix,
        free_port(),
        processing_guarantee="exactly_once",
        store="rocksdb://",
        data_dir=str(data_dir),
    )
    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    process = worker.process
    assert process is not None
    line = MOMENTS[moment]
    try:
        if line is None:  # Python catches no SIGTERM by default; faust's handler comes later
            await wait_for(lambda: _catches_sigterm(process.pid), START_TIMEOUT, "a handler")
            assert "[^ForwarderWorker]: Starting" not in worker.output()
        else:
            await wait_for(lambda: line in worker.output(), START_TIMEOUT, repr(line))
        assert process.poll() is None, worker.output()[-3000:]
        process.send_signal(signal.SIGTERM)
        began = time.monotonic()
        await wait_for(lambda: process.poll() is not None, EXIT_TIMEOUT, "the worker's exit")
    finally:
        worker.kill()
    output = worker.output()
    assert process.returncode == 0, f"exit {process.returncode}; log:\n{output[-3000:]}"
    assert "graceful stop exceeded" not in output
    if "during start-up" in output:
        # cut short anywhere: the store is not vouched for, the next start rebuilds it
        assert not list(data_dir.rglob(MARKER))
    print(f"{moment}: exit 0 in {time.monotonic() - began:.1f} s")
