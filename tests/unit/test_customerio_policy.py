"""The delivery policy (SPEC §6): classify, back-off, retry budget, 207 handling."""

from __future__ import annotations

import random
from email.utils import formatdate

import orjson
import pytest

from app.customerio.batching import BatchRequest
from app.customerio.classify import (
    HttpAnswer,
    Outcome,
    TransportFailure,
    classify,
    retry_after_seconds,
)
from app.customerio.delivery import RetryPolicy, deliver
from app.errors import FatalDeliveryError


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DONE), (201, Outcome.DONE), (204, Outcome.DONE),
        (301, Outcome.FATAL), (302, Outcome.FATAL), (307, Outcome.FATAL),
        (400, Outcome.DEAD_LETTER), (404, Outcome.DEAD_LETTER), (413, Outcome.DEAD_LETTER),
        (422, Outcome.DEAD_LETTER),
        (401, Outcome.FATAL), (403, Outcome.FATAL),
        (408, Outcome.RETRY), (429, Outcome.RETRY),
        (500, Outcome.RETRY), (502, Outcome.RETRY), (503, Outcome.RETRY), (504, Outcome.RETRY),
        (599, Outcome.RETRY),
        (501, Outcome.DEAD_LETTER), (505, Outcome.DEAD_LETTER),
        (100, Outcome.DEAD_LETTER), (600, Outcome.DEAD_LETTER),
    ],
)  # fmt: skip
def test_classify_every_status_class(status: int, outcome: Outcome) -> None:
    assert classify(HttpAnswer(status, b"{}")).outcome is outcome


@pytest.mark.parametrize("kind", ["timeout", "connection"])
def test_classify_transport_failure_is_retried(kind: str) -> None:
    decision = classify(TransportFailure(kind, "boom"))
    assert decision.outcome is Outcome.RETRY
    assert decision.reason == f"transport_{kind}"


def test_classify_207_names_items() -> None:
    body = orjson.dumps({"errors": [{"batch_index": 1, "reason": "invalid", "field": "name",
                                     "message": "too long"}]})  # fmt: skip
    decision = classify(HttpAnswer(207, body))
    assert decision.outcome is Outcome.PARTIAL
    assert [e.batch_index for e in decision.item_errors] == [1]


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"not json",
        b'{"errors": []}',
        b'{"errors": "bad"}',
        b'{"errors": [{"reason": "invalid"}]}',
        b'{"errors": [{"batch_index": 0}, {"batch_index": "1"}]}',
        b"[]",
    ],
)
def test_classify_207_that_names_no_item_dead_letters_the_request(body: bytes) -> None:
    decision = classify(HttpAnswer(207, body))
    assert decision.outcome is Outcome.DEAD_LETTER
    assert decision.reason == "customerio_207_unparsed"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": " 0 "}, 0.0),
        ({"Retry-After": formatdate(1_000_030, usegmt=True)}, 30.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
    ids=["seconds", "lowercase-zero", "http-date", "garbage", "absent"],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=1_000_000) == expected


def test_429_carries_retry_after() -> None:
    decision = classify(HttpAnswer(429, b"", {"Retry-After": "3"}))
    assert (decision.outcome, decision.retry_after) == (Outcome.RETRY, 3.0)


POLICY = RetryPolicy(max_attempts=5, max_seconds=100, initial_backoff=1, max_backoff=8)


def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(1)
    for retry in range(1, 10):
        ceiling = min(8, 2 ** (retry - 1))
        assert all(0 <= POLICY.backoff(retry, None, rng) <= ceiling for _ in range(50))
    assert POLICY.backoff(3, 42.0, rng) == 42.0  # Retry-After wins


class ScriptedSender:
    """Answers from a script; records every body sent."""

    def __init__(self, *answers: HttpAnswer | TransportFailure) -> None:
        self.answers = list(answers)
        self.bodies: list[bytes] = []

    async def post_batch(self, body: bytes) -> HttpAnswer | TransportFailure:
        self.bodies.append(body)
        return self.answers.pop(0)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _request(n: int = 3) -> BatchRequest[int]:
    request: BatchRequest[int] = BatchRequest()
    for i in range(n):
        request.payloads.append(b'{"i":%d}' % i)
        request.refs.append(i)
    return request


async def _deliver(sender: ScriptedSender, policy: RetryPolicy = POLICY):  # type: ignore[no-untyped-def]
    fake = FakeTime()
    report = await deliver(_request(), sender, policy, rng=random.Random(0), clock=fake.clock,
                           sleep=fake.sleep)  # fmt: skip
    return report, fake


async def test_retries_same_body_until_success() -> None:
    sender = ScriptedSender(HttpAnswer(503), TransportFailure("timeout", "t"), HttpAnswer(200))
    report, fake = await _deliver(sender)
    assert report.delivered == 3
    assert report.attempts == 3
    assert len(set(sender.bodies)) == 1  # same batch again, order kept
    assert len(fake.slept) == 2


async def test_retry_after_is_honoured() -> None:
    sender = ScriptedSender(HttpAnswer(429, b"", {"Retry-After": "5"}), HttpAnswer(200))
    _, fake = await _deliver(sender)
    assert fake.slept == [5.0]


