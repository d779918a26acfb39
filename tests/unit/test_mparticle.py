"""Parser tests: every accepted and rejected input shape of SPEC §2."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.core.mparticle import (
    IGNORED_ATTRIBUTE_VALUE,
    IGNORED_ID,
    IGNORED_TIMESTAMP,
    IGNORED_UNKNOWN_DATA_KEYS,
    IGNORED_UNKNOWN_KEYS,
    MAX_DATA_DEPTH,
    MAX_TIMESTAMP_MS,
    UNKNOWN_DEVICE_TYPE,
    Batch,
    canonical_attribute_name,
    int64_text,
    load_json,
    parse_record,
)
from app.errors import InvalidRecordError
from app.reference import MPARTICLE_SAMPLE_FILE, read_bytes

BATCH_MS = 1_700_000_000_000


def custom_event(name: str = "Add To Cart", **data: Any) -> dict[str, Any]:
    return {
        "event_type": "custom_event",
        "data": {
            "event_name": name,
            "custom_event_type": "other",
            "timestamp_unixtime_ms": BATCH_MS - 5,
            **data,
        },
    }


def raw_batch(**fields: Any) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "mpid": 42,
        "environment": "production",
        "timestamp_unixtime_ms": BATCH_MS,
        "user_identities": {"email": "a@example.com"},
        "events": [custom_event()],
    }
    batch.update(fields)
    return {key: value for key, value in batch.items() if value is not _ABSENT}


_ABSENT: Any = object()


def parse_one(**fields: Any) -> Batch:
    batches = parse_record(orjson.dumps(raw_batch(**fields)))
    assert len(batches) == 1
    return batches[0]


def rejection(value: bytes) -> str:
    with pytest.raises(InvalidRecordError) as caught:
        parse_record(value)
    return caught.value.reason


# --- mpid and other 64-bit ids ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_mpid", "expected"),
    [
        pytest.param(42, "42", id="json-int"),
        pytest.param("42", "42", id="decimal-string"),
        pytest.param(-7636538281262557000, "-7636538281262557000", id="negative-int"),
        pytest.param("-7636538281262557000", "-7636538281262557000", id="negative-string"),
        pytest.param(-(2**63), str(-(2**63)), id="int64-min"),
        pytest.param(2**63 - 1, str(2**63 - 1), id="int64-max"),
        pytest.param("9223372036854775807", "9223372036854775807", id="int64-max-string"),
        pytest.param("0042", "42", id="leading-zeros"),
        pytest.param("-042", "-42", id="negative-leading-zero"),  # "-0": no user (below)
    ],
)
def test_accepts_mpid_as_integer_or_decimal_string(raw_mpid: Any, expected: str) -> None:
    assert parse_one(mpid=raw_mpid).mpid == expected


def test_mpid_never_goes_through_a_float() -> None:
    # 2**53 + 1 is the first integer a float cannot hold.
    value = b'{"mpid": 9007199254740993, "user_identities": null}'
    assert parse_record(value)[0].mpid == "9007199254740993"


@pytest.mark.parametrize(
    "raw_mpid",
    [
        pytest.param(1.5, id="float"),
        pytest.param(42.0, id="integral-float"),
        pytest.param(True, id="bool"),
        pytest.param(2**63, id="above-int64"),
        pytest.param("9223372036854775808", id="above-int64-string"),
        pytest.param("12a", id="not-digits"),
        pytest.param("", id="empty-string"),
        pytest.param("+5", id="plus-sign"),
        pytest.param("1_000", id="underscore"),
        pytest.param(" 5", id="whitespace"),
        pytest.param("١٢", id="non-ascii-digits"),
        pytest.param([1], id="array"),
        pytest.param({"id": 1}, id="object"),
    ],
)
def test_rejects_mpid_not_integer_like(raw_mpid: Any) -> None:
    assert rejection(orjson.dumps(raw_batch(mpid=raw_mpid))) == "mpid_invalid"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b'{"mpid": 18446744073709551616}', id="above-uint64"),
        pytest.param(b'{"mpid": -9223372036854775809}', id="below-int64"),
    ],
)
def test_rejects_mpid_beyond_64_bits_that_json_reads_as_float(value: bytes) -> None:
    assert rejection(value) == "mpid_invalid"


INVALID = "mpid_invalid: mpid is not a signed 64-bit integer: "
A_FLOAT = INVALID + "a number with a fraction or an exponent"


def _mpid_or_rejection(value: bytes) -> str:
    """The mpid of the record's last batch, or its rejection as ``reason: detail``."""
    try:
        return parse_record(value)[-1].mpid
    except InvalidRecordError as exc:
        return f"{exc.reason}: {exc.detail}"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        # valid mpids are accepted, as their canonical text
        pytest.param(b'{"mpid": 8016563786744591001}', "8016563786744591001", id="valid-int"),
        pytest.param(b'{"mpid": "-0042"}', "-42", id="valid-text"),
        pytest.param(b'{"mpid": -9223372036854775808}', str(-(2**63)), id="int64-min"),
        # anything else by kind and size only, never a character of it
        pytest.param(b'{"mpid": "+15551234567"}', INVALID + "a string of 12 characters",
                     id="phone-plus"),
        pytest.param(b'{"mpid": "555 123 4567"}', INVALID + "a string of 12 characters",
                     id="phone-spaces"),
        pytest.param(b'{"mpid": "555-123-4567"}', INVALID + "a string of 12 characters",
                     id="phone-dashes"),
        pytest.param(b'{"mpid": "(555) 1234567"}', INVALID + "a string of 13 characters",
                     id="phone-parens"),
        pytest.param(b'{"mpid": "+1 (555) 123-4567"}', INVALID + "a string of 17 characters",
                     id="phone-international"),
        pytest.param(b'{"mpid": "1e+20"}', INVALID + "a string of 5 characters",
                     id="number-like-string"),
        pytest.param(b'{"mpid": "jane.doe@example.com"}', INVALID + "a string of 20 characters",
                     id="email"),
        pytest.param(b'{"mpid": "jane doe +44 7700 900123"}',
                     INVALID + "a string of 24 characters", id="name-and-phone"),
        pytest.param(b'{"mpid": ""}', INVALID + "a string of 0 characters", id="empty-string"),
        pytest.param(b'{"mpid": "44770090012344770090012"}',
                     INVALID + "a string of 23 characters", id="digit-string-beyond-64-bits"),
        pytest.param(b'{"mpid": 100000000000000000000}', INVALID + "an integer of 21 digits",
                     id="1e20"),
        pytest.param(b'{"mpid": 18446744073709551616}', INVALID + "an integer of 20 digits",
                     id="2**64"),
        pytest.param(b'{"mpid": 9223372036854775808}', INVALID + "an integer of 19 digits",
                     id="2**63"),
        pytest.param(b'{"mpid": -9223372036854775809}', INVALID + "an integer of 19 digits",
                     id="below-int64"),
        pytest.param(b'[{"mpid": 1}, {"mpid": 12345678901234567890123}]',
                     INVALID + "an integer of 23 digits", id="bulk-second"),
        pytest.param(b'{"mpid": 1' + b"0" * 60 + b"}", INVALID + "an integer of 61 digits",
                     id="61-digits"),
        pytest.param(b'{"mpid": 1' + b"0" * 399 + b"}", INVALID + "an integer of 400 digits",
                     id="400-digits"),
        pytest.param(b'{"mpid": 1e400}', A_FLOAT, id="1e400"),
        pytest.param(b'{"mpid": 15551234567.0}', A_FLOAT, id="whole-float"),
        pytest.param(b'{"mpid": 1E+3}', A_FLOAT, id="exponent"),
        pytest.param(b'{"mpid": {"email": "a@b.co"}}', INVALID + "an object", id="object"),
        pytest.param(b'{"mpid": ["a@b.co"]}', INVALID + "an array", id="array"),
        pytest.param(b'{"mpid": true}', INVALID + "a boolean", id="bool"),
    ],
)  # fmt: skip
def test_an_mpid_is_shown_only_when_valid(value: bytes, shown: str) -> None:
    """A rejection's detail is logged and kept in the dead letter: an invalid mpid (a phone
    number, an email, a number beyond 64 bits) is described by its kind and size only."""
    assert _mpid_or_rejection(value) == shown


