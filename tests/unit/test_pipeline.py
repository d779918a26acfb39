"""The ingest step as a plain function: state updates, one operations record, dead letters."""

from __future__ import annotations

import orjson
import pytest

from app.core.avro import codec
from app.core.options import CoreOptions
from app.core.pipeline import (
    from_rekey_topic,
    process_audience_record,
    process_batch_record,
    process_erasure_record,
    unknown_rekey_kind,
)
from app.core.sizes import PRODUCER_MAX_REQUEST_BYTES, fits
from app.core.state import UserState, decode_state, encode_state
from app.records import SourcePosition
from app.settings import load_settings
from app.wiring import core_options

SOURCE = SourcePosition("mparticle-batches", 2, 41)
T = 1_764_400_000_000


@pytest.fixture
def settings() -> CoreOptions:
    return core_options(load_settings(forwarding_enabled=False))


def _batch(mpid: int | str = 42, email: str | None = "ada@example.com", events: int = 2) -> dict:
    return {
        "mpid": mpid,
        "environment": "production",
        "timestamp_unixtime_ms": T,
        "user_identities": {"email": email} if email else None,
        "user_attributes": {"$FirstName": "Ada"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {"event_name": f"e{i}", "timestamp_unixtime_ms": T + i,
                         "source_message_id": f"m{i}"},
            }
            for i in range(events)
        ],
    }  # fmt: skip


def _run(value: bytes, key: bytes | None, store: dict[str, bytes], settings: CoreOptions):  # type: ignore[no-untyped-def]
    result = process_batch_record(key, value, SOURCE, store.get, settings, clock=lambda: 7)
    store.update(result.states)
    return result


def test_one_operations_record_per_input_record_in_order(settings: CoreOptions) -> None:
    result = _run(orjson.dumps(_batch()), b"42", {}, settings)
    assert result.operations is not None
    mpid, value = result.operations
    record = codec("operation_batch").decode(value)
    assert mpid == "42"
    assert (record["source_partition"], record["source_offset"]) == (2, 41)
    assert [op["action"] for op in record["operations"]] == ["identify", "event", "event"]
    items = [orjson.loads(op["item"]) for op in record["operations"]]
    assert items[1]["name"] == "e0"
    assert items[0]["identifiers"] == {"email": "ada@example.com"}
    assert result.counts["operations", "event"] == 2


def test_redelivered_record_is_skipped_as_already_applied(settings: CoreOptions) -> None:
    store: dict[str, bytes] = {}
    value = orjson.dumps(_batch())
    first = _run(value, b"42", store, settings)
    assert set(first.states) == {"42"}
    again = _run(value, b"42", store, settings)  # same partition and offset: a redelivery
    assert again.states == {}
    assert again.operations is None
    assert again.counts["batches", "redelivered"] == 1


def test_same_batch_at_a_new_offset_repeats_event_ids_without_identify(
    settings: CoreOptions,
) -> None:
    store: dict[str, bytes] = {}
    value = orjson.dumps(_batch())
    first = _run(value, b"42", store, settings)
    later = SourcePosition(SOURCE.topic, SOURCE.partition, SOURCE.offset + 1)
    again = process_batch_record(b"42", value, later, store.get, settings, clock=lambda: 7)
    assert first.operations is not None
    assert again.operations is not None
    first_ops = codec("operation_batch").decode(first.operations[1])["operations"]
    ops = codec("operation_batch").decode(again.operations[1])["operations"]
    assert [op["action"] for op in ops] == ["event", "event"]  # no second identify
    first_ids = [orjson.loads(op["item"])["id"] for op in first_ops[1:]]
    assert first_ids == [orjson.loads(op["item"])["id"] for op in ops]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "invalid_utf8"),
        (b'{"mpid": 1, "events": ', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"mpid": 1, "events": {}}', "events_not_a_list"),
        (b'{"mpid": 1.5}', "mpid_invalid"),
    ],
    ids=["utf8", "json", "array-of-scalars", "events", "mpid"],
)
def test_bad_record_becomes_one_dead_letter_with_reason(
    settings: CoreOptions, value: bytes, reason: str
) -> None:
    result = _run(value, b"1", {}, settings)
    assert result.operations is None
    assert len(result.dead_letters) == 1
    letter = codec("dead_letter").decode(result.dead_letters[0])
    assert letter["reason"] == reason
    assert letter["payload"] == value
    assert (letter["source_topic"], letter["source_offset"]) == ("mparticle-batches", 41)
    assert letter["stage"] == "ingest"
    assert result.counts["dead_letters", "ingest", reason] == 1


