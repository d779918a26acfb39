"""The wire records between the stages, in one home: what ingest writes and the sink reads.

- :class:`SourcePosition`: where a record came from (topic, partition, offset), kept in
  operations records and dead letters for tracing and redrive;
- the ``OperationBatch`` record (``schemas/operation_batch.avsc``): all Customer.io operations
  of one input record, key = mpid — :func:`operation_batch` encodes it,
  :func:`decode_operation_batch` decodes it;
- the ``DeadLetter`` record (``schemas/dead_letter.avsc``): :func:`dead_letter` encodes it,
  :func:`decode_dead_letter` decodes it; :class:`Stage` names the stage that wrote it; its
  reason is one of the closed catalogue :class:`app.errors.Reason` (the slug an
  :class:`~app.errors.InvalidRecordError` carries; README, "Dead letters", lists each);
- the Kafka headers of a dead letter (below) and of a redriven record.

Kafka headers of dead letters: the error context where standard Kafka tools show it. A dead
letter's value is the Avro ``DeadLetter`` record, which Kafka UIs, kcat and Kafka Connect cannot
read without the schema. Its headers repeat the error context as UTF-8 text, the way Kafka
Connect's dead-letter queue does with its ``__connect.errors.*`` headers. Every name starts
with :data:`PREFIX` (``mpcio.``):

==========================  ===============================================================
``mpcio.reason``            the reason slug (``invalid_json``, ``retries_exhausted``, ...)
``mpcio.detail``            the explanation, masked (:mod:`app.masking`), at most 500 chars
``mpcio.stage``             ``ingest`` or ``sink``
``mpcio.source.topic``      the topic of the record that failed
``mpcio.source.partition``  its partition (absent when unknown)
``mpcio.source.offset``     its offset (absent when unknown)
``mpcio.http.status``       Customer.io's HTTP status (sink only; absent when none)
``mpcio.attempts``          delivery attempts made (0 for ingest)
``mpcio.value.schema``      ``io.mpcio.DeadLetter``: the Avro record the value holds
``mpcio.redriven.from``     set by ``mpcio deadletter redrive`` on a record it sends back:
                            ``<dead-letter topic>/<partition>@<offset>``
==========================  ===============================================================

The source record's own headers (from the input topic) are kept on its dead letter, so a
redrive gives them back; the context headers above replace any of the same name. The record
is keyed by the source record's key (the mpid) for both writers, as Kafka Connect keeps the
original key.

Pure functions, no I/O. Decoding a record that is not what it claims raises
:class:`~app.errors.InvalidRecordError` (reason ``avro_decode``); encoding never fails for
values of the documented types.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from app import masking
from app.core.avro import codec


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a record came from: kept in operations and dead letters for tracing and redrive.

    ``rekeyed``: read from the re-key topic (:mod:`app.topics`), whose offsets are a sequence
    of their own, shared by records of every kind: the redelivery guard keeps them apart from
    the input topics' offsets. ``timestamp_ms``: the Kafka timestamp (ms) of the input record
    at the origin of the chain (for a sink record, of the input its operation was made from;
    None: unknown): operations and dead letters keep it as ``source_ms`` so that a redrive is
    compared with the user's erasure time as the input record it came from."""

    topic: str
    partition: int
    offset: int
    rekeyed: bool = False
    timestamp_ms: int | None = None


class Stage(StrEnum):
    """Which stage wrote a dead letter (its ``stage`` field and ``mpcio.stage`` header)."""

    INGEST = "ingest"
    SINK = "sink"


def now_ms() -> int:
    """Wall-clock time in ms since the epoch (the records' ``*_ms`` fields)."""
    return time.time_ns() // 1_000_000


def dead_letter(
    reason: str,
    detail: str,
    *,
    stage: Stage,
    source: SourcePosition,
    key: bytes | None,
    payload: bytes,
    failed_at_ms: int,
    http_status: int | None = None,
    response: str | None = None,
    attempts: int = 0,
) -> bytes:
    """An encoded ``DeadLetter`` record (schemas/dead_letter.avsc); ``reason`` is an
    :class:`~app.errors.Reason` or ``http_<status>`` (:func:`~app.errors.http_reason`)."""
    return codec("dead_letter").encode(
        {
            "reason": str(reason),
            "detail": detail,
            "stage": str(stage),
            "source_topic": source.topic,
            "source_partition": source.partition,
            "source_offset": source.offset,
            "key": key,
            "payload": payload,
            "http_status": http_status,
            "response": response,
            "attempts": attempts,
            "failed_at_ms": failed_at_ms,
            "source_ms": source.timestamp_ms,
        }
    )


