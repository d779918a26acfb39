"""The pure helpers behind bench.e2e's floor contenders and its ratio table."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from app.records import SourcePosition
from bench.ceiling.faust_worker import EVENTS, pass_through
from bench.ceiling.workload import ingest
from bench.e2e.__main__ import run_order, step_figures
from bench.e2e.profile import compare_profiles, inclusive_shares
from bench.e2e.ratios import Ratio, format_ratios, ratios
from bench.e2e.raweos import transact
from bench.e2e.workload import Shape, generate
from bench.stepclock import StepClock

POSITION = SourcePosition("mparticle-batches", 2, 41)
VALUE = orjson.dumps({"mpid": "7", "events": [{"data": {}}, {"data": {}}, {"data": {}}]})


def test_pass_through_sends_the_value_as_operations_and_a_prefix_as_state() -> None:
    result = pass_through(10)(SimpleNamespace(key=b"7", value=VALUE), POSITION)

    assert result.operations == ("7", VALUE)
    assert result.states == {"7": VALUE[:10]}
    assert result.counts[EVENTS] == 3
    assert not result.dead_letters
    assert not result.rekeyed


def test_pass_through_without_state_bytes_writes_no_state() -> None:
    result = pass_through(0)(SimpleNamespace(key=b"7", value=VALUE), POSITION)

    assert result.states == {}
    assert result.operations == ("7", VALUE)


def test_pass_through_raises_on_a_value_that_is_not_a_batch() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        pass_through(10)(SimpleNamespace(key=b"7", value=b"not json"), POSITION)


def row(contender: str, run: int, speed: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {
        "contender": contender,
        "phase": "throughput",
        "run": run,
        "events_per_s": speed,
        "cpu_s_per_1000_events": cpu,
        **extra,
    }


ROWS = [
    row("ours", 1, 1000, 0.5),
    row("ceiling", 1, 4000, 0.2),
    row("floor", 1, 2000, 0.3),
    row("ours", 2, 800, 0.6),
    row("ceiling", 2, 3200, 0.15),
    row("floor", 2, 2400, 0.25),
]


def test_each_run_is_divided_by_the_same_run_of_the_reference() -> None:
    table = ratios(ROWS)

    assert list(table) == ["ours", "floor"]
    assert table["ours"].runs == {1: (0.25, 2.5), 2: (0.25, 4.0)}
    assert table["floor"].runs[2] == (0.75, pytest.approx(1.6667, rel=1e-3))


def test_the_median_is_the_ratio_of_the_medians() -> None:
    median = ratios(ROWS)["ours"].median

    assert median == (pytest.approx(900 / 3600), pytest.approx(0.55 / 0.175))


def test_failed_runs_are_left_out_on_either_side() -> None:
    rows = [
        *ROWS,
        row("ours", 3, 9999, 0.01, error="stalled"),
        row("ceiling", 3, 1, 9.0, error="exited"),
        row("floor", 3, 2000, 0.3),  # its ceiling run failed: no per-run ratio
    ]

    table = ratios(rows)

    assert 3 not in table["ours"].runs
    assert 3 not in table["floor"].runs
    assert table["ours"].median == ratios(ROWS)["ours"].median


def test_no_reference_runs_give_no_table() -> None:
    assert ratios([r for r in ROWS if r["contender"] != "ceiling"]) == {}
    assert "no ceiling runs" in format_ratios({})


@pytest.mark.parametrize(
    ("median", "met"),
    [((0.5, 2.0), True), ((0.49, 1.0), False), ((0.9, 2.01), False), ((1.2, 0.7), True)],
)
def test_the_target_is_half_the_events_and_twice_the_cpu(
    median: tuple[float, float], met: bool
) -> None:
    assert Ratio({}, median).meets_target is met


def test_the_table_shows_each_run_and_the_median() -> None:
    text = format_ratios(ratios(ROWS))

    ours = next(line for line in text.splitlines() if line.startswith("ours"))
    assert "0.25x / 2.50x" in ours
    assert "0.25x / 4.00x" in ours
    assert ours.endswith("not met")


class FakeTransactionalProducer:
    """Records what raw-eos's transaction does, in order."""

    def __init__(self) -> None:
        self.journal: list[tuple[Any, ...]] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.journal.append(("begin",))
        yield
        self.journal.append(("commit",))

    async def send(
        self, topic: str, value: bytes, *, key: bytes, partition: int | None = None
    ) -> None:
        self.journal.append(("send", topic, key, partition, value))

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        self.journal.append(("offsets", offsets, group))