@pytest.mark.parametrize(
    "fields",
    [pytest.param({"mpid": _ABSENT}, id="absent"), pytest.param({"mpid": None}, id="null")],
)
def test_rejects_batch_without_mpid_as_mpid_missing(fields: dict[str, Any]) -> None:
    assert rejection(orjson.dumps(raw_batch(**fields))) == "mpid_missing"


@pytest.mark.parametrize(
    ("batch_id", "event_id", "expected_batch_id", "expected_event_id", "invalid_ids"),
    [
        pytest.param(-8602161397754364000, 31211936655863586, "-8602161397754364000",
                     "31211936655863586", 0, id="json-ints"),
        pytest.param("17", "-18", "17", "-18", 0, id="decimal-strings"),
        pytest.param(None, None, None, None, 0, id="null"),
        pytest.param(1.5, "x", None, None, 2, id="invalid-counted"),
        # the parser's inline path for an int event_id keeps int64_text's bounds
        pytest.param(None, -(2**63), None, str(-(2**63)), 0, id="event-id-int64-min"),
        pytest.param(None, 2**63, None, None, 1, id="event-id-above-int64-counted"),
        pytest.param(None, True, None, None, 1, id="event-id-boolean-counted"),
    ],
)  # fmt: skip
def test_accepts_batch_id_and_event_id_as_integer_or_string(
    batch_id: Any,
    event_id: Any,
    expected_batch_id: str | None,
    expected_event_id: str | None,
    invalid_ids: int,
) -> None:
    batch = parse_one(batch_id=batch_id, events=[custom_event(event_id=event_id)])
    assert batch.batch_id == expected_batch_id
    assert batch.events[0].event_id == expected_event_id
    assert batch.ignored.get(IGNORED_ID, 0) == invalid_ids


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param("00000000000000000000001", "1", id="many-leading-zeros"),
        pytest.param("1" * 5000, None, id="huge-string-no-crash"),
        pytest.param(None, None, id="none"),
    ],
)
def test_int64_text(value: Any, expected: str | None) -> None:
    assert int64_text(value) == expected


