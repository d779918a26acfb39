"""``mpcio check-config``: does this configuration work, before the worker depends on it?

Each check says ``ok`` with what it saw, ``FAILED: <reason>``, or ``skipped (<why>)`` when it
was not run:

- ``kafka``: a connection and metadata round trip with the configured security (TLS/SASL);
- ``topics``: every topic of the deployment exists (the worker creates missing ones at
  start-up, so on a fresh cluster this fails until the first worker ran or they were created);
- ``co-partitioning``: the topics the ingest agents read (the three input topics and the
  re-key topic) have the same partition count;
- ``transactions``: under ``exactly_once`` (else skipped), the cluster can run Kafka
  transactions (:mod:`app.transactions_check`: the brokers' ``transaction.state.log.*``
  settings against the live brokers, then one transactional producer must start); a cluster
  or ACL that cannot counts as a rejected setting (exit 2);
- ``customerio``: ``GET /auth`` with the configured site id, API key and region (or URL)
  answers 200; skipped when forwarding is disabled;
- ``key sample`` (only with ``--sample N``): N of the newest records of the batches topic (the
  newest N/partitions of each partition, a short partition's rest taken from the others),
  counted by :func:`key_form` — how mParticle keys them and how many the worker would re-key
  (through the re-key topic, never into the batches topic).

What a check says passes through the installed :class:`~app.masking.Masker`: a URL with
credentials (``MPCIO_CUSTOMERIO_URL=http://user:pass@host``) is printed as
``http://**********@host``, secrets and addresses in an answer are masked.

Failure semantics: nothing raises for a failing check; every failure is a :class:`Check` with
``ok`` false, and ``settings_rejected`` true when the broker refused the configured TLS trust
or credentials (wrong CA, host name not in the certificate, authentication failed): the
command then exits 2 like any other configuration error. Checks that need a broker are
skipped when it cannot be reached. Errors are in words, never Python reprs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from app import masking
from app.errors import (
    BrokerError,
    ConfigError,
    InvalidRecordError,
    is_kafka_error,
    plain_kafka_error,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from app.customerio.classify import HttpAnswer, TransportFailure
    from app.settings import Settings

KAFKA_TIMEOUT_SECONDS = 15.0
_Partition = TypeVar("_Partition")


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: passed (``ok``), failed, or not run (``skipped``, ``detail`` says why)."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False

    @classmethod
    def skip(cls, name: str, why: str) -> Check:
        return cls(name, False, why, skipped=True)

    @property
    def failed(self) -> bool:
        return not (self.ok or self.skipped)

    settings_rejected: bool = False

    def line(self) -> str:
        """The printed line, masked: ``name: ok (detail)``, ``name: FAILED: detail`` or
        ``name: skipped (why)``."""
        if self.failed:
            return masking.active().text(f"{self.name + ':':<18} FAILED: {self.detail}")
        verdict = "skipped" if self.skipped else "ok"
        detail = f" ({self.detail})" if self.detail else ""
        return masking.active().text(f"{self.name + ':':<18} {verdict}{detail}")


def summary(checks: list[Check]) -> str:
    """``all checks passed``, or ``FAILED: kafka``, then ``(skipped: topics, …)`` if any."""
    failed = [check.name for check in checks if check.failed]
    skipped = [check.name for check in checks if check.skipped]
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all checks passed"
    return verdict + (f" (skipped: {', '.join(skipped)})" if skipped else "")


async def run_checks(settings: Settings, *, sample: int = 0) -> list[Check]:
    """Every check of the module docstring, in order (``key sample`` when ``sample`` > 0)."""
    checks = await check_kafka(settings)
    checks.append(
        await check_transactions(settings)
        if checks[0].ok
        else Check.skip("transactions", "no broker")
    )
    checks.append(await check_customerio(settings))
    if sample > 0:
        checks.append(
            await check_key_sample(settings, sample)
            if checks[0].ok
            else Check.skip("key sample", "no broker")
        )
    return checks


KeyForm = Literal["mpid", "none", "other", "unparseable"]


def key_form(key: bytes | None, value: bytes | None) -> KeyForm:
    """How one batches record is keyed, as the worker will treat it.

    ``mpid``: the key is every batch's mpid as canonical decimal text (used as is); ``none``:
    no key — mParticle sends a record without a user id to a random partition, unkeyed
    (re-keyed by the worker); ``other``: a key that is not the batch's canonical mpid (e.g.
    ``+42``, or a bulk record of several users; re-keyed); ``unparseable``: not a batch at all
    (dead-lettered). Never raises.
    """
    from app.core.mparticle import parse_record  # noqa: PLC0415

    try:
        batches = parse_record(value or b"")
    except InvalidRecordError:
        return "unparseable"
    if key is None:
        return "none"
    return "mpid" if all(b.mpid.encode() == key for b in batches) else "other"


def newest_shares(available: Mapping[_Partition, int], count: int) -> dict[_Partition, int]:
    """How many of the newest records to read from each partition: ``count`` in all (or every
    record when the partitions hold fewer), as evenly as the partitions allow — a short
    partition's unused share goes to the others.

    ``available``: records held per partition (end offset - start offset, >= 0)."""
    shares: dict[_Partition, int] = {}
    left = count
    by_size = sorted(available, key=available.__getitem__)
    for index, partition in enumerate(by_size):
        fair = -(-left // (len(by_size) - index))  # ceiling: the first partitions round up
        shares[partition] = min(available[partition], fair)
        left -= shares[partition]
    return shares


async def check_key_sample(settings: Settings, count: int) -> Check:
    """``key sample``: :func:`key_form` of ``count`` of the newest records of the batches topic
    (:func:`newest_shares` from the end of each partition; fewer when the topic holds fewer)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415

    topic = settings.topic_batches
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        request_timeout_ms=int(KAFKA_TIMEOUT_SECONDS * 1000),
        **client_kwargs(settings),
    )
    await start_client(consumer, settings)
    forms: Counter[KeyForm] = Counter()
    try:
        # the consumer's own cluster view only knows assigned topics: ask for all of them
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        if not partitions:
            return Check("key sample", False, f"topic {topic} does not exist")
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        shares = newest_shares({tp: ends[tp] - starts[tp] for tp in partitions}, count)
        for tp in partitions:
            consumer.seek(tp, ends[tp] - shares[tp])
        async with asyncio.timeout(KAFKA_TIMEOUT_SECONDS):
            while sum(forms.values()) < count and [
                tp for tp in partitions if await consumer.position(tp) < ends[tp]
            ]:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in records[: count - sum(forms.values())]:
                        forms[key_form(record.key, record.value)] += 1
    except TimeoutError:
        return Check("key sample", False, f"reading {topic} stalled")
    finally:
        await consumer.stop()
    total = sum(forms.values())
    if not total:
        return Check("key sample", True, f"{topic} is empty")
    return Check(
        "key sample",
        True,
        f"{total} records of {topic}: {forms['mpid']} keyed by mpid, {forms['none']} without "
        f"a key, {forms['other']} with another key -> {forms['none'] + forms['other']} would be "
        f"re-keyed through {settings.topic_rekey}, {forms['unparseable']} not batches "
        "(dead-lettered)",
    )


