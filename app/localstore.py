"""When the worker may trust its local table store, and the bookkeeping that decides it.

faust writes a table value into the local store (RocksDB) at once, while the same value
reaches the changelog only with the Kafka transaction of its input record. Two guards keep the
store from getting ahead of Kafka:

- :class:`UncommittedWrites` (``exactly_once``): the agent's table writes are held in memory
  until their transaction commits, then applied to the store; an aborted transaction's writes
  are discarded. The store then holds committed values only, after a crash or a rebalance too;
- the clean-stop marker (both modes): :func:`open_store` runs before faust opens any table:
  without the marker it deletes the table directory (faust then rebuilds every table from the
  committed changelog); with it, it removes the marker, so a crash from now on leaves none.
  :class:`PendingWrites` counts the records whose writes reached the store but whose input
  offset is not committed yet (the agent reports writes, faust's commit reports offsets);
  :func:`mark_clean` writes the marker when the worker exits with code 0 and nothing is
  pending. Under ``at_least_once`` this is what keeps a state written ahead of its lost
  operations from being trusted (a user whose state was written would be skipped as already
  applied on redelivery); under ``exactly_once`` it only costs a rebuild after a crash.

Failure semantics: a marker that cannot be written only costs a rebuild on the next start; a
table directory that cannot be deleted raises ``OSError`` (the worker must not start on a store
it cannot trust).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

from faust.types import TP

from app.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".clean-stop"
LOCK_FILE = ".lock"

Position = tuple[str, int]  # (topic, partition) of an input record
_Key = tuple[str, bytes]  # (table name, key)


class PendingWrites:
    """Input records whose store writes are not yet covered by a committed offset.

    ``wrote(topic, partition, offset)`` after a record's writes; ``committed({(topic,
    partition): next offset})`` after a successful commit (Kafka's convention: the committed
    offset is the next record to read, so it covers every offset below it).
    """

    def __init__(self) -> None:
        self._last: dict[Position, int] = {}

    def wrote(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self._last[key] = max(offset, self._last.get(key, -1))

    def committed(self, offsets: Mapping[Position, int]) -> None:
        for key, next_offset in offsets.items():
            if key in self._last and self._last[key] < next_offset:
                del self._last[key]

    @property
    def clean(self) -> bool:
        """True when every write so far is covered by a committed offset."""
        return not self._last


class StoredTable(Protocol):
    """What :class:`UncommittedWrites` needs of a faust table: its name, store and changelog."""

    name: str

    @property
    def data(self) -> Any: ...  # the store: item set, pop, set_persisted_offset(tp, offset)

    @property
    def changelog_topic(self) -> Any: ...


@dataclass(frozen=True)
class _Held:
    table: StoredTable
    value: bytes | None
    sent: Awaitable[Any] | None  # the changelog send's future RecordMetadata


class UncommittedWrites:
    """Table writes whose Kafka transaction has not committed yet, held apart from the store.

    Under ``exactly_once`` (``hold=True``) the ingest agent sends a record's changelog record in
    its source partition's transaction and then puts the value here instead of into the
    local store; every read of the agent goes through :meth:`get` / :meth:`changes` first.
    When that partition's transaction commits, :meth:`committed` applies the partition's
    writes to the store and records, as faust's persisted offset of each changelog partition,
    the highest changelog offset applied (so a restart after a clean stop replays only the
    changelog written after it); when faust drops the partition's producer (partition revoked:
    the next owner's producer aborts the open transaction), :meth:`aborted` discards them. So
    the local store only ever holds committed values: a redelivered record is never judged
    against a state whose transaction was aborted (after a crash, a rebalance, or a producer
    fenced). Without transactions (``hold=False``) ``put`` writes the store at once.

    Values are raw bytes; ``None`` is a deletion (a changelog tombstone). Partitions are input
    (= changelog) partition numbers. The caller must ``put`` with no ``await`` between the send
    of the changelog record and the ``put`` (asyncio: nothing else runs in between), and the
    commit must call :meth:`committed` before the next transaction begins. A send whose
    acknowledgement is not known at commit time only leaves the persisted offset lower (more
    changelog replayed at the next start), never higher.
    """

    def __init__(self, *, hold: bool) -> None:
        self.hold = hold
        self._by_partition: dict[int, dict[_Key, _Held]] = {}

    def put(
        self,
        partition: int,
        table: StoredTable,
        key: bytes,
        value: bytes | None,
        sent: Awaitable[Any] | None = None,
    ) -> None:
        if not self.hold:
            _store(table, key, value, partition)
            return
        self._by_partition.setdefault(partition, {})[table.name, key] = _Held(table, value, sent)

    def get(self, table: StoredTable, key: bytes) -> tuple[bool, bytes | None]:
        """``(True, value)`` when an uncommitted write holds ``key`` (value None: deleted),
        ``(False, None)`` when the store decides."""
        for writes in self._by_partition.values():
            held = writes.get((table.name, key))
            if held is not None:
                return True, held.value
        return False, None

    def changes(self, table: StoredTable, partition: int) -> dict[bytes, bytes | None]:
        """The uncommitted writes of ``table`` in ``partition`` (key -> value, None: deleted)."""
        writes = self._by_partition.get(partition, {})
        return {key: held.value for (name, key), held in writes.items() if name == table.name}

    def committed(self, partition: int) -> None:
        """The partition's transaction committed: its writes go to the store."""
        highest: dict[str, tuple[StoredTable, int]] = {}
        for (name, key), held in self._by_partition.pop(partition, {}).items():
            _store(held.table, key, held.value, partition)
            offset = _acknowledged_offset(held.sent)
            if offset is not None and offset > highest.get(name, (held.table, -1))[1]:
                highest[name] = (held.table, offset)
        for table, offset in highest.values():
            changelog = TP(table.changelog_topic.get_topic_name(), partition)
            table.data.set_persisted_offset(changelog, offset)

    def aborted(self, partition: int) -> None:
        """The partition's transaction will not commit here: its writes are discarded."""
        self._by_partition.pop(partition, None)

    @property
    def held(self) -> int:
        """How many writes wait for their transaction (for tests and diagnostics)."""
        return sum(len(writes) for writes in self._by_partition.values())