# --- user identities -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identities", "email", "customer_id"),
    [
        pytest.param(
            [
                {"identity_type": "customer_id", "identity": "c-1", "timestamp_unixtime_ms": 1},
                {"identity_type": "email", "identity": " a@example.com "},
                {"identity_type": "other", "identity": "ignored"},
            ],
            "a@example.com",
            "c-1",
            id="outbound-array",
        ),
        pytest.param([], None, None, id="empty-array"),
        pytest.param([{"identity_type": "Email", "identity": "b@x.io"}], "b@x.io", None,
                     id="array-type-case-insensitive"),
    ],
)  # fmt: skip
def test_accepts_identities_as_array(
    identities: Any, email: str | None, customer_id: str | None
) -> None:
    batch = parse_one(user_identities=identities)
    assert (batch.email, batch.customer_id) == (email, customer_id)


@pytest.mark.parametrize(
    ("identities", "email", "customer_id"),
    [
        pytest.param({"customer_id": "c-1", "email": "a@example.com"}, "a@example.com", "c-1",
                     id="both"),
        pytest.param({"customer_id": 123456}, None, "123456", id="integer-customer-id"),
        pytest.param({"email": "   ", "other": "x"}, None, None, id="blank-email-is-absent"),
    ],
)  # fmt: skip
def test_accepts_identities_as_object_map(
    identities: Any, email: str | None, customer_id: str | None
) -> None:
    batch = parse_one(user_identities=identities)
    assert (batch.email, batch.customer_id) == (email, customer_id)


@pytest.mark.parametrize(
    "fields",
    [pytest.param({"user_identities": None}, id="null"),
     pytest.param({"user_identities": _ABSENT}, id="absent")],
)  # fmt: skip
def test_accepts_identities_null_or_absent(fields: dict[str, Any]) -> None:
    batch = parse_one(**fields)
    assert (batch.email, batch.customer_id) == (None, None)


@pytest.mark.parametrize(
    "placeholder",
    ["N/A", "none", "-", "null", "jane.example.com", "jane@", "@example.com", "a b@example.com",
     "jane@example", "jane@localhost", "jane@@example.com"],
)  # fmt: skip
@pytest.mark.parametrize("shape", ["array", "map"])
def test_email_identity_that_is_not_an_address_is_no_email(placeholder: str, shape: str) -> None:
    identities: Any = (
        [{"identity_type": "email", "identity": placeholder},
         {"identity_type": "customer_id", "identity": "c-1"}]
        if shape == "array" else {"email": placeholder, "customer_id": "c-1"}
    )  # fmt: skip
    batch = parse_one(user_identities=identities)
    assert (batch.email, batch.customer_id) == (None, "c-1")
    assert batch.ignored == {"email_invalid": 1}


