"""The wrong region's host, end to end: an EU workspace reached on the US host.

Customer.io's OpenAPI says its US host redirects an EU account's traffic; SPEC §6 says the
forwarder must never rely on that redirect. The pessimistic emulator plays the US host on a
second port (``RunningEmulator.other_region_url``) and answers an EU workspace's requests there
with a 307. A worker sent there must stop delivering (a fatal configuration error: nothing
applied, nothing dead-lettered, offsets kept), and a worker on the right host then delivers
everything.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import pytest

from app.dev.emulator.server import running_emulator
from tests.integration import workload
from tests.integration.conftest import Deployment, pessimistic_config
from tests.integration.support import delivery_stopped, message_count, produce, wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration


async def test_eu_workspace_on_the_us_host_stops_delivery_then_the_eu_host_delivers(
    kafka: LocalKafka, names: Names, tmp_path: Path
) -> None:
    async with running_emulator(pessimistic_config(region="eu")) as emulator:
        wrong = Deployment(kafka, names, tmp_path, emulator.other_region_url)
        await wrong.prepare()
        records, expected = workload.scenario(
            wrong.settings, users=6, batches_per_user=1, events_per_batch=2
        )
        await produce(kafka.bootstrap, wrong.topics.batches.name, records)

        worker = wrong.start_worker()
        await delivery_stopped(worker, emulator, 307)
        assert "redirect_wrong_region" in worker.output()
        assert emulator.state.store.people_count == 0
        assert await worker.stop() < 30
        assert await message_count(kafka.bootstrap, wrong.topics.deadletter.name) == 0

        right = Deployment(kafka, names, tmp_path, emulator.url)
        good = right.start_worker()
        want = Counter(item["id"] for item in expected if item["action"] == "event")

        def delivered() -> bool:
            good.assert_running()
            return len(emulator.state.store.events) >= sum(want.values())

        try:
            await wait_for(delivered, 120, "every event on the EU host")
        finally:
            await right.stop_all()
        assert Counter(event.id for event in emulator.state.store.events) == want
        assert await message_count(kafka.bootstrap, right.topics.deadletter.name) == 0
