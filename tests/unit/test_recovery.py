"""Table recovery (app.recovery): a seek with the offsets of a rebalance recovery has not
started yet is given up instead of crashing the worker, and a changelog partition whose rest is
only transaction markers counts as recovered without faust's two idle polls of 5 s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, NoReturn

import pytest
from faust.tables.recovery import RebalanceAgain
from faust.types import TP

from app.faust_app import create_app
from app.recovery import (
    FetchedSpan,
    SafeRecovery,
    extend_span,
    only_markers_left,
    position_for_guess,
)
from app.settings import load_settings

CHANGELOG = TP("app-users-changelog", 2)


class _SeekingConsumer:
    """What recovery's seek touches of faust's consumer; validates like aiokafka's seek."""

    def __init__(self) -> None:
        self.sought: list[dict[TP, int]] = []

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for offset in partitions.values():
            if not isinstance(offset, int) or offset < 0:
                raise ValueError("Offset must be a positive integer")  # aiokafka's words
        self.sought.append(dict(partitions))


class _TableWithoutPersistedOffsets:
    """A table as recovery sees it under exactly_once: no changelog offset persisted."""

    def persisted_offset(self, tp: TP) -> None:
        return None


def _recovery() -> SafeRecovery:
    app = create_app(load_settings(forwarding_enabled=False, processing_guarantee="exactly_once"))
    recovery = app.tables.recovery
    assert isinstance(recovery, SafeRecovery)
    return recovery


async def test_a_standby_seek_after_an_unnoticed_rebalance_starts_the_recovery_over() -> None:
    # the chaos run's crash: on_rebalance added a new standby partition (offset None) and
    # signalled a new recovery while the old one went on to seek its standbys
    recovery = _recovery()
    consumer = _SeekingConsumer()
    recovery.add_standby(_TableWithoutPersistedOffsets(), CHANGELOG)  # type: ignore[arg-type]
    recovery.signal_recovery_start.set()
    assert recovery.standby_offsets[CHANGELOG] is None

    with pytest.raises(RebalanceAgain):  # faust's loop starts the new recovery
        await recovery._seek_offsets(
            consumer,  # type: ignore[arg-type]
            recovery.standby_tps,
            recovery.standby_offsets,
            "standby",
        )

    assert consumer.sought == []


async def test_a_seek_of_the_current_recovery_goes_through() -> None:
    recovery = _recovery()
    consumer = _SeekingConsumer()
    recovery.standby_offsets[CHANGELOG] = 41

    await recovery._seek_offsets(consumer, {CHANGELOG}, recovery.standby_offsets, "standby")  # type: ignore[arg-type]

    assert consumer.sought == [{CHANGELOG: 41}]


def test_fetches_without_a_seek_between_them_extend_one_span() -> None:
    span = extend_span(None, 100, 140, 138)
    assert span == FetchedSpan(100, 140, 138)
    # a fetch that only passed a commit marker keeps the last record returned
    assert extend_span(span, 140, 141, None) == FetchedSpan(100, 141, 138)


def test_a_fetch_after_a_seek_starts_a_new_span() -> None:
    span = FetchedSpan(100, 140, 138)
    assert extend_span(span, 20, 30, 29) == FetchedSpan(20, 30, 29)
    assert extend_span(span, 140, 120, 119) is None  # the position moved back: nothing known


def test_a_partition_read_past_its_target_with_every_record_applied_is_recovered() -> None:
    # records up to 138 applied, a commit marker at 139, last stable offset 140 (target 139)
    assert only_markers_left(FetchedSpan(100, 140, 138), applied=138, highwater=139)
    # aborted transactions after the last committed record: records 139..150 never returned
    assert only_markers_left(FetchedSpan(100, 152, 138), applied=138, highwater=151)
    # nothing but markers since the seek (applied -1: from the beginning)
    assert only_markers_left(FetchedSpan(0, 3, None), applied=-1, highwater=2)


def test_a_partition_is_not_recovered_while_anything_may_be_missing() -> None:
    # a record returned but not yet applied (or dropped on its way to recovery)
    assert not only_markers_left(FetchedSpan(100, 140, 138), applied=137, highwater=139)
    # the span has not reached the target yet
    assert not only_markers_left(FetchedSpan(100, 139, 138), applied=138, highwater=139)
    # the span starts after what was applied: records between them were never seen here
    assert not only_markers_left(FetchedSpan(120, 140, 138), applied=110, highwater=139)
    # nothing read since the last seek, or nothing applied yet
    assert not only_markers_left(None, applied=138, highwater=139)
    assert not only_markers_left(FetchedSpan(100, 140, 138), applied=None, highwater=139)


def test_recovery_counts_only_partitions_with_data_left_as_remaining() -> None:
    recovery = _recovery()
    done, behind = CHANGELOG, TP("app-users-changelog", 3)
    recovery.active_highwaters.update({done: 139, behind: 80})
    recovery.active_offsets.update({done: 138, behind: 60})
    recovery.fetched_spans.update(
        {done: FetchedSpan(100, 140, 138), behind: FetchedSpan(0, 70, 69)}
    )

    assert dict(recovery.active_remaining()) == {behind: 20}
    assert recovery.need_recovery()
    recovery.active_offsets[behind] = 80
    assert not recovery.need_recovery()