@pytest.mark.parametrize(
    "address", ["ann@example.com", " Ann.Lee+tag@Example.co.uk ", "ü@exämple.de", "a@b.io"]
)
def test_valid_email_identity_is_kept_trimmed(address: str) -> None:
    batch = parse_one(user_identities={"email": address})
    assert batch.email == address.strip()
    assert batch.ignored == {}


def test_malformed_identity_entries_are_ignored_and_counted() -> None:
    batch = parse_one(
        user_identities=["x", {"identity": "no type"}, {"identity_type": "email", "identity": 5}]
    )
    assert batch.email is None
    assert batch.ignored["identity_invalid"] == 3


@pytest.mark.parametrize(
    "identities",
    [pytest.param("a@example.com", id="string"), pytest.param(7, id="number"),
     pytest.param(True, id="bool")],
)  # fmt: skip
def test_rejects_identities_of_another_type(identities: Any) -> None:
    assert rejection(orjson.dumps(raw_batch(user_identities=identities))) == "identities_invalid"


# --- events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"events": _ABSENT}, id="missing"),
        pytest.param({"events": None}, id="null"),
        pytest.param({"events": []}, id="empty"),
    ],
)
def test_accepts_events_missing_null_or_empty(fields: dict[str, Any]) -> None:
    batch = parse_one(user_attributes={"plan": "pro"}, **fields)
    assert batch.events == []
    assert batch.user_attributes == {"plan": "pro"}
    assert batch.first_event_ms is None


@pytest.mark.parametrize(
    "events",
    [pytest.param({"event_type": "custom_event"}, id="object"),
     pytest.param("custom_event", id="string"), pytest.param(3, id="number")],
)  # fmt: skip
def test_rejects_events_not_a_list(events: Any) -> None:
    assert rejection(orjson.dumps(raw_batch(events=events))) == "events_not_a_list"


@pytest.mark.parametrize(
    ("bad_event", "reason"),
    [
        pytest.param("custom_event", "event_not_object", id="event-not-object"),
        pytest.param(None, "event_not_object", id="event-null"),
        pytest.param({"data": {}}, "event_type_missing", id="no-event-type"),
        pytest.param({"event_type": 7, "data": {}}, "event_type_missing", id="event-type-number"),
        pytest.param({"event_type": "custom_event"}, "data_not_object", id="no-data"),
        pytest.param({"event_type": "custom_event", "data": [1]}, "data_not_object",
                     id="data-array"),
        pytest.param(custom_event(name=""), "event_name_missing", id="custom-event-empty-name"),
        pytest.param(custom_event(name="   "), "event_name_missing", id="custom-event-blank-name"),
        pytest.param({"event_type": "custom_event", "data": {"custom_event_type": "other"}},
                     "event_name_missing", id="custom-event-no-name"),
        pytest.param({"event_type": "custom_event", "data": {"event_name": 5}},
                     "event_name_missing", id="custom-event-name-number"),
        pytest.param({"event_type": "screen_view", "data": {"custom_attributes": {}}},
                     "screen_name_missing", id="screen-view-no-name"),
        pytest.param({"event_type": "opt_out", "data": {"is_opted_out": "yes"}},
                     "opt_out_flag_missing", id="opt-out-flag-not-bool"),
    ],
)  # fmt: skip
def test_rejects_event_and_keeps_the_rest_of_the_batch(bad_event: Any, reason: str) -> None:
    batch = parse_one(events=[custom_event("first"), bad_event, custom_event("last")])
    assert [event.name for event in batch.events] == ["first", "last"]
    assert [event.position for event in batch.events] == [0, 2]
    assert batch.invalid_events == {reason: 1}


def test_custom_event_fields() -> None:
    batch = parse_one(
        events=[
            custom_event(
                "  Add To Cart ",
                custom_attributes={"sku": "1"},
                source_message_id="smid-1",
                event_id="12",
                timestamp_unixtime_ms=BATCH_MS - 100,
            )
        ]
    )
    (event,) = batch.events
    assert event.kind == "custom_event"
    assert event.name == "  Add To Cart "
    assert event.custom_attributes == {"sku": "1"}
    assert event.source_message_id == "smid-1"
    assert event.event_id == "12"
    assert event.timestamp_ms == BATCH_MS - 100


