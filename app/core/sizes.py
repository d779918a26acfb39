"""How large a record the worker may produce: one limit, and plain length arithmetic.

Every record the worker and the sink produce (operations, state and erasure-marker changelog
records, re-keyed parts, dead letters) must pass the producer's own check, or the send fails
and the worker stops (``fail_stop``) — for ever, on every restart, when the record is a copy of
an input record (breaker finding: a 1,040,019-byte input record whose dead letter was
1,040,497 bytes). The broker accepts input records up to its ``message.max.bytes``
(1,048,588 by default), so a copy of an input record with our fields and headers added can be
larger than any producer sends.

:data:`PRODUCER_MAX_REQUEST_BYTES` is the one limit: faust's ``producer_max_request_size``
(``app/faust_app.py`` ``FAUST_TUNING``) and the sink's ``max_request_size``
(``app/sink/service.py``) are set from it. :func:`record_bytes` is the producer's own estimate,
the figure aiokafka compares with ``max_request_size`` before it refuses a send with
``MessageSizeTooLargeError`` (``DefaultRecordBatchBuilder.estimate_size_in_bytes``: key,
value, every header name and value, their length varints, the record's and its batch's fixed
overhead), written out here because the core imports no I/O library;
``tests/unit/test_sizes.py`` checks it against aiokafka's. It only adds lengths: no record
is encoded again to measure it.

Pure, no I/O, nothing raises.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The largest record (as :func:`record_bytes` counts it) the worker's producers send; faust's
#: own default, below the broker's default ``message.max.bytes`` (1,048,588), so a record our
#: producer accepts is one the broker accepts too (unless a topic's ``max.message.bytes`` was
#: set lower: README "Limits").
PRODUCER_MAX_REQUEST_BYTES = 1_000_000

#: A v2 record batch's header (61 bytes) plus the most a record's own fields (attributes,
#: offset and timestamp deltas, length) take: aiokafka's ``HEADER_STRUCT.size`` and
#: ``MAX_RECORD_OVERHEAD``.
RECORD_OVERHEAD_BYTES = 61 + 21

Headers = Sequence[tuple[str, bytes]]


def record_bytes(key: bytes | None, value: bytes | None, headers: Headers = ()) -> int:
    """The size in bytes the producer counts for one record (its upper-bound estimate)."""
    size = RECORD_OVERHEAD_BYTES + _field(key) + _field(value) + _varint(len(headers))
    for name, header in headers:
        size += _field(name.encode()) + _field(header)
    return size


def _field(data: bytes | None) -> int:
    """A length-prefixed field: its zigzag varint length (1 byte for null, -1), then its bytes."""
    return 1 if data is None else _varint(len(data)) + len(data)


def _varint(length: int) -> int:
    """Bytes of a non-negative ``length`` as a zigzag varint (7 bits per byte)."""
    return max(1, ((length << 1).bit_length() + 6) // 7)


def fits(key: bytes | None, value: bytes | None, headers: Headers = ()) -> bool:
    """Whether the producer sends this record (:data:`PRODUCER_MAX_REQUEST_BYTES`).

    Called for every record written (hot path): an upper bound first (a length varint is at
    most 5 bytes, a header name at most 4 bytes per character), one sum for a record far
    below the limit; the exact :func:`record_bytes` only near it."""
    bound = RECORD_OVERHEAD_BYTES + 15 + len(key or b"") + len(value or b"")
    if headers:
        bound += sum(4 * len(name) + len(header) + 10 for name, header in headers)
    return bound <= PRODUCER_MAX_REQUEST_BYTES or (
        record_bytes(key, value, headers) <= PRODUCER_MAX_REQUEST_BYTES
    )


def kept_bytes(payload: bytes, excess: int) -> int:
    """How many leading bytes of ``payload`` to keep so that a record holding it is at least
    ``excess`` bytes smaller: ``len(payload) - excess``, moved back to the start of a UTF-8
    character (so a cut JSON text stays readable text), 0 when nothing can be kept.

    Shrinking a bytes field can only shorten its length prefix, so cutting ``excess`` bytes is
    enough; the cut moves back over at most three continuation bytes (``0b10xxxxxx``)."""
    keep = max(len(payload) - max(excess, 0), 0)
    start = max(keep - 3, 0)
    while keep > start and keep < len(payload) and payload[keep] & 0xC0 == 0x80:
        keep -= 1
    return keep
