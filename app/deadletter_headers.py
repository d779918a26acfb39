"""Kafka headers of dead letters: the error context where standard Kafka tools show it.

A dead letter's value is the Avro ``DeadLetter`` record (``schemas/dead_letter.avsc``), which
Kafka UIs, kcat and Kafka Connect cannot read without the schema. Its headers repeat the
error context as UTF-8 text, the way Kafka Connect's dead-letter queue does with its
``__connect.errors.*`` headers. Every name starts with :data:`PREFIX` (``mpcio.``):

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

Pure functions, no I/O; a dead letter that does not decode raises
:class:`~app.errors.InvalidRecordError` (the writers only pass letters they just encoded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from app import masking
from app.core.avro import codec

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
    decoded = codec("dead_letter").decode(letter)
    headers = [*without(as_list(source_headers), CONTEXT), *context_headers(decoded)]
    return DeadLetterRecord(decoded["key"], letter, headers)


def redrive_headers(dead_letter_headers: Headers, origin: str) -> Headers:
    """Headers of a redriven record: the source record's, without the error context, and
    ``mpcio.redriven.from`` = ``origin`` (the dead letter's ``topic/partition@offset``)."""
    kept = without(dead_letter_headers, (*CONTEXT, REDRIVEN_FROM))
    return [*kept, (REDRIVEN_FROM, origin.encode())]