@pytest.mark.parametrize(
    ("event_time", "expected", "ignored_timestamps"),
    [
        pytest.param(_ABSENT, BATCH_MS, 0, id="missing-falls-back-to-batch"),
        pytest.param(-5, BATCH_MS, 1, id="negative-invalid"),
        pytest.param("abc", BATCH_MS, 1, id="string-invalid"),
        pytest.param(1.7e12, 1_700_000_000_000, 0, id="integral-float"),
        pytest.param("1700000000001", 1_700_000_000_001, 0, id="digit-string"),
        # the parser's inline path for an int time keeps _timestamp's bounds
        pytest.param(MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS, 0, id="latest-accepted"),
        pytest.param(MAX_TIMESTAMP_MS + 1, BATCH_MS, 1, id="beyond-latest-invalid"),
        pytest.param(True, BATCH_MS, 1, id="boolean-invalid"),
    ],
)
def test_event_timestamp_falls_back_to_batch_timestamp(
    event_time: Any, expected: int, ignored_timestamps: int
) -> None:
    event = custom_event()
    event["data"]["timestamp_unixtime_ms"] = event_time
    event["data"] = {key: value for key, value in event["data"].items() if value is not _ABSENT}
    batch = parse_one(events=[event])
    assert batch.events[0].timestamp_ms == expected
    assert batch.ignored.get(IGNORED_TIMESTAMP, 0) == ignored_timestamps


def test_screen_view_and_opt_out_events() -> None:
    batch = parse_one(
        events=[
            {"event_type": "screen_view", "data": {"screen_name": "Home"}},
            {"event_type": "opt_out", "data": {"is_opted_out": True}},
        ]
    )
    assert [(event.kind, event.name, event.is_opted_out) for event in batch.events] == [
        ("screen_view", "Home", False),
        ("opt_out", "", True),
    ]


@pytest.mark.parametrize(
    ("event", "is_install"),
    [
        pytest.param({"event_type": "first_run", "data": {}}, True, id="first-run"),
        pytest.param({"event_type": "application_state_transition",
                      "data": {"application_transition_type": "application_initialized",
                               "is_first_run": True}}, True, id="transition-first-run"),
        pytest.param({"event_type": "application_state_transition",
                      "data": {"application_transition_type": "application_foreground",
                               "is_first_run": False}}, False, id="transition-not-first-run"),
    ],
)  # fmt: skip
def test_install_signals(event: dict[str, Any], is_install: bool) -> None:
    batch = parse_one(events=[event])
    assert [e.kind for e in batch.events] == (["install"] if is_install else [])


def test_ignores_and_counts_unknown_keys_data_keys_and_event_types() -> None:
    batch = parse_one(
        surprise=1,
        another=2,
        events=[
            custom_event(brand_new_key=1),
            {"event_type": "session_start", "data": {"timestamp_unixtime_ms": BATCH_MS - 50}},
            {"event_type": "teleport", "data": {}},
            {"event_type": "commerce_event", "data": {}, "extra": True},
        ],
    )
    assert [event.kind for event in batch.events] == ["custom_event"]
    assert batch.ignored_events == {"session_start": 1, "unknown": 1, "commerce_event": 1}
    assert batch.ignored[IGNORED_UNKNOWN_KEYS] == 3
    assert batch.ignored[IGNORED_UNKNOWN_DATA_KEYS] == 1
    # Ignored events still count as activity for first-seen bookkeeping.
    assert (batch.first_event_ms, batch.last_event_ms) == (BATCH_MS - 50, BATCH_MS - 5)


# --- device and application info -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "device_type"),
    [
        pytest.param({"application_info": {"os": "IOS"}, "device_info": {"platform": "iOS"}},
                     "IOS", id="application-os-preferred"),
        pytest.param({"device_info": {"platform": "web"}}, "web", id="device-platform"),
        pytest.param({"application_info": {"os": ""}, "device_info": {"platform": "Android"}},
                     "Android", id="empty-os-falls-back"),
        pytest.param({}, UNKNOWN_DEVICE_TYPE, id="both-missing"),
        pytest.param({"application_info": None, "device_info": None}, UNKNOWN_DEVICE_TYPE,
                     id="both-null"),
        pytest.param({"application_info": "IOS"}, UNKNOWN_DEVICE_TYPE, id="not-an-object"),
    ],
)  # fmt: skip
def test_accepts_device_and_application_info_missing(
    fields: dict[str, Any], device_type: str
) -> None:
    assert parse_one(**fields).device_type == device_type


