"""Smoke test of the foundation: faust + a changelog-backed table on the real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.dev.localkafka import LocalKafka
from tests.integration.conftest import Names
from tests.integration.support import WorkerProcess, consume_until, create_topics, produce

pytestmark = pytest.mark.integration


def _latest_counts(records: list) -> dict[str, int]:  # type: ignore[type-arg]
    latest: dict[str, int] = {}
    for record in records:
        key, count = record.value.decode().split(":")
        latest[key] = max(latest.get(key, 0), int(count))
    return latest


async def test_table_survives_worker_restart(kafka: LocalKafka, names: Names, tmp_path: Path):
    source, sink = names.topic("in"), names.topic("out")
    await create_topics(kafka.bootstrap, [source, sink])
    env = {"SMOKE_APP_ID": names.app_id, "SMOKE_BROKER": kafka.url,
           "SMOKE_IN": source, "SMOKE_OUT": sink}  # fmt: skip
    argv = ["-m", "tests.integration.smoke_app", "--loglevel", "info"]
    await produce(kafka.bootstrap, source, [(k.encode(), b"x") for k in "abc" * 5])

    first = WorkerProcess(argv, env, tmp_path / "worker-1.log").start()
    try:
        records = await consume_until(
            kafka.bootstrap, sink, lambda r: len(r) >= 15, workers=[first]
        )
    finally:
        stop_seconds = first.terminate()
    assert _latest_counts(records) == {"a": 5, "b": 5, "c": 5}
    assert sorted(r.value for r in records if r.key == b"a") == [b"a:%d" % i for i in range(1, 6)]
    assert stop_seconds < 30

    # A new process has an empty memory store: counts 6 and 7 can only come from the changelog.
    await produce(kafka.bootstrap, source, [(b"a", b"x"), (b"a", b"x")])
    second = WorkerProcess(argv, env, tmp_path / "worker-2.log").start()
    try:
        # generous: on a busy machine the new process's start and changelog recovery are slow
        records = await consume_until(
            kafka.bootstrap, sink, lambda r: len(r) >= 17, timeout=120, workers=[second]
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{second.output()[-6000:]}") from None
    finally:
        second.terminate()
    assert len(records) == 17, second.output()[-3000:]
    assert [r.value for r in records if r.key == b"a"][-2:] == [b"a:6", b"a:7"]