async def test_attempt_budget_ends_in_dead_letter() -> None:
    sender = ScriptedSender(*[HttpAnswer(500)] * 5)
    report, _ = await _deliver(sender)
    assert report.attempts == 5
    assert [r.ref for r in report.rejected] == [0, 1, 2]
    assert {r.reason for r in report.rejected} == {"retries_exhausted"}
    assert report.delivered == 0


async def test_time_budget_ends_in_dead_letter() -> None:
    policy = RetryPolicy(max_attempts=100, max_seconds=10, initial_backoff=1, max_backoff=8)
    sender = ScriptedSender(*[HttpAnswer(429, b"", {"Retry-After": "4"})] * 10)
    report, fake = await _deliver(sender, policy)
    assert fake.slept == [4.0, 4.0, 2.0]  # the last wait is cut to the budget's end
    assert report.attempts == 4
    assert report.rejected[0].reason == "retries_exhausted"


BUDGET = RetryPolicy(max_attempts=5, max_seconds=30, initial_backoff=1, max_backoff=8)


@pytest.mark.parametrize(
    ("answers", "slept", "attempts", "delivered"),
    [
        # Retry-After beyond the whole budget: wait until the budget ends, then once more
        pytest.param([HttpAnswer(429, b"", {"Retry-After": "120"}), HttpAnswer(200)],
                     [30.0], 2, 3, id="429-retry-after-past-budget-then-ok"),
        pytest.param([HttpAnswer(429, b"", {"Retry-After": "120"})] * 3,
                     [30.0], 2, 0, id="429-retry-after-past-budget-twice"),
        pytest.param([HttpAnswer(503, b"", {"Retry-After": "3600"})] * 3,
                     [30.0], 2, 0, id="503-retry-after-past-budget-twice"),
        pytest.param([HttpAnswer(429, b"", {"Retry-After": "20"})] * 3,
                     [20.0, 10.0], 3, 0, id="second-wait-cut-to-budget"),
        # the attempt budget still binds: no wait past the last attempt
        pytest.param([HttpAnswer(503, b"", {"Retry-After": "1"})] * 6,
                     [1.0] * 4, 5, 0, id="attempts-bind-first"),
        # ... but the time budget binds them: 30 s of Retry-After: 10, then one last try
        pytest.param([HttpAnswer(429, b"", {"Retry-After": "10"})] * 5,
                     [10.0, 10.0, 10.0], 4, 0, id="429-bound-by-time"),
    ],
)  # fmt: skip
async def test_retry_after_past_the_budget_waits_for_its_end_and_retries_once(
    answers: list[HttpAnswer], slept: list[float], attempts: int, delivered: int
) -> None:
    report, fake = await _deliver(ScriptedSender(*answers), BUDGET)
    assert fake.slept == slept
    assert report.attempts == attempts
    assert report.delivered == delivered
    assert {(r.reason, r.attempts) for r in report.rejected} == (
        set() if delivered else {("retries_exhausted", attempts)}
    )


async def test_throttles_spend_no_attempt_only_time() -> None:
    # the 429 storm test under exactly_once: one request met 12 consecutive faults
    throttle = HttpAnswer(429, b"", {"Retry-After": "1"})
    sender = ScriptedSender(*[throttle] * 7, *[HttpAnswer(500)] * 4, HttpAnswer(200))
    report, fake = await _deliver(sender, BUDGET)  # 5 attempts, 30 s
    assert report.attempts == 12
    assert report.delivered == 3
    assert fake.slept[:7] == [1.0] * 7  # Retry-After honoured


async def test_207_dead_letters_only_named_items() -> None:
    body = orjson.dumps({"errors": [{"batch_index": 2, "reason": "invalid", "field": "name",
                                     "message": "blank"}]})  # fmt: skip
    report, _ = await _deliver(ScriptedSender(HttpAnswer(207, body)))
    assert [(r.ref, r.reason) for r in report.rejected] == [(2, "customerio_rejected_item")]
    assert report.rejected[0].http_status == 207
    assert report.delivered == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"errors": [{"batch_index": 2}, {"batch_index": 9}]}', "customerio_207_unmatched"),
        (b'{"errors": [{"batch_index": -1}]}', "customerio_207_unmatched"),
        (b'{"errors": []}', "customerio_207_unparsed"),
        (b"<html>oops</html>", "customerio_207_unparsed"),
    ],
)
async def test_207_that_names_no_item_of_the_request_dead_letters_every_item(
    body: bytes, reason: str
) -> None:
    report, _ = await _deliver(ScriptedSender(HttpAnswer(207, body)))
    assert [(r.ref, r.reason) for r in report.rejected] == [(0, reason), (1, reason), (2, reason)]
    assert report.delivered == 0


async def test_400_dead_letters_every_item_with_the_answer() -> None:
    report, _ = await _deliver(ScriptedSender(HttpAnswer(400, b'{"errors":["bad"]}')))
    assert [r.ref for r in report.rejected] == [0, 1, 2]
    assert report.rejected[0].reason == "http_400"
    assert "bad" in report.rejected[0].detail


@pytest.mark.parametrize("status", [401, 403, 301])
async def test_fatal_raises_and_rejects_nothing(status: int) -> None:
    with pytest.raises(FatalDeliveryError) as caught:
        await _deliver(ScriptedSender(HttpAnswer(status)))
    assert caught.value.fatal
    assert "MPCIO_CUSTOMERIO_API_KEY" in str(caught.value)
