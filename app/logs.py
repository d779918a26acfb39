"""Logging set-up: text or JSON lines, and no raw email address, mpid or secret ever written.

:class:`RedactingFilter` rewrites every record before it is formatted with the installed
:class:`~app.masking.Masker` (:func:`app.masking.active`): in the message, the context fields
passed with ``extra=``, the traceback and the stack, email addresses become ``<email:…>`` (a
keyed hash, so one person's lines can still be followed) and secrets and URL credentials
become ``**********``.

JSON lines come from python-json-logger (:class:`JsonFormatter`): ``time`` (UTC, milliseconds),
``level``, ``logger``, ``message``, then every context field the call site passed with
``extra=`` (``topic``, ``partition``, ``offset``, ``mpid`` (masked with :func:`mask_mpid`),
``reason``, ...) as a JSON field of its own, and ``exception`` when there is one. Text lines
(:class:`TextFormatter`) print the same fields after the message.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from app import masking

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset(RESERVED_ATTRS) | {"message", "asctime"}


def mask_mpid(mpid: str | bytes | int | None) -> str | None:
    """The installed masker's stand-in for an mpid (text, a record key, or a number) in log
    context fields; None and an empty key stay None."""
    if isinstance(mpid, bytes):
        mpid = mpid.decode("utf-8", "replace")
    return None if mpid is None or mpid == "" else masking.active().value(str(mpid).strip())


class RedactingFilter(logging.Filter):
    """Masks emails and secrets in the message, string context fields, traceback and stack.

    The traceback is formatted here and kept, masked, as ``exc_text`` (``exc_info`` is
    dropped), so no formatter can format the raw exception again.
    """

    def __init__(self, masker: masking.Masker | None = None) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        masker = self.masker or masking.active()
        message = record.getMessage()
        cleaned = masker.text(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        for name, value in vars(record).items():
            if name not in _RESERVED and isinstance(value, str):
                setattr(record, name, masker.text(value))
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = masker.text(record.exc_text)
        if record.stack_info:
            record.stack_info = masker.text(record.stack_info)
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


#: Loggers whose DEBUG lines print the key and value of every record sent (names, customer
#: ids, attributes: only addresses would be masked); kept at INFO whatever the level.
#: ``aiokafka.conn`` prints every request and response: record bytes cut at 100 bytes (an
#: address cut short no longer looks like one to the masker) and the SASL authenticate bytes
#: (a password cut or escaped no longer matches the secret being redacted).
RECORD_DUMPING_LOGGERS = ("faust.topics", "aiokafka.producer.producer", "aiokafka.conn")


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger through one stderr handler, redacted by the installed masker.

    ``level``: a logging level name; ``fmt``: ``json`` for JSON lines, anything else for text.
    """
    debug = logging.getLevelName(level) < logging.INFO
    for name in RECORD_DUMPING_LOGGERS:
        # only below INFO: otherwise they inherit (the CLI quiets all of aiokafka)
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.NOTSET)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log_held_back(logger: logging.Logger, held_back: int, mpid: str | None) -> None:
    """One WARNING when ``held_back`` (> 0) user attributes of one record were not forwarded
    because the person is full (Customer.io keeps 300 attributes per person,
    :func:`app.core.transform.within_person_cap`): the count and the masked mpid as context
    fields, never an attribute's name or value."""
    if held_back:
        logger.warning(
            "%d user attribute(s) not forwarded: the person has Customer.io's 300 attributes "
            "(mpcio_limit_enforcements_total{kind=attribute_over_person_cap})",
            held_back,
            extra={"mpid": mask_mpid(mpid), "reason": "attribute_over_person_cap"},
        )


def log_cuts(logger: logging.Logger, mpid: str, cuts: dict[str, int]) -> None:
    """One WARNING for one record of which something was cut or left out to fit Customer.io's
    limits (SPEC §3: "counted and logged"): ``cuts`` (limit kind → count, as
    ``mpcio_limit_enforcements_total{kind}`` counts them) in the message, the masked mpid and
    ``reason`` ``limits`` as context fields; never a name or a value."""
    logger.warning(
        "value(s) cut or not sent to fit Customer.io's limits: %s "
        "(mpcio_limit_enforcements_total, docs/mapping.md)",
        ", ".join(f"{kind}={count}" for kind, count in sorted(cuts.items())),
        extra={"mpid": mask_mpid(mpid), "reason": "limits"},
    )


def log_dead_letters(logger: logging.Logger, letters: Iterable[bytes]) -> None:
    """One WARNING per encoded ``DeadLetter`` written: reason and detail as the message, and
    ``topic``, ``partition``, ``offset``, ``mpid`` (masked), ``reason``, ``stage`` and
    ``http_status`` as context fields (JSON fields in JSON logs)."""
    from app.records import decode_dead_letter  # noqa: PLC0415 - Avro only where letters are written

    for encoded in letters:
        letter = decode_dead_letter(encoded)
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