# --- user attributes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        pytest.param("text", True, id="string"),
        pytest.param(42, True, id="int"),
        pytest.param(4.5, True, id="float"),
        pytest.param(True, True, id="bool"),
        pytest.param(None, True, id="null"),
        pytest.param(["a", "b"], True, id="list-of-strings"),
        pytest.param([], True, id="empty-list"),
        pytest.param({"nested": 1}, False, id="object"),
        pytest.param([["nested"]], False, id="nested-list"),
    ],
)
def test_accepts_user_attribute_values(value: Any, accepted: bool) -> None:
    batch = parse_one(user_attributes={"attr": value})
    assert ("attr" in batch.user_attributes) is accepted
    assert batch.ignored.get(IGNORED_ATTRIBUTE_VALUE, 0) == (0 if accepted else 1)


def test_user_attributes_not_an_object_are_ignored_and_counted() -> None:
    batch = parse_one(user_attributes=["a"])
    assert batch.user_attributes == {}
    assert batch.ignored["user_attributes_invalid"] == 1


@pytest.mark.parametrize(
    ("raw_name", "canonical"),
    [
        pytest.param("$FirstName", "$firstname", id="FirstName"),
        pytest.param("$firstname", "$firstname", id="firstname"),
        pytest.param("$LastName", "$lastname", id="LastName"),
        pytest.param("$Zip", "$zip", id="Zip"),
        pytest.param("$zip", "$zip", id="zip"),
        pytest.param("$Zipcode", "$zip", id="Zipcode-alias"),
        pytest.param("$Mobile", "$mobile", id="Mobile"),
        pytest.param("$MobileNumber", "$mobile", id="MobileNumber-alias"),
        pytest.param("$City", "$city", id="City"),
        pytest.param("CustomKey", "CustomKey", id="custom-kept"),
    ],
)
def test_reserved_attribute_keys_are_matched_case_insensitively_with_aliases(
    raw_name: str, canonical: str
) -> None:
    assert canonical_attribute_name(raw_name) == canonical
    assert parse_one(user_attributes={raw_name: "v"}).user_attributes == {canonical: "v"}


def test_names_must_be_strings() -> None:
    batch = parse_one(user_attributes={"$FirstName": 5, "$LastName": "Doe"})
    assert batch.user_attributes == {"$lastname": "Doe"}
    assert batch.ignored[IGNORED_ATTRIBUTE_VALUE] == 1


def test_deleted_user_attributes_are_canonicalised() -> None:
    batch = parse_one(deleted_user_attributes=["$Zipcode", "plan", 5, ""])
    assert batch.deleted_user_attributes == ["$zip", "plan"]
    assert batch.ignored["deleted_attribute_invalid"] == 2


# --- environment -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "environment"),
    [
        pytest.param({"environment": "development"}, "development", id="development"),
        pytest.param({"environment": "Production"}, "production", id="lower-cased"),
        pytest.param({"environment": _ABSENT}, "production", id="default"),
    ],
)
def test_environment(fields: dict[str, Any], environment: str) -> None:
    assert parse_one(**fields).environment == environment


def test_rejects_environment_not_a_string() -> None:
    assert rejection(orjson.dumps(raw_batch(environment=1))) == "environment_invalid"


# --- whole records ---------------------------------------------------------------------------


def test_accepts_bulk_array_of_batches_in_order() -> None:
    record = orjson.dumps([raw_batch(mpid=1), raw_batch(mpid="2"), raw_batch(mpid=-3)])
    assert [batch.mpid for batch in parse_record(record)] == ["1", "2", "-3"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b"\xff\xfe{}", "invalid_utf8", id="invalid-utf8"),
        pytest.param(b'{"mpid": "\xc3\x28"}', "invalid_utf8", id="invalid-utf8-in-string"),
        pytest.param(b"{not json", "invalid_json", id="invalid-json"),
        pytest.param(b"", "invalid_json", id="empty"),
        pytest.param(b'"a string"', "not_an_object", id="top-level-string"),
        pytest.param(b"42", "not_an_object", id="top-level-number"),
        pytest.param(b"null", "not_an_object", id="top-level-null"),
        pytest.param(b'[{"mpid": 1}, 2]', "not_an_object", id="bulk-with-non-object"),
        pytest.param(b'[{"mpid": 1}, {"mpid": 1.5}]', "mpid_invalid", id="bulk-with-bad-batch"),
        pytest.param(b"[]", "empty_record", id="empty-bulk-array"),
        pytest.param(b"{}", "mpid_missing", id="empty-object"),
        pytest.param(b"[" * 2000 + b"]" * 2000, "too_deep", id="nested-beyond-orjson"),
        pytest.param(
            orjson.dumps(raw_batch(events=[custom_event(custom_attributes={"x": 0})])).replace(
                b'{"x":0}', b'{"n":' * 1000 + b"1" + b"}" * 1000
            ),
            "too_deep",
            id="custom-attributes-nested-1000",
        ),
    ],
)
def test_rejects_record(value: bytes, reason: str) -> None:
    assert rejection(value) == reason


