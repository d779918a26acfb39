"""Whether a string is an email address Customer.io accepts (syntax only, no DNS).

Customer.io requires ``email`` (identifier and attribute) to be a valid RFC 5322 address
(reserved-attributes doc). Real mParticle data carries placeholders in the email identity
(``N/A``, ``none``, ``-``, ``null``, typos without ``@``); such a value is no email. The check
is the ``email-validator`` library's syntax check (RFC 5322 / 6531, internationalised addresses
allowed; quoted local parts, IP-literal domains, dotless and special-use domains refused) with
deliverability off: it never touches the network.

Pure and cached: the same users' addresses come back in every batch, and one check costs tens
of microseconds. Nothing raises.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from email_validator import EmailNotValidError, validate_email

# Distinct addresses remembered; one entry is ~200 bytes, so this is at most a few MB.
_CACHE_SIZE: Final = 16_384


@lru_cache(maxsize=_CACHE_SIZE)
def is_email_address(value: str) -> bool:
    """True when ``value`` (already trimmed) is a syntactically valid email address."""
    try:
        # The library's defaults otherwise: a domain needs a dot and must not be a special-use
        # name (``localhost``, ``.test``, ``.invalid``): no mail provider delivers there.
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True
