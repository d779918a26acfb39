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
