"""The sink's pure planning (app.sink.planning): chunk → lanes, undecodable letters, offsets."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from app.records import SourcePosition, decode_dead_letter, operation_batch
from app.sink.planning import commit_offsets, plan_chunk, rewind_offsets

TOPIC = "ops"
T = 1_764_400_000_000


@dataclass(frozen=True)
class Fetched:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def record(partition: int, offset: int, items: int = 2) -> Fetched:
    """An operations record whose items name their partition, offset and index."""
    mpid = str(100 + partition)
    value = operation_batch(
        mpid,
        [("event", mpid, f"p{partition}o{offset}i{i}".encode()) for i in range(items)],
        SourcePosition("batches", partition, offset),
        T,
    )
    return Fetched(TOPIC, partition, offset, mpid.encode(), value)


def chunk_of(*records: Fetched) -> dict[TopicPartition, list[Fetched]]:
    chunk: dict[TopicPartition, list[Fetched]] = {}
    for fetched in records:
        chunk.setdefault(TopicPartition(TOPIC, fetched.partition), []).append(fetched)
    return chunk


def test_lanes_keep_each_partitions_order_and_never_split_a_partition() -> None:
    records = [record(p, o) for o in range(10, 14) for p in range(8)]
    plan = plan_chunk(chunk_of(*records), lanes=3, clock=lambda: T)

    assert len(plan.lanes) == 3
    for lane in plan.lanes:
        assert len({ref.partition % 3 for _, ref in lane}) == 1  # partition p → lane p % 3
        for partition in {ref.partition for _, ref in lane}:
            items = [item for item, ref in lane if ref.partition == partition]
            expected = [f"p{partition}o{o}i{i}".encode() for o in range(10, 14) for i in range(2)]
            assert items == expected
    assert sum(len(lane) for lane in plan.lanes) == 8 * 4 * 2
    assert plan.letters == []


def test_item_refs_carry_the_records_position_mpid_and_ingest_time() -> None:
    plan = plan_chunk(chunk_of(record(5, 77, items=1)), lanes=4, clock=lambda: T)
    ((_, ref),) = plan.lanes[0]
    assert (ref.partition, ref.offset, ref.mpid, ref.ingested_at_ms) == (5, 77, "105", T)


def test_an_undecodable_record_becomes_a_sink_dead_letter_and_the_rest_is_delivered() -> None:
    broken = Fetched(TOPIC, 1, 9, b"101", b"not avro")
    tombstone = Fetched(TOPIC, 1, 10, b"101", None)
    plan = plan_chunk(chunk_of(record(1, 8), broken, tombstone, record(1, 11)), 2, lambda: T)

    assert [item for item, _ in plan.lanes[0]] == [b"p1o8i0", b"p1o8i1", b"p1o11i0", b"p1o11i1"]
    letters = [decode_dead_letter(letter) for letter in plan.letters]
    assert [(x["stage"], x["reason"], x["source_offset"]) for x in letters] == [
        ("sink", "avro_decode", 9),
        ("sink", "avro_decode", 10),
    ]
    assert [(x["payload"], x["key"], x["failed_at_ms"]) for x in letters] == [
        (b"not avro", b"101", T),
        (b"", b"101", T),
    ]
    assert plan.undecodable == ["avro_decode", "avro_decode"]


def test_commit_after_the_last_record_and_rewind_to_the_first_of_each_partition() -> None:
    chunk = chunk_of(record(0, 4), record(0, 5), record(3, 40))
    assert commit_offsets(chunk) == {TopicPartition(TOPIC, 0): 6, TopicPartition(TOPIC, 3): 41}
    assert rewind_offsets(chunk) == {TopicPartition(TOPIC, 0): 4, TopicPartition(TOPIC, 3): 40}
