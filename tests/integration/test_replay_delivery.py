"""`mpcio replay` → worker → Customer.io: a backfill reaches the emulator like live data."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import pytest

from tests.integration import workload
from tests.integration.cli import mpcio
from tests.integration.support import REPO, wait_for

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration


async def test_replayed_file_reaches_customerio(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    sample = REPO / "samples" / "mparticle-batches.jsonl"
    expected = Counter(  # hand-reviewed (tests/golden/README.md)
        item["id"] for item in workload.golden_items("sample.json") if item["action"] != "identify"
    )
    env = {k: v for k, v in deployment.env.items() if k.startswith("MPCIO_")}
    replayed = await mpcio("replay", str(sample), env=env)
    assert replayed.code == 0, replayed.both
    assert "3 invalid" in replayed.err

    worker = deployment.start_worker()

    def delivered() -> bool:
        worker.assert_running()
        return len(emulator.state.store.events) >= sum(expected.values())

    await wait_for(delivered, 90, "the replayed events at the emulator")
    assert Counter(e.id for e in emulator.state.store.events) == expected
