"""A real worker logging JSON: every stderr line is one JSON object, no email or key leaks.

Runs a worker on batches full of email addresses through a bad-credentials phase (so errors
are logged) and then with the right key, with ``MPCIO_LOG_FORMAT=json`` and stdout and stderr
captured apart.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest

from tests.integration import workload
from tests.integration.conftest import API_KEY
from tests.integration.support import WorkerProcess, produce, wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
WRONG_KEY = "wrong-key-7f3a9c"


class SplitWorker(WorkerProcess):
    """A worker whose stderr goes to its own file (``log``), stdout to ``<log>.stdout``."""

    def start(self) -> SplitWorker:
        import subprocess  # noqa: PLC0415
        import sys  # noqa: PLC0415

        with self.log.open("ab") as err, self.stdout_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *self.argv],
                env=self.env,
                cwd=self.log.parent,
                stdout=out,
                stderr=err,
            )
        return self

    @property
    def stdout_path(self) -> Path:
        return self.log.with_suffix(".stdout")


async def test_json_logs_are_json_lines_without_emails_or_keys(
    deployment: Deployment, emulator: RunningEmulator, tmp_path: Path
) -> None:
    records = workload.batches(users=20, batches_per_user=2, events_per_batch=2)
    assert any(EMAIL.search(value.decode()) for _, value in records)
    invalid = b'{"mpid": 4242, "user_identities": {"email": "eve@example.com"}, "events": {}}'
    await produce(
        deployment.kafka.bootstrap, deployment.topics.batches.name, [*records, (b"4242", invalid)]
    )
    json_env = {**deployment.env, "MPCIO_LOG_FORMAT": "json", "MPCIO_LOG_LEVEL": "INFO"}

    bad = SplitWorker(
        ["-m", "app", "worker"],
        {**json_env, "MPCIO_CUSTOMERIO_API_KEY": WRONG_KEY},
        tmp_path / "bad.log",
    ).start()
    await wait_for(lambda: "delivery stopped" in bad.output(), 60, "the fatal-stop log line")
    await bad.stop()

    good = SplitWorker(["-m", "app", "worker"], json_env, tmp_path / "good.log").start()
    expected = sum(1 for _, value in records if EMAIL.search(value.decode())) * 2

    def delivered() -> bool:
        good.assert_running()
        return len(emulator.state.store.events) >= expected

    await wait_for(delivered, 90, "events delivered")
    await good.stop()

    levels = set()
    entries = []
    for worker in (bad, good):
        stderr = worker.output()
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines, f"{worker.log} is empty"
        for line in lines:
            entry = json.loads(line)  # every line is one JSON object
            assert isinstance(entry, dict), line
            assert {"time", "level", "logger", "message"} <= entry.keys(), line
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), line
            levels.add(entry["level"])
            entries.append(entry)
        everything = stderr + worker.stdout_path.read_text(errors="replace")
        assert not EMAIL.search(everything), EMAIL.search(everything)
        assert WRONG_KEY not in everything
        assert API_KEY not in everything
    assert "ERROR" in levels  # the bad-credentials phase logged its error
    # the invalid record's dead letter is logged with its context as JSON fields
    letter = next(e for e in entries if e.get("reason") == "events_not_a_list")
    assert letter["topic"] == deployment.topics.batches.name
    assert isinstance(letter["partition"], int)
    assert isinstance(letter["offset"], int)
    assert letter["stage"] == "ingest"
    assert letter["mpid"].startswith("<value:")  # the worker's keyed hash of the mpid
    assert "4242" not in letter["mpid"]
    assert any("delivery stopped" in line for line in bad.output().splitlines())