def test_keyless_record_is_rekeyed_not_processed(settings: CoreOptions) -> None:
    result = _run(orjson.dumps(_batch(mpid="-9")), None, {}, settings)
    assert result.operations is None
    assert result.states == {}
    assert [(mpid, orjson.loads(raw)["mpid"]) for mpid, raw in result.rekeyed] == [("-9", "-9")]


def test_bulk_record_processes_own_batches_and_rekeys_others(settings: CoreOptions) -> None:
    value = orjson.dumps([_batch(mpid=42, events=1), _batch(mpid=43, events=1),
                          _batch(mpid=42, events=1)])  # fmt: skip
    result = _run(value, b"42", {}, settings)
    assert [mpid for mpid, _ in result.rekeyed] == ["43"]
    assert result.operations is not None
    ops = codec("operation_batch").decode(result.operations[1])["operations"]
    assert [op["action"] for op in ops] == ["identify", "event", "event"]


def test_rekey_topic_offsets_are_guarded_apart_from_the_input_topics(settings: CoreOptions) -> None:
    store: dict[str, bytes] = {}
    _run(orjson.dumps(_batch(events=1)), b"42", store, settings)  # batches topic, offset 41
    rekeyed = SourcePosition("mpcio-rekey", SOURCE.partition, 3, rekeyed=True)
    value = orjson.dumps(_batch(events=2))
    first = process_batch_record(b"42", value, rekeyed, store.get, settings, clock=lambda: 7)
    # offset 3 of the re-key topic is not "older" than offset 41 of the batches topic
    assert first.operations is not None
    assert first.counts["batches", "redelivered"] == 0
    store.update(first.states)
    again = process_batch_record(b"42", value, rekeyed, store.get, settings, clock=lambda: 7)
    assert again.counts["batches", "redelivered"] == 1  # but a redelivery of it is skipped
    later = SourcePosition(SOURCE.topic, SOURCE.partition, SOURCE.offset + 1)
    next_batch = process_batch_record(
        b"42", orjson.dumps(_batch(events=3)), later, store.get, settings, clock=lambda: 7
    )
    assert next_batch.operations is not None


def test_a_rekey_topic_record_without_a_known_kind_is_dead_lettered() -> None:
    rekeyed = SourcePosition("mpcio-rekey", 1, 5, rekeyed=True)
    result = unknown_rekey_kind(b"42", b"{}", rekeyed, clock=lambda: 7)
    [letter] = [codec("dead_letter").decode(raw) for raw in result.dead_letters]
    assert (letter["reason"], letter["source_topic"], letter["source_offset"]) == (
        "rekey_kind_unknown",
        "mpcio-rekey",
        5,
    )
    assert (letter["key"], letter["payload"]) == (b"42", b"{}")
    assert result.counts["dead_letters", "ingest", "rekey_kind_unknown"] == 1


def test_a_rekey_topic_record_is_never_rekeyed_again(settings: CoreOptions) -> None:
    rekeyed = SourcePosition("mpcio-rekey", 1, 5, rekeyed=True)
    bulk = orjson.dumps([_batch(mpid=42, events=1), _batch(mpid=43, events=1)])
    result = from_rekey_topic(
        process_batch_record(b"42", bulk, rekeyed, {}.get, settings), rekeyed, clock=lambda: 7
    )
    assert result.rekeyed == []
    [letter] = [codec("dead_letter").decode(raw) for raw in result.dead_letters]
    assert (letter["reason"], letter["key"]) == ("rekey_loop", b"43")
    assert orjson.loads(letter["payload"])["mpid"] == 43
    assert result.operations is not None  # user 42's part is processed as usual


