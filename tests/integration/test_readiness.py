"""Readiness of surplus replicas: more workers than partitions are all ready (issue 18).

Three forwarding workers share one-partition topics on the real broker: one worker gets the
input partitions (faust keeps co-partitioned topics together), one sink gets the operations
partition (its own group), so at least one worker holds nothing. All three answer
``/health/ready`` 200 (``kubectl rollout status`` and a PodDisruptionBudget count them as
available); the ones holding nothing say ``standby``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from app.dev.localkafka import free_port
from tests.integration.conftest import Deployment

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Names
    from tests.integration.support import WorkerProcess

pytestmark = pytest.mark.integration


async def _ready(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/health/ready") as response,
        ):
            return response.status, await response.json(content_type=None)
    except aiohttp.ClientConnectionError:  # web server not up yet
        return None


async def _until(
    ports: list[int], done: Any, workers: list[WorkerProcess], timeout: float = 120.0
) -> list[tuple[int, dict[str, Any]]]:
    """Poll every worker's readiness until ``done(answers)``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    answers: list[Any] = []
    while time.monotonic() < deadline:
        for worker in workers:
            worker.assert_running()
        answers = [await _ready(port) for port in ports]
        if all(answers) and done(answers):
            return answers
        await asyncio.sleep(0.5)
    raise AssertionError(f"readiness not reached within {timeout}s; last answers: {answers}")


async def test_surplus_worker_is_ready_as_standby(
    kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> None:
    deployment = Deployment(kafka, names, tmp_path, emulator.url, topic_partitions="1")
    await deployment.prepare()
    ports = [free_port() for _ in range(3)]
    inputs = len(deployment.topics.inputs())  # batches, audiences, erasure and re-key
    try:
        workers = [deployment.start_worker(web_port=str(port)) for port in ports]

        def settled(answers: list[tuple[int, dict[str, Any]]]) -> bool:
            bodies = [body for _, body in answers]
            return (
                all(code == 200 for code, _ in answers)
                and sum(body["input_partitions"] for body in bodies) == inputs
                and sum(body["operations_partitions"] for body in bodies) == 1
                and "rebalancing" not in {body["status"] for body in bodies}
            )

        answers = await _until(ports, settled, workers)

        bodies = [body for _, body in answers]
        assert all(body["ready"] is True for body in bodies)
        idle = [b for b in bodies if b["input_partitions"] == b["operations_partitions"] == 0]
        assert idle, bodies  # three workers, two groups of one partition each
        for body in idle:
            assert body["status"] == "standby"
            assert "more workers than partitions" in body["detail"]
            assert "reason" not in body
        busy = [b for b in bodies if b not in idle]
        assert {b["status"] for b in busy} == {"active"}
        assert [b["input_partitions"] for b in bodies].count(inputs) == 1
    finally:
        await deployment.stop_all()
