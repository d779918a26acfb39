"""The README's run command (`make run` = `mpcio demo`) works end to end and cleans up."""

from __future__ import annotations

import re
import subprocess
import sys
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
    assert "Customer.io now holds 6 people and 10 events" in out
    assert "UNSUBSCRIBED" in out
    assert "Dead letters (3)" in out
    assert "✓ stopped the worker, the emulator and Kafka" in out
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 2, out  # the emulator and the worker
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"process {pid} still running"
