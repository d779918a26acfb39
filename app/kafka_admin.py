"""Topic administration with aiokafka: create what is missing, check co-partitioning.

The batches topic belongs to mParticle's Kafka integration, which decides its partition
count; every topic we read or create must match it (the per-user table needs co-partitioned
topics: otherwise one user's state would be split across workers).

Failure semantics: :func:`ensure_topics` raises :class:`~app.errors.ConfigError` naming every
topic and its count when an existing topic disagrees with the batches topic, before creating
anything (nothing half-made is left behind); a broker that cannot be used raises what
:func:`app.kafka_security.start_or_explain` raises (ConfigError when it rejects the TLS or SASL
settings, else :class:`~app.errors.BrokerError`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.errors import ConfigError
from app.kafka_security import start_or_explain
from app.topics import Topics, TopicSpec


async def ensure_topics(
    bootstrap: list[str],
    topics: Topics,
    replication_factor: int = 1,
    *,
    security: Mapping[str, Any] | None = None,
    changelogs: Sequence[str] = (),
) -> int:
    """Create every missing topic of ``topics``; return the partition count they all share.

    The count is the existing batches topic's, else ``topics.batches.partitions`` (from
    ``MPCIO_TOPIC_PARTITIONS``). ``changelogs``: names of faust's table changelog topics, which
    faust creates itself but which must match too when they already exist.
    ``security``: the TLS/SASL client arguments (:func:`app.kafka_security.client_kwargs`).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=30_000, **(security or {})
    )
    await start_or_explain(admin, bootstrap, security or {}, label=",".join(bootstrap))
    names = [spec.name for spec in topics.all()]
    try:
        existing = await partition_counts(admin, [*names, *changelogs])
        count = existing.get(topics.batches.name, topics.batches.partitions)
        _check_counts(topics.batches.name, count, existing)
        missing = [spec for spec in topics.all() if spec.name not in existing]
        if missing:
            # another worker may create them between our two calls
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [_new_topic(replace(s, partitions=count), replication_factor) for s in missing]
                )
            existing = await _counts_once_visible(admin, names)
            _check_counts(topics.batches.name, count, existing)
    finally:
        await admin.close()
    return count


def _check_counts(batches: str, count: int, existing: Mapping[str, int]) -> None:
    """Raise :class:`ConfigError` naming every topic whose count is not ``count``."""
    wrong = {name: n for name, n in existing.items() if n != count}
    if wrong:
        raise ConfigError(
            f"topics must have the partition count of {batches} ({count}), which mParticle's "
            "Kafka integration decides: "
            + ", ".join(f"{name} has {n}" for name, n in sorted(wrong.items()))
            + "; recreate them with that count (nothing was created)"
        )


async def partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition count of each topic of ``names`` that exists (missing ones are left out)."""
    described = await admin.describe_topics(names)
    return {
        entry["topic"]: len(entry["partitions"])
        for entry in described
        if entry.get("error_code", 0) == 0 and entry["partitions"]
    }


async def _counts_once_visible(
    admin: AIOKafkaAdminClient, names: list[str], wait_seconds: float = 30.0
) -> dict[str, int]:
    """Partition counts of ``names`` once the broker's metadata shows every one of them.

    Topics created a moment ago can be missing from the next metadata answer; checking
    co-partitioning then would compare real counts with "missing" and stop a first start.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        counts = await partition_counts(admin, names)
        if len(counts) == len(names) or loop.time() > deadline:
            return counts
        await asyncio.sleep(0.1)


def _new_topic(spec: TopicSpec, replication_factor: int) -> NewTopic:
    configs: dict[str, str] = {}
    if spec.compacted:
        configs["cleanup.policy"] = "compact"
    if spec.retention_ms is not None:
        configs["retention.ms"] = str(spec.retention_ms)
    return NewTopic(spec.name, spec.partitions, replication_factor, topic_configs=configs)
