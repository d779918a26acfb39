"""The sink's lanes: as many as a chunk fills requests, one partition always in one lane."""

from __future__ import annotations

from app.sink.planning import assign_lanes


def test_a_chunk_that_fits_one_request_uses_one_lane() -> None:
    chunk = {p: [f"{p}-{i}" for i in range(10)] for p in range(8)}  # 80 items
    lanes = assign_lanes(chunk, max_lanes=4, max_items=1000)
    assert list(lanes) == [0]
    assert lanes[0] == [item for p in range(8) for item in chunk[p]]


def test_lanes_grow_with_the_requests_a_chunk_fills() -> None:
    chunk = {p: list(range(p * 1000, p * 1000 + 300)) for p in range(8)}  # 2,400 items
    lanes = assign_lanes(chunk, max_lanes=4, max_items=1000)
    assert sorted(lanes) == [0, 1, 2]  # ceil(2400 / 1000) lanes
    assert lanes[1] == chunk[1] + chunk[4] + chunk[7]


def test_never_more_lanes_than_allowed_and_each_partition_whole_and_in_order() -> None:
    chunk = {p: [(p, i) for i in range(2000)] for p in range(8)}
    lanes = assign_lanes(chunk, max_lanes=3, max_items=1000)
    assert sorted(lanes) == [0, 1, 2]
    for p, items in chunk.items():
        lane = lanes[p % 3]
        start = lane.index(items[0])
        assert lane[start : start + len(items)] == items


def test_an_empty_chunk_has_no_lanes() -> None:
    assert assign_lanes({}, max_lanes=4, max_items=1000) == {}
