"""What the two HTTP servers (the worker's web port, :mod:`app.web`, and the Firehose ingress,
:mod:`app.ingress.server`) share: binding their port before anything else, the one bearer
token check, and how a request aiohttp cannot parse is logged. Neither depends on the other;
both depend on this.

A request aiohttp refuses before any handler runs (a header line over its 8,190-byte limit, a
malformed request line or header, a bad chunked body) is answered 400 by aiohttp, which logs
it on ``aiohttp.server`` as an ERROR with a traceback whose message quotes the offending bytes
(a header value: a token, a cookie, an address). Anyone who can reach the port could fill the
log with those; :func:`quiet_client_errors` makes each one WARNING line naming only the error's
kind and status (:class:`ClientErrorFilter`). A failure of the server itself (a handler's
exception, answered 500) keeps its ERROR and traceback.

Failure semantics: :func:`listen` raises :class:`~app.errors.ConfigError` (one line, exit 2);
:func:`authorized` never raises; the filter never drops a record.
"""

from __future__ import annotations

import hmac
import logging
import socket
from typing import TYPE_CHECKING

from aiohttp.http_exceptions import HttpProcessingError

from app.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence


def authorized(values: Sequence[str], token: bytes) -> bool:
    """True when ``values`` (every ``Authorization`` header of the request) is exactly one
    ``Bearer <token>`` (scheme case-insensitive, RFC 7235). Header text aiohttp could not
    decode (surrogate escapes) is simply not the token."""
    if len(values) != 1:
        return False
    scheme, _, given = values[0].strip().partition(" ")
    try:
        given_bytes = given.strip().encode()
    except UnicodeEncodeError:
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token)


def listen(host: str, port: int, *, settings: str = "MPCIO_INGRESS") -> socket.socket:
    """A listening TCP socket on ``host:port`` (the ingress binds before anything else; the
    worker checks its web port with it, ``settings="MPCIO_WEB"``).

    Raises :class:`~app.errors.ConfigError` (one line naming ``<settings>_HOST/_PORT``,
    exit 2) when the address cannot be used: port in use, unknown host, no permission."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"invalid setting {settings}_HOST/{settings}_PORT: cannot listen on "
            f"{host}:{port}: {reason}"
        ) from None


class ClientErrorFilter(logging.Filter):
    """Rewrites aiohttp's record of a request it could not parse (module docstring): at most
    WARNING, ``refused a malformed HTTP request: <error kind> (<status>)``, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "refused a malformed HTTP request: %s (%d)"
            record.args = (type(exc).__name__, exc.code)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_errors() -> None:
    """Install :class:`ClientErrorFilter` on aiohttp's server logger (once per process)."""
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in server_logger.filters):
        server_logger.addFilter(ClientErrorFilter())
