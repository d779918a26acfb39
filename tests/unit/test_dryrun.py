"""``mpcio dry-run``: items on stdout in order, bad lines on stderr with their line numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "mparticle-batches.jsonl"


def _dry_run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "app", "dry-run", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_dry_run_prints_items_and_reports_bad_lines() -> None:
    result = _dry_run(str(SAMPLE))
    assert result.returncode == 1  # the sample holds invalid lines on purpose
    items = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert items, "expected operations for the valid lines"
    assert all(item["type"] == "person" for item in items)
    assert items[0]["action"] == "identify"
    errors = result.stderr.decode().splitlines()
    assert "line 5: events_not_a_list: events is an object" in errors
    assert any(line.startswith("line 10: invalid_json:") for line in errors)


def test_dry_run_flags_override_settings() -> None:
    line = orjson.dumps({
        "mpid": 1, "user_identities": {"email": "a@example.com"},
        "user_attributes": {"$FirstName": "A", "plan": "pro"},
        "application_info": {"os": "IOS"}, "timestamp_unixtime_ms": 1_764_400_000_000,
    })  # fmt: skip
    default = orjson.loads(_dry_run("-", stdin=line).stdout)
    assert default["attributes"]["plan"] == "pro"
    assert "created_at" not in default["attributes"]
    flipped = orjson.loads(
        _dry_run("-", "--no-include-user-attributes", "--send-created-at", stdin=line).stdout
    )
    assert "plan" not in flipped["attributes"]
    assert flipped["attributes"]["created_at"] == 1_764_400_000


def test_dry_run_unreadable_file_fails() -> None:
    result = _dry_run("/nonexistent/file.jsonl")
    assert result.returncode == 1
    assert b"cannot read" in result.stderr