def test_user_without_email_is_remembered_not_forwarded(settings: CoreOptions) -> None:
    store: dict[str, bytes] = {}
    result = _run(orjson.dumps(_batch(email=None)), b"42", store, settings)
    assert result.operations is None
    assert result.counts["batches", "skipped_no_email"] == 1
    assert decode_state(store["42"]).first_name == "Ada"  # kept for when an email arrives


def test_corrupt_stored_state_is_dead_lettered_and_user_starts_afresh(
    settings: CoreOptions,
) -> None:
    store = {"42": b"garbage"}
    result = _run(orjson.dumps(_batch()), b"42", store, settings)
    reasons = [codec("dead_letter").decode(d)["reason"] for d in result.dead_letters]
    assert reasons == ["state_corrupt"]
    assert result.operations is not None


def test_existing_state_is_used(settings: CoreOptions) -> None:
    opted_out = UserState(
        email="ada@example.com", opted_out=True, unsubscribed_sent=True, opt_out_at_ms=T - 1
    )
    store = {"42": encode_state(opted_out)}
    result = _run(orjson.dumps(_batch()), b"42", store, settings)
    assert result.counts["events", "all", "opted_out"] == 2


# --- nothing consumed silently: tombstones, empty records, too deep ---------------------------

_DEEP_EVENT = orjson.dumps(_batch()).replace(
    b'"source_message_id":"m0"', b'"custom_attributes":' + b'{"n":' * 1000 + b"1" + b"}" * 1000
)


def _process(topic: str, key: bytes | None, value: bytes | None, settings: CoreOptions):  # type: ignore[no-untyped-def]
    source = SourcePosition(topic, 1, 9)
    if topic == "batches":
        return process_batch_record(key, value, source, {}.get, settings, clock=lambda: 7)
    if topic == "audiences":
        return process_audience_record(key, value, source, {}.get, settings, clock=lambda: 7)
    return process_erasure_record(key, value, source, {}.get, record_ms=1, clock=lambda: 7)


_COUNTER = {"batches": "batches", "audiences": "audience_updates", "erasure": "erasures"}


@pytest.mark.parametrize(
    ("topic", "value", "reason"),
    [
        pytest.param("batches", None, "tombstone", id="batches-tombstone"),
        pytest.param("batches", b"[]", "empty_record", id="batches-empty-array"),
        pytest.param("batches", b"{}", "mpid_missing", id="batches-empty-object"),
        pytest.param("batches", b"null", "not_an_object", id="batches-json-null"),
        pytest.param("batches", _DEEP_EVENT, "too_deep", id="batches-attributes-1000-deep"),
        pytest.param("batches", b"[" * 1100 + b"]" * 1100, "too_deep", id="batches-1100-deep"),
        pytest.param("audiences", None, "tombstone", id="audiences-tombstone"),
        pytest.param("audiences", b"[]", "empty_record", id="audiences-empty-array"),
        pytest.param(
            "audiences", b'{"user_profiles": []}', "empty_record", id="audiences-empty-profiles"
        ),
        pytest.param("audiences", b"{}", "mpid_missing", id="audiences-empty-object"),
        pytest.param("erasure", None, "tombstone", id="erasure-tombstone"),
        pytest.param("erasure", b"[]", "not_an_object", id="erasure-empty-array"),
        pytest.param("erasure", b"{}", "erasure_invalid", id="erasure-empty-object"),
    ],
)
def test_empty_and_tombstone_records_are_dead_lettered_and_counted(
    topic: str, value: bytes | None, reason: str, settings: CoreOptions
) -> None:
    result = _process(topic, b"42", value, settings)
    (letter,) = [codec("dead_letter").decode(d) for d in result.dead_letters]
    assert (letter["reason"], letter["stage"], letter["key"]) == (reason, "ingest", b"42")
    assert (letter["source_partition"], letter["source_offset"]) == (1, 9)
    assert letter["payload"] == (value or b"")
    assert result.counts == {
        ("dead_letters", "ingest", reason): 1,
        (_COUNTER[topic], "rejected"): 1,
    }
    assert result.operations is None
    assert not result.states


