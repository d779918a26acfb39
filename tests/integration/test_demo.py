"""The README's run command (`make run` = `mpcio demo`) works end to end and cleans up."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.integration.support import REPO

pytestmark = pytest.mark.integration


def test_demo_forwards_the_sample_and_stops_everything() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    # the sample's six people, then one erased through the Firehose ingress
    assert "Customer.io now holds 5 people and 7 events" in out
    assert "1 person deleted by erasure" in out
    assert "joined 'Demo VIPs' → SegmentMembership=\"'9001'\", In Demo VIPs=True" in out
    assert "left 'Demo VIPs' → SegmentMembership='', In Demo VIPs=False" in out
    assert "UNSUBSCRIBED" in out
    assert "Dead letters (3)" in out
    assert "✓ stopped the ingress, the worker, the emulator and Kafka" in out
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 3, out  # the emulator, the worker and the ingress
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"process {pid} still running"


class Output:
    """The stdout lines of a process, read by a thread so that waiting for one can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(process.stdout,), daemon=True).start()

    def _pump(self, stdout: Iterable[str]) -> None:
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, marker: str, timeout: float) -> str:
        """Everything read so far, once a line containing ``marker`` was read."""
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} within {timeout}s:\n" + "".join(self.seen)
            with contextlib.suppress(queue.Empty):
                line = self._lines.get(timeout=remaining)
                assert line is not None, "the process ended early:\n" + "".join(self.seen)
                self.seen.append(line)
        return "".join(self.seen)

    def rest(self, timeout: float) -> str:
        """Everything read, once the process closed its stdout."""
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


@pytest.mark.parametrize("when", ["starting", "running", "keep-running"])
def test_demo_stopped_by_sigterm_leaves_no_process_and_no_temp_folder(
    when: str, tmp_path: Path
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MPCIO_")}
    kafka_cache = os.environ.get("MPCIO_KAFKA_CACHE")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "demo", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        # the demo's temp folder lands in tmp_path, where the test can look for it
        env={**clean, "TMPDIR": str(tmp_path)}
        | ({"MPCIO_KAFKA_CACHE": kafka_cache} if kafka_cache else {}),
    )
    try:
        marker = {
            "starting": "✓ Kafka",
            "running": "→ produced",
            "keep-running": "mpcio deadletter list;",
        }[when]
        output = Output(process)
        seen = output.until(marker, 240)
        (workdir,) = list(tmp_path.glob("mpcio-demo-*"))
        pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", seen)]
        if when == "keep-running":
            assert len(pids) == 3, seen  # the emulator, the worker and the ingress
            assert f"logs in {workdir}" in seen
            exports = dict(re.findall(r"^  export (MPCIO_\w+)=(\S+)$", seen, re.MULTILINE))
            assert exports["MPCIO_BROKER"].startswith("kafka://127.0.0.1:")
            # the demo names dead letters the way `mpcio deadletter show` accepts them
            listed = re.findall(r"^ +(\d+@\d+)  (\w+): ", seen, re.MULTILINE)
            assert len(listed) == 3, seen
            position, reason = listed[0]
            shown = subprocess.run(
                [sys.executable, "-m", "app", "deadletter", "show", position],
                env={**clean, **exports},
                capture_output=True,
                text=True,
                timeout=120,
                cwd=REPO,
                check=False,
            )
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["reason"] == reason
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        everything = output.rest(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # SIGTERM (docker stop) is a normal stop, at any point, as for `mpcio worker`
    assert process.returncode == 0, everything
    if when == "keep-running":
        assert "✓ stopped the ingress, the worker, the emulator and Kafka" in everything, everything
    else:
        assert "✓ SIGTERM: stopped what the demo had started" in everything, everything
    assert "Traceback" not in everything
    assert not list(tmp_path.glob("mpcio-demo-*")), "the temp folder is left"
    leftover = subprocess.run(
        ["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert not leftover, f"processes of the demo still running: {leftover}"
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"process {pid} still running"
