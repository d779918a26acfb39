"""The local table store is trusted only after a clean stop (app.localstore)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.localstore import MARKER, PendingWrites, mark_clean, open_store

if TYPE_CHECKING:
    from pathlib import Path


def test_a_commit_covers_writes_below_its_offset_only() -> None:
    pending = PendingWrites()
    pending.wrote("batches", 0, 41)
    pending.wrote("batches", 0, 42)
    pending.wrote("audiences", 0, 7)
    pending.committed({("batches", 0): 42})  # next offset 42: record 42 is not covered
    assert not pending.clean
    pending.committed({("batches", 0): 43, ("audiences", 1): 100})
    assert not pending.clean  # audiences partition 0 is still uncommitted
    pending.committed({("audiences", 0): 8})
    assert pending.clean


def test_a_store_without_the_marker_is_discarded(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    (tables / "users-0.db").mkdir(parents=True)
    (tables / "users-0.db" / "000001.log").write_bytes(b"uncommitted state")
    assert open_store(tables) is False
    assert not tables.exists()


def test_a_first_start_has_nothing_to_discard(tmp_path: Path) -> None:
    assert open_store(tmp_path / "tables") is False


def test_a_clean_stop_keeps_the_store_once(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    (tables / "users-0.db").mkdir(parents=True)
    assert mark_clean(tables, PendingWrites(), exit_code=0)
    assert open_store(tables) is True
    assert (tables / "users-0.db").exists()
    assert not (tables / MARKER).exists()  # a crash from now on leaves no marker
    assert open_store(tables) is False  # ... so the next start after it discards


def test_no_marker_after_a_failed_exit_or_uncommitted_writes(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    tables.mkdir()
    assert not mark_clean(tables, PendingWrites(), exit_code=1)
    pending = PendingWrites()
    pending.wrote("batches", 3, 9)
    assert not mark_clean(tables, pending, exit_code=0)
    assert not (tables / MARKER).exists()
