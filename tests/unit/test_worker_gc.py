"""The worker's garbage-collector tuning (app.worker.tune_gc): thresholds, freeze, and that
cyclic garbage made afterwards is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from app.worker import GC_GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """Undo tune_gc after the test: the rest of the test session runs with default GC."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    """A weak-referenceable object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: object = self


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_raises_gen0_threshold_and_keeps_older_generations() -> None:
    _, gen1, gen2 = gc.get_threshold()
    tune_gc()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, gen1, gen2)
    assert GC_GEN0_THRESHOLD > 700  # above Python's default, or the tuning does nothing


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_freezes_objects_alive_at_start() -> None:
    before = Node()
    tune_gc()
    assert gc.get_freeze_count() > 0
    # a frozen object is in the permanent generation: no generation's list holds it
    assert not any(before is obj for obj in gc.get_objects())


@pytest.mark.usefixtures("restore_gc")
def test_cycles_made_after_tune_gc_are_still_collected() -> None:
    tune_gc(gen0_threshold=1_000_000)
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    assert gone() is not None  # a cycle: reference counting alone does not free it
    gc.collect()
    assert gone() is None
