"""What the two HTTP servers (the worker's web port, :mod:`app.web`, and the Firehose ingress,
:mod:`app.ingress.server`) share: binding their port before anything else, and the one bearer
token check. Neither depends on the other; both depend on this.

Failure semantics: :func:`listen` raises :class:`~app.errors.ConfigError` (one line, exit 2);
:func:`authorized` never raises.
"""

from __future__ import annotations

import hmac
import socket
from typing import TYPE_CHECKING

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