def _acknowledged_offset(sent: Awaitable[Any] | None) -> int | None:
    """The offset a send was written at, or None while unknown (not acknowledged, failed)."""
    if not isinstance(sent, asyncio.Future) or not sent.done() or sent.cancelled():
        return None
    if sent.exception() is not None:
        return None
    offset: int = sent.result().offset
    return offset


def _store(table: StoredTable, key: bytes, value: bytes | None, partition: int) -> None:
    """Write ``key`` into ``partition`` of the table's store (``None``: delete it)."""
    store = table.data
    database_of = getattr(store, "_db_for_partition", None)
    if database_of is None:  # the memory store (and test fakes): one mapping for all partitions
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
        return
    # faust's RocksDB store keeps one database per partition and its own __setitem__ takes the
    # partition from the event being processed, which a commit has not: write the partition's
    # database as faust's _set does (and keep its key -> partition index, which reads use).
    database = database_of(partition)
    if value is None:
        database.delete(key)
        store._key_index.pop(key, None)
    else:
        database.put(key, value)
        store._key_index[key] = partition


def lock_data_dir(datadir: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``datadir`` for the life of the process; return its file.

    Two workers on one data dir would each open the same RocksDB databases (faust then logs
    "DB for partition N is locked" 30 times and crashes, its partitions stalled meanwhile).
    Raises :class:`~app.errors.ConfigError` at once, naming the directory and the holder's
    pid, when another process holds it. The kernel drops the lock when the process exits,
    even on SIGKILL, so a crashed worker never leaves it behind.
    """
    datadir.mkdir(parents=True, exist_ok=True)
    handle = (datadir / LOCK_FILE).open("a+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "unknown"
        handle.close()
        raise ConfigError(
            f"invalid setting MPCIO_DATA_DIR: {datadir} is in use by another worker (pid "
            f"{holder}); every worker needs its own data dir (the Helm chart gives each pod "
            "its own volume)"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()).encode())
    handle.flush()
    return handle


def open_store(tabledir: Path, max_age_seconds: float | None = None) -> bool:
    """Make ``tabledir`` safe to open; return whether the existing store was kept.

    Kept (True) only when the last run stopped cleanly (the marker exists; it is removed now)
    less than ``max_age_seconds`` ago: an older store could hold users whose erasure
    tombstones the changelog's compaction has dropped since (``delete.retention.ms``), and
    replaying the changelog on top of it would never remove them. Otherwise an existing
    directory is deleted with one warning and False is returned; a missing directory is a
    first start (False, nothing to delete).
    """
    marker = tabledir / MARKER
    why = "the last run did not stop cleanly"
    if marker.exists():
        age = time.time() - marker.stat().st_mtime
        marker.unlink()
        if max_age_seconds is None or age < max_age_seconds:
            return True
        why = (
            f"the store is {age:.0f} s old, older than the changelogs keep erasure tombstones "
            f"({max_age_seconds:.0f} s)"
        )
    if tabledir.exists():
        log.warning(
            "%s: discarding the local table store %s; the tables are rebuilt from their "
            "committed changelogs",
            why,
            tabledir,
        )
        shutil.rmtree(tabledir)
    return False


def mark_clean(tabledir: Path, pending: PendingWrites, exit_code: int) -> bool:
    """Write the clean-stop marker if the run ended with ``exit_code`` 0 and nothing pending."""
    if exit_code != 0 or not pending.clean:
        log.warning(
            "stopped with uncommitted work (exit code %s): the local table store will be "
            "rebuilt on the next start",
            exit_code,
        )
        return False
    try:
        tabledir.mkdir(parents=True, exist_ok=True)
        (tabledir / MARKER).touch()
    except OSError as exc:  # costs a rebuild on the next start, nothing else
        log.warning("could not write the clean-stop marker: %s", exc)
        return False
    return True
