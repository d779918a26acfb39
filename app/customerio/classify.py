"""What to do with one Customer.io answer: the delivery policy of SPEC §6 as one pure function.

| outcome       | when                                                         |
|---------------|--------------------------------------------------------------|
| ``DONE``      | 2xx (except 207)                                             |
| ``PARTIAL``   | 207: the items named in ``errors`` are dead-lettered, the rest were applied |
| ``DEAD_LETTER`` | 207 whose ``errors`` cannot be read (``customerio_207_unparsed``)   |
| ``RETRY``     | transport error, timeout, 408, 429, 5xx except 501/505       |
| ``DEAD_LETTER`` | any other 4xx, 501, 505, and anything unexpected           |
| ``FATAL``     | 401, 403 (credentials), 3xx (wrong region host: never follow) |

Transport failures are kept apart from bad statuses (as httpx does): :class:`TransportFailure`
is what the client returns when no HTTP answer arrived at all.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import orjson

from app.errors import Reason, http_reason

if TYPE_CHECKING:
    from collections.abc import Mapping


class Outcome(StrEnum):
    DONE = "done"
    PARTIAL = "partial"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP answer from the Track API (any status)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """No HTTP answer: connection refused or dropped, DNS, TLS, or a timeout."""

    kind: str  # "timeout" | "connection" | ...
    detail: str


@dataclass(frozen=True, slots=True)
class ItemError:
    """One item Customer.io rejected inside a 207 answer."""

    batch_index: int
    reason: str
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str
    status: int | None = None  # None: no HTTP answer (transport failure)
    retry_after: float | None = None
    item_errors: tuple[ItemError, ...] = ()

    @property
    def status_class(self) -> str:
        """Metric label: ``transport``, ``207``, ``429`` or ``2xx``/``3xx``/``4xx``/``5xx``."""
        if self.status is None:
            return "transport"
        if self.status in (207, 429):
            return str(self.status)
        return f"{self.status // 100}xx"


RETRYABLE_STATUSES = frozenset({408, 429})
NOT_RETRYABLE_5XX = frozenset({501, 505})


def classify(  # noqa: PLR0911 - one return per row of the policy table reads best
    answer: HttpAnswer | TransportFailure, *, now: float | None = None
) -> Decision:
    """The policy decision for one answer (see the module table). Pure."""
    if isinstance(answer, TransportFailure):
        return Decision(Outcome.RETRY, f"transport_{answer.kind}")
    status = answer.status
    if status == 207:
        errors = _item_errors(answer.body)
        if errors is None:
            # Which items were applied is unknown: dead-letter them all rather than count an
            # unknown rejection as delivered (redriving an applied item is harmless: event ids
            # and identifies are idempotent).
            return Decision(Outcome.DEAD_LETTER, Reason.CUSTOMERIO_207_UNPARSED, status)
        return Decision(
            Outcome.PARTIAL, Reason.CUSTOMERIO_REJECTED_ITEM, status, item_errors=errors
        )
    if 200 <= status < 300:
        return Decision(Outcome.DONE, "ok", status)
    if status in (401, 403):
        return Decision(Outcome.FATAL, f"http_{status}_credentials", status)
    if 300 <= status < 400:
        return Decision(Outcome.FATAL, f"http_{status}_redirect_wrong_region", status)
    if status in RETRYABLE_STATUSES or (500 <= status < 600 and status not in NOT_RETRYABLE_5XX):
        retry_after = retry_after_seconds(answer.headers, now)
        return Decision(Outcome.RETRY, f"http_{status}", status, retry_after=retry_after)
    return Decision(Outcome.DEAD_LETTER, http_reason(status), status)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or HTTP-date); None if absent/bad."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)


def _item_errors(body: bytes) -> tuple[ItemError, ...] | None:
    """The errors of a 207 body, or ``None`` when any part of it cannot be read: not JSON, no
    ``errors`` list, an empty one, or an entry without an integer ``batch_index``."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    raw_errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(raw_errors, list) or not raw_errors:
        return None
    errors = []
    for raw in raw_errors:
        if not isinstance(raw, dict) or type(raw.get("batch_index")) is not int:
            return None
        errors.append(
            ItemError(
                batch_index=raw["batch_index"],
                reason=str(raw.get("reason", "")),
                field=str(raw.get("field", "")),
                message=str(raw.get("message", "")),
            )
        )
    return tuple(errors)
