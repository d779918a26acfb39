"""Integration fixtures: one real Kafka broker for the whole session (SPEC §8).

Each test gets its own topic names and consumer group (``names``) so tests never see each
other's records.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.localkafka import LocalKafka


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
