"""The sink's pure planning (app.sink.planning): chunk → lanes, undecodable letters, offsets."""

from __future__ import annotations

import orjson
from aiokafka import TopicPartition

from app.records import decode_dead_letter
from app.sink.planning import ItemRef, Unanswered, commit_offsets, plan_chunk, rewind_offsets
from tests.unit.operations_records import TOPIC, Fetched, T, chunk_of, item, record


def test_lanes_keep_each_partitions_order_and_never_split_a_partition() -> None:
    records = [record(p, o, items=2) for o in range(10, 14) for p in range(8)]
    plan = plan_chunk(chunk_of(*records), lanes=3, clock=lambda: T, request_items=2)

    assert len(plan.lanes) == 3
    for lane in plan.lanes:
        assert len({ref.partition % 3 for _, ref in lane}) == 1  # partition p → lane p % 3
        for partition in {ref.partition for _, ref in lane}:
            items = [payload for payload, ref in lane if ref.partition == partition]
            expected = [item(partition, o, i) for o in range(10, 14) for i in range(2)]
            assert items == expected
    assert sum(len(lane) for lane in plan.lanes) == 8 * 4 * 2
    assert plan.letters == []


def test_item_refs_carry_the_records_position_mpid_and_ingest_time() -> None:
    plan = plan_chunk(chunk_of(record(5, 77, items=1)), lanes=4, clock=lambda: T, request_items=1)
    ((_, ref),) = plan.lanes[0]
    assert (ref.partition, ref.offset, ref.mpid, ref.ingested_at_ms) == (5, 77, "105", T)


def test_an_undecodable_record_becomes_a_sink_dead_letter_and_the_rest_is_delivered() -> None:
    broken = Fetched(TOPIC, 1, 9, b"101", b"not avro")
    tombstone = Fetched(TOPIC, 1, 10, b"101", None)
    chunk = chunk_of(record(1, 8, 2), broken, tombstone, record(1, 11, 2))
    plan = plan_chunk(chunk, 2, lambda: T, request_items=1)

    assert [payload for payload, _ in plan.lanes[0]] == [
        item(1, 8, 0),
        item(1, 8, 1),
        item(1, 11, 0),
        item(1, 11, 1),
    ]
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


def _op(mpid: str, action: str) -> tuple[bytes, ItemRef]:
    payload = orjson.dumps({"type": "person", "identifiers": {"id": mpid}, "action": action})
    return payload, ItemRef(0, 1, mpid, T)


def test_a_delete_waits_until_its_users_unanswered_request_has_settled() -> None:
    # Seen under exactly_once: a request with user 7's events timed out (still applicable),
    # its retry and then the delete went out, then the late copy recreated the person.
    unanswered = Unanswered(settle_seconds=15.0)
    unanswered.note(["7", "8"], now=100.0)

    assert unanswered.hold_seconds([_op("9", "delete"), _op("7", "event")], now=101.0) == 0.0
    assert unanswered.hold_seconds([_op("8", "event"), _op("7", "delete")], now=101.0) == 14.0
    unanswered.note(["7"], now=105.0)  # a later unanswered attempt extends the wait
    assert unanswered.hold_seconds([_op("7", "delete")], now=106.0) == 14.0
    assert unanswered.hold_seconds([_op("7", "delete")], now=120.0) == 0.0
    assert unanswered.until == {}  # settled users are forgotten