async def test_raw_eos_sends_each_records_operations_then_state_then_the_chunks_offsets() -> None:
    records = generate(Shape(users=1, batches_per_user=2, no_email_share=0.0), prefix="t")
    tp = TopicPartition("in", 3)
    chunk = {
        tp: [
            SimpleNamespace(key=r.key, value=r.encode(0, "t"), offset=10 + n)
            for n, r in enumerate(records)
        ]
    }
    producer = FakeTransactionalProducer()

    held = await transact(producer, chunk, {}, ("ops", "changelog"), "group", ingest)

    kinds = [(entry[0], entry[1] if entry[0] == "send" else None) for entry in producer.journal]
    assert kinds == [
        ("begin", None),
        ("send", "ops"),
        ("send", "changelog"),
        ("send", "ops"),
        ("send", "changelog"),
        ("offsets", None),
        ("commit", None),
    ]
    assert producer.journal[5][1:] == ({tp: 12}, "group")
    states = [e for e in producer.journal if e[0] == "send" and e[1] == "changelog"]
    assert all(e[3] == 3 for e in states)  # the source partition
    assert held == {records[0].key: states[-1][4]}
    # the second record read the first one's held state: its state differs from a fresh one's
    fresh = await transact(
        FakeTransactionalProducer(),
        {tp: chunk[tp][1:]},
        {},
        ("ops", "changelog"),
        "group",
        ingest,
    )
    assert fresh[records[0].key] != held[records[0].key]


def test_step_clock_adds_the_steps_cpu_and_spans_its_marks() -> None:
    clock = StepClock()
    spin = clock.timed(lambda n: sum(i * i for i in range(n)))
    clock.mark()
    assert spin(200_000) == sum(i * i for i in range(200_000))
    spin(10)
    clock.mark()

    summary = clock.summary()
    assert summary["steps"] == 2
    assert summary["step_cpu_seconds"] > 0
    assert summary["main_thread_cpu_seconds"] >= summary["step_cpu_seconds"] - 0.001
    assert summary["process_cpu_seconds"] >= summary["main_thread_cpu_seconds"] - 0.001


def test_step_figures_per_record_and_share_or_nothing(tmp_path: Path) -> None:
    result = tmp_path / "run.result.json"
    assert step_figures(result) == {}  # ours and the forwarder write none
    result.write_text('{"steps": 0, "step_cpu_seconds": 0, "process_cpu_seconds": 1.0}')
    assert step_figures(result) == {}  # a contender without a timed step
    result.write_text(
        '{"steps": 4000, "step_cpu_seconds": 1.2, "main_thread_cpu_seconds": 2.0,'
        ' "process_cpu_seconds": 3.0}'
    )

    figures = step_figures(result)

    assert figures["step_us_per_record"] == 300.0
    assert figures["step_share_of_process"] == 0.4


def test_compare_profiles_ranks_functions_by_their_cpu_difference(tmp_path: Path) -> None:
    floor, pipeline = tmp_path / "floor.txt", tmp_path / "pipeline.txt"
    floor.write_text("loop (asyncio/base.py:1);send (aiokafka/p.py:2) 10\n")
    pipeline.write_text(
        "loop (asyncio/base.py:1);send (aiokafka/p.py:2) 5\n"
        "loop (asyncio/base.py:1);step (agents/ingest.py:3);step (agents/ingest.py:3) 5\n"
    )

    assert inclusive_shares(pipeline) == {
        "loop (asyncio/base.py)": 1.0,
        "send (aiokafka/p.py)": 0.5,
        "step (agents/ingest.py)": 0.5,  # recursion counted once per sample
    }
    lines = compare_profiles((floor, 0.1), (pipeline, 0.3), top=2).splitlines()
    assert "+0.2000  loop (asyncio/base.py)" in lines[2]
    assert "+0.1500  step (agents/ingest.py)" in lines[3]


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (1, ["ours", "base", "ceiling"]),
        (2, ["base", "ceiling", "ours"]),
        (3, ["ceiling", "ours", "base"]),
        (4, ["ours", "base", "ceiling"]),
    ],
)
def test_each_run_rotates_the_contenders_order_by_one(run: int, expected: list[str]) -> None:
    assert run_order(["ours", "base", "ceiling"], run) == expected


def test_run_order_of_no_contenders_is_empty() -> None:
    assert run_order([], 2) == []
