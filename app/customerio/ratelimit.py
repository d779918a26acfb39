"""Client-side request-rate limit: request starts spaced ``1.05/rate`` seconds apart.

Spacing (rather than a bucket with a burst allowance) guarantees that no one-second window
ever holds more than ``rate`` request starts, which is what Customer.io's fair-use limit and
the emulator's request log check. Callers share one limiter per workspace.

Customer.io's limit is per workspace, not per process: with several workers each takes
:func:`workspace_share` of it — the fraction of the operations topic's partitions it is
assigned — and re-applies it with :meth:`RateLimiter.set_rate` on every rebalance, so the sum
over the workers never exceeds the setting. A worker without a share (before its first
assignment, from a revoke to the next assignment, while it holds no partition)
closes its limiter (:meth:`RateLimiter.close`): it sends nothing then, not even the rest of a
chunk whose partitions another worker now delivers at that worker's share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from app.errors import NoRateShareError

HEADROOM = 1.05


class RateLimiter:
    def __init__(
        self,
        rate_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        # Aim 5% under the limit: rate + 1 starts span 1.05 s, so up to 50 ms of network or
        # scheduling jitter still cannot put more than ``rate`` arrivals into one second.
        self.interval = HEADROOM / rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._last_slot: float | None = None
        self._next_slot = 0.0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def set_rate(self, rate_per_second: float) -> None:
        """Change the rate (and reopen a closed limiter); the next slot is re-spaced from the
        last start at the new rate."""
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self.interval = HEADROOM / rate_per_second
        self._closed = False
        if self._last_slot is not None:
            self._next_slot = self._last_slot + self.interval

    def close(self) -> None:
        """Send nothing until :meth:`set_rate`: every :meth:`acquire` raises
        :class:`NoRateShareError`, also one already waiting for its slot."""
        self._closed = True

    async def acquire(self) -> None:
        """Wait for this caller's slot. Slots are handed out first come, first served.

        Raises :class:`NoRateShareError` when the limiter is closed now or was closed while
        the caller waited for its slot (the slot belonged to a share this worker lost)."""
        if self._closed:
            raise NoRateShareError
        now = self._clock()
        slot = max(now, self._next_slot)
        self._last_slot = slot
        self._next_slot = slot + self.interval
        if slot > now:
            await self._sleep(slot - now)
            if self._closed:
                raise NoRateShareError


def workspace_share(limit_per_second: float, assigned: int, total: int) -> float:
    """This worker's part of a workspace's request limit: ``limit * assigned / total``.

    ``assigned``: operations partitions this worker's sink holds; ``total``: the topic's
    partition count. 0 when it holds none, or when the partition count is unknown (0): a
    share that cannot be computed is no share.
    """
    if assigned <= 0 or total <= 0:
        return 0.0
    return limit_per_second * min(assigned, total) / total