def decode_dead_letter(value: bytes) -> dict[str, Any]:
    """The fields of an encoded ``DeadLetter`` (schema field names); raises
    :class:`~app.errors.InvalidRecordError` when ``value`` is not one."""
    return codec("dead_letter").decode(value)


def operation_batch(
    mpid: str,
    operations: Iterable[tuple[str, str, bytes]],
    source: SourcePosition,
    ingested_at_ms: int,
) -> bytes:
    """An encoded ``OperationBatch`` (schemas/operation_batch.avsc): ``operations`` are
    ``(action, person_id, item JSON)`` in delivery order; ``ingested_at_ms`` starts the
    end-to-end latency the sink measures."""
    return codec("operation_batch").encode(
        {
            "mpid": mpid,
            "source_topic": source.topic,
            "source_partition": source.partition,
            "source_offset": source.offset,
            "ingested_at_ms": ingested_at_ms,
            "source_ms": source.timestamp_ms,
            "operations": [
                {"action": action, "person_id": person_id, "item": item}
                for action, person_id, item in operations
            ],
        }
    )


def decode_operation_batch(value: bytes) -> dict[str, Any]:
    """The fields of an encoded ``OperationBatch`` (``operations``: dicts with ``action``,
    ``person_id``, ``item``); raises :class:`~app.errors.InvalidRecordError` when ``value`` is
    not one."""
    return codec("operation_batch").decode(value)


PREFIX = "mpcio."
REDRIVEN_FROM = f"{PREFIX}redriven.from"
DETAIL_MAX_CHARS = 500
#: The error-context headers a dead letter gets; redrive drops them again.
CONTEXT = (
    f"{PREFIX}reason",
    f"{PREFIX}detail",
    f"{PREFIX}stage",
    f"{PREFIX}source.topic",
    f"{PREFIX}source.partition",
    f"{PREFIX}source.offset",
    f"{PREFIX}http.status",
    f"{PREFIX}attempts",
    f"{PREFIX}value.schema",
)

Headers = list[tuple[str, bytes]]


def as_list(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> Headers:
    """Kafka headers in aiokafka's shape (``[(name, value), ...]``) from faust's or aiokafka's."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(name), bytes(value or b"")) for name, value in headers.items()]
    return [(str(name), bytes(value or b"")) for name, value in headers]


def without(headers: Headers, names: Iterable[str]) -> Headers:
    dropped = set(names)
    return [(name, value) for name, value in headers if name not in dropped]


def context_headers(letter: Mapping[str, Any]) -> Headers:
    """The ``mpcio.*`` error context of a decoded ``DeadLetter`` (absent fields left out)."""
    detail = masking.active().text(letter["detail"])
    if len(detail) > DETAIL_MAX_CHARS:
        detail = detail[: DETAIL_MAX_CHARS - 1] + "…"
    fields: list[tuple[str, object]] = [
        ("reason", letter["reason"]),
        ("detail", detail),
        ("stage", letter["stage"]),
        ("source.topic", letter["source_topic"]),
        ("source.partition", letter["source_partition"]),
        ("source.offset", letter["source_offset"]),
        ("http.status", letter["http_status"]),
        ("attempts", letter["attempts"]),
        ("value.schema", "io.mpcio.DeadLetter"),
    ]
    return [(PREFIX + name, str(value).encode()) for name, value in fields if value is not None]


class DeadLetterRecord(NamedTuple):
    """What to produce to the dead-letter topic for one dead letter."""

    key: bytes | None
    value: bytes
    headers: Headers


def dead_letter_record(
    letter: bytes,
    source_headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
) -> DeadLetterRecord:
    """The Kafka record of an encoded dead letter: keyed by the source record's key (the mpid,
    as Kafka Connect keeps the original key), the value unchanged, the headers the source
    record's (context names replaced) followed by the error context."""
    decoded = decode_dead_letter(letter)
    headers = [*without(as_list(source_headers), CONTEXT), *context_headers(decoded)]
    return DeadLetterRecord(decoded["key"], letter, headers)


def redrive_headers(dead_letter_headers: Headers, origin: str) -> Headers:
    """Headers of a redriven record: the source record's, without the error context, and
    ``mpcio.redriven.from`` = ``origin`` (the dead letter's ``topic/partition@offset``)."""
    kept = without(dead_letter_headers, (*CONTEXT, REDRIVEN_FROM))
    return [*kept, (REDRIVEN_FROM, origin.encode())]
