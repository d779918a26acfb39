"""Logging set-up: text or JSON lines, and no raw email address, mpid or API key ever written.

:class:`RedactingFilter` rewrites every record before it is formatted: in the message, in the
context fields passed with ``extra=`` and in the exception text, email addresses become
``<email:9f86d081>`` (a short, stable hash, so one person's lines can still be followed) and
every configured secret becomes ``**********``.

JSON lines come from python-json-logger (:class:`JsonFormatter`): ``time`` (UTC, milliseconds),
``level``, ``logger``, ``message``, then every context field the call site passed with
``extra=`` (``topic``, ``partition``, ``offset``, ``mpid`` (masked with :func:`mask_mpid`),
``reason``, ...) as a JSON field of its own, and ``exception`` when there is one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

# A match starts only where a run of local-part characters starts, and the run is never
# re-scanned (possessive ++): without both, a long run with no "@" in it (a 300 KB payload)
# costs quadratic time and a dead-letter listing hangs.
EMAIL_PATTERN = r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]++@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"
_EMAIL = re.compile(EMAIL_PATTERN)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset(RESERVED_ATTRS) | {"message", "asctime"}


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def mask_email(email: str) -> str:
    """A stable, non-reversible stand-in for an email address in logs and the web view."""
    return f"<email:{_digest(email.strip().lower())}>"


def mask_mpid(mpid: str | bytes | int | None) -> str | None:
    """A stable, non-reversible stand-in for an mpid (text, a record key, or a number) in log
    context fields; None and an empty key stay None."""
    if isinstance(mpid, bytes):
        mpid = mpid.decode("utf-8", "replace")
    return None if mpid is None or mpid == "" else f"<mpid:{_digest(str(mpid).strip())}>"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with emails masked and every secret replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "**********")
    return _EMAIL.sub(lambda m: mask_email(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Masks emails and secrets in the message, string context fields and exception text.

    The exception is formatted here (into ``exc_text``, which both formatters print) so that
    its text is redacted too; the record keeps no ``exc_info`` afterwards.
    """

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        for name, value in vars(record).items():
            if name not in _RESERVED and isinstance(value, str):
                setattr(record, name, redact(value, self.secrets))
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line: time (ms), level, logger, message, context fields, exception."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
            },
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802, ARG002 - logging's API
        """``2026-11-29T13:40:00.123Z``: UTC with milliseconds."""
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [field=value ...]``: the context fields after the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        fields = " ".join(
            f"{name}={value}"
            for name, value in vars(record).items()
            if name not in _RESERVED and value is not None
        )
        line = super().formatMessage(record)
        return f"{line} [{fields}]" if fields else line


def configure_logging(level: str, fmt: str, secrets: tuple[str, ...] = ()) -> None:
    """Route every logger through one stderr handler with redaction.

    ``level``: a logging level name; ``fmt``: ``json`` for JSON lines, anything else for text;
    ``secrets``: texts never to be written (replaced by ``**********``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log_dead_letters(logger: logging.Logger, letters: Iterable[bytes]) -> None:
    """One WARNING per encoded ``DeadLetter`` written: reason and detail as the message, and
    ``topic``, ``partition``, ``offset``, ``mpid`` (masked), ``reason``, ``stage`` and
    ``http_status`` as context fields (JSON fields in JSON logs)."""
    from app.avro import codec  # noqa: PLC0415 - Avro only where dead letters are written

    for encoded in letters:
        letter = codec("dead_letter").decode(encoded)
        logger.warning(
            "dead letter %s: %.300s",
            letter["reason"],
            letter["detail"],
            extra={
                "topic": letter["source_topic"],
                "partition": letter["source_partition"],
                "offset": letter["source_offset"],
                "mpid": mask_mpid(letter["key"]),
                "reason": letter["reason"],
                "stage": letter["stage"],
                "http_status": letter["http_status"],
            },
        )
