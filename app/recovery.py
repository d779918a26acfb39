"""faust's table recovery, made safe against a rebalance it has not noticed yet and quick to
end on a transactional changelog (ARCHITECTURE.md §4).

Two defects of faust 0.15.3's :class:`faust.tables.recovery.Recovery`, both seen under
``exactly_once`` with several workers joining and leaving:

- **A rebalance during recovery crashed the worker** (``ValueError('Offset must be a positive
  integer')``, exit 1; 3 crashes in 41 standby starts of a chaos run). faust's ``on_rebalance``
  resets the changelog offsets of every newly assigned partition to None and signals a new
  recovery; the recovery in progress notices the signal only in some of its waits, so it can
  go on to seek its standby partitions with those None offsets. → :class:`SafeRecovery` gives
  up a seek once a new recovery was signalled (faust's ``RebalanceAgain``: the recovery starts
  over with the new assignment, nothing is skipped, every offset is built again).
- **Recovery waited ≥ 10 s for commit markers.** Under transactions the recovery target is the
  last stable offset minus one, which is where the last transaction's commit marker lies; a
  consumer never receives a marker, so the last record applied stays one (or, after aborted
  transactions, more) below the target, and faust ends the recovery only after two idle polls
  of 5 s ("Aborted tx until highwater"). → the consumer thread records, per changelog
  partition, the span of offsets it read contiguously since its last seek and the last record
  it returned in it (:class:`FetchedSpan`); a partition whose span reaches past the target and
  whose last returned record was applied has only markers and aborted records left
  (:func:`only_markers_left`), so it counts as recovered at once: when its last record is
  applied, or, if the marker is fetched after it (no record left to wake faust's loop), at the
  next check (:data:`MARKER_CHECK_SECONDS`) while the recovery waits for its partitions.
- **faust's own guess for that case could drop records**: it took a partition whose position
  passed the target as recovered even while fetched records were still on their way to the
  recovery, which then skipped them as already applied (seen in a churn run: 0.6 s into a
  recovery of 138 records, because its idle-poll count carries over from earlier idle time).
  → the consumer answers that guess with the end of what was read and applied
  (:func:`position_for_guess`), without waiting: the guess iterates faust's dict of targets
  across its ``await consumer.position(tp)``, and a recovery restarting meanwhile changed that
  dict under it (``Error in recovery dictionary changed size during iteration``). Both that
  error and a None position ended the guess early; faust's loop logged it and went on, so the
  recovery only ended up to 5 s later (nothing skipped, nothing lost).

Failure semantics: none of this reads or writes Kafka or moves an offset; a partition not
provably done is left to faust's own logic (at worst the old 10 s wait).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from faust.tables.recovery import RebalanceAgain, Recovery
from mode import Service

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import Set as AbstractSet

    from faust.types import TP
    from faust.types.transports import ConsumerT


log = logging.getLogger(__name__)

#: How often a recovery waiting for its active partitions checks whether only markers are left
#: (a fetch that passes only a marker wakes nothing in faust's recovery loop).
MARKER_CHECK_SECONDS = 0.25


@dataclass(frozen=True)
class FetchedSpan:
    """Offsets ``[start, end)`` of one changelog partition read without a seek in between:
    every committed record in them was returned by the consumer; ``last`` is the highest
    offset returned (None: none, only markers and aborted records so far)."""

    start: int
    end: int
    last: int | None


def extend_span(
    span: FetchedSpan | None, before: int, after: int, last: int | None
) -> FetchedSpan | None:
    """``span`` after one fetch that moved the partition's position from ``before`` to
    ``after`` and returned records up to ``last`` (None: none).

    A fetch that does not continue the span (a seek in between, or the position moved back)
    starts a new one at ``before``; a position that moved back leaves nothing known (None).
    """
    if after < before:
        return None
    if span is None or span.end != before:
        return FetchedSpan(before, after, last)
    return FetchedSpan(span.start, after, span.last if last is None else last)


def only_markers_left(span: FetchedSpan | None, applied: int | None, highwater: int) -> bool:
    """True when nothing after ``applied`` (the last changelog offset recovery applied; -1:
    none) up to ``highwater`` (faust's target: the last stable offset minus one) holds a
    committed record, so the partition is recovered.

    Provable only when ``span`` covers everything from ``applied + 1`` past ``highwater``
    and every record it returned was applied (a record returned but not yet applied, or
    dropped on its way, keeps the partition waiting for faust's own logic).
    """
    if span is None or applied is None or applied >= highwater:
        return False
    returned_applied = span.last is None or span.last <= applied
    return span.start <= applied + 1 and span.end > highwater and returned_applied


def position_for_guess(span: FetchedSpan | None, applied: int | None) -> int:
    """The position of a changelog partition to give faust's "aborted transactions" guess.

    That guess (after two idle polls of 5 s, counted across recoveries, so it can fire at any
    moment of one) takes a partition whose consumer position passed the target as recovered
    and moves its applied offset to the target: records fetched but still on their way to the
    recovery would then be skipped as already applied, and their states lost. So the position
    given is the end of what was read since the last seek (``span.end``) once every record in
    it was applied (``span.last <= applied``) and it follows on from what was applied
    (``span.start <= applied + 1``): everything below it is then provably in the table.
    Otherwise -1, below every target (no guess). Never None: the guess compares it with an
    int, and a None there raised ``TypeError`` ("Error in recovery '>=' not supported between
    instances of 'NoneType' and 'int'") for a partition faust still holds a target of but no
    applied offset (one that moved from active to standby in a rebalance).
    """
    if span is None or applied is None or span.start > applied + 1:
        return -1
    if span.last is not None and span.last > applied:
        return -1
    return span.end


class SafeRecovery(Recovery):
    """faust's recovery that never seeks with the offsets of a rebalance it has not started
    yet, and ends as soon as only transaction markers are left (module docstring).

    ``fetched_spans`` (changelog partition → :class:`FetchedSpan`) is written by the consumer
    thread after each fetch and each seek (:class:`app.faust_app._ConsumerThread`), one whole
    value per key, and read here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetched_spans: dict[TP, FetchedSpan] = {}
        self._markers_logged: dict[TP, tuple[int, int]] = {}  # one log line per target
        self._signal_recovery_end = _WatchedEvent()

    async def _seek_offsets(
        self, consumer: ConsumerT, tps: AbstractSet[TP], offsets: Counter[TP], title: str
    ) -> None:
        # on_rebalance set the offsets of the new assignment to None and signalled a new
        # recovery: this one is stale; faust's loop starts the new one (RebalanceAgain)
        if self.signal_recovery_start.is_set():
            raise RebalanceAgain
        await super()._seek_offsets(consumer, tps, offsets, title)  # type: ignore[arg-type]

    def active_remaining(self) -> Counter[TP]:
        remaining: Counter[TP] = super().active_remaining()
        for tp in list(remaining):
            span = self.fetched_spans.get(tp)
            applied, highwater = self.active_offsets[tp], self.active_highwaters[tp]
            if span is not None and only_markers_left(span, applied, highwater):
                del remaining[tp]
                if self._markers_logged.get(tp) != (applied, highwater):
                    self._markers_logged[tp] = (applied, highwater)
                    log.info(
                        "changelog %s[%d] recovered: offsets %d..%d hold no committed record "
                        "(transaction markers or aborted records; read to %d)",
                        tp.topic,
                        tp.partition,
                        applied + 1,
                        highwater,
                        span.end - 1,
                    )
        return remaining

    @Service.timer(MARKER_CHECK_SECONDS)
    async def _check_for_markers_only(self) -> None:
        self.end_when_only_markers_left()

    def end_when_only_markers_left(self) -> None:
        """End the active recovery it waits for when every active partition is recovered
        (:meth:`active_remaining`) but no record is left to make faust's loop check it.

        Only while the recovery waits for its end signal (set at another moment, it would let
        a later recovery pass before reading), and only with every active partition's target
        and offset known (faust leaves a new partition's offset None until it is built)."""
        event = self.signal_recovery_end
        if not (isinstance(event, _WatchedEvent) and event.waiting and self.in_recovery):
            return
        known = all(
            self.active_offsets.get(tp) is not None and self.active_highwaters.get(tp) is not None
            for tp in self.active_tps
        )
        if known and not self.need_recovery():
            # what faust's recovery loop does when it sees the end (_maybe_signal_recovery_end)
            self.flush_buffers()
            self._set_recovery_ended()
            event.set()


class _WatchedEvent(asyncio.Event):
    """An event that knows whether anything waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def wait(self) -> Literal[True]:
        self.waiting += 1
        try:
            return await super().wait()
        finally:
            self.waiting -= 1
