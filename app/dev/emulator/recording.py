"""What the emulator saw: a bounded log of Track API requests and exact counters.

Pure: the server passes the times in. :meth:`RequestLog.arrived` is called when a request
arrives (it feeds the busiest-second figure, so it counts every request, faulted or not);
:meth:`RequestLog.finished` when it has been answered or dropped. The log keeps the most recent
``limit`` requests (default 100,000); the counters are exact however many there were.

The busiest second (``max_requests_per_second``) is the largest number of arrivals within any
window of one second: a sliding window that ends at each arrival, so it is exact and costs
O(1) amortised per request.

Failure semantics: nothing here raises.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_LOG_LIMIT: Final = 100_000
# RequestRecord.status of a request whose connection was dropped without an answer.
DROPPED: Final = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One Track API request: ``status`` is ``None`` when the connection was dropped, ``items``
    the items it carried (1 for a v1 call, 0 when none could be read), ``fault`` the kind of
    fault injected, if any."""

    method: str
    path: str
    host: str | None
    status: int | None
    items: int
    bytes: int
    received_at: float
    duration_seconds: float
    fault: str | None

    def as_json(self) -> dict[str, Any]:
        """The record as the inspection API shows it."""
        return {
            "method": self.method,
            "path": self.path,
            "host": self.host,
            "status": self.status,
            "items": self.items,
            "bytes": self.bytes,
            "received_at": self.received_at,
            "duration_seconds": self.duration_seconds,
            "fault": self.fault,
        }


class RequestLog:
    """The recent requests, the counters over all of them and the busiest second."""

    def __init__(self, limit: int = DEFAULT_LOG_LIMIT) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=limit)
        self.requests = 0
        self.bytes_received = 0
        self.items_received = 0
        self.by_status: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.max_requests_per_second = 0
        self._last_second: deque[float] = deque()

    def arrived(self, monotonic_now: float) -> None:
        """Count an arrival at ``monotonic_now`` (seconds) in the busiest-second figure."""
        window = self._last_second
        window.append(monotonic_now)
        horizon = monotonic_now - 1.0
        while window[0] <= horizon:
            window.popleft()
        self.max_requests_per_second = max(self.max_requests_per_second, len(window))

    def finished(self, record: RequestRecord) -> None:
        """Keep ``record`` and count it."""
        self.records.append(record)
        self.requests += 1
        self.bytes_received += record.bytes
        self.items_received += record.items
        self.by_status["dropped" if record.status is DROPPED else str(record.status)] += 1
        if record.fault is not None:
            self.faults[record.fault] += 1
