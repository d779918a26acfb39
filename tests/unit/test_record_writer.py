"""RecordWriter's sends, with a fake producer: what goes where, in which transaction.

The same file run against the tree before a RecordWriter change shows the records sent are
unchanged (ARCHITECTURE.md §5, Round 9).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from agents.ingest import RecordWriter, declare_tables, write_record
from app.core.pipeline import IngestResult
from app.core.transform import LIMIT_PERSON_CAP
from app.errors import Reason
from app.faust_app import create_app
from app.records import SourcePosition, Stage, dead_letter
from app.settings import Settings
from app.topics import topics_for
from tests.unit.test_ingest_turns import Event, Message


@dataclass
class Producer:
    """Records each send as (transactional id, topic, key, value, partition)."""

    sent: list[tuple[Any, ...]] = field(default_factory=list)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> asyncio.Future[None]:
        self.sent.append((transactional_id, topic, key, value, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _writer(tmp_path: Any) -> tuple[RecordWriter, Producer, Any]:
    settings = Settings(
        forwarding_enabled=False,
        processing_guarantee="exactly_once",
        store="memory://",
        data_dir=str(tmp_path),
    )
    app = create_app(settings)
    app.in_worker = True  # what faust's worker sets: in_transaction is then True
    tables = declare_tables(app, settings)
    producer = Producer()
    app.producer = producer
    app.assignor._topic_groups = {"mparticle-batches": 0}
    return RecordWriter(app, tables.users, tables.erasures, topics_for(settings)), producer, app


def _result() -> IngestResult:
    source = SourcePosition("mparticle-batches", 3, 41)
    letter = dead_letter(
        Reason.INVALID_JSON,
        "not JSON",
        stage=Stage.INGEST,
        source=source,
        key=b"8",
        payload=b"{",
        failed_at_ms=1_700_000_000_000,
    )
    return IngestResult(
        states={"7": b"state"},
        erased={"9": 1_700_000_000_000},
        operations=("7", b"operations"),
        dead_letters=[letter],
    )


async def test_a_records_outputs_and_changes_go_in_its_partitions_transaction(
    tmp_path: Any,
) -> None:
    writer, producer, app = _writer(tmp_path)
    await writer.write(Event(Message("mparticle-batches", 3, 41)), _result(), "batches")

    tid = f"{app.conf.id}-0-3"  # faust's TransactionManager.transactional_id_format
    assert [(sent[0], sent[1], sent[2], sent[4]) for sent in producer.sent] == [
        (tid, "mpcio-operations", b"7", None),
        (tid, "mpcio-deadletter", b"8", None),
        (tid, f"{app.conf.id}-users-changelog", b"7", 3),
        (tid, f"{app.conf.id}-erasures-changelog", b"9", 3),
    ]
    assert producer.sent[0][3] == b"operations"
    assert producer.sent[3][3] == b"1700000000000"


@pytest.mark.parametrize("partitions", [(3, 3), (3, 5)])
async def test_the_transactional_id_follows_the_topic_group_a_rebalance_gives(
    tmp_path: Any, partitions: tuple[int, int]
) -> None:
    writer, producer, app = _writer(tmp_path)
    first, second = partitions
    await writer.write(Event(Message("mparticle-batches", first, 1)), IngestResult(), "batches")
    app.assignor._topic_groups = {"mparticle-batches": 2}
    result = IngestResult(operations=("7", b"operations"))
    await writer.write(Event(Message("mparticle-batches", second, 2)), result, "batches")
    await writer.write(Event(Message("mparticle-batches", first, 3)), result, "batches")

    assert [sent[0] for sent in producer.sent] == [
        f"{app.conf.id}-2-{second}",
        f"{app.conf.id}-2-{first}",
    ]


async def test_write_record_logs_dead_letters_and_held_back_attributes_only_when_there_are_any(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    writer, _, _ = _writer(tmp_path)
    event = Event(Message("mparticle-batches", 3, 41))
    caplog.set_level(logging.WARNING, logger="agents.ingest")
    await write_record(writer, event, IngestResult(states={"7": b"state"}), "batches")
    assert caplog.records == []

    result = _result()
    result.counts["limits", LIMIT_PERSON_CAP] += 2
    await write_record(writer, event, result, "batches")
    assert [record.getMessage()[:22] for record in caplog.records] == [
        "dead letter invalid_js",
        "2 user attribute(s) no",
    ]
