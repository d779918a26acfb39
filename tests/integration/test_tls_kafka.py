"""Kafka over TLS, as mParticle's Kafka output requires: SSL, and SASL_SSL with SCRAM-SHA-512.

Each broker serves a certificate for 127.0.0.1 and localhost signed by a CA made for the test
(:func:`app.localtls.generate_tls`). The worker (faust's clients and the sink's),
``check-config``, ``replay`` and ``deadletter`` work against both; a CA that did not sign the
broker's certificate, or a certificate that does not name the address in ``MPCIO_BROKER``, stops
each of them with one line and exit 2 (a configuration error).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.emulator.server import EmulatorConfig, RunningEmulator, running_emulator
from app.kafka_admin import ensure_topics
from app.localkafka import LocalKafka, free_port
from app.localtls import generate_tls
from app.settings import load_settings
from app.topics import topics_for
from tests.integration import workload
from tests.integration.cli import mpcio
from tests.integration.conftest import API_KEY, SITE_ID
from tests.integration.support import REPO, WorkerProcess, wait_for, worker_env

if TYPE_CHECKING:
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration

USER, PASSWORD = "mpcio", "scram-s3cret"
SAMPLE = str(REPO / "samples" / "mparticle-batches.jsonl")


@pytest.fixture(scope="module", params=["SSL", "SASL_SSL"])
def tls_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKafka]:
    """One broker per protocol, its client listener serving a certificate for 127.0.0.1."""
    tls = generate_tls(tmp_path_factory.mktemp("tls"))
    users = {USER: PASSWORD} if request.param == "SASL_SSL" else None
    broker = LocalKafka(tls=tls, sasl_users=users, sasl_mechanism="SCRAM-SHA-512")
    broker.start()
    assert broker.security_protocol == request.param
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing any broker here serves."""
    return generate_tls(tmp_path_factory.mktemp("other-ca")).ca


def _env(
    broker: LocalKafka, names: Names, cafile: Path | None = None, **more: str
) -> dict[str, str]:
    assert broker.tls is not None
    security = {
        "kafka_security_protocol": broker.security_protocol,
        "kafka_ssl_cafile": str(cafile or broker.tls.ca),
    }
    if broker.sasl_users:
        security |= {
            "kafka_sasl_mechanism": broker.sasl_mechanism,
            "kafka_sasl_username": USER,
            "kafka_sasl_password": PASSWORD,
        }
    return worker_env(broker.url, names.prefix, free_port(), **security, **more)


async def _prepare(broker: LocalKafka, env: dict[str, str]) -> None:
    settings = load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()})
    await ensure_topics(
        settings.bootstrap_servers, topics_for(settings), security=broker.client_kwargs
    )


async def _assert_every_tool_refuses(env: dict[str, str], broker: LocalKafka, why: str) -> None:
    """check-config, replay, deadletter list and the worker: exit 2, one line saying ``why``."""
    checked = await mpcio("check-config", env=env)
    assert checked.code == 2, checked.both
    kafka_line = next(line for line in checked.out.splitlines() if line.startswith("kafka:"))
    assert "FAILED" in kafka_line
    assert why in kafka_line
    for command in (("replay", SAMPLE), ("deadletter", "list"), ("worker",)):
        result = await mpcio(*command, env=env)
        assert result.code == 2, (command, result.both)
        assert result.out == ""
        [line] = result.err.strip().splitlines()  # one line, no traceback, no client noise
        assert line.startswith("mpcio: cannot use Kafka at "), line
        assert broker.bootstrap in line, line
        assert why in line, line
    assert PASSWORD not in checked.both


async def test_tools_work_over_tls(tls_kafka: LocalKafka, names: Names) -> None:
    env = _env(tls_kafka, names)
    await _prepare(tls_kafka, env)

    checked = await mpcio("check-config", env=env)
    assert checked.code == 0, checked.both
    kafka_line = next(line for line in checked.out.splitlines() if line.startswith("kafka:"))
    assert f"answered, {tls_kafka.security_protocol}" in kafka_line
    replayed = await mpcio("replay", SAMPLE, env=env)
    assert replayed.code == 0, replayed.both
    assert f"sent 11 to {names.prefix}-batches" in replayed.err
    listed = await mpcio("deadletter", "list", env=env)
    assert listed.code == 0, listed.both
    assert f"0 dead letter(s) in {names.prefix}-deadletter" in listed.err
    for result in (checked, replayed, listed):
        assert PASSWORD not in result.both


async def test_wrong_ca_is_a_configuration_error(
    tls_kafka: LocalKafka, names: Names, wrong_ca: Path
) -> None:
    env = _env(tls_kafka, names, cafile=wrong_ca)
    await _assert_every_tool_refuses(env, tls_kafka, "the broker's certificate is not trusted")


async def test_host_name_is_verified(names: Names, tmp_path: Path) -> None:
    """A certificate that names only other.example is refused at 127.0.0.1, though its CA is
    the one configured: the client checks the name, not only the signature."""
    tls = generate_tls(tmp_path / "tls", names=("other.example",))
    broker = LocalKafka(tls=tls, heap="256m")
    broker.start()
    try:
        env = _env(broker, names)
        await _assert_every_tool_refuses(env, broker, "host-name verification failed")
    finally:
        broker.close()


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(EmulatorConfig(site_id=SITE_ID, api_key=API_KEY)) as running:
        yield running


async def test_worker_forwards_over_tls(
    tls_kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> None:
    env = _env(
        tls_kafka,
        names,
        forwarding_enabled="true",
        customerio_site_id=SITE_ID,
        customerio_api_key=API_KEY,
        customerio_url=emulator.url,
        batch_linger_ms="20",
    )
    records = workload.batches(users=10, batches_per_user=2, events_per_batch=2)
    path = tmp_path / "batches.jsonl"
    path.write_bytes(b"\n".join(value for _, value in records) + b"\n")
    await _prepare(tls_kafka, env)
    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    try:
        replayed = await mpcio("replay", str(path), env=env)
        assert replayed.code == 0, replayed.both

        def delivered() -> bool:
            worker.assert_running()
            return len(emulator.state.store.events) >= 9 * 2 * 2  # every 10th user: no email

        await wait_for(delivered, 90, "events delivered through the TLS broker")
    finally:
        await worker.stop()
    assert PASSWORD not in worker.output()
