"""Operations records for the sink's unit tests: items name their partition, offset and index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import TopicPartition

from app.records import SourcePosition, operation_batch

TOPIC = "ops"
T = 1_764_400_000_000


@dataclass(frozen=True)
class Fetched:
    """A consumer record (aiokafka's ``ConsumerRecord`` attributes the sink reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def item(partition: int, offset: int, index: int) -> bytes:
    return orjson.dumps({"p": partition, "o": offset, "i": index})


def record(partition: int, offset: int, items: int = 1) -> Fetched:
    """An ``OperationBatch`` record of user ``100 + partition`` with ``items`` events."""
    mpid = str(100 + partition)
    value = operation_batch(
        mpid,
        [("event", mpid, item(partition, offset, i)) for i in range(items)],
        SourcePosition("batches", partition, offset),
        T,
    )
    return Fetched(TOPIC, partition, offset, mpid.encode(), value)


def chunk_of(*records: Fetched) -> dict[TopicPartition, list[Any]]:
    """What one fetch returns: records by partition, in the order given."""
    chunk: dict[TopicPartition, list[Any]] = {}
    for fetched in records:
        chunk.setdefault(TopicPartition(TOPIC, fetched.partition), []).append(fetched)
    return chunk
