"""The one masking function of mpcio: what logs, views and printed CLI output show instead of
personal values and secrets.

A :class:`Masker` holds the deployment's mask key (``MPCIO_MASK_KEY``) and the secret values
of the settings (:meth:`app.settings.Settings.secret_values`). It replaces

- every secret value by ``**********``, and the credentials of any ``scheme://user:pass@host``
  URL by ``scheme://**********@host``;
- every email address by ``<email:0123456789ab>``: the first 12 hex digits of
  HMAC-SHA256(mask key, the address as :mod:`email_validator` normalises it, lower case). The
  mask is stable within a deployment (one key: the same address gives the same mask in logs,
  views and the dead-letter CLI, whatever its case or Unicode form) and cannot be confirmed by
  guessing an address without the key;
- on request (:meth:`Masker.value`), any other personal value by ``<value:…>`` likewise.

Finding addresses in free text: a permissive pattern proposes candidates around each ``@``
(an unquoted or quoted local part, possibly JSON- or bytes-escaped; a dotted domain of any
script or an IP literal in brackets) and :func:`email_validator.validate_email` (syntax only,
no DNS) normalises them. A candidate that is not a valid address is masked all the same: an
invalid address is personal data too. What the pattern cannot propose is an address without a
dot in its domain (``root@localhost``), one whose local part holds ``* = / | { }`` or a backquote or
spaces outside quotes (only the part after those characters is masked), and percent-encoded
ones (``ada%40example.com``).

Until :func:`install` is called the active masker has a random key (masks change with every
process) and no secrets; ``mpcio worker`` and the CLI commands install one built from the
settings before they log or print anything personal.

Failure semantics: masking never raises; a candidate that cannot be decoded or validated is
masked from its raw text.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import hmac
import re
import secrets as random_secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from email_validator import EmailNotValidError, validate_email

if TYPE_CHECKING:
    from app.settings import Settings

REDACTED = "**********"
#: Hex digits of the HMAC kept in a mask: 48 bits, so two addresses of one deployment share a
#: mask with probability ~1e-5 at ten million addresses.
MASK_HEX_DIGITS = 12

_EMAIL_CANDIDATE = re.compile(
    # the unquoted local part is bounded (RFC 5321: at most 64 octets; escapes double some):
    # unbounded, every start inside a long run of such characters scans to its end, and a
    # 1 MB dead-letter payload with one "@" took hours to mask (`deadletter show`)
    r"""(?P<local>\\?"[^"\r\n]{1,128}?\\?"|[\w.!#$%&'+\-?^~\\]{1,128})"""
    r"""@(?P<domain>\[[^\]\s]{1,64}\]|[\w\-\\]+(?:\.[\w\-\\]+)+)"""
)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@]+@")


def generate_key() -> str:
    """A new mask key: 32 random bytes as URL-safe base64 (43 characters)."""
    return random_secrets.token_urlsafe(32)


class Masker:
    """Masks personal values and secrets with one key (see the module docstring)."""

    def __init__(self, key: str, secrets: Iterable[str] = ()) -> None:
        self._key = key.encode()
        # longest first, so that "user:password" goes before its own "password"
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def _digest(self, kind: str, text: str) -> str:
        mac = hmac.new(self._key, f"{kind}\0{text}".encode(), hashlib.sha256)
        return f"<{kind}:{mac.hexdigest()[:MASK_HEX_DIGITS]}>"

    def email(self, address: str) -> str:
        """The mask of one address (case and Unicode form do not change it)."""
        return self._digest("email", _canonical_address(address))

    def value(self, value: object) -> str:
        """The mask of any other personal value (name, customer id, attribute value)."""
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        return self._digest("value", text)

    def text(self, text: str) -> str:
        """``text`` with secrets, URL credentials and every email address found masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "://" in text:
            text = _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)
        if "@" not in text:
            return text
        return _EMAIL_CANDIDATE.sub(self._mask_candidate, text)

    def _mask_candidate(self, match: re.Match[str]) -> str:
        found = match.group(0)
        # a leading apostrophe or dot is the quote or sentence around the address, not in it
        stripped = found.lstrip("'.")
        kept = found[: len(found) - len(stripped)]
        return kept + self.email(_unescape(stripped))

    def json(self, document: Any) -> Any:
        """A copy of a decoded JSON document with :meth:`text` applied to every string."""
        if isinstance(document, str):
            return self.text(document)
        if isinstance(document, list):
            return [self.json(item) for item in document]
        if isinstance(document, dict):
            return {self.text(str(k)): self.json(v) for k, v in document.items()}
        return document

    def payload(self, data: bytes) -> str:
        """A record payload as masked text: JSON is decoded, masked string by string and
        re-encoded (so escaped addresses are found); other bytes are masked as text, with
        bytes that are not UTF-8 shown as ``\\xNN``."""
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.text(data.decode("utf-8", "backslashreplace"))
        return orjson.dumps(self.json(document)).decode()


def _unescape(candidate: str) -> str:
    """The address a JSON-escaped (``\\u00fc``, ``\\"``) or bytes-escaped (``\\xc3\\xbc``)
    candidate stands for; the candidate itself when it is neither."""
    if "\\" not in candidate:
        return candidate
    try:
        decoded = orjson.loads(f'"{candidate}"'.encode())
    except orjson.JSONDecodeError:
        try:
            return codecs.escape_decode(candidate.encode())[0].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return candidate
    return decoded if isinstance(decoded, str) else candidate


@functools.lru_cache(maxsize=4096)
def _canonical_address(address: str) -> str:
    """The form an address is hashed in: email-validator's normalisation, lower case.

    Cached: validation costs about a millisecond, and a log or a listing repeats addresses.
    """
    text = address.strip()
    try:
        normalized = validate_email(
            text,
            check_deliverability=False,
            allow_quoted_local=True,
            allow_domain_literal=True,
            globally_deliverable=False,
        ).normalized
    except EmailNotValidError:
        normalized = text
    return normalized.lower()


_active = Masker(generate_key())


def install(masker: Masker) -> None:
    """Make ``masker`` the one :func:`active` returns (logs, views and printers use it)."""
    global _active  # noqa: PLW0603 - one masker per process, like the logging configuration
    _active = masker


def active() -> Masker:
    """The installed masker (a random-key one until :func:`install`)."""
    return _active


def masker_for(settings: Settings) -> Masker:
    """The masker of a deployment: its mask key (random when unset) and its secret values."""
    key = settings.mask_key.get_secret_value() if settings.mask_key else generate_key()
    return Masker(key, settings.secret_values())
