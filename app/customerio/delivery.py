"""Deliver one v2 batch request: retry what is retryable, report what must be dead-lettered.

:func:`deliver` sends the same request again (same items, same order) after each retryable
failure, backing off exponentially with full jitter (``Retry-After`` wins when present), until
it succeeds or the retry budget is spent: ``max_attempts`` failed attempts *or* ``max_seconds``
since the first attempt, whichever comes first. A 429 (throttled) does not count as a failed
attempt: it says "later", not "failed", so a throttle storm is bounded by ``max_seconds`` alone
and cannot dead-letter items a patient retry delivers (seen under ``exactly_once``: one
transaction's operations fill one lane, whose first request met all of a test's 14
consecutive 5xx/429/drop faults). A wait that would end past ``max_seconds`` (a
``Retry-After`` longer than the budget left) is cut to the budget's end and one last attempt is
made. Then every item is reported for the dead-letter topic with reason ``retries_exhausted``
and the number of attempts made; nothing is ever dropped silently. A 207 names the items to
dead-letter; one whose errors cannot be read (``customerio_207_unparsed``) or name an index
outside the request (``customerio_207_unmatched``) dead-letters every item of the request.

Failure semantics: a 401/403 (or a redirect, meaning the wrong region's host) raises
:class:`FatalDeliveryError` before anything is reported: the caller must stop consuming and
keep its offsets; no item is dead-lettered for a configuration error. Nothing else raises.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import orjson

from app.customerio.classify import (
    Decision,
    HttpAnswer,
    Outcome,
    TransportFailure,
    classify,
)
from app.errors import FatalDeliveryError, Reason

if TYPE_CHECKING:
    from app.customerio.batching import BatchRequest

Ref = TypeVar("Ref")


class BatchSender(Protocol):
    async def post_batch(self, body: bytes) -> HttpAnswer | TransportFailure: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    max_seconds: float
    initial_backoff: float
    max_backoff: float

    def backoff(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** (retry - 1)))
        return rng.uniform(0, ceiling)  # full jitter


@dataclass(frozen=True, slots=True)
class Rejected(Generic[Ref]):
    """One item for the dead-letter topic, with why."""

    payload: bytes
    ref: Ref
    reason: str
    detail: str
    http_status: int | None
    response: str | None
    attempts: int


@dataclass(slots=True)
class DeliveryReport(Generic[Ref]):
    delivered: int = 0
    attempts: int = 0
    rejected: list[Rejected[Ref]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)  # one per attempt, for metrics
    seconds: list[float] = field(default_factory=list)  # latency per attempt


async def deliver(
    request: BatchRequest[Ref],
    sender: BatchSender,
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> DeliveryReport[Ref]:
    """Send ``request`` until done, partly rejected, rejected, or out of retry budget."""
    pause = sleep or asyncio.sleep
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    report: DeliveryReport[Ref] = DeliveryReport()
    body = request.body()
    started = clock()
    throttled = 0  # 429 answers: not counted against max_attempts
    while True:
        report.attempts += 1
        sent_at = clock()
        answer = await sender.post_batch(body)
        report.seconds.append(clock() - sent_at)
        decision = classify(answer)
        report.decisions.append(decision)
        status = answer.status if isinstance(answer, HttpAnswer) else None
        if decision.outcome is Outcome.DONE:
            report.delivered = len(request)
            return report
        if decision.outcome is Outcome.FATAL:
            raise FatalDeliveryError(decision.reason)
        if decision.outcome is Outcome.PARTIAL:
            if all(0 <= error.batch_index < len(request) for error in decision.item_errors):
                _reject_named(request, decision, status, report)
            else:  # an index outside the request: the answer is not about these items
                _reject_all(
                    request, Reason.CUSTOMERIO_207_UNMATCHED, _answer_text(answer), status, report
                )
            return report
        if decision.outcome is Outcome.DEAD_LETTER:
            _reject_all(request, decision.reason, _answer_text(answer), status, report)
            return report
        throttled += status == 429
        elapsed = clock() - started
        remaining = policy.max_seconds - elapsed
        if report.attempts - throttled >= policy.max_attempts or remaining <= 0:
            detail = (
                f"retries_exhausted after {report.attempts} attempts ({throttled} throttled) "
                f"in {elapsed:.1f}s; last: {decision.reason}"
            )
            _reject_all(request, Reason.RETRIES_EXHAUSTED, detail, status, report)
            return report
        # A wait past the budget (a long Retry-After) is cut to the budget's end and followed by
        # one last attempt: giving up at once would dead-letter what one more try may deliver.
        await pause(min(policy.backoff(report.attempts, decision.retry_after, rng), remaining))


def _answer_text(answer: HttpAnswer | TransportFailure) -> str:
    if isinstance(answer, TransportFailure):
        return answer.detail
    return answer.body[:2000].decode("utf-8", errors="replace")


def _reject_all(
    request: BatchRequest[Ref],
    reason: str,
    detail: str,
    status: int | None,
    report: DeliveryReport[Ref],
) -> None:
    report.rejected.extend(
        Rejected(payload, ref, reason, detail, status, None, report.attempts)
        for payload, ref in zip(request.payloads, request.refs, strict=True)
    )


def _reject_named(
    request: BatchRequest[Ref], decision: Decision, status: int | None, report: DeliveryReport[Ref]
) -> None:
    named: dict[int, list[dict[str, str]]] = {}
    for error in decision.item_errors:
        named.setdefault(error.batch_index, []).append(
            {"reason": error.reason, "field": error.field, "message": error.message}
        )
    for index, errors in sorted(named.items()):
        report.rejected.append(
            Rejected(
                request.payloads[index],
                request.refs[index],
                Reason.CUSTOMERIO_REJECTED_ITEM,
                "; ".join(f"{e['field']}: {e['message']}" for e in errors)[:2000],
                status,
                orjson.dumps(errors).decode(),
                report.attempts,
            )
        )
    report.delivered = len(request) - len(named)
