"""State at scale (issue 22): changelog configs, key counts, recovery readiness, data-dir lock."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import pytest
import rocksdict

from app.changelog import changelog_configs
from app.errors import ConfigError
from app.localstore import MARKER, lock_data_dir, open_store
from app.restore import RestoreProgress, readiness_body
from app.settings import load_settings
from app.web import KeyCounter, decide_readiness

if TYPE_CHECKING:
    from pathlib import Path

OFFSET_KEY = b"__faust\0offset__"


def test_changelog_configs_close_segments_and_compact_early() -> None:
    settings = load_settings(forwarding_enabled=False)
    assert changelog_configs(settings) == {
        "cleanup.policy": "compact",
        "segment.bytes": str(64 * 1024 * 1024),
        "segment.ms": "3600000",
        "min.cleanable.dirty.ratio": "0.1",
        "delete.retention.ms": str(7 * 24 * 3600 * 1000),
    }
    small = load_settings(
        forwarding_enabled=False, changelog_segment_seconds=1, changelog_segment_bytes=2**20
    )
    assert changelog_configs(small)["segment.ms"] == "1000"
    assert changelog_configs(small)["segment.bytes"] == "1048576"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("changelog_min_cleanable_dirty_ratio", 1.0),
        ("changelog_segment_bytes", 1000),
        ("standby_replicas", -1),
        ("kafka_rebalance_timeout_seconds", 1),
    ],
)
def test_state_settings_are_validated(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"MPCIO_{name.upper()}"):
        load_settings(forwarding_enabled=False, **{name: value})


def test_standbys_and_rebalance_timeout_reach_faust() -> None:
    from app.faust_app import create_app  # noqa: PLC0415 - faust's import is slow

    settings = load_settings(
        forwarding_enabled=False, standby_replicas=2, kafka_rebalance_timeout_seconds=15
    )
    app = create_app(settings)
    assert app.conf.table_standby_replicas == 2
    assert app.conf.broker_rebalance_timeout == 15


def _readiness(recovery_remaining: int | None) -> Any:
    return decide_readiness(
        joined=True,
        rebalancing=False,
        input_partitions=4,
        agents={"ingest": "running"},
        forwarding_enabled=False,
        sink_state=None,
        sink_joined=False,
        sink_partitions=0,
        sink_stopped_reason=None,
        recovery_remaining=recovery_remaining,
    )


def test_readiness_explains_recovery() -> None:
    recovering = _readiness(1234)
    assert not recovering.ready
    assert recovering.status == "recovering"
    assert recovering.as_json()["reason"] == (
        "recovering table state from the changelogs: 1234 records left"
    )
    done = _readiness(None)
    assert done.ready
    assert done.status == "active"


def test_readiness_while_restoring_names_the_records_left() -> None:
    progress = RestoreProgress(total=1000, done=250)
    body = readiness_body(progress)
    assert body["ready"] is False
    assert body["status"] == "recovering"
    assert "750 of 1000 records left" in body["reason"]


class _Store:
    offset_key = OFFSET_KEY

    def __init__(self, dbs: dict[int, Any]) -> None:
        self._dbs = dbs


class _Table:
    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)


def test_key_counter_counts_each_key_once_a_slice_at_a_time(tmp_path: Path) -> None:
    dbs = {}
    for partition, keys in ((0, 25), (1, 10)):
        db = rocksdict.Rdict(str(tmp_path / f"p{partition}"), options=rocksdict.Options(True))
        for round_ in range(3):  # every key written 3 times: RocksDB's estimate counts 3x
            for key in range(keys):
                db.put(b"k%d" % key, b"v%d" % round_)
        db.put(OFFSET_KEY, b"99")
        dbs[partition] = db
    assert dbs[0].property_int_value("rocksdb.estimate-num-keys") > 25
    table = _Table(_Store(dbs))
    counter = KeyCounter(budget=8)
    results = [counter.step(table, {0, 1}) for _ in range(8)]
    assert results[0] is None  # not every partition counted yet
    assert results[-1] == 35
    assert counter.step(table, {1}) == 10  # a revoked partition leaves the total
    for db in dbs.values():
        db.close()


def test_key_counter_counts_a_memory_table_at_once() -> None:
    assert KeyCounter().step(_Table({b"a": b"1", b"b": b"2"}), {0}) == 2


def test_second_lock_on_a_data_dir_is_one_config_error(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path)
    with pytest.raises(ConfigError, match=f"{tmp_path} is in use by another worker.*{os.getpid()}"):
        lock_data_dir(tmp_path)
    held.close()
    lock_data_dir(tmp_path).close()  # released with the file (the kernel does it on exit)


def test_store_older_than_the_tombstone_retention_is_discarded(tmp_path: Path) -> None:
    tabledir = tmp_path / "tables"
    tabledir.mkdir()
    (tabledir / MARKER).touch()
    assert open_store(tabledir, max_age_seconds=3600)
    (tabledir / MARKER).touch()
    old = time.time() - 7200
    os.utime(tabledir / MARKER, (old, old))
    assert not open_store(tabledir, max_age_seconds=3600)
    assert not tabledir.exists()


def test_recovery_gauges_read_a_running_restore_at_scrape_time() -> None:
    from prometheus_client import REGISTRY  # noqa: PLC0415

    def sample(name: str) -> float | None:
        value: float | None = REGISTRY.get_sample_value(name)
        return value

    progress = RestoreProgress(total=1000, done=400)
    assert sample("mpcio_table_recovery_in_progress") == 0
    progress.running = True
    assert sample("mpcio_table_recovery_in_progress") == 1
    assert sample("mpcio_table_recovery_remaining_records") == 600
    progress.done = 1000
    assert sample("mpcio_table_recovery_remaining_records") == 0
    progress.running = False
    assert sample("mpcio_table_recovery_in_progress") == 0
