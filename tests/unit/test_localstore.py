"""The local table store is trusted only after a clean stop (app.localstore)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from faust.types import TP

from app.localstore import MARKER, PendingWrites, UncommittedWrites, mark_clean, open_store

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


class _Store(dict[bytes, bytes]):
    """A faust store: a mapping that also keeps persisted changelog offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.persisted: dict[TP, int] = {}

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset


class _Changelog:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class _Table:
    """A faust table as UncommittedWrites sees it: a name, its store and its changelog."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = _Store()
        self.changelog_topic = _Changelog(f"{name}-changelog")


def _acknowledged(offset: int) -> asyncio.Future[Any]:
    sent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    sent.set_result(SimpleNamespace(offset=offset))
    return sent


def test_held_writes_reach_the_store_only_when_their_partition_commits() -> None:
    users, erasures = _Table("users"), _Table("erasures")
    users.data[b"7"] = b"committed"
    writes = UncommittedWrites(hold=True)
    writes.put(0, users, b"7", b"open")
    writes.put(0, erasures, b"7", b"123")
    writes.put(1, users, b"8", b"other partition")
    assert users.data == {b"7": b"committed"}  # the store holds committed values only
    assert writes.get(users, b"7") == (True, b"open")  # the agent reads its own writes
    assert writes.get(erasures, b"9") == (False, None)
    assert writes.changes(users, 0) == {b"7": b"open"}
    writes.committed(0)
    assert users.data == {b"7": b"open"}
    assert erasures.data == {b"7": b"123"}
    assert writes.get(users, b"7") == (False, None)
    assert writes.held == 1  # partition 1's transaction is still open


def test_an_aborted_partition_leaves_the_store_as_committed() -> None:
    users = _Table("users")
    users.data[b"7"] = b"committed"
    writes = UncommittedWrites(hold=True)
    writes.put(0, users, b"7", None)  # an erasure: a tombstone in the open transaction
    writes.put(0, users, b"9", b"first state")
    assert writes.get(users, b"7") == (True, None)
    writes.aborted(0)
    writes.committed(0)  # a later commit of the partition has nothing of the aborted one
    assert users.data == {b"7": b"committed"}
    assert writes.held == 0


def test_a_deletion_applies_as_a_removal_on_commit() -> None:
    users = _Table("users")
    users.data[b"7"] = b"committed"
    writes = UncommittedWrites(hold=True)
    writes.put(0, users, b"7", None)
    writes.committed(0)
    assert users.data == {}


def test_without_transactions_writes_go_to_the_store_at_once() -> None:
    users = _Table("users")
    writes = UncommittedWrites(hold=False)
    writes.put(0, users, b"7", b"state")
    assert users.data == {b"7": b"state"}
    assert writes.held == 0


async def test_a_commit_persists_the_highest_acknowledged_changelog_offset() -> None:
    users = _Table("users")
    writes = UncommittedWrites(hold=True)
    pending: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    writes.put(2, users, b"7", b"a", _acknowledged(40))
    writes.put(2, users, b"8", b"b", _acknowledged(41))
    writes.put(2, users, b"9", b"c", pending)  # not acknowledged (yet): never counted
    writes.committed(2)
    assert users.data.persisted == {TP("users-changelog", 2): 41}
    assert users.data == {b"7": b"a", b"8": b"b", b"9": b"c"}
    writes.put(2, users, b"7", b"d", _acknowledged(39))
    writes.aborted(2)
    writes.committed(2)
    assert users.data.persisted == {TP("users-changelog", 2): 41}  # an abort persists nothing


class _Database(dict[bytes, bytes]):
    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)


class _PartitionedStore:
    """faust's RocksDB store as the commit writes it: one database per partition."""

    def __init__(self) -> None:
        self.databases: dict[int, _Database] = {}
        self._key_index: dict[bytes, int] = {}

    def _db_for_partition(self, partition: int) -> _Database:
        return self.databases.setdefault(partition, _Database())


def test_a_commit_writes_the_partitions_own_database_without_an_event() -> None:
    users = _Table("users")
    store = _PartitionedStore()
    users.data = store  # type: ignore[assignment]
    writes = UncommittedWrites(hold=True)
    writes.put(3, users, b"7", b"state")
    writes.put(1, users, b"8", b"other")
    writes.committed(3)
    assert store.databases == {3: {b"7": b"state"}}
    assert store._key_index == {b"7": 3}
    writes.put(3, users, b"7", None)
    writes.committed(3)
    assert store.databases == {3: {}}
    assert store._key_index == {}
