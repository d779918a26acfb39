"""Integration fixtures: one real Kafka broker for the whole session (SPEC §8).

Each test gets its own topic names and consumer group (``names``) so tests never see each
other's records.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.dev.emulator.server import EmulatorConfig, RunningEmulator, running_emulator
from app.dev.localkafka import LocalKafka, free_port
from app.kafka_admin import ensure_topics
from app.settings import Settings, load_settings
from app.topics import topics_for
from tests.integration.support import WorkerProcess, log_findings, worker_env


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest) -> Iterator[LocalKafka]:
    broker = LocalKafka()
    broker.start()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"local Kafka {broker.version} at {broker.bootstrap} answered metadata "
            f"{broker.started_in:.1f}s after launch"
        )
    yield broker
    broker.close()
    leftover = subprocess.run(
        ["pgrep", "-f", f"java.*{broker.data_dir}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    assert not leftover, f"Java processes left behind by the broker fixture: {leftover}"


@pytest.fixture(autouse=True)
def log_hygiene() -> Iterator[None]:
    """After every integration test: no worker log it wrote holds a secret or a raw email.

    Every worker a test starts registers its log (``WorkerProcess.LOGS``), so each test checks
    its own logs whatever the order the tests run in.
    """
    first = len(WorkerProcess.LOGS)
    yield
    findings = log_findings(WorkerProcess.LOGS[first:])
    assert not findings, "\n".join(findings[:20])


@dataclass(frozen=True)
class Names:
    """Unique topic and group names for one test."""

    prefix: str

    def topic(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-app"


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Names:
    test = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    return Names(f"t-{test}-{uuid.uuid4().hex[:8]}")


SITE_ID, API_KEY = "site-e2e", "key-e2e"
FAST_RETRIES = {
    "retry_backoff_initial_seconds": "0.05",
    "retry_backoff_max_seconds": "0.5",
    "batch_linger_ms": "50",
}


def pessimistic_config(**overrides: Any) -> EmulatorConfig:
    """The emulator of the reliability and delivery suites: pessimistic (``docs/emulator.md``:
    stale identifies applied, a finite event-id window, 300 attributes per person), with the
    tests' credentials and a fixed seed for probabilistic faults."""
    fields: dict[str, Any] = {"site_id": SITE_ID, "api_key": API_KEY, "seed": 2101}
    return EmulatorConfig(**{**fields, **overrides, "pessimistic": True})


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(EmulatorConfig(site_id=SITE_ID, api_key=API_KEY)) as running:
        yield running


class Deployment:
    """Topics, settings and worker processes of one test, forwarding to its emulator."""

    def __init__(
        self, kafka: LocalKafka, names: Names, tmp_path: Path, emulator_url: str, **overrides: str
    ) -> None:
        self.kafka = kafka
        self.tmp_path = tmp_path
        self.env = worker_env(
            kafka.url,
            names.prefix,
            free_port(),
            forwarding_enabled="true",
            customerio_site_id=SITE_ID,
            customerio_api_key=API_KEY,
            customerio_url=emulator_url,
            **{**FAST_RETRIES, **overrides},
        )
        self.settings: Settings = load_settings(
            **{k.removeprefix("MPCIO_").lower(): v for k, v in self.env.items()}
        )
        self.topics = topics_for(self.settings)
        self.workers: list[WorkerProcess] = []

    async def prepare(self) -> None:
        await ensure_topics(self.settings.bootstrap_servers, self.topics)

    def start_worker(self, **env: str) -> WorkerProcess:
        overrides = {f"MPCIO_{k.upper()}": v for k, v in env.items()}
        log = self.tmp_path / f"worker-{len(self.workers) + 1}.log"
        worker = WorkerProcess(["-m", "app", "worker"], {**self.env, **overrides}, log).start()
        self.workers.append(worker)
        return worker

    async def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                await worker.stop()


@pytest.fixture
async def deployment(
    kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> AsyncIterator[Deployment]:
    made = Deployment(kafka, names, tmp_path, emulator.url)
    await made.prepare()
    yield made
    await made.stop_all()
