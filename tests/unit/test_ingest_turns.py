"""The ingest agents of one partition take turns (agents.ingest.ingest_stream, Turns).

Seen under exactly_once (issue 13): a batch stepped while an erasure of its user was being
written (its deletes sent, its marker not put yet) was admitted, and its events reached the
operations topic after the deletes: the erased person came back with events sent before the
erasure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from agents.ingest import Turns, ingest_stream
from app.core.pipeline import IngestResult
from app.records import SourcePosition


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    headers: tuple[()] = ()
    timestamp: float | None = None  # faust's Kafka time, seconds


@dataclass(frozen=True)
class Event:
    message: Message
    key: bytes = b"7"
    value: bytes = b"{}"


@dataclass
class Stream:
    records: list[Event]

    async def events(self) -> AsyncIterator[Event]:
        for event in self.records:
            yield event


@dataclass
class Writer:
    """Sends the operations record, yields (as a transactional send does), then puts the
    erasure marker: the order and the gap of the real RecordWriter."""

    markers: dict[str, int] = field(default_factory=dict)
    operations: list[bytes] = field(default_factory=list)
    turns: Turns = field(default_factory=Turns)

    async def write(self, event: Any, result: IngestResult, kind: Any) -> None:
        if result.operations is not None:
            self.operations.append(result.operations[1])
        for _ in range(3):
            await asyncio.sleep(0)
        self.markers.update(result.erased)


async def test_a_batch_stepped_during_its_users_erasure_waits_for_the_marker() -> None:
    writer = Writer()

    def erasure(event: Any, position: SourcePosition) -> IngestResult:
        return IngestResult(erased={"7": 2_000}, operations=("7", b"delete"))

    def batch(event: Any, position: SourcePosition) -> IngestResult:
        if writer.markers.get("7", 0) >= 1_000:  # reached Kafka (1,000) before the erasure
            return IngestResult()
        return IngestResult(operations=("7", b"events"))

    await asyncio.wait_for(
        asyncio.gather(
            ingest_stream(
                Stream([Event(Message("erasure", 3, 0))]),
                erasure,
                writer,  # type: ignore[arg-type]
                kind="erasure",
            ),
            ingest_stream(
                Stream([Event(Message("batches", 3, 0))]),
                batch,
                writer,  # type: ignore[arg-type]
                kind="batches",
            ),
        ),
        30,
    )

    assert writer.operations == [b"delete"]  # the batch was dropped, not sent after it