@pytest.mark.parametrize(
    ("batch", "what"),
    [
        pytest.param(_batch(events=10_000), "operations", id="10000-events"),
        pytest.param(
            {**_batch(events=0), "user_attributes": {"blob": "x" * PRODUCER_MAX_REQUEST_BYTES}},
            "state",
            id="1-MB-attribute",
        ),
    ],
)
def test_record_too_large_for_kafka_is_dead_lettered_and_not_applied(
    batch: dict, what: str, settings: CoreOptions
) -> None:
    value = orjson.dumps(batch)
    store: dict[str, bytes] = {}
    result = _run(value, b"42", store, settings)
    (letter,) = [codec("dead_letter").decode(d) for d in result.dead_letters]
    assert letter["reason"] == "too_large"
    assert f"its {what} record would be" in letter["detail"]
    assert letter["payload"] == value
    assert result.operations is None
    assert store == {}
    assert result.counts["batches", "rejected"] == 1
    assert result.counts["batches", "forwarded"] == 0
    assert result.counts["events", "all", "forwarded"] == 0


def test_record_just_within_the_limit_is_used(settings: CoreOptions) -> None:
    result = _run(orjson.dumps(_batch(events=3_000)), b"42", {}, settings)
    assert result.operations is not None
    assert fits(b"42", result.operations[1])
    assert not result.dead_letters


# --- a user whose person id Customer.io refuses: dead-lettered, never silent ------------------


