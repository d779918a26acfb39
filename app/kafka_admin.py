"""Topic administration with aiokafka: create what is missing, check co-partitioning.

Failure semantics: :func:`ensure_topics` raises :class:`~app.errors.ConfigError` when existing
input topics disagree on their partition count (the per-user table needs co-partitioned
inputs; running anyway would split one user's state across workers), and
:class:`~app.errors.BrokerError` when the broker cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from app.errors import BrokerError, ConfigError
from app.topics import Topics, TopicSpec


async def ensure_topics(
    bootstrap: list[str],
    topics: Topics,
    replication_factor: int = 1,
    *,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Create every missing topic of ``topics``; verify the inputs are co-partitioned.

    ``security``: the TLS/SASL client arguments (:func:`app.kafka_security.client_kwargs`).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=30_000, **(security or {})
    )
    try:
        await admin.start()
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {','.join(bootstrap)}: {exc}") from exc
    try:
        existing = await partition_counts(admin, [spec.name for spec in topics.all()])
        missing = [spec for spec in topics.all() if spec.name not in existing]
        if missing:
            # another worker may create them between our two calls
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([_new_topic(s, replication_factor) for s in missing])
            existing = await _counts_once_visible(admin, [spec.name for spec in topics.all()])
        counts = {spec.name: existing.get(spec.name) for spec in topics.inputs()}
        if len(set(counts.values())) != 1:
            raise ConfigError(
                "input topics must be co-partitioned (same partition count): "
                + ", ".join(f"{name}={count}" for name, count in counts.items())
            )
    finally:
        await admin.close()


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
