"""Can this Kafka cluster run transactions? The ``exactly_once`` start-up check.

``exactly_once`` (the default) needs the brokers' transaction coordinator. Its log,
``__transaction_state``, is created on first use with the brokers'
``transaction.state.log.replication.factor`` replicas (Kafka's default 3) and
``min.insync.replicas`` = ``transaction.state.log.min.isr`` (default 2). A cluster with fewer
live brokers than that (typically one broker in Docker without
``KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1``) answers every ``InitProducerId`` with
COORDINATOR_NOT_AVAILABLE, forever: without this check the worker joins its group, starts
its transactional producers on the first assignment and waits there for ever, with nothing in
its log saying why (README "Operations", reproduced on a one-broker cluster with factor 3).

Two parts:

- :func:`verdict` (pure): what the cluster's view (:class:`ClusterView`) allows —
  :attr:`Outcome.READY`, :attr:`Outcome.CANNOT` (the brokers' settings or the topic's make
  transactions impossible: one line naming the cause and both fixes, exit 2),
  :attr:`Outcome.WAIT` (some brokers are down: maybe soon) or :attr:`Outcome.UNKNOWN` (the
  settings could not be read, e.g. describe_configs not authorized);
- :func:`check_transactions` (I/O): reads the view with an admin client of the configured
  TLS/SASL settings (:func:`app.kafka_security.client_kwargs`), waits up to
  ``WAIT_SECONDS`` while the verdict is WAIT, then proves the coordinator answers: one
  transactional producer (id ``<app id>-startup-check``, matched by ACLs granted on the
  prefix ``<app id>-`` like faust's own ids) must get a producer id within ``PROBE_SECONDS``.

Failure semantics of :func:`check_transactions`: raises :class:`~app.errors.ConfigError`
(exit 2) for CANNOT and for a broker that refuses this principal transactions
(TransactionalIdAuthorizationFailed, ClusterAuthorizationFailed); raises
:class:`~app.errors.BrokerError` (exit 1) when the verdict stays WAIT or the coordinator does
not answer in time (brokers down: restarting may succeed); logs one WARNING and returns
normally when the settings cannot be read but the probe succeeds. Moves no offset and writes
no record: the probe's producer only registers its transactional id with the coordinator
(expired by the brokers after ``transactional.id.expiration.ms``, 7 days by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.errors import BrokerError, ConfigError, is_kafka_error, plain_kafka_error

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

    from app.settings import Settings

log = logging.getLogger(__name__)

TRANSACTION_LOG = "__transaction_state"
REPLICATION_FACTOR = "transaction.state.log.replication.factor"
MIN_ISR = "transaction.state.log.min.isr"
# how long a cluster with brokers down may take to come back before the worker gives up
WAIT_SECONDS = 30.0
# InitProducerId of the probe: the first one creates __transaction_state (50 partitions),
# seconds on a busy machine; a healthy coordinator answers well within this
PROBE_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 15.0

AT_LEAST_ONCE = (
    "or set MPCIO_PROCESSING_GUARANTEE=at_least_once (no transactions; README Limits says "
    "what it gives up)"
)
BROKERS_DOWN_FIXES = f"start the brokers that are down, {AT_LEAST_ONCE}"


@dataclass(frozen=True, slots=True)
class LogTopic:
    """The ``__transaction_state`` topic as metadata shows it.

    ``replicas`` / ``in_sync``: the fewest replicas / in-sync replicas of any partition;
    ``min_isr``: its ``min.insync.replicas`` (None when it could not be read)."""

    partitions: int
    replicas: int
    in_sync: int
    leaderless: int
    min_isr: int | None


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the check reads from the cluster.

    ``live_brokers``: brokers in the metadata answer (KRaft lists registered, unfenced ones);
    ``known_brokers``: the distinct broker ids named as replicas of any topic, which exceeds
    ``live_brokers`` when brokers that hold data are down; ``replication_factor`` /
    ``min_isr``: the brokers' ``transaction.state.log.*`` settings (None: not readable);
    ``log``: ``__transaction_state`` if it exists (None: it does not, or is not visible)."""

    live_brokers: int
    known_brokers: int
    replication_factor: int | None
    min_isr: int | None
    log: LogTopic | None


