"""Logging set-up: text or JSON lines, and no raw email address or secret ever written.

:class:`RedactingFilter` rewrites every record before it is formatted with the installed
:class:`~app.masking.Masker` (:func:`app.masking.active`): in the message, the traceback and
the stack, email addresses become ``<email:…>`` (a keyed hash, so one person's lines can still
be followed) and secrets and URL credentials become ``**********``.
"""

from __future__ import annotations

import logging
import sys

import orjson

from app import masking


class RedactingFilter(logging.Filter):
    """Masks emails and secrets in the message, traceback and stack of every record.

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
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = masker.text(record.exc_text)
        if record.stack_info:
            record.stack_info = masker.text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry).decode()


#: Loggers whose DEBUG lines print the key and value of every record sent (names, customer
#: ids, attributes: only addresses would be masked); kept at INFO whatever the level.
RECORD_DUMPING_LOGGERS = ("faust.topics", "aiokafka.producer.producer")


def configure_logging(level: str, fmt: str) -> None:
    """Route every logger through one stderr handler, redacted by the installed masker."""
    for name in RECORD_DUMPING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.INFO))
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
