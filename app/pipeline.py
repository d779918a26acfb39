"""One input record of ``mparticle-batches`` → state updates, operations and dead letters.

:func:`process_batch_record` is the whole ingest step as a plain function: the agent gives it
the record, a way to read a user's stored state and the settings, and writes what it returns
(table updates, one operations record, dead letters, re-keyed batches). It does no I/O.

Failure semantics: nothing raises for bad input. A record that cannot be parsed becomes one
dead letter (stage ``ingest``, the parser's reason, the raw bytes and source position). A
stored state that cannot be decoded is dead-lettered too (reason ``state_corrupt``) and the user
starts afresh, so one corrupt value never blocks a partition. Batches whose mpid is not the
record key (keyless or bulk records) are not processed here: they are returned in ``rekeyed``
for the agent to send back to the input topic keyed by their own mpid, so every user's state
lives on the partition its key maps to.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from app.avro import codec
from app.errors import InvalidRecordError
from app.mparticle import parse_record
from app.state import UserState, decode_state, encode_state
from app.transform import transform

if TYPE_CHECKING:
    from app.mparticle import Batch
    from app.settings import Settings

STAGE_INGEST = "ingest"


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a record came from: kept in operations and dead letters for tracing and redrive."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class IngestResult:
    """What the agent must write for one input record, in this order.

    ``states``: encoded :class:`UserState` per mpid (changed ones only); ``operations``: at most
    one encoded ``OperationBatch`` (key = mpid); ``rekeyed``: (mpid, raw batch JSON) to send
    back to the input topic; ``dead_letters``: encoded ``DeadLetter`` records.
    ``counts`` holds metric increments keyed by (metric, label values).
    """

    states: dict[str, bytes] = field(default_factory=dict)
    operations: tuple[str, bytes] | None = None
    rekeyed: list[tuple[str, bytes]] = field(default_factory=list)
    dead_letters: list[bytes] = field(default_factory=list)
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dead_letter(
    reason: str,
    detail: str,
    *,
    stage: str,
    source: SourcePosition,
    key: bytes | None,
    payload: bytes,
    failed_at_ms: int,
    http_status: int | None = None,
    response: str | None = None,
    attempts: int = 0,
) -> bytes:
    """An encoded ``DeadLetter`` record (schemas/dead_letter.avsc)."""
    return codec("dead_letter").encode(
        {
            "reason": reason,
            "detail": detail,
            "stage": stage,
            "source_topic": source.topic,
            "source_partition": source.partition,
            "source_offset": source.offset,
            "key": key,
            "payload": payload,
            "http_status": http_status,
            "response": response,
            "attempts": attempts,
            "failed_at_ms": failed_at_ms,
        }
    )


def process_batch_record(
    key: bytes | None,
    value: bytes,
    source: SourcePosition,
    load_state: Callable[[str], bytes | None],
    settings: Settings,
    *,
    clock: Callable[[], int] = now_ms,
) -> IngestResult:
    """Parse, fold and transform one record of the batches topic (see module docstring)."""
    result = IngestResult()
    try:
        batches = parse_record(value)
    except InvalidRecordError as exc:
        result.dead_letters.append(
            dead_letter(
                exc.reason,
                exc.detail,
                stage=STAGE_INGEST,
                source=source,
                key=key,
                payload=value,
                failed_at_ms=clock(),
            )
        )
        result.counts["dead_letters", STAGE_INGEST, exc.reason] += 1
        result.counts["batches", "rejected"] += 1
        return result

    record_mpid = _key_text(key)
    mine = [b for b in batches if b.mpid == record_mpid]
    if len(mine) != len(batches):
        result.rekeyed = _rekey(value, batches, record_mpid)
        result.counts["batches", "rekeyed"] += len(result.rekeyed)
    if not mine:
        return result

    mpid = mine[0].mpid
    state = _load(mpid, load_state, result, source, key, clock)
    stored = state
    operations: list[dict[str, Any]] = []
    for batch in mine:
        _count_input(batch, result.counts)
        transformed = transform(batch, state, settings)
        state = transformed.state
        result.counts["batches", transformed.outcome] += 1
        for outcome, count in transformed.events.items():
            result.counts["events", "all", outcome] += count
        for kind, count in transformed.limits.items():
            result.counts["limits", kind] += count
        for operation in transformed.operations:
            operations.append(
                {
                    "action": operation.action,
                    "person_id": operation.person_id,
                    "item": operation.payload,
                }
            )
            result.counts["operations", operation.action] += 1
    if state is not None and state != stored:
        result.states[mpid] = encode_state(state)
    if operations:
        result.operations = (
            mpid,
            codec("operation_batch").encode(
                {
                    "mpid": mpid,
                    "source_topic": source.topic,
                    "source_partition": source.partition,
                    "source_offset": source.offset,
                    "ingested_at_ms": clock(),
                    "operations": operations,
                }
            ),
        )
    return result


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("ascii")
    except UnicodeDecodeError:
        return None


def _rekey(value: bytes, batches: list[Batch], record_mpid: str | None) -> list[tuple[str, bytes]]:
    # Rare path (keyless or mixed bulk records): decode again to forward each raw batch as is.
    document = orjson.loads(value)
    raws = document if isinstance(document, list) else [document]
    return [
        (batch.mpid, orjson.dumps(raw))
        for batch, raw in zip(batches, raws, strict=True)
        if batch.mpid != record_mpid
    ]


def _load(  # noqa: PLR0917 - private helper, every argument is needed
    mpid: str,
    load_state: Callable[[str], bytes | None],
    result: IngestResult,
    source: SourcePosition,
    key: bytes | None,
    clock: Callable[[], int],
) -> UserState | None:
    stored = load_state(mpid)
    if stored is None:
        return None
    try:
        return decode_state(stored)
    except InvalidRecordError as exc:
        result.dead_letters.append(
            dead_letter(
                "state_corrupt",
                exc.detail,
                stage=STAGE_INGEST,
                source=source,
                key=key,
                payload=stored,
                failed_at_ms=clock(),
            )
        )
        result.counts["dead_letters", STAGE_INGEST, "state_corrupt"] += 1
        return None


def _count_input(batch: Batch, counts: Counter[tuple[str, ...]]) -> None:
    for reason, count in batch.invalid_events.items():
        counts["events", "invalid", reason] += count
    for event_type, count in batch.ignored_events.items():
        counts["events", event_type, "ignored"] += count
    for kind, count in batch.ignored.items():
        counts["ignored", kind] += count
