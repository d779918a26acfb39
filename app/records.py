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
``mpcio.payload.bytes``     the original payload's size when it was cut to fit Kafka's limit
                            (reason ``too_large``; absent when the payload is whole)
``mpcio.payload.truncated`` ``true`` when it was cut (absent otherwise)
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
from app.core.sizes import PRODUCER_MAX_REQUEST_BYTES, fits, kept_bytes, record_bytes
from app.errors import Reason


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
    payload_bytes: int | None = None,
) -> bytes:
    """An encoded ``DeadLetter`` record (schemas/dead_letter.avsc); ``reason`` is an
    :class:`~app.errors.Reason` or ``http_<status>`` (:func:`~app.errors.http_reason`);
    ``payload_bytes``: the original size when ``payload`` is cut (:func:`dead_letter_record`)."""
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
            "payload_bytes": payload_bytes,
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
    f"{PREFIX}payload.bytes",
    f"{PREFIX}payload.truncated",
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
        ("payload.bytes", letter["payload_bytes"]),
        ("payload.truncated", None if letter["payload_bytes"] is None else "true"),
    ]
    return [(PREFIX + name, str(value).encode()) for name, value in fields if value is not None]


class DeadLetterRecord(NamedTuple):
    """What to produce to the dead-letter topic for one dead letter.

    ``cut_from``: None when ``value`` is the letter as given; else the reason that letter had
    (``value`` is then a ``too_large`` letter with its payload cut, :func:`dead_letter_record`).
    """

    key: bytes | None
    value: bytes
    headers: Headers
    cut_from: str | None = None


def dead_letter_record(
    letter: bytes,
    source_headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
) -> DeadLetterRecord:
    """The Kafka record of an encoded dead letter: keyed by the source record's key (the mpid,
    as Kafka Connect keeps the original key), the value unchanged, the headers the source
    record's (context names replaced) followed by the error context.

    A record the producer would refuse (:func:`app.core.sizes.fits`: a copy of an input record
    near Kafka's limit, with our fields and headers added) is cut instead, so that it always
    fits (:func:`_cut_to_fit`); sending it whole would stop the worker on every restart."""
    decoded = decode_dead_letter(letter)
    kept = without(as_list(source_headers), CONTEXT)
    headers = [*kept, *context_headers(decoded)]
    if fits(decoded["key"], letter, headers):
        return DeadLetterRecord(decoded["key"], letter, headers)
    return _cut_to_fit(decoded, record_bytes(decoded["key"], letter, headers), kept)


#: Bytes left spare when a payload is cut: the length prefixes (Avro's and Kafka's) of the
#: cut payload differ from those of the empty one it is measured with by at most this much.
_PREFIX_SLACK = 10


def _cut_to_fit(decoded: Mapping[str, Any], size: int, source_headers: Headers) -> DeadLetterRecord:
    """A ``too_large`` dead letter of ``decoded`` (whose record would be ``size`` bytes) that
    the producer sends: its payload cut to its first bytes that fit (at a UTF-8 character
    start), ``payload_bytes`` = the original payload's size, the detail naming the first
    reason and where the whole record is. What else must go to make it fit, in this order:
    the source record's own headers, then the key and Customer.io's response (the record is
    then keyed by nothing). Without any of those the letter is a few hundred bytes, so the
    last try always fits."""
    payload: bytes = decoded["payload"]
    where = f"{decoded['source_topic']}[{_dash(decoded['source_partition'])}]"
    detail = (
        f"its dead letter would be {size} bytes, over the producer's limit of "
        f"{PRODUCER_MAX_REQUEST_BYTES}: payload cut from {len(payload)} bytes (the whole record "
        f"is at {where}@{_dash(decoded['source_offset'])} while the topic keeps it); "
        f"it failed for {decoded['reason']}: {decoded['detail']}"
    )[:DETAIL_MAX_CHARS]
    room = PRODUCER_MAX_REQUEST_BYTES - _PREFIX_SLACK
    cut, headers, empty = _without_payload(decoded, detail, source_headers, keep_key=True)
    if empty > room:
        cut, headers, empty = _without_payload(decoded, detail, [], keep_key=True)
    if empty > room:
        cut, headers, empty = _without_payload(decoded, detail, [], keep_key=False)
    cut["payload"] = payload[: kept_bytes(payload, empty + len(payload) - room)]
    value = codec("dead_letter").encode(cut)
    return DeadLetterRecord(cut["key"], value, headers, str(decoded["reason"]))


def _without_payload(
    decoded: Mapping[str, Any], detail: str, source_headers: Headers, *, keep_key: bool
) -> tuple[dict[str, Any], Headers, int]:
    """The ``too_large`` letter of ``decoded`` with an empty payload, its headers, and the
    size of its record (:func:`app.core.sizes.record_bytes`)."""
    cut = {
        **decoded,
        "reason": str(Reason.TOO_LARGE),
        "detail": detail,
        "key": decoded["key"] if keep_key else None,
        "response": decoded["response"] if keep_key else None,
        "payload": b"",
        "payload_bytes": len(decoded["payload"]),
    }
    headers = [*source_headers, *context_headers(cut)]
    return cut, headers, record_bytes(cut["key"], codec("dead_letter").encode(cut), headers)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def redrive_headers(dead_letter_headers: Headers, origin: str) -> Headers:
    """Headers of a redriven record: the source record's, without the error context, and
    ``mpcio.redriven.from`` = ``origin`` (the dead letter's ``topic/partition@offset``)."""
    kept = without(dead_letter_headers, (*CONTEXT, REDRIVEN_FROM))
    return [*kept, (REDRIVEN_FROM, origin.encode())]
