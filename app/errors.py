"""One error tree for the whole forwarder: every error class it raises on purpose is here.

::

    MpcioError                   root; the CLI prints "mpcio: <message>", exit 1
    ├── ConfigError              fatal: settings or credentials are wrong; exit 2
    │   └── FatalDeliveryError   Customer.io refused the credentials (401/403) or pointed at
    │                            another host (3xx): the sink stops consuming (pauses its
    │                            partitions, rewinds the chunk), keeps its offsets, dead-letters
    │                            nothing and re-checks GET /auth until it passes
    ├── NoRateShareError         the sink's rate limiter is closed: this worker holds no
    │                            share of the workspace's request limit (no partitions, or
    │                            mid-rebalance); the chunk in flight is abandoned uncommitted
    ├── LocalKafkaError          fatal: the local development broker cannot be fetched or run
    ├── InvalidRecordError       a record cannot be used: dead-lettered with its Reason
    ├── FirehoseSchemaError      a Firehose message its published schema rejects (ingress: 400)
    ├── BrokerError              Kafka could not be reached or did not answer in time
    │   ├── BrokerUnavailableError   the ingress could not write a message (answers 503)
    │   └── ReplayStoppedError   replay: Kafka stopped accepting records (carries the summary)
    ├── ReplayInputError         replay: the input file cannot be read
    └── DemoError                a part of the demo did not come up or did not finish

One flag is read where the decision is made: ``fatal`` (the CLI's exit code: 2 for a fatal
error, which running again unchanged cannot fix, else 1). Callers branch on the classes above
for everything else: the sink on :class:`FatalDeliveryError`, the ingress on
:class:`BrokerUnavailableError` and :class:`FirehoseSchemaError`, ingest on
:class:`InvalidRecordError` (whose :class:`Reason` is the dead letter's reason and metric
label). Errors of libraries (aiokafka, OSError) are put into words by :func:`plain_kafka_error`
and :func:`plain_os_error` where they reach the user.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.ops.replay import ReplaySummary


class MpcioError(Exception):
    """Root of every error the forwarder raises on purpose."""

    #: Running again unchanged cannot succeed (configuration, environment): exit code 2.
    fatal: bool = False


class ConfigError(MpcioError):
    """Settings or credentials are wrong: the process stops with one clear message (exit 2)."""

    fatal = True


class FatalDeliveryError(ConfigError):
    """Customer.io refused our credentials (401/403) or pointed us at another host (3xx).

    What it does: the sink stops consuming (its partitions paused, the chunk in flight rewound),
    keeps its offsets, dead-letters nothing, and re-checks ``GET /auth`` until it passes, then
    resumes where it stopped. ``reason`` is the answer's slug (``http_401_credentials``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"Customer.io answered {reason}: check MPCIO_CUSTOMERIO_SITE_ID, "
            "MPCIO_CUSTOMERIO_API_KEY and MPCIO_CUSTOMERIO_REGION; delivery is stopped and "
            "offsets are kept, nothing was dead-lettered"
        )
        self.reason = reason


class NoRateShareError(MpcioError):
    """Raised by a closed :class:`~app.customerio.ratelimit.RateLimiter`: this worker holds no
    share of the workspace's request limit, so it may send nothing (before its first partition
    assignment, from a revoke to the next assignment, while it holds no partition).

    What it does: the sink abandons the chunk in flight — nothing of it is committed; its
    partitions' next owner (another worker, or this one after the rebalance) redelivers it
    from the last committed offsets, at that owner's share."""


class LocalKafkaError(MpcioError):
    """The local development broker could not be fetched or started."""

    fatal = True