def _nested(levels: int) -> dict[str, Any]:
    """``{"n": {"n": ... 1}}``: ``levels`` objects deep."""
    value: Any = 1
    for _ in range(levels):
        value = {"n": value}
    result: dict[str, Any] = value
    return result


@pytest.mark.parametrize(
    ("levels", "kept"),
    [
        pytest.param(1, True, id="flat"),
        pytest.param(MAX_DATA_DEPTH, True, id="at-the-limit"),
        pytest.param(MAX_DATA_DEPTH + 1, False, id="one-beyond"),
    ],
)
def test_custom_attributes_depth_limit(levels: int, kept: bool) -> None:
    attributes = _nested(levels)
    attributes["list"] = [[1, [2]], "x"]  # arrays count as levels too, within the limit
    value = orjson.dumps(raw_batch(events=[custom_event(custom_attributes=attributes)]))
    if kept:
        (batch,) = parse_record(value)
        assert batch.events[0].custom_attributes == attributes
    else:
        assert rejection(value) == "too_deep"


def test_many_flat_events_pass_the_depth_check() -> None:
    # more '{' than MAX_DATA_DEPTH in the record, so the attributes are walked: all flat
    events = [custom_event(custom_attributes={"i": i, "tags": ["a"]}) for i in range(40)]
    (batch,) = parse_record(orjson.dumps(raw_batch(events=events)))
    assert [event.custom_attributes for event in batch.events] == [
        {"i": i, "tags": ["a"]} for i in range(40)
    ]


def test_rejection_detail_does_not_echo_identities() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        parse_record(orjson.dumps(raw_batch(user_identities="secret@example.com")))
    assert "secret@example.com" not in str(caught.value)


def test_parses_reference_sample() -> None:
    (batch,) = parse_record(read_bytes(MPARTICLE_SAMPLE_FILE))
    assert batch.mpid == "-7636538281262557000"
    assert batch.environment == "development"
    assert batch.customer_id == "123456"
    assert batch.device_type == "IOS"
    assert [event.kind for event in batch.events] == ["install", "custom_event", "screen_view"]
    assert batch.invalid_events == {}
    assert batch.ignored_events["commerce_event"] == 1


# --- JSON load: big integers exact, a byte order mark ignored ---------------------------------

