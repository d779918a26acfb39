"""The exactly_once start-up check's decision (:func:`app.transactions_check.verdict`), table
driven, and how aiokafka's answers and errors become its inputs and lines."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CoordinatorNotAvailableError,
    KafkaTimeoutError,
    TransactionalIdAuthorizationFailed,
)

from app import transactions_check
from app.errors import ConfigError
from app.ops.checks import check_transactions as transactions_line
from app.settings import load_settings
from app.transactions_check import (
    ClusterView,
    LogTopic,
    Outcome,
    cluster_view,
    probe_failure,
    verdict,
)


def _log(
    replicas: int = 1, in_sync: int = 1, leaderless: int = 0, min_isr: int | None = 1
) -> LogTopic:
    return LogTopic(
        partitions=50, replicas=replicas, in_sync=in_sync, leaderless=leaderless, min_isr=min_isr
    )


def _view(
    live: int = 1,
    known: int | None = None,
    factor: int | None = 1,
    min_isr: int | None = 1,
    log: LogTopic | None = None,
) -> ClusterView:
    return ClusterView(
        live_brokers=live,
        known_brokers=live if known is None else known,
        replication_factor=factor,
        min_isr=min_isr,
        log=log,
    )


@pytest.mark.parametrize(
    ("view", "outcome", "words"),
    [
        # no __transaction_state yet: the brokers' settings against the live brokers
        (_view(live=1, factor=1, min_isr=1), Outcome.READY, "1 live broker >="),
        (_view(live=3, factor=3, min_isr=2), Outcome.READY, "3 live brokers >="),
        # the single-broker Docker Kafka with Kafka's defaults: the case of the issue
        (_view(live=1, factor=3, min_isr=2), Outcome.CANNOT, "the cluster has 1 live broker"),
        (_view(live=2, factor=3, min_isr=2), Outcome.CANNOT, "at most 2;"),
        # a broker known to hold replicas is down: maybe soon, not a configuration error
        (_view(live=2, known=3, factor=3, min_isr=2), Outcome.WAIT, "only 2 of the 3 brokers"),
        (_view(live=1, factor=1, min_isr=2), Outcome.CANNOT, "min.isr=2 exceeds"),
        # describe_configs not authorized: not checked here (the probe decides)
        (_view(factor=None, min_isr=None), Outcome.UNKNOWN, "cannot be read"),
        # __transaction_state exists: its own replicas and min.insync.replicas decide
        (_view(factor=3, log=_log()), Outcome.READY, "exists, 50 partitions x 1"),
        (_view(live=3, log=_log(3, 3, min_isr=2)), Outcome.READY, "in sync"),
        (_view(live=3, log=_log(3, 2, min_isr=2)), Outcome.READY, "in sync"),
        (_view(live=3, log=_log(3, 1, min_isr=2)), Outcome.WAIT, "fewest in-sync replicas 1"),
        (_view(live=3, log=_log(3, 3, leaderless=4)), Outcome.WAIT, "4 of 50 partitions"),
        (_view(log=_log(1, 1, min_isr=2)), Outcome.CANNOT, "min.insync.replicas=2, so"),
        # the topic's min.insync.replicas unreadable: the brokers' setting stands in
        (_view(min_isr=2, log=_log(1, 1, min_isr=None)), Outcome.CANNOT, "replicas=2"),
        (_view(factor=None, min_isr=None, log=_log(min_isr=None)), Outcome.READY, "exists"),
    ],
)
def test_verdict(view: ClusterView, outcome: Outcome, words: str) -> None:
    found = verdict(view)
    assert found.outcome is outcome
    assert words in found.reason


def test_cannot_names_the_cause_and_both_fixes_in_one_line() -> None:
    reason = verdict(_view(live=1, factor=3, min_isr=2)).reason
    assert "\n" not in reason
    assert "transaction.state.log.replication.factor is 3" in reason
    assert "set the brokers' transaction.state.log.replication.factor and " in reason
    assert "transaction.state.log.min.isr to what the cluster can hold" in reason
    assert "one broker: both 1" in reason
    assert "MPCIO_PROCESSING_GUARANTEE=at_least_once" in reason


def test_cluster_view_reads_aiokafka_answers() -> None:
    brokers = [{"node_id": 1, "host": "a", "port": 1}, {"node_id": 2, "host": "b", "port": 2}]
    topics = [
        {
            "error_code": 0,
            "topic": "orders",
            "partitions": [{"partition": 0, "leader": 1, "replicas": [1, 3], "isr": [1]}],
        },
        {
            "error_code": 0,
            "topic": "__transaction_state",
            "partitions": [
                {"partition": 0, "leader": 1, "replicas": [1, 2, 3], "isr": [1, 2]},
                {"partition": 1, "leader": -1, "replicas": [2, 3, 1], "isr": [2]},
            ],
        },
    ]
    configs = {
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
    }
    view = cluster_view(brokers, topics, configs, "2")
    assert view == ClusterView(
        live_brokers=2,
        known_brokers=3,  # broker 3 holds replicas but does not answer
        replication_factor=3,
        min_isr=2,
        log=LogTopic(partitions=2, replicas=3, in_sync=1, leaderless=1, min_isr=2),
    )


def test_cluster_view_without_the_log_or_readable_configs() -> None:
    brokers = [{"node_id": 1, "host": "a", "port": 1}]
    missing = [{"error_code": 3, "topic": "__transaction_state", "partitions": []}]
    view = cluster_view(brokers, missing, None, None)
    assert view == ClusterView(1, 1, None, None, None)
    assert verdict(view).outcome is Outcome.UNKNOWN


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (TransactionalIdAuthorizationFailed("x"), "TransactionalId with the prefix app-"),
        (ClusterAuthorizationFailedError(), "IDEMPOTENT_WRITE on the cluster"),
    ],
)
def test_probe_refused_by_acls_is_a_configuration_error(error: Exception, words: str) -> None:
    refused = probe_failure(error, "app")
    assert isinstance(refused, ConfigError)
    assert words in str(refused)
    assert "app-startup-check" in str(refused)
    assert "MPCIO_PROCESSING_GUARANTEE=at_least_once" in str(refused)


def test_other_probe_failures_are_not_configuration_errors() -> None:
    assert probe_failure(CoordinatorNotAvailableError(), "app") is None
    assert probe_failure(OSError("refused"), "app") is None


async def test_check_config_skips_transactions_under_at_least_once() -> None:
    settings = load_settings(forwarding_enabled=False, processing_guarantee="at_least_once")
    check = await transactions_line(settings)
    assert check.skipped
    assert check.line() == ("transactions:      skipped (MPCIO_PROCESSING_GUARANTEE=at_least_once)")


async def test_check_config_reports_a_failed_cluster_read_as_one_failed_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def timed_out(settings: object, *, wait_seconds: float) -> None:
        raise KafkaTimeoutError

    monkeypatch.setattr(transactions_check, "check_transactions", timed_out)
    check = await transactions_line(load_settings(forwarding_enabled=False))
    assert check.failed
    assert not check.settings_rejected
    assert check.detail == "reading the cluster failed: timed out"
