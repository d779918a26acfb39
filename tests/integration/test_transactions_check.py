"""exactly_once on a cluster that cannot run Kafka transactions (``app.transactions_check``).

One extra real broker for the module: a single broker whose transaction log needs 3 replicas
(``transaction.state.log.replication.factor=3``, ``min.isr=2``: Kafka's defaults, as a
single-broker Docker Kafka has them unless told otherwise), with SASL (PLAIN) and an
authorizer: user ``app`` may do everything; user ``denied`` may neither read the brokers'
configs nor use any transactional id (ACLs). Without the check the worker joined its group
and waited for the transaction coordinator for ever (``app``) or logged one WARNING per
producer and went on as "active" (``denied``), ``/health/ready`` answering 200 in both. The
session broker (factor 1) shows the check passing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest

from app.dev.localkafka import LocalKafka, free_port
from tests.integration.cli import mpcio
from tests.integration.conftest import Names
from tests.integration.support import WorkerProcess, worker_env

# the worker creates its topics, reads the cluster and exits; seconds on a quiet machine
EXIT_TIMEOUT_SECONDS = 120.0
CANNOT = (
    "exactly_once needs Kafka transactions, which cannot run: the cluster has 1 live broker "
    "but the brokers' transaction.state.log.replication.factor is 3, so Kafka cannot create "
    "__transaction_state and no transaction can start; set the brokers' "
    "transaction.state.log.replication.factor and transaction.state.log.min.isr to what the "
    "cluster can hold (at most 1; one broker: both 1), or set "
    "MPCIO_PROCESSING_GUARANTEE=at_least_once"
)


USERS = {"app": "app-secret-7", "denied": "denied-secret-7"}
# Kafka's protocol codes (org.apache.kafka.common.acl / resource)
CLUSTER, TRANSACTIONAL_ID, TOPIC, GROUP = 4, 5, 2, 3
ALL, DESCRIBE_CONFIGS = 2, 10
LITERAL, DENY, ALLOW = 3, 2, 3
ACLS = [
    *((kind, name, "User:app", ALL, ALLOW) for kind, name in
      ((CLUSTER, "kafka-cluster"), (TRANSACTIONAL_ID, "*"), (TOPIC, "*"), (GROUP, "*"))),
    (CLUSTER, "kafka-cluster", "User:denied", DESCRIBE_CONFIGS, DENY),
    (TRANSACTIONAL_ID, "*", "User:denied", ALL, DENY),
    (TOPIC, "*", "User:denied", ALL, ALLOW),
    (GROUP, "*", "User:denied", ALL, ALLOW),
]  # fmt: skip


@pytest.fixture(scope="module")
async def kafka_factor_3() -> AsyncIterator[LocalKafka]:
    broker = LocalKafka(
        sasl_users=USERS,
        sasl_mechanism="PLAIN",
        properties={
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # the broker's own PLAINTEXT listeners (inter-broker, controller)
            "super.users": "User:ANONYMOUS",
        },
    )
    broker.start()
    try:
        # as the super user, on the broker's internal PLAINTEXT listener
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.internal_port}")
        await admin.start()
        try:
            for kind, name, principal, operation, permission in ACLS:
                request = CreateAclsRequest(
                    kind, name, LITERAL, principal, "*", operation, permission
                )
                answer = (await admin._send_request(request)).to_object()
                assert [r["error_code"] for r in answer["creation_responses"]] == [0], answer
        finally:
            await admin.close()
        yield broker
    finally:
        broker.close()


def _env(broker: LocalKafka, names: Names, user: str = "app") -> dict[str, str]:
    return worker_env(
        broker.url,
        names.prefix,
        free_port(),
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=user,
        kafka_sasl_password=USERS[user],
    )


async def _worker_exit(env: dict[str, str], log: Path) -> tuple[int, str]:
    """Run a worker until it exits by itself (killed after ``EXIT_TIMEOUT_SECONDS``, which
    fails the test): its exit code and its log."""
    worker = WorkerProcess(["-m", "app", "worker"], env, log).start()
    assert worker.process is not None
    try:
        code = await asyncio.to_thread(worker.process.wait, EXIT_TIMEOUT_SECONDS)
    finally:
        worker.kill()
    return code, worker.output()


async def test_worker_exits_2_with_one_line_when_the_cluster_cannot_run_transactions(
    kafka_factor_3: LocalKafka, names: Names, tmp_path: Path
) -> None:
    env = _env(kafka_factor_3, names)
    code, output = await _worker_exit(env, tmp_path / "worker.log")
    assert code == 2, output[-3000:]
    lines = output.splitlines()
    assert lines[-1].startswith(f"mpcio: {CANNOT}"), output[-3000:]
    assert "Traceback" not in output
    # nothing of faust started: the check ran before any transactional producer
    assert "TransactionManager" not in output


async def test_check_config_reports_it_and_at_least_once_skips_it(
    kafka_factor_3: LocalKafka, names: Names
) -> None:
    env = _env(kafka_factor_3, names)
    result = await mpcio("check-config", env=env)
    assert result.code == 2, result.both
    assert re.search(rf"^transactions: +FAILED: {re.escape(CANNOT)}", result.out, re.MULTILINE)
    assert "FAILED: topics, co-partitioning, transactions" in result.out

    chosen = await mpcio("check-config", env={**env, "MPCIO_PROCESSING_GUARANTEE": "at_least_once"})
    assert re.search(
        r"^transactions: +skipped \(MPCIO_PROCESSING_GUARANTEE=at_least_once\)$",
        chosen.out,
        re.MULTILINE,
    ), chosen.out


async def test_a_principal_refused_transactions_by_acls_stops_with_one_line(
    kafka_factor_3: LocalKafka, names: Names, tmp_path: Path
) -> None:
    env = _env(kafka_factor_3, names, user="denied")
    code, output = await _worker_exit(env, tmp_path / "worker.log")
    assert code == 2, output[-3000:]
    refused = (
        f"mpcio: exactly_once needs Kafka transactions and the broker refuses this principal "
        f"the transactional id {names.app_id}-startup-check (TransactionalIdAuthorizationFailed);"
        f" grant WRITE and DESCRIBE on TransactionalId with the prefix {names.app_id}-"
    )
    assert output.splitlines()[-1].startswith(refused), output[-3000:]
    # describe_configs refused: one WARNING, then the probe decided
    warnings = [line for line in output.splitlines() if "cannot tell whether Kafka" in line]
    assert len(warnings) == 1, output[-3000:]
    assert "describe_configs not authorized" in warnings[0]
    assert "Traceback" not in output
    assert USERS["denied"] not in output

    checked = await mpcio("check-config", env=env)
    assert checked.code == 2, checked.both
    assert re.search(
        r"^transactions: +FAILED: .*TransactionalIdAuthorizationFailed", checked.out, re.MULTILINE
    ), checked.out


async def test_the_default_test_broker_passes_the_check(kafka: LocalKafka, names: Names) -> None:
    env = worker_env(kafka.url, names.prefix, free_port())
    result = await mpcio("check-config", env=env)
    match = re.search(r"^transactions: +ok \((.*)\)$", result.out, re.MULTILINE)
    assert match, result.both
    assert "transaction.state.log.replication.factor=1" in match[1] or "exists" in match[1]
    assert match[1].endswith("a transactional producer started")