@pytest.mark.parametrize(
    ("identities", "which"),
    [
        pytest.param({"email": "ada@example.com", "customer_id": "c" * 151}, "customer id",
                     id="customer-id-151-bytes"),
        pytest.param({"email": "ada@example.com", "customer_id": "é" * 76}, "customer id",
                     id="customer-id-152-utf8-bytes"),
        pytest.param({"email": "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + ".com"}, "email",
                     id="email-196-bytes"),
    ],
)  # fmt: skip
def test_unsendable_person_id_dead_letters_the_record_once(
    settings: CoreOptions, identities: dict[str, str], which: str
) -> None:
    store: dict[str, bytes] = {}
    value = orjson.dumps({**_batch(), "user_identities": identities})
    result = _run(value, b"42", store, settings)
    assert result.operations is None
    (encoded,) = result.dead_letters
    letter = codec("dead_letter").decode(encoded)
    assert letter["reason"] == "person_id_invalid"
    assert letter["payload"] == value
    assert which in letter["detail"]
    assert all(identity not in letter["detail"] for identity in identities.values())
    assert result.counts["dead_letters", "ingest", "person_id_invalid"] == 1
    assert result.counts["batches", "person_id_invalid"] == 1
    assert result.counts["batches", "rejected"] == 0  # counted once, by its outcome
    assert "42" in store  # applied like any batch not forwarded
    # a later batch of that user without identities has the same person id: dead-lettered too
    later = SourcePosition(SOURCE.topic, SOURCE.partition, SOURCE.offset + 1)
    bare = orjson.dumps({**_batch(), "user_identities": None})
    again = process_batch_record(b"42", bare, later, store.get, settings, clock=lambda: 7)
    assert [codec("dead_letter").decode(d)["reason"] for d in again.dead_letters] == [
        "person_id_invalid"
    ]


def test_bulk_record_of_one_unsendable_user_is_one_dead_letter(settings: CoreOptions) -> None:
    bad = {**_batch(), "user_identities": {"email": "ada@example.com", "customer_id": "c" * 151}}
    result = _run(orjson.dumps([bad, bad]), b"42", {}, settings)
    assert len(result.dead_letters) == 1
    assert result.counts["batches", "person_id_invalid"] == 2


# --- real-world JSON: integers beyond 64 bits, a byte order mark ------------------------------

_BIG = b"123456789012345678901234567890"


def _big_integer_batch(mpid: int = 42, big: bytes = _BIG) -> bytes:
    raw = {**_batch(mpid=mpid, events=1), "user_attributes": {"id_big": 1}}
    raw["events"][0]["data"]["custom_attributes"] = {"n": 2}
    return (
        orjson.dumps(raw)
        .replace(b'"id_big":1', b'"id_big":' + big)
        .replace(b'"n":2', b'"n":' + big)
    )


@pytest.mark.parametrize(
    ("value", "big"),
    [
        pytest.param(_big_integer_batch(), _BIG, id="big-integers"),
        pytest.param(b"\xef\xbb\xbf" + _big_integer_batch(), _BIG, id="bom"),
        # beyond a double's range, which orjson refuses: not an invalid_json dead letter
        pytest.param(_big_integer_batch(big=b"9" * 400), b"9" * 400, id="400-digits"),
        pytest.param(_big_integer_batch(big=b"1e400"), b"1e400", id="1e400"),
    ],
)
def test_big_integers_reach_the_operations_as_exact_decimal_text(
    settings: CoreOptions, value: bytes, big: bytes
) -> None:
    result = _run(value, b"42", {}, settings)
    assert result.dead_letters == []
    assert result.operations is not None
    identify, event = (
        orjson.loads(op["item"])
        for op in codec("operation_batch").decode(result.operations[1])["operations"]
    )
    assert identify["attributes"]["id_big"] == big.decode()
    assert event["attributes"] == {"n": big.decode()}


def test_rekeyed_part_keeps_big_integers_exact(settings: CoreOptions) -> None:
    value = b"\xef\xbb\xbf[" + _big_integer_batch(7) + b"]"
    result = _run(value, None, {}, settings)
    ((mpid, part),) = result.rekeyed
    assert mpid == "7"
    assert _BIG in part
    assert b"e+29" not in part


# --- what is cut to fit Customer.io's limits is reported for logging (SPEC §3) ----------------


def _with(user_attributes: dict[str, object] | None = None, event_name: str = "e0",
          event_data: dict[str, object] | None = None) -> bytes:  # fmt: skip
    raw = _batch(events=1)
    raw["user_attributes"] = {"$FirstName": "Ada", **(user_attributes or {})}
    raw["events"][0]["data"]["event_name"] = event_name
    if event_data is not None:
        raw["events"][0]["data"]["custom_attributes"] = event_data
    return orjson.dumps(raw)


@pytest.mark.parametrize(
    ("value", "cuts"),
    [
        pytest.param(_with(), None, id="ordinary-batch"),
        pytest.param(_with({"email": "x"}), None, id="rename-loses-nothing"),
        pytest.param(_with({"bio": "b" * 1001}), {"attribute_value_truncated": 1}, id="value-cut"),
        pytest.param(_with({"tags": ["t" * 600, "u" * 600]}), {"attribute_value_dropped": 1},
                     id="list-dropped"),
        pytest.param(_with({"n" * 151: 1}), {"attribute_name_dropped": 1}, id="name-dropped"),
        pytest.param(_with(event_name="x" * 101), {"event_name_truncated": 1}, id="event-name-cut"),
        pytest.param(_with(event_data={"blob": "d" * 33_000}), {"event_data_dropped": 1},
                     id="event-data-dropped"),
    ],
)  # fmt: skip
def test_cuts_are_reported_once_per_record_without_values(
    settings: CoreOptions, value: bytes, cuts: dict[str, int] | None
) -> None:
    result = _run(value, b"42", {}, settings)
    assert result.operations is not None
    assert result.cuts == (None if cuts is None else ("42", cuts))
    for kind, count in (cuts or {}).items():
        assert result.counts["limits", kind] == count


def test_record_with_a_cut_is_still_guarded_against_redelivery(settings: CoreOptions) -> None:
    store: dict[str, bytes] = {}
    value = _with({"bio": "b" * 1001})
    first = _run(value, b"42", store, settings)
    assert first.cuts == ("42", {"attribute_value_truncated": 1})
    again = _run(value, b"42", store, settings)  # same partition and offset: a redelivery
    assert again.operations is None
    assert again.counts["batches", "redelivered"] == 1