async def _waiting_recovery(recovery: SafeRecovery) -> asyncio.Task[bool]:
    """A recovery in the state faust's loop waits in: actives being read, end not signalled."""
    recovery._set_recovery_started()
    waiter = asyncio.create_task(recovery.signal_recovery_end.wait())
    await asyncio.sleep(0)
    return waiter


async def test_a_waiting_recovery_ends_once_only_markers_are_left() -> None:
    # the marker after the last record came in a fetch of its own: no record woke faust's loop
    recovery = _recovery()
    recovery.active_tps.add(CHANGELOG)
    recovery.active_highwaters[CHANGELOG] = 139
    recovery.active_offsets[CHANGELOG] = 138
    recovery.fetched_spans[CHANGELOG] = FetchedSpan(100, 139, 138)
    waiter = await _waiting_recovery(recovery)

    recovery.end_when_only_markers_left()
    assert not waiter.done()  # the marker at 139 not read yet

    recovery.fetched_spans[CHANGELOG] = FetchedSpan(100, 140, 138)
    recovery.end_when_only_markers_left()
    assert await asyncio.wait_for(waiter, 1)
    assert not recovery.in_recovery


async def test_no_end_is_signalled_while_nothing_waits_or_an_offset_is_unknown() -> None:
    recovery = _recovery()
    recovery.active_tps.update({CHANGELOG, TP("app-users-changelog", 3)})
    recovery.active_highwaters.update({CHANGELOG: 139, TP("app-users-changelog", 3): 10})
    recovery.active_offsets[CHANGELOG] = 139
    recovery._set_recovery_started()

    recovery.end_when_only_markers_left()  # nothing waits (recovery being set up)
    assert not recovery.signal_recovery_end.is_set()

    waiter = await _waiting_recovery(recovery)
    recovery.end_when_only_markers_left()  # partition 3's offset not built yet
    assert not recovery.signal_recovery_end.is_set()
    waiter.cancel()


def test_faust_guess_sees_the_position_only_once_everything_fetched_was_applied() -> None:
    # the churn run: 0.6 s into a recovery of 138 records, faust's guess fired while fetched
    # records were still on their way; it would have skipped them as already applied
    assert position_for_guess(FetchedSpan(0, 138, 137), applied=40) == -1
    assert position_for_guess(FetchedSpan(0, 139, 137), applied=137) == 139
    assert position_for_guess(FetchedSpan(5, 9, None), applied=4) == 9
    assert position_for_guess(None, applied=40) == -1  # nothing known since a seek
    # read from after a gap: what lies between applied and the span was not seen here
    assert position_for_guess(FetchedSpan(60, 90, 89), applied=40) == -1


def test_faust_guess_gets_a_number_for_a_partition_without_an_applied_offset() -> None:
    # a partition faust still holds a target for but no offset (moved to standby in a
    # rebalance): a None here raised TypeError in faust's comparison ("Error in recovery")
    assert position_for_guess(None, applied=None) == -1
    assert position_for_guess(FetchedSpan(0, 9, 8), applied=None) == -1


async def test_faust_guess_runs_through_a_rebalanced_recovery_without_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the chaos runs' "Error in recovery" warnings, in faust's own loop (_slurp_changelogs)
    # with its 5 s idle polls made instant: one partition fully read, one with records on
    # their way, one that moved to standby (a target, no offset), and a recovery restarting
    # meanwhile (it adds a target as soon as the loop gives it a turn)
    app = create_app(load_settings(forwarding_enabled=False, processing_guarantee="exactly_once"))
    app.in_worker = True  # faust's guess runs under transactions only
    recovery = app.tables.recovery
    assert isinstance(recovery, SafeRecovery)
    done, behind, moved = (TP("app-users-changelog", p) for p in range(3))
    recovery.active_highwaters.update({done: 139, behind: 139, moved: 50})
    recovery.active_offsets.update({done: 137, behind: 40})
    recovery.fetched_spans.update(
        {done: FetchedSpan(100, 140, 137), behind: FetchedSpan(0, 140, 138)}
    )
    consumer = app.consumer
    monkeypatch.setattr(consumer, "_is_changelog_tp", lambda tp: tp.topic.endswith("-changelog"))

    async def thread_position(tp: TP) -> int:
        await asyncio.sleep(0)  # the real one waits for the consumer thread's answer
        return 140

    monkeypatch.setattr(consumer._thread, "position", thread_position)

    async def restart_recovery() -> None:
        recovery.active_highwaters[TP("app-users-changelog", 3)] = 7

    restart = asyncio.ensure_future(restart_recovery())
    idle_polls = 0

    async def idle_poll(waited: Coroutine[Any, Any, Any], timeout: float) -> NoReturn:
        nonlocal idle_polls
        waited.close()
        idle_polls += 1
        if idle_polls == 3:  # two idle polls make the guess run once; the third ends the loop
            recovery._stopped.set()
        raise TimeoutError

    monkeypatch.setattr(asyncio, "wait_for", idle_poll)
    with caplog.at_level(logging.INFO, logger="faust.tables.recovery"):
        await recovery._slurp_changelogs(recovery)  # type: ignore[call-arg]  # mode's task wrapper
    await restart

    assert not [r for r in caplog.records if "Error in recovery" in r.getMessage()]
    assert recovery.active_offsets[done] == 139  # the guess ran: only markers were left
    assert recovery.active_offsets[behind] == 40  # records on their way are not skipped
    assert moved not in recovery.active_offsets