async def check_kafka(settings: Settings) -> list[Check]:
    """``kafka``, ``topics`` and ``co-partitioning``."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - heavy import
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    from app.kafka_admin import partition_counts  # noqa: PLC0415
    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415
    from app.topics import topics_for  # noqa: PLC0415

    protocol = settings.kafka_security_protocol
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(KAFKA_TIMEOUT_SECONDS * 1000),
        **client_kwargs(settings),
    )
    not_run = [Check.skip(name, "no broker") for name in ("topics", "co-partitioning")]
    try:
        async with asyncio.timeout(KAFKA_TIMEOUT_SECONDS * 2):
            await start_client(admin, settings)
    except BrokerError as exc:
        return [Check("kafka", False, str(exc)), *not_run]
    except ConfigError as exc:
        return [Check("kafka", False, str(exc), settings_rejected=True), *not_run]
    except TimeoutError:
        return [Check("kafka", False, f"no answer from {settings.broker}"), *not_run]
    try:
        topics = topics_for(settings)
        try:
            async with asyncio.timeout(KAFKA_TIMEOUT_SECONDS * 2):
                cluster = await admin.describe_cluster()
                counts = await partition_counts(admin, [spec.name for spec in topics.all()])
        except KafkaError as exc:
            reason = plain_kafka_error(exc)
            return [Check("kafka", False, f"metadata request failed: {reason}"), *not_run]
        except TimeoutError:
            reason = f"no answer within {KAFKA_TIMEOUT_SECONDS * 2:.0f}s"
            return [Check("kafka", False, f"metadata request failed: {reason}"), *not_run]
        brokers = len(cluster.get("brokers", ()))
        kafka = Check(
            "kafka",
            True,
            f"{', '.join(settings.bootstrap_servers)}, {brokers} broker"
            f"{'s' if brokers != 1 else ''} answered, {protocol}"
            + (", password sent unencrypted" if protocol == "SASL_PLAINTEXT" else ""),
        )
        missing = [spec.name for spec in topics.all() if spec.name not in counts]
        topic_check = (
            Check("topics", False, "missing " + ", ".join(missing) + " (mpcio worker creates them)")
            if missing
            else Check("topics", True, f"{len(counts)} topics exist")
        )
        inputs = {spec.name: counts.get(spec.name) for spec in topics.inputs()}
        present = {name: n for name, n in inputs.items() if n is not None}
        if len(set(present.values())) > 1:
            copart = Check(
                "co-partitioning",
                False,
                "topics read by ingest differ in partition count: "
                + ", ".join(f"{name}={n}" for name, n in present.items()),
            )
        elif len(present) < len(inputs):
            copart = Check(
                "co-partitioning",
                False,
                "cannot check: missing topic(s) "
                + ", ".join(name for name, n in inputs.items() if n is None),
            )
        else:
            copart = Check(
                "co-partitioning",
                True,
                f"{len(present)} topics read by ingest x {max(present.values())} partitions",
            )
        return [kafka, topic_check, copart]
    finally:
        await admin.close()


async def check_transactions(settings: Settings) -> Check:
    """``transactions``: under ``exactly_once``, whether the cluster can run Kafka
    transactions (:func:`app.transactions_check.check_transactions`, without its wait for
    brokers that are down); a failure that only the brokers' settings or ACLs can fix counts
    as a rejected setting (exit 2), like the worker's start-up."""
    from app import transactions_check  # noqa: PLC0415 - aiokafka only for this check

    if settings.processing_guarantee != "exactly_once":
        return Check.skip(
            "transactions", f"MPCIO_PROCESSING_GUARANTEE={settings.processing_guarantee}"
        )
    try:
        found = await transactions_check.check_transactions(settings, wait_seconds=0)
    except ConfigError as exc:
        return Check("transactions", False, str(exc), settings_rejected=True)
    except BrokerError as exc:
        return Check("transactions", False, str(exc))
    except Exception as exc:
        if not is_kafka_error(exc):
            raise
        return Check("transactions", False, f"reading the cluster failed: {plain_kafka_error(exc)}")
    return Check("transactions", True, f"{found.reason}; a transactional producer started")


