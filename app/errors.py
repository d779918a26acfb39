"""One error tree for the whole forwarder.

Every error the product raises on purpose derives from :class:`MpcioError`. Each class says
whether trying the same thing again can succeed (``retriable``) and whether it must stop the
worker (``fatal``), so callers branch on those flags, not on class names scattered through the
code.
"""

from __future__ import annotations

import re


class MpcioError(Exception):
    """Root of every error the forwarder raises on purpose."""

    retriable: bool = False
    fatal: bool = False


class ConfigError(MpcioError):
    """Settings or credentials are wrong: the worker stops with one clear message."""

    fatal = True


class InvalidRecordError(MpcioError):
    """An input record cannot be used at all; it goes to the dead-letter topic with ``reason``.

    ``reason`` is a short stable slug used as a metric label and for filtering dead letters;
    the message carries the detail.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(MpcioError):
    """Kafka could not be reached or did not answer in time."""

    retriable = True


class LocalKafkaError(MpcioError):
    """The local development broker could not be fetched or started."""

    fatal = True


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
