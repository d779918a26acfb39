"""When the worker may trust its local table store, and the bookkeeping that decides it.

faust writes a table value into the local store (RocksDB) at once, while the same value
reaches the changelog only with the Kafka transaction of its input record. After a crash the
store can therefore hold values of transactions that were aborted, and faust's recovery (which
replays the committed changelog on top of the store) does not remove them: a user whose first
state was aborted would keep it, marked as applied, and the redelivery guard would skip their
redelivered record. So the store is trusted only after a *clean* stop:

- :func:`open_store` runs before faust opens any table: without the clean-stop marker it deletes
  the table directory (faust then rebuilds every table from the committed changelog); with it,
  it removes the marker, so a crash from now on leaves none;
- :class:`PendingWrites` counts the records whose writes reached the store but whose input
  offset is not committed yet (the agent reports writes, faust's commit reports offsets);
- :func:`mark_clean` writes the marker when the worker exits with code 0 and nothing is
  pending.

Failure semantics: a marker that cannot be written only costs a rebuild on the next start; a
table directory that cannot be deleted raises ``OSError`` (the worker must not start on a store
it cannot trust).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from typing import IO, TYPE_CHECKING

from app.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".clean-stop"
LOCK_FILE = ".lock"

Position = tuple[str, int]  # (topic, partition) of an input record


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