class Outcome(StrEnum):
    """What :func:`verdict` concludes (module docstring: what the worker does with each)."""

    READY = "ready"
    CANNOT = "cannot"
    WAIT = "wait"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """An :class:`Outcome` and its reason: the cause, and for CANNOT the fixes too."""

    outcome: Outcome
    reason: str


def verdict(view: ClusterView) -> Verdict:
    """Whether transactions can work on the cluster ``view`` shows. Never raises.

    When ``__transaction_state`` exists: CANNOT if its ``min.insync.replicas`` exceeds its
    replicas; WAIT if a partition has no leader or fewer in-sync replicas than that; else
    READY. When it does not exist yet: UNKNOWN without the brokers' settings; CANNOT if their
    ``min.isr`` exceeds their replication factor, or the factor exceeds the live brokers while
    no other broker is known (WAIT when one is: it holds replicas, so it is down); else READY.
    Every rule is a row of ``tests/unit/test_transactions_check.py``.
    """
    if view.log is not None:
        return _existing_log_verdict(view.log, view)
    factor, min_isr = view.replication_factor, view.min_isr
    if factor is None:
        return Verdict(
            Outcome.UNKNOWN,
            f"{TRANSACTION_LOG} does not exist yet and the brokers' {REPLICATION_FACTOR} "
            "cannot be read (describe_configs not authorized?)",
        )
    brokers = _count(view.live_brokers, "live broker")
    fixes = (
        f"set the brokers' {REPLICATION_FACTOR} and {MIN_ISR} to what the cluster can hold "
        f"(at most {max(view.live_brokers, 1)}; one broker: both 1), {AT_LEAST_ONCE}"
    )
    if min_isr is not None and min_isr > factor:
        return Verdict(
            Outcome.CANNOT,
            f"the brokers' {MIN_ISR}={min_isr} exceeds their {REPLICATION_FACTOR}={factor}, "
            f"so {TRANSACTION_LOG} could never be written; {fixes}",
        )
    if factor <= view.live_brokers:
        return Verdict(
            Outcome.READY, f"{brokers} >= {REPLICATION_FACTOR}={factor}, {MIN_ISR}={min_isr}"
        )
    if view.known_brokers > view.live_brokers:
        return Verdict(
            Outcome.WAIT,
            f"only {view.live_brokers} of the {view.known_brokers} brokers holding replicas "
            f"answer, and {TRANSACTION_LOG} needs {factor} ({REPLICATION_FACTOR}); "
            + BROKERS_DOWN_FIXES,
        )
    return Verdict(
        Outcome.CANNOT,
        f"the cluster has {brokers} but the brokers' {REPLICATION_FACTOR} is {factor}, so "
        f"Kafka cannot create {TRANSACTION_LOG} and no transaction can start; {fixes}",
    )


