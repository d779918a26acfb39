"""exactly_once on a cluster that cannot run Kafka transactions (``app.transactions_check``).

One extra real broker for the module: a single broker whose transaction log needs 3 replicas
(``transaction.state.log.replication.factor=3``, ``min.isr=2``: Kafka's defaults, as a
single-broker Docker Kafka has them unless told otherwise). Without the check the worker
joined its group and waited for the transaction coordinator for ever, ``/health/ready``
answering 200. The session broker (factor 1) shows the check passing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def kafka_factor_3() -> Iterator[LocalKafka]:
    broker = LocalKafka(
        properties={
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
        }
    )
    broker.start()
    yield broker
    broker.close()


async def test_worker_exits_2_with_one_line_when_the_cluster_cannot_run_transactions(
    kafka_factor_3: LocalKafka, names: Names, tmp_path: Path
) -> None:
    env = worker_env(kafka_factor_3.url, names.prefix, free_port())
    worker = WorkerProcess(["-m", "app", "worker"], env, tmp_path / "worker.log").start()
    assert worker.process is not None
    try:
        code = worker.process.wait(EXIT_TIMEOUT_SECONDS)
    finally:
        worker.kill()
    output = worker.output()
    assert code == 2, output[-3000:]
    lines = output.splitlines()
    assert lines[-1].startswith(f"mpcio: {CANNOT}"), output[-3000:]
    assert "Traceback" not in output
    # nothing of faust started: the check ran before any transactional producer
    assert "TransactionManager" not in output


async def test_check_config_reports_it_and_at_least_once_skips_it(
    kafka_factor_3: LocalKafka, names: Names
) -> None:
    env = worker_env(kafka_factor_3.url, names.prefix, free_port())
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


async def test_the_default_test_broker_passes_the_check(kafka: LocalKafka, names: Names) -> None:
    env = worker_env(kafka.url, names.prefix, free_port())
    result = await mpcio("check-config", env=env)
    match = re.search(r"^transactions: +ok \((.*)\)$", result.out, re.MULTILINE)
    assert match, result.both
    assert "transaction.state.log.replication.factor=1" in match[1] or "exists" in match[1]
    assert match[1].endswith("a transactional producer started")