class Reason(StrEnum):
    """Every reason a dead letter can carry (also the ``reason`` label of
    ``mpcio_dead_letters_total``). Customer.io's non-retryable HTTP answers add the family
    ``http_<status>`` (:func:`http_reason`). README's dead-letter table documents each one;
    ``tests/unit/test_records.py`` checks that the code writes no other."""

    # ingest: the record cannot be used
    TOMBSTONE = "tombstone"
    EMPTY_RECORD = "empty_record"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    TOO_DEEP = "too_deep"
    MPID_MISSING = "mpid_missing"
    MPID_INVALID = "mpid_invalid"
    ENVIRONMENT_INVALID = "environment_invalid"
    EVENTS_NOT_A_LIST = "events_not_a_list"
    IDENTITIES_INVALID = "identities_invalid"
    AUDIENCES_INVALID = "audiences_invalid"
    ERASURE_INVALID = "erasure_invalid"
    TOO_LARGE = "too_large"
    AVRO_DECODE = "avro_decode"
    STATE_CORRUPT = "state_corrupt"
    INTERNAL_ERROR = "internal_error"
    # ingest: a record of the re-key topic that no worker wrote as it is
    REKEY_KIND_UNKNOWN = "rekey_kind_unknown"
    REKEY_LOOP = "rekey_loop"
    # ingest: the record was read and folded into the user's state, but cannot be sent
    PERSON_ID_INVALID = "person_id_invalid"
    # sink: an item Customer.io did not accept
    ITEM_TOO_LARGE = "item_too_large"
    RETRIES_EXHAUSTED = "retries_exhausted"
    CUSTOMERIO_REJECTED_ITEM = "customerio_rejected_item"
    CUSTOMERIO_207_UNPARSED = "customerio_207_unparsed"
    CUSTOMERIO_207_UNMATCHED = "customerio_207_unmatched"
    # `mpcio dry-run` only: a Firehose message its published schema rejects (the ingress
    # answers such a request with a 400 instead of writing it)
    FIREHOSE = "firehose"


#: The one open family of reasons: a non-retryable HTTP status (``http_400``, ``http_501``).
HTTP_REASON = re.compile(r"http_[1-5][0-9][0-9]")


def http_reason(status: int) -> str:
    """The dead-letter reason of a non-retryable HTTP answer: ``http_<status>``."""
    return f"http_{status}"


def is_reason(text: str) -> bool:
    """Whether ``text`` is in the catalogue (a :class:`Reason` or ``http_<status>``)."""
    return text in Reason.__members__.values() or HTTP_REASON.fullmatch(text) is not None


class InvalidRecordError(MpcioError):
    """A record cannot be used at all; it goes to the dead-letter topic with ``reason``.

    ``reason`` (a :class:`Reason`) is a short stable slug used as a metric label and for
    filtering dead letters; ``detail`` (the message) explains.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FirehoseSchemaError(MpcioError, ValueError):
    """A Firehose message that its published schema rejects; ``str()`` is the first error."""


class BrokerError(MpcioError):
    """Kafka could not be reached or did not answer in time."""


class BrokerUnavailableError(BrokerError):
    """Kafka did not acknowledge every record of a message (the reason, without payloads)."""


class ReplayStoppedError(BrokerError):
    """Kafka stopped accepting records; ``summary`` counts what it acknowledged before."""

    def __init__(self, message: str, summary: ReplaySummary) -> None:
        super().__init__(message)
        self.summary = summary


class ReplayInputError(MpcioError):
    """The input file cannot be opened or read (or is a broken gzip stream)."""


class DemoError(MpcioError):
    """A part of the demo did not come up or did not finish."""


def is_kafka_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of aiokafka's errors (checked by module: no heavy import)."""
    return type(exc).__module__.startswith("aiokafka")


_KAFKA_WORDS = {
    "KafkaError": "error",
    "KafkaTimeoutError": "timed out",
    "KafkaConnectionError": "connection failed",
}


def plain_kafka_error(exc: BaseException) -> str:
    """An aiokafka error in words, without its class-name prefixes: ``RequestTimedOutError`` →
    ``request timed out``, then its message when it says more than its class name."""
    name = type(exc).__name__
    words = (
        _KAFKA_WORDS.get(name)
        or re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.removesuffix("Error")).lower()
    )
    text = re.sub(r"^(\[Error \d+\] )?\w+(: |$)", "", str(exc).strip())
    return f"{words}: {text}" if text else words


def plain_os_error(exc: OSError) -> str:
    """An operating-system error in words, without Python's ``[Errno N]`` prefix; for urllib's
    ``URLError``, the network error it wraps (``Connection refused``)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    inner = reason if isinstance(reason, OSError) else exc
    return re.sub(r"^\[Errno -?\d+\] ", "", str(inner)) or type(inner).__name__
