"""Kafka over SASL_PLAINTEXT/PLAIN: a separate broker that accepts only authenticated clients.

check-config, replay, deadletter and a worker (faust's clients and the sink's) connect with
the right credentials; wrong or missing ones fail with one clear line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from app.emulator.server import EmulatorConfig, RunningEmulator, running_emulator
from app.kafka_admin import ensure_topics
from app.localkafka import LocalKafka, free_port
from app.settings import load_settings
from app.topics import topics_for
from tests.integration import workload
from tests.integration.cli import mpcio
from tests.integration.conftest import API_KEY, SITE_ID
from tests.integration.support import REPO, WorkerProcess, wait_for, worker_env

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration

USER, PASSWORD = "mpcio", "mpcio-s3cret"


@pytest.fixture(scope="module")
def sasl_kafka() -> Iterator[LocalKafka]:
    broker = LocalKafka(sasl_users={"admin": "admin-s3cret", USER: PASSWORD})
    broker.start()
    yield broker
    broker.close()


def _env(broker: LocalKafka, names: Names, password: str = PASSWORD, **more: str) -> dict[str, str]:
    return worker_env(
        broker.url,
        names.prefix,
        0,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=USER,
        kafka_sasl_password=password,
        **more,
    )


async def _prepare(broker: LocalKafka, env: dict[str, str]) -> None:
    settings = load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()})
    await ensure_topics(
        settings.bootstrap_servers, topics_for(settings), security=broker.client_kwargs
    )


async def test_tools_work_with_credentials_and_fail_clearly_without(
    sasl_kafka: LocalKafka, names: Names
) -> None:
    env = _env(sasl_kafka, names)
    await _prepare(sasl_kafka, env)
    sample = str(REPO / "samples" / "mparticle-batches.jsonl")

    checked = await mpcio("check-config", env=env)
    assert checked.code == 0, checked.both
    assert "SASL_PLAINTEXT" in checked.out
    replayed = await mpcio("replay", sample, env=env)
    assert replayed.code == 0, replayed.both
    assert f"sent 11 to {names.prefix}-batches" in replayed.err
    listed = await mpcio("deadletter", "list", env=env)
    assert listed.code == 0, listed.both

    wrong = _env(sasl_kafka, names, password="not-the-password")
    bad_check = await mpcio("check-config", env=wrong)
    assert bad_check.code == 2  # the broker rejected the settings: a configuration error
    kafka_line = next(line for line in bad_check.out.splitlines() if line.startswith("kafka:"))
    assert "FAILED" in kafka_line
    assert "authentication failed (check MPCIO_KAFKA_SASL_*)" in kafka_line
    bad_replay = await mpcio("replay", sample, env=wrong)
    assert bad_replay.code == 2
    assert bad_replay.out == ""
    [line] = bad_replay.err.strip().splitlines()
    assert line.startswith(f"mpcio: cannot use Kafka at {sasl_kafka.url}: ")
    assert "authentication failed" in line
    plain = {k: v for k, v in env.items() if not k.startswith("MPCIO_KAFKA_")}
    bad_protocol = await mpcio("replay", sample, env=plain)
    assert bad_protocol.code == 1
    [line] = bad_protocol.err.strip().splitlines()
    assert "MPCIO_KAFKA_SECURITY_PROTOCOL" in line
    for result in (checked, replayed, bad_check, bad_replay):
        assert PASSWORD not in result.both
        assert "not-the-password" not in result.both

    missing = await mpcio("check-config", env={**env, "MPCIO_KAFKA_SASL_PASSWORD": ""})
    assert missing.code == 2
    assert missing.err.strip() == (
        "mpcio: invalid settings: required when MPCIO_KAFKA_SECURITY_PROTOCOL is "
        "SASL_PLAINTEXT: MPCIO_KAFKA_SASL_PASSWORD"
    )


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(EmulatorConfig(site_id=SITE_ID, api_key=API_KEY)) as running:
        yield running


async def test_worker_forwards_over_sasl(
    sasl_kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> None:
    env = _env(
        sasl_kafka,
        names,
        forwarding_enabled="true",
        customerio_site_id=SITE_ID,
        customerio_api_key=API_KEY,
        customerio_url=emulator.url,
        batch_linger_ms="20",
    )
    env["MPCIO_WEB_PORT"] = str(free_port())
    records = workload.batches(users=10, batches_per_user=2, events_per_batch=2)
    path = tmp_path / "batches.jsonl"
    path.write_bytes(b"\n".join(value for _, value in records) + b"\n")
    await _prepare(sasl_kafka, env)
    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    try:
        replayed = await mpcio("replay", str(path), env=env)
        assert replayed.code == 0, replayed.both

        def delivered() -> bool:
            worker.assert_running()
            return len(emulator.state.store.events) >= 9 * 2 * 2  # every 10th user: no email

        await wait_for(delivered, 90, "events delivered through the SASL broker")
    finally:
        await worker.stop()
    assert PASSWORD not in worker.output()
