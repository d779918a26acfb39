"""Dead-letter tools without a broker: selection, display with masking, redrive plans."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import orjson
import pytest

from app.core.avro import codec
from app.ops.deadletters import (
    Position,
    Selection,
    StoredLetter,
    _bounds,
    decode_stored,
    erased_since,
    iso_time,
    list_line,
    parse_since,
    plan_redrive,
    show_document,
)
from app.records import SourcePosition, Stage, dead_letter
from app.settings import load_settings

SETTINGS = load_settings(forwarding_enabled=False, topic_operations="ops", topic_deadletter="dl")
ITEM = {
    "type": "person",
    "identifiers": {"id": "cust-1"},
    "action": "identify",
    "attributes": {"email": "zoe@example.com"},
}
T = 1_764_400_000_000


def stored(position: str = "1@5", **fields: object) -> StoredLetter:
    values: dict[str, object] = {
        "reason": "invalid_json",
        "detail": "broken near zoe@example.com",
        "stage": "ingest",
        "source": SourcePosition("batches", 2, 40),
        "key": b"42",
        "payload": b'{"mpid": 42, "email": "zoe@example.com"',
        "failed_at_ms": T,
    }
    values.update(fields)
    raw = dead_letter(**values)  # type: ignore[arg-type]
    return decode_stored(Position.parse(position), T, b"42", raw)


def test_positions_parse_and_print() -> None:
    assert Position.parse("3@17") == Position(3, 17)
    assert Position.parse("p0@2") == Position(0, 2)
    assert str(Position(3, 17)) == "3@17"
    for bad in ("3", "a@1", "1@", "-1@2"):
        with pytest.raises(ValueError, match="PARTITION@OFFSET"):
            Position.parse(bad)


def test_since_accepts_durations_and_iso_times() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == int(datetime(2025, 6, 1, 10, 0, tzinfo=UTC).timestamp() * 1000)
    assert parse_since("1d", now) == int(datetime(2025, 5, 31, 12, tzinfo=UTC).timestamp() * 1000)
    assert parse_since("2025-05-01", now) == int(
        datetime(2025, 5, 1, tzinfo=UTC).timestamp() * 1000
    )
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", now)


def test_selection_filters_by_reason_stage_time_and_position() -> None:
    letter = stored()
    assert Selection().matches(letter)
    assert Selection(reasons=frozenset({"invalid_json"})).matches(letter)
    assert not Selection(reasons=frozenset({"http_400"})).matches(letter)
    assert not Selection(stages=frozenset({"sink"})).matches(letter)
    assert Selection(since_ms=T).matches(letter)
    assert not Selection(since_ms=T + 1).matches(letter)
    assert Selection(positions=frozenset({Position(1, 5)})).matches(letter)
    assert not Selection(positions=frozenset({Position(1, 6)})).matches(letter)
    assert Selection().everything
    assert not Selection(stages=frozenset({"sink"})).everything


def test_list_line_has_the_facts_and_no_email() -> None:
    line = list_line(stored(http_status=None))
    assert line.split()[:4] == ["1@5", iso_time(T), "ingest", "invalid_json"]
    assert "batches[2]@40" in line
    assert "http=-" in line
    assert "zoe@example.com" not in line
    assert "zoe@example.com" in list_line(stored(), masked=False)


def test_show_masks_payload_detail_and_response_by_default() -> None:
    letter = stored(
        stage="sink",
        reason="http_400",
        payload=orjson.dumps(ITEM),
        http_status=400,
        response='{"error": "bad zoe@example.com"}',
    )
    document = show_document(letter)
    text = json.dumps(document)
    assert "zoe@example.com" not in text
    assert document["payload_encoding"] == "utf-8"
    assert json.loads(document["payload"])["attributes"]["email"].startswith("<email:")
    assert document["emails_masked"] is True
    assert document["failed_at"] == iso_time(T)
    assert document["key"] == "42"
    unmasked = show_document(letter, masked=False)
    assert json.loads(unmasked["payload"]) == ITEM


def test_binary_payload_is_escaped_text_when_masked_base64_unless_asked() -> None:
    payload = b"\xff\xfe ann@example.com m\xfcller@b\xfccher.example \x00"
    letter = stored(reason="invalid_utf8", payload=payload)
    masked = show_document(letter)
    assert masked["payload_encoding"] == "text-with-escapes"
    assert masked["payload"].startswith("\\xff\\xfe <email:")
    assert "@" not in masked["payload"].replace("<email:", "")
    unmasked = show_document(letter, masked=False)
    assert base64.b64decode(unmasked["payload"]) == payload


def test_ingest_letters_go_back_to_their_source_topic_with_their_key() -> None:
    plan = plan_redrive(stored(), SETTINGS)
    assert not isinstance(plan, str)
    assert (plan.topic, plan.key) == ("batches", b"42")
    assert plan.value == b'{"mpid": 42, "email": "zoe@example.com"'


def test_sink_letters_are_wrapped_into_one_operation() -> None:
    letter = stored(stage="sink", reason="http_400", payload=orjson.dumps(ITEM), key=b"42")
    plan = plan_redrive(letter, SETTINGS, now_ms=T)
    assert not isinstance(plan, str)
    assert (plan.topic, plan.key) == ("ops", b"42")
    batch = codec("operation_batch").decode(plan.value)
    assert batch == {
        "mpid": "42",
        "source_topic": "dl",
        "source_partition": 1,
        "source_offset": 5,
        "ingested_at_ms": T,
        "operations": [{"action": "identify", "person_id": "cust-1", "item": orjson.dumps(ITEM)}],
        "source_ms": None,
    }


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"reason": "state_corrupt", "payload": b"\xc3\x01state"}, "corrupt stored state"),
        ({"stage": "sink", "reason": "avro_decode", "payload": b"\xc3\x01x"}, "not a Customer.io"),
        ({"stage": "sink", "payload": b'{"action": "event"}'}, "not a Customer.io item"),
    ],
)
def test_unredrivable_letters_are_skipped_with_a_reason(
    fields: dict[str, object], why: str
) -> None:
    plan = plan_redrive(stored(**fields), SETTINGS)
    assert isinstance(plan, str)
    assert why in plan


def test_records_that_are_not_dead_letters_are_listed_not_fatal() -> None:
    odd = decode_stored(Position(0, 1), T, None, b"plain bytes")
    assert odd.letter is None
    assert "not a dead letter" in list_line(odd)
    assert isinstance(plan_redrive(odd, SETTINGS), str)
    assert not Selection(reasons=frozenset({"x"})).matches(odd)


def test_since_seeks_each_partition_by_time() -> None:
    from aiokafka import TopicPartition  # noqa: PLC0415
    from aiokafka.structs import OffsetAndTimestamp  # noqa: PLC0415

    p0, p1, p2 = (TopicPartition("dl", p) for p in range(3))
    begins, ends = {p0: 0, p1: 5, p2: 0}, {p0: 10, p1: 9, p2: 4}
    by_time = {p0: OffsetAndTimestamp(7, 1), p1: OffsetAndTimestamp(2, 1), p2: None}
    starts, stops = _bounds(begins, ends, frozenset(), by_time)
    # p0 from the first recent record, p1 never before its beginning, p2 has nothing recent
    assert starts == {p0: 7, p1: 5, p2: 4}
    assert stops == ends
    chosen, _ = _bounds(begins, ends, frozenset({Position(0, 3), Position(0, 8)}), by_time)
    assert chosen[p0] == 7  # positions and time together: the later start


ERASED_AT = T - 60_000  # the user's erasure marker: a minute before T
SINK = {"stage": "sink", "reason": "retries_exhausted", "payload": orjson.dumps(ITEM)}
DELETE = {**ITEM, "action": "delete"}


@pytest.mark.parametrize(
    ("source_ms", "erased_ms", "held_back"),
    [
        (None, None, False),  # never erased
        (ERASED_AT + 1, ERASED_AT, False),  # the record is newer than the erasure
        (ERASED_AT, ERASED_AT, True),  # same millisecond: the erasure wins, as in the worker
        (ERASED_AT - 1, ERASED_AT, True),  # erased after the record
        (None, ERASED_AT, True),  # unknown time (an older dead letter): never on a guess
    ],
)
def test_a_redrive_is_held_back_when_its_user_was_erased_after_the_record(
    source_ms: int | None, erased_ms: int | None, held_back: bool
) -> None:
    erasures = {} if erased_ms is None else {b"42": erased_ms}
    letter = stored(source=SourcePosition("batches", 2, 40, timestamp_ms=source_ms)).letter
    assert letter is not None
    why = erased_since(letter, erasures)
    assert (why is not None) == held_back
    if why is not None:
        assert why.startswith("erased: the user was erased at 2025-11-29T07:05:40Z")


@pytest.mark.parametrize("stage", [{}, SINK])
def test_both_stages_skip_an_erased_users_record_and_name_why(stage: dict[str, object]) -> None:
    letter = stored(**stage, source=SourcePosition("x", 0, 1, timestamp_ms=ERASED_AT - 5))
    plan = plan_redrive(letter, SETTINGS, erasures={b"42": ERASED_AT, b"7": T})
    assert isinstance(plan, str)
    assert plan.startswith("erased:")
    assert "stays on the dead-letter topic" in plan
    other_user = plan_redrive(letter, SETTINGS, erasures={b"7": T})
    assert not isinstance(other_user, str)


def test_what_erases_is_redriven_whatever_the_markers_say() -> None:
    erasures = {b"42": T}
    erasure_topic = stored(source=SourcePosition(SETTINGS.topic_erasure, 0, 3))
    rekeyed_erasure = decode_stored(
        Position(1, 6),
        T,
        b"42",
        dead_letter(
            "internal_error",
            "x",
            stage=Stage.INGEST,
            source=SourcePosition("app-rekey", 0, 3),
            key=b"42",
            payload=b"{}",
            failed_at_ms=T,
        ),
        [("mpcio.rekey.kind", b"erasure")],
    )
    delete = stored(**{**SINK, "payload": orjson.dumps(DELETE)})
    for letter in (erasure_topic, rekeyed_erasure, delete):
        plan = plan_redrive(letter, SETTINGS, erasures=erasures)
        assert not isinstance(plan, str), plan
        assert plan.erases


def test_redriven_records_keep_the_input_records_kafka_time() -> None:
    source = SourcePosition("batches", 2, 40, timestamp_ms=ERASED_AT + 9)
    ingest = plan_redrive(stored(source=source), SETTINGS)
    assert not isinstance(ingest, str)
    assert ingest.timestamp_ms == ERASED_AT + 9  # the worker compares this with an erasure
    sink = plan_redrive(stored(**SINK, source=source), SETTINGS, now_ms=T)
    assert not isinstance(sink, str)
    assert sink.timestamp_ms is None  # a new operations record: written now
    assert codec("operation_batch").decode(sink.value)["source_ms"] == ERASED_AT + 9