async def check_customerio(settings: Settings) -> Check:
    """``GET /auth`` with the configured credentials (skipped when forwarding is off)."""
    from app import wiring  # noqa: PLC0415 - aiohttp only for this check

    if not settings.forwarding_enabled:
        return Check.skip("customerio", "MPCIO_FORWARDING_ENABLED is false")
    site_id, api_key = settings.customerio_site_id, settings.customerio_api_key
    if site_id is None or api_key is None:  # Settings requires both when forwarding
        return Check("customerio", False, "no credentials")
    url = settings.customerio_base_url
    client = wiring.track_client(settings, wiring.rate_limiter(settings), max_connections=1)
    async with client:
        answer = await client.check_auth()
    return _auth_verdict(url, site_id, answer)


def _auth_verdict(url: str, site_id: str, answer: HttpAnswer | TransportFailure) -> Check:
    from app.customerio.classify import HttpAnswer  # noqa: PLC0415

    if not isinstance(answer, HttpAnswer):
        return Check("customerio", False, f"cannot reach {url}: {answer.kind} {answer.detail:.160}")
    status = answer.status
    if status == 200:
        return Check("customerio", True, f"GET {url}/auth accepted site id {site_id}")
    if status in {401, 403}:
        return Check(
            "customerio",
            False,
            f"GET {url}/auth answered {status}: Customer.io rejects the site id / API key "
            "(MPCIO_CUSTOMERIO_SITE_ID, MPCIO_CUSTOMERIO_API_KEY) for this region",
        )
    if 300 <= status < 400:
        return Check(
            "customerio",
            False,
            f"GET {url}/auth answered {status} (redirect to "
            f"{answer.headers.get('Location', '?')}): wrong MPCIO_CUSTOMERIO_REGION?",
        )
    return Check("customerio", False, f"GET {url}/auth answered {status}")