def _existing_log_verdict(topic: LogTopic, view: ClusterView) -> Verdict:
    """:func:`verdict` once ``__transaction_state`` exists: its own settings decide."""
    min_isr = topic.min_isr if topic.min_isr is not None else view.min_isr
    if min_isr is not None and min_isr > topic.replicas:
        return Verdict(
            Outcome.CANNOT,
            f"{TRANSACTION_LOG} has {topic.replicas} replica(s) per partition but "
            f"min.insync.replicas={min_isr}, so no transaction can be written; lower the "
            f"topic's min.insync.replicas to at most {topic.replicas} (kafka-configs "
            f"--alter --entity-type topics --entity-name {TRANSACTION_LOG} --add-config "
            f"min.insync.replicas={topic.replicas}), {AT_LEAST_ONCE}",
        )
    if topic.leaderless > 0 or (min_isr is not None and topic.in_sync < min_isr):
        return Verdict(
            Outcome.WAIT,
            f"{TRANSACTION_LOG} is not writable: {topic.leaderless} of {topic.partitions} "
            f"partitions without a leader, fewest in-sync replicas {topic.in_sync} "
            f"(min.insync.replicas={min_isr}), {_count(view.live_brokers, 'live broker')}; "
            + BROKERS_DOWN_FIXES,
        )
    return Verdict(
        Outcome.READY,
        f"{TRANSACTION_LOG} exists, {topic.partitions} partitions x {topic.replicas} "
        f"replica(s), in sync",
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cluster_view(
    brokers: Sequence[Mapping[str, Any]],
    topics: Sequence[Mapping[str, Any]],
    broker_configs: Mapping[str, str] | None,
    log_min_isr: str | None,
) -> ClusterView:
    """The :class:`ClusterView` of aiokafka's answers: ``brokers`` of ``describe_cluster``,
    ``topics`` of ``describe_topics()`` (all topics), ``broker_configs`` the broker's config
    entries by name (None: not readable), ``log_min_isr`` the ``min.insync.replicas`` of
    ``__transaction_state`` (None: not readable or no such topic)."""
    known: set[int] = set()
    log_topic = None
    for topic in topics:
        partitions = topic.get("partitions") or []
        for partition in partitions:
            known.update(partition.get("replicas") or ())
        if topic.get("topic") == TRANSACTION_LOG and partitions and not topic.get("error_code"):
            log_topic = LogTopic(
                partitions=len(partitions),
                replicas=min(len(p.get("replicas") or ()) for p in partitions),
                in_sync=min(len(p.get("isr") or ()) for p in partitions),
                leaderless=sum(1 for p in partitions if p.get("leader", -1) < 0),
                min_isr=_int(log_min_isr),
            )
    configs = broker_configs or {}
    return ClusterView(
        live_brokers=len(brokers),
        known_brokers=len(known | {int(b["node_id"]) for b in brokers}),
        replication_factor=_int(configs.get(REPLICATION_FACTOR)),
        min_isr=_int(configs.get(MIN_ISR)),
        log=log_topic,
    )


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().lstrip("-").isdigit() else None


def probe_failure(exc: BaseException, app_id: str) -> ConfigError | None:
    """The :class:`ConfigError` for a probe (of the app ``app_id``) refused by the broker's
    ACLs, or None for any other failure."""
    name = type(exc).__name__
    transactional_id, prefix = probe_id(app_id), f"{app_id}-"
    if name == "TransactionalIdAuthorizationFailed":
        return ConfigError(
            "exactly_once needs Kafka transactions and the broker refuses this principal the "
            f"transactional id {transactional_id} (TransactionalIdAuthorizationFailed); grant "
            f"WRITE and DESCRIBE on TransactionalId with the prefix {prefix} (faust's ids are "
            f"{prefix}<topic group>-<partition>), {AT_LEAST_ONCE}"
        )
    if name == "ClusterAuthorizationFailedError":
        return ConfigError(
            "exactly_once needs Kafka transactions and the broker refuses this principal "
            f"producer ids (ClusterAuthorizationFailed for {transactional_id}); grant "
            "IDEMPOTENT_WRITE on the "
            f"cluster and WRITE and DESCRIBE on TransactionalId with the prefix {prefix}, "
            f"{AT_LEAST_ONCE}"
        )
    return None


def probe_id(app_id: str) -> str:
    """The probe's transactional id: under the app id's prefix, as faust's own ids are."""
    return f"{app_id}-startup-check"


async def read_view(admin: AIOKafkaAdminClient) -> ClusterView:
    """:func:`cluster_view` of the cluster ``admin`` (started) talks to. Raises aiokafka's
    errors for a failed metadata request; unreadable configs become None (not an error)."""
    from aiokafka.admin.config_resource import (  # noqa: PLC0415 - heavy import
        ConfigResource,
        ConfigResourceType,
    )

    cluster = await admin.describe_cluster()
    brokers = cluster.get("brokers") or []
    topics = await admin.describe_topics()
    broker_configs = None
    if brokers:
        broker = ConfigResource(
            ConfigResourceType.BROKER,
            str(brokers[0]["node_id"]),
            {REPLICATION_FACTOR: None, MIN_ISR: None},
        )
        broker_configs = await _configs(admin, broker)
    log_min_isr = None
    if any(t.get("topic") == TRANSACTION_LOG and t.get("partitions") for t in topics):
        resource = ConfigResource(
            ConfigResourceType.TOPIC, TRANSACTION_LOG, {"min.insync.replicas": None}
        )
        log_min_isr = (await _configs(admin, resource) or {}).get("min.insync.replicas")
    return cluster_view(brokers, topics, broker_configs, log_min_isr)


async def _configs(admin: AIOKafkaAdminClient, resource: Any) -> dict[str, str] | None:
    """The config entries of ``resource`` by name, or None when the broker refuses them (an
    ACL without DescribeConfigs answers CLUSTER/TOPIC_AUTHORIZATION_FAILED)."""
    try:
        responses = await admin.describe_configs([resource])
    except Exception as exc:
        if not is_kafka_error(exc):
            raise
        log.debug("describe_configs failed: %s", plain_kafka_error(exc))
        return None
    entries: dict[str, str] = {}
    for response in responses:
        for answer in response.to_object()["resources"]:
            if answer["error_code"] != 0:
                return None
            for entry in answer["config_entries"]:
                entries[entry["config_names"]] = entry["config_value"]
    return entries


async def current_verdict(settings: Settings) -> Verdict:
    """:func:`verdict` of the cluster now, read with the settings' TLS/SASL. Raises what
    :func:`app.kafka_security.start_client` raises when the broker cannot be used."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - heavy import

    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(REQUEST_TIMEOUT_SECONDS * 1000),
        **client_kwargs(settings),
    )
    await start_client(admin, settings)
    try:
        return verdict(await read_view(admin))
    finally:
        await admin.close()


async def check_transactions(settings: Settings, *, wait_seconds: float = WAIT_SECONDS) -> Verdict:
    """Raise unless transactions can work (module docstring); the READY or UNKNOWN verdict
    they work under. Waits up to ``wait_seconds`` (re-reading every 2 s) while the verdict is
    WAIT, then up to ``PROBE_SECONDS`` for the probe's producer id."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    found = await current_verdict(settings)
    if found.outcome is Outcome.WAIT and wait_seconds > 0:
        log.warning(
            "waiting up to %.0f s for Kafka's transaction log: %s", wait_seconds, found.reason
        )
    while found.outcome is Outcome.WAIT and loop.time() < deadline:
        await asyncio.sleep(2.0)
        found = await current_verdict(settings)
    if found.outcome is Outcome.CANNOT:
        raise ConfigError(
            f"exactly_once needs Kafka transactions, which cannot run: {found.reason}"
        )
    if found.outcome is Outcome.WAIT:
        waited = f" after {wait_seconds:.0f} s" if wait_seconds > 0 else ""
        raise BrokerError(
            f"exactly_once needs Kafka transactions, not possible{waited}: {found.reason}"
        )
    if found.outcome is Outcome.UNKNOWN:
        log.warning("cannot tell whether Kafka can run transactions: %s; trying one", found.reason)
    await _probe(settings)
    return found


async def _probe(settings: Settings) -> None:
    """Start (and stop) one transactional producer: the coordinator must give it a producer
    id within ``PROBE_SECONDS``. Raises :func:`probe_failure`'s ConfigError, else
    :class:`BrokerError` for a coordinator that does not answer or any other failure."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - heavy import

    from app.kafka_security import client_kwargs  # noqa: PLC0415

    transactional_id = probe_id(settings.app_id)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        transactional_id=transactional_id,
        acks="all",  # what a transactional producer needs anyway (it sends nothing)
        request_timeout_ms=int(REQUEST_TIMEOUT_SECONDS * 1000),
        **client_kwargs(settings),
    )
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await producer.start()
    except TimeoutError:
        raise BrokerError(
            "exactly_once needs Kafka transactions and no transaction coordinator gave a "
            f"producer id within {PROBE_SECONDS:.0f} s (InitProducerId for {transactional_id}): "
            f"is {TRANSACTION_LOG} creatable and in sync ({REPLICATION_FACTOR} and {MIN_ISR} "
            f"at most the live brokers)? {AT_LEAST_ONCE.removeprefix('or ')}"
        ) from None
    except Exception as exc:
        if (refused := probe_failure(exc, settings.app_id)) is not None:
            raise refused from None
        if not is_kafka_error(exc):
            raise
        raise BrokerError(
            "exactly_once needs Kafka transactions and a transactional producer could not "
            f"start: {plain_kafka_error(exc)}"
        ) from None
    finally:
        await producer.stop()
