"""Logging set-up: text or JSON lines, and no raw email address or API key ever written.

:class:`RedactingFilter` rewrites every record's final message: email addresses become
``<email:9f86d081>`` (a short, stable hash, so one person's lines can still be followed) and
the configured API key becomes ``**********``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys

import orjson

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def mask_email(email: str) -> str:
    """A stable, non-reversible stand-in for an email address in logs and the web view."""
    digest = hashlib.blake2b(email.strip().lower().encode(), digest_size=4).hexdigest()
    return f"<email:{digest}>"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with emails masked and every secret replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "**********")
    return _EMAIL.sub(lambda m: mask_email(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """Masks emails and secrets in the formatted message of every record it sees."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
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
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, fmt: str, secrets: tuple[str, ...] = ()) -> None:
    """Route every logger through one stderr handler with redaction."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
