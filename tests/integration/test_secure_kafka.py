"""Kafka with security, each protocol on a broker of its own that accepts nothing else:
SASL_PLAINTEXT/PLAIN, and what mParticle's Kafka output requires — SSL, and SASL_SSL with
SCRAM-SHA-512.

TLS brokers serve a certificate for 127.0.0.1 and localhost signed by a CA made for the test
(:func:`app.dev.localtls.generate_tls`). check-config, replay, deadletter and a worker (faust's
clients and the sink's) connect with the right settings. A broker that rejects the settings —
a wrong password, a CA that did not sign its certificate, a certificate that does not name the
address in ``MPCIO_BROKER`` — stops each of them with one line and exit 2 (a configuration
error); a listener speaking another protocol is exit 1 with a hint.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from app.dev.localkafka import LocalKafka, free_port
from app.dev.localtls import generate_tls
from app.kafka_admin import ensure_topics
from app.settings import load_settings
from app.topics import topics_for
from tests.integration import workload
from tests.integration.cli import mpcio
from tests.integration.conftest import API_KEY, SITE_ID
from tests.integration.support import REPO, WorkerProcess, wait_for, worker_env

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration

USER, PASSWORD, WRONG_PASSWORD = "mpcio", "mpcio-s3cret", "not-the-password"
SAMPLE = str(REPO / "samples" / "mparticle-batches.jsonl")


@pytest.fixture(scope="module", params=["SASL_PLAINTEXT", "SSL", "SASL_SSL"])
def secure_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKafka]:
    """One broker per protocol (one at a time: pytest groups the tests by parameter)."""
    protocol: str = request.param
    tls = generate_tls(tmp_path_factory.mktemp("tls")) if protocol.endswith("SSL") else None
    users = {"admin": "admin-s3cret", USER: PASSWORD} if protocol.startswith("SASL") else None
    mechanism = "SCRAM-SHA-512" if protocol == "SASL_SSL" else "PLAIN"
    broker = LocalKafka(tls=tls, sasl_users=users, sasl_mechanism=mechanism)
    broker.start()
    assert broker.security_protocol == protocol
    yield broker
    broker.close()


def _env(
    broker: LocalKafka,
    names: Names,
    *,
    password: str = PASSWORD,
    cafile: Path | None = None,
    **more: str,
) -> dict[str, str]:
    security = {"kafka_security_protocol": broker.security_protocol}
    if broker.tls:
        security["kafka_ssl_cafile"] = str(cafile or broker.tls.ca)
    if broker.sasl_users:
        security |= {
            "kafka_sasl_mechanism": broker.sasl_mechanism,
            "kafka_sasl_username": USER,
            "kafka_sasl_password": password,
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
    results = [checked]
    for command in (("replay", SAMPLE), ("deadletter", "list"), ("worker",)):
        result = await mpcio(*command, env=env)
        assert result.code == 2, (command, result.both)
        assert result.out == ""
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, (command, result.err)  # no traceback, no client log noise
        [line] = lines
        assert line.startswith("mpcio: cannot use Kafka at "), line
        assert broker.bootstrap in line, line
        assert why in line, line
        results.append(result)
    for result in results:
        assert PASSWORD not in result.both
        assert WRONG_PASSWORD not in result.both


async def test_tools_work_with_the_right_settings_and_refuse_wrong_ones(
    secure_kafka: LocalKafka, names: Names, tmp_path: Path
) -> None:
    env = _env(secure_kafka, names)
    await _prepare(secure_kafka, env)

    checked = await mpcio("check-config", env=env)
    assert checked.code == 0, checked.both
    kafka_line = next(line for line in checked.out.splitlines() if line.startswith("kafka:"))
    assert f"answered, {secure_kafka.security_protocol}" in kafka_line
    replayed = await mpcio("replay", SAMPLE, env=env)
    assert replayed.code == 0, replayed.both
    assert f"sent 11 to {names.prefix}-batches" in replayed.err
    listed = await mpcio("deadletter", "list", env=env)
    assert listed.code == 0, listed.both
    assert f"0 dead letter(s) in {names.prefix}-deadletter" in listed.err
    for result in (checked, replayed, listed):
        assert PASSWORD not in result.both

    if secure_kafka.sasl_users:
        await _assert_every_tool_refuses(
            _env(secure_kafka, names, password=WRONG_PASSWORD),
            secure_kafka,
            "authentication failed (check MPCIO_KAFKA_SASL_*)",
        )
        missing = await mpcio("check-config", env={**env, "MPCIO_KAFKA_SASL_PASSWORD": ""})
        assert missing.code == 2
        assert missing.err.strip() == (
            "mpcio: invalid settings: required when MPCIO_KAFKA_SECURITY_PROTOCOL is "
            f"{secure_kafka.security_protocol}: MPCIO_KAFKA_SASL_PASSWORD"
        )
    if secure_kafka.tls:
        # a CA of its own that signed nothing this broker serves
        await _assert_every_tool_refuses(
            _env(secure_kafka, names, cafile=generate_tls(tmp_path / "other").ca),
            secure_kafka,
            "the broker's certificate is not trusted",
        )
    else:
        plain = {k: v for k, v in env.items() if not k.startswith("MPCIO_KAFKA_")}
        bad_protocol = await mpcio("replay", SAMPLE, env=plain)
        # a closed connection does not prove the settings wrong (a restarting broker closes
        # too): exit 1, with the likely cause
        assert bad_protocol.code == 1
        [line] = bad_protocol.err.strip().splitlines()
        assert "MPCIO_KAFKA_SECURITY_PROTOCOL" in line


async def test_host_name_is_verified(names: Names, tmp_path: Path) -> None:
    """A certificate that names only other.example is refused at 127.0.0.1 although the
    configured CA signed it: the clients check the name, not only the signature."""
    broker = LocalKafka(tls=generate_tls(tmp_path / "tls", names=("other.example",)), heap="256m")
    broker.start()
    try:
        await _assert_every_tool_refuses(
            _env(broker, names), broker, "host-name verification failed"
        )
    finally:
        broker.close()


async def test_worker_forwards(
    secure_kafka: LocalKafka, names: Names, tmp_path: Path, emulator: RunningEmulator
) -> None:
    env = _env(
        secure_kafka,
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
    await _prepare(secure_kafka, env)
    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    try:
        replayed = await mpcio("replay", str(path), env=env)
        assert replayed.code == 0, replayed.both

        def delivered() -> bool:
            worker.assert_running()
            return len(emulator.state.store.events) >= 9 * 2 * 2  # every 10th user: no email

        await wait_for(delivered, 90, f"events delivered over {secure_kafka.security_protocol}")
    finally:
        await worker.stop()
    assert PASSWORD not in worker.output()


async def test_mpcio_kafka_serves_sasl_ssl_to_the_settings_it_prints(tmp_path: Path) -> None:
    """``mpcio kafka --tls --sasl-user``: mParticle's SASL_SSL/SCRAM-SHA-512 broker by hand; the
    settings it prints (plus the password given) pass check-config's kafka check."""
    port = free_port()
    broker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "kafka", "--port", str(port), "--data-dir", str(tmp_path),
        "--tls", "--sasl-user", f"{USER}:{PASSWORD}",
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert broker.stdout is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(180):
            while not printed or not printed[-1].startswith("and MPCIO_KAFKA_SASL_PASSWORD"):
                line = (await broker.stdout.readline()).decode()
                assert line, f"mpcio kafka ended early: {''.join(printed)}"
                printed.append(line.strip())
        settings = dict(pair.split("=", 1) for pair in printed[-2].split())
        assert settings["MPCIO_BROKER"] == f"127.0.0.1:{port}"
        assert settings["MPCIO_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert settings["MPCIO_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert settings["MPCIO_KAFKA_SSL_CAFILE"].startswith(str(tmp_path))
        assert PASSWORD not in "\n".join(printed)
        env = settings | {"MPCIO_KAFKA_SASL_PASSWORD": PASSWORD, "MPCIO_FORWARDING_ENABLED": "0"}
        checked = await mpcio("check-config", env=env)
        kafka_line = next(line for line in checked.out.splitlines() if line.startswith("kafka:"))
        assert kafka_line.split() == [
            "kafka:",
            "ok",
            f"(127.0.0.1:{port},",
            "1",
            "broker",
            "answered,",
            "SASL_SSL)",
        ], checked.both
    finally:
        broker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(broker.wait(), 60)
    assert broker.returncode == 0
