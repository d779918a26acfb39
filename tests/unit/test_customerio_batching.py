"""Packing items into requests: limits by count and bytes, order kept, oversized reported."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from app.customerio.batching import ENVELOPE_BYTES, pack
from app.customerio.ratelimit import RateLimiter, workspace_share
from app.errors import NoRateShareError


def _items(sizes: list[int]) -> list[tuple[bytes, int]]:
    return [(b'"' + b"x" * (size - 2) + b'"', index) for index, size in enumerate(sizes)]


@pytest.mark.parametrize(
    ("sizes", "max_items", "max_bytes", "expected"),
    [
        ([10] * 5, 2, 10_000, [[0, 1], [2, 3], [4]]),
        ([100] * 4, 100, ENVELOPE_BYTES + 100 * 2 + 1, [[0, 1], [2, 3]]),
        ([100] * 4, 100, ENVELOPE_BYTES + 100 * 2, [[0], [1], [2], [3]]),
        ([], 10, 1000, []),
    ],
    ids=["by-count", "by-bytes-fits-comma", "by-bytes-exact", "empty"],
)
def test_pack_respects_limits_and_order(
    sizes: list[int], max_items: int, max_bytes: int, expected: list[list[int]]
) -> None:
    packed = pack(_items(sizes), max_items=max_items, max_bytes=max_bytes)
    assert [request.refs for request in packed.requests] == expected
    for request in packed.requests:
        body = request.body()
        assert len(body) == request.size <= max_bytes
        assert len(orjson.loads(body)["batch"]) == len(request)


def test_oversized_items_are_reported_not_sent() -> None:
    packed = pack(_items([10, 50, 10]), max_items=10, max_bytes=1000, max_item_bytes=40)
    assert [ref for _, ref in packed.oversized] == [1]
    assert [request.refs for request in packed.requests] == [[0, 2]]


async def test_rate_limiter_spaces_request_starts() -> None:
    now = [0.0]
    starts: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(100, clock=lambda: now[0], sleep=fake_sleep)
    for _ in range(250):
        await limiter.acquire()
        starts.append(now[0])
    for index, start in enumerate(starts):  # never more than 100 starts in any 1 s window
        window = [s for s in starts[index:] if s < start + 1.0]
        assert len(window) <= 100
    assert starts[-1] == pytest.approx(2.49 * 1.05, rel=0.001)


@pytest.mark.parametrize(
    ("assigned", "total", "share"),
    [(8, 8, 10.0), (4, 8, 5.0), (3, 8, 3.75), (1, 3, 10 / 3), (0, 8, 0.0), (2, 0, 0.0)],
)
def test_workspace_share_is_the_assigned_fraction_of_the_limit(
    assigned: int, total: int, share: float
) -> None:
    assert workspace_share(10, assigned, total) == pytest.approx(share)


@pytest.mark.parametrize("split", [(4, 4), (3, 5), (1, 7), (2, 3, 3)])
async def test_workers_sharing_a_workspace_never_exceed_its_limit(split: tuple[int, ...]) -> None:
    # Each worker spaces its own starts at its share; together their rates sum to the
    # workspace's limit (less the 5 % headroom) whatever the assignment. Checked over 10 s
    # windows: in a single second each worker's spacing can round up by one start.
    now = [0.0]
    starts: list[float] = []
    total = sum(split)

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    for assigned in split:
        limiter = RateLimiter(10, clock=lambda: now[0], sleep=fake_sleep)
        share = workspace_share(10, assigned, total)
        assert share is not None
        limiter.set_rate(share)
        now[0] = 0.0
        while now[0] < 30:
            await limiter.acquire()
            starts.append(now[0])
    starts.sort()
    for index, start in enumerate(starts):
        assert len([s for s in starts[index:] if s < start + 10.0]) <= 10 * 10


async def test_set_rate_respaces_the_next_start_from_the_last_one() -> None:
    now = [0.0]

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(10, clock=lambda: now[0], sleep=fake_sleep)
    await limiter.acquire()  # at 0
    limiter.set_rate(1)  # a rebalance leaves this worker a tenth of the limit
    await limiter.acquire()
    assert now[0] == pytest.approx(1.05)


async def test_a_closed_limiter_sends_nothing_until_a_rate_reopens_it() -> None:
    limiter = RateLimiter(10)
    limiter.close()
    with pytest.raises(NoRateShareError):
        await limiter.acquire()
    limiter.set_rate(5)
    await limiter.acquire()  # reopened


async def test_closing_voids_the_slot_a_caller_waits_for() -> None:
    """A request waiting for its slot when the share is lost (a rebalance) is not sent."""
    limiter = RateLimiter(1)
    await limiter.acquire()  # the next slot is 1.05 s away
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    limiter.close()
    with pytest.raises(NoRateShareError):
        await asyncio.wait_for(waiting, 30)