_BIG = "123456789012345678901234567890"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(b'{"a": ' + _BIG.encode() + b"}", {"a": _BIG}, id="beyond-uint64"),
        pytest.param(b'{"a": -' + _BIG.encode() + b"}", {"a": "-" + _BIG}, id="below-int64"),
        pytest.param(b'{"a": 18446744073709551616}', {"a": "18446744073709551616"}, id="2**64"),
        pytest.param(b'{"a": -9223372036854775809}', {"a": "-9223372036854775809"},
                     id="-2**63-1-nineteen-digits"),
        pytest.param(b'{"a": 18446744073709551615}', {"a": 18446744073709551615}, id="uint64-max"),
        pytest.param(b'{"a": -9223372036854775808}', {"a": -9223372036854775808}, id="int64-min"),
        pytest.param(b'{"a": [1, {"b": ' + _BIG.encode() + b'}], "c": 1.5}',
                     {"a": [1, {"b": _BIG}], "c": 1.5}, id="nested"),
        pytest.param(b'{"a": "' + _BIG.encode() + b'", "b": 2}', {"a": _BIG, "b": 2},
                     id="digits-in-a-string"),
        pytest.param(b'{"a": 1' + b"0" * 300 + b"}", {"a": "1" + "0" * 300}, id="301-digits"),
        pytest.param(b'\xef\xbb\xbf{"a": 1}', {"a": 1}, id="bom"),
        pytest.param(b'\xef\xbb\xbf{"a": ' + _BIG.encode() + b"}", {"a": _BIG}, id="bom-big"),
        # beyond a double's range (orjson refuses them): kept as written, never "invalid_json"
        pytest.param(b'{"a": 1' + b"0" * 399 + b"}", {"a": "1" + "0" * 399}, id="400-digits"),
        pytest.param(b'{"a": -1' + b"0" * 399 + b', "b": 7}', {"a": "-1" + "0" * 399, "b": 7},
                     id="minus-400-digits"),
        pytest.param(b'{"a": 1' + b"0" * 4999 + b"}", {"a": "1" + "0" * 4999},
                     id="5000-digits-past-pythons-int-limit"),
        pytest.param(b'{"a": 1e400, "b": [2.5, 3]}', {"a": "1e400", "b": [2.5, 3]}, id="1e400"),
        pytest.param(b'{"a": -1.5E+400}', {"a": "-1.5E+400"}, id="minus-1.5E+400"),
        pytest.param(b'{"a": 1' + b"0" * 399 + b".5}", {"a": "1" + "0" * 399 + ".5"},
                     id="400-digit-float"),
        pytest.param(b'\xef\xbb\xbf{"a": 1e400, "b": ' + _BIG.encode() + b"}",
                     {"a": "1e400", "b": _BIG}, id="bom-1e400-and-big"),
    ],
)  # fmt: skip
def test_load_json_keeps_big_integers_exact_and_ignores_one_bom(
    value: bytes, expected: dict[str, Any]
) -> None:
    assert load_json(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b"\xef\xbb\xbf\xef\xbb\xbf{}", "invalid_json", id="two-boms"),
        pytest.param(b"\xef\xbb\xbf", "invalid_json", id="bom-alone"),
        pytest.param(b"\xef\xbb\xbf{\xff}", "invalid_utf8", id="bom-then-not-utf8"),
    ],
)
def test_load_json_rejects_what_a_bom_does_not_explain(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        load_json(value)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        pytest.param(b'{"a": 1e400, "b": NaN}', "invalid_json", "NaN is not JSON", id="nan"),
        pytest.param(b'{"a": 1e400, "b": -Infinity}', "invalid_json", "-Infinity is not JSON",
                     id="infinity"),
        pytest.param(b'{"a": 1e400, "b": }', "invalid_json", "Expecting value: line 1 column 19",
                     id="syntax-after"),
        pytest.param(b'{"a": 1e400, "b": "\\ud800"}', "invalid_json", "number is infinity",
                     id="lone-surrogate"),
        pytest.param(b'{"a": 1e400, "b": "\xff"}', "invalid_utf8", "'utf-8' codec",
                     id="not-utf8-after"),
    ],
)  # fmt: skip
def test_a_number_beyond_a_double_does_not_hide_another_fault(
    value: bytes, reason: str, detail: str
) -> None:
    """Past such a number, the record is checked as strictly as orjson would have."""
    with pytest.raises(InvalidRecordError) as caught:
        load_json(value)
    assert (caught.value.reason, caught.value.detail[: len(detail)]) == (reason, detail)


def test_big_integer_attribute_and_event_data_keep_every_digit() -> None:
    value = (
        orjson.dumps(
            raw_batch(
                user_attributes={"id_big": 1}, events=[custom_event(custom_attributes={"n": 1})]
            )
        )
        .replace(b'"id_big":1', b'"id_big":' + _BIG.encode())
        .replace(b'"n":1', b'"n":' + _BIG.encode())
    )
    (batch,) = parse_record(value)
    assert batch.user_attributes["id_big"] == _BIG
    assert batch.events[0].custom_attributes == {"n": _BIG}


def test_batch_with_bom_parses() -> None:
    value = orjson.dumps(raw_batch())
    assert parse_record(b"\xef\xbb\xbf" + value) == parse_record(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b'{"mpid": 0}', id="zero"),
        pytest.param(b'{"mpid": "0"}', id="zero-text"),
        pytest.param(b'{"mpid": "-0"}', id="minus-zero-text"),
        pytest.param(b'{"mpid": "000"}', id="zeros-text"),
        pytest.param(b'[{"mpid": 1}, {"mpid": 0}]', id="bulk-second"),
    ],
)
def test_mpid_zero_is_no_user(value: bytes) -> None:
    """mParticle SDKs' temporary mpid 0 means "no user yet": never one shared person."""
    with pytest.raises(InvalidRecordError) as caught:
        parse_record(value)
    assert caught.value.reason == "mpid_missing"
    assert "mpid 0" in caught.value.detail


@pytest.mark.parametrize("mpid", [1, -1, "1", "-9223372036854775808"])
def test_mpid_next_to_zero_is_a_user(mpid: int | str) -> None:
    assert parse_one(mpid=mpid).mpid == str(int(mpid))
