"""Mapping tests: one or more tests per numbered rule of SPEC §3, the Customer.io limits, and
validation of every produced item against Customer.io's OpenAPI /api/v2/batch schema."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.core.mparticle import Batch, parse_batch, parse_record
from app.core.options import CoreOptions
from app.core.state import UserState
from app.core.transform import (
    LIMIT_ATTRIBUTE_NAME,
    LIMIT_ATTRIBUTE_RENAMED,
    LIMIT_ATTRIBUTE_VALUE_CUT,
    LIMIT_ATTRIBUTE_VALUE_DROPPED,
    LIMIT_EVENT_DATA_DROPPED,
    LIMIT_EVENT_DATA_RENAMED,
    LIMIT_EVENT_NAME_CUT,
    LIMIT_IDENTIFY_SPLIT,
    LIMIT_PERSON_CAP,
    LIMIT_PERSON_ID,
    MAX_USER_ATTRIBUTES_PER_PERSON,
    Operation,
    Transformed,
    event_name,
    transform,
)
from app.customerio.limits import MAX_ITEM_BYTES
from app.reference import CUSTOMERIO_OPENAPI_FILE, MPARTICLE_SAMPLE_FILE, load_json, read_bytes
from app.settings import Settings
from app.wiring import core_options

T0 = 1_700_000_000_000
EMAIL = "ann@example.com"
CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def settings(**overrides: Any) -> CoreOptions:
    return core_options(Settings(forwarding_enabled=False, **overrides))


DEFAULT = settings()


def custom(name: str = "Add To Cart", at: int | None = T0 - 1000, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_name": name, "custom_event_type": "other", **data}
    if at is not None:
        body["timestamp_unixtime_ms"] = at
    return {"event_type": "custom_event", "data": body}


def screen(name: str = "Home", at: int = T0 - 500, **data: Any) -> dict[str, Any]:
    return {
        "event_type": "screen_view",
        "data": {"screen_name": name, "timestamp_unixtime_ms": at, **data},
    }


def install(at: int) -> dict[str, Any]:
    return {"event_type": "first_run", "data": {"timestamp_unixtime_ms": at}}


def opt_out(value: bool, at: int = T0 - 700) -> dict[str, Any]:
    return {"event_type": "opt_out", "data": {"is_opted_out": value, "timestamp_unixtime_ms": at}}


def make_batch(
    *,
    email: str | None = EMAIL,
    customer_id: str | None = None,
    at: int = T0,
    events: list[Any] | None = None,
    **fields: Any,
) -> Batch:
    identities = {"email": email, "customer_id": customer_id}
    raw: dict[str, Any] = {
        "mpid": 99,
        "environment": "production",
        "timestamp_unixtime_ms": at,
        "batch_id": 5,
        "user_identities": {key: value for key, value in identities.items() if value},
        "application_info": {"os": "IOS"},
        "events": [] if events is None else events,
    }
    raw.update(fields)
    return parse_batch(raw)


def run(
    batches: list[Batch], config: CoreOptions = DEFAULT, state: UserState | None = None
) -> list[Transformed]:
    results = []
    for batch in batches:
        result = transform(batch, state, config)
        state = result.state
        results.append(result)
    return results


def items(result: Transformed) -> list[dict[str, Any]]:
    return [operation.item for operation in result.operations]


def identifies(result: Transformed) -> list[dict[str, Any]]:
    return [item for item in items(result) if item["action"] == "identify"]


def attributes(result: Transformed) -> dict[str, Any]:
    (identify,) = identifies(result)
    return identify["attributes"]  # type: ignore[no-any-return]


# --- rule 1 ----------------------------------------------------------------------------------


def test_rule_01_users_without_email_are_skipped() -> None:
    (result,) = run([make_batch(email=None, customer_id="c1", events=[custom(), screen()])])
    assert result.operations == []
    assert result.outcome == "skipped_no_email"
    assert result.events == {"skipped_no_email": 2}
    assert result.state is not None
    assert result.state.customer_id == "c1"  # remembered for when an email arrives
    assert result.state_changed


def test_rule_01_email_remembered_from_earlier_batch_is_enough() -> None:
    _, second = run([make_batch(), make_batch(email=None, at=T0 + 1, events=[custom()])])
    assert second.outcome == "forwarded"
    assert [item["identifiers"] for item in items(second)] == [{"email": EMAIL}]


# --- rule 2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer_id", "identifiers"),
    [
        pytest.param("c-1", {"id": "c-1"}, id="customer-id-when-known"),
        pytest.param(None, {"email": EMAIL}, id="email-otherwise"),
    ],
)
def test_rule_02_person_id_is_customer_id_else_email(
    customer_id: str | None, identifiers: dict[str, str]
) -> None:
    (result,) = run([make_batch(customer_id=customer_id, events=[custom()])])
    assert [item["identifiers"] for item in items(result)] == [identifiers, identifiers]
    assert all(operation.person_id == next(iter(identifiers.values()))
               for operation in result.operations)  # fmt: skip


# --- rules 3 and 4 ---------------------------------------------------------------------------

USER_ATTRIBUTES = {
    "$FirstName": "Ann",
    "$LastName": "Lee",
    "$City": "Porto",
    "$Zipcode": "4000",
    "$MobileNumber": "+351",
    "plan": "pro",
    "Score": 7,
}


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        pytest.param(
            False, {"email": EMAIL, "first_name": "Ann", "last_name": "Lee"}, id="names-only"
        ),
        pytest.param(
            True,
            {"email": EMAIL, "first_name": "Ann", "last_name": "Lee", "plan": "pro", "Score": 7,
             "city": "Porto", "zip": "4000", "mobile": "+351"},
            id="all-attributes",
        ),
    ],
)  # fmt: skip
def test_rule_03_and_04_attributes_sent(include: bool, expected: dict[str, Any]) -> None:
    (result,) = run(
        [make_batch(user_attributes=USER_ATTRIBUTES)], settings(include_user_attributes=include)
    )
    assert attributes(result) == expected


def test_rule_03_email_and_names_always_sent_even_without_other_attributes() -> None:
    (result,) = run([make_batch(user_attributes={"$firstname": "Ann"})])
    assert attributes(result) == {"email": EMAIL, "first_name": "Ann"}


def test_rule_04_reserved_key_wins_over_custom_key_with_the_same_output_name() -> None:
    (result,) = run([make_batch(user_attributes={"$City": "Porto", "city": "custom"})])
    assert attributes(result)["city"] == "Porto"


def test_rule_04_user_attribute_cannot_override_forwarder_attributes() -> None:
    (result,) = run([make_batch(user_attributes={"email": "x@evil.io", "unsubscribed": False})])
    assert attributes(result) == {
        "email": EMAIL, "mp_email": "x@evil.io", "mp_unsubscribed": False,
    }  # fmt: skip
    assert result.limits[LIMIT_ATTRIBUTE_RENAMED] == 2


def test_rule_04_changing_include_setting_sends_identify() -> None:
    batch = make_batch(user_attributes={"plan": "pro"})
    (first,) = run([batch], settings(include_user_attributes=False))
    (second,) = run([batch], DEFAULT, state=first.state)
    assert attributes(second)["plan"] == "pro"


# --- rule 5 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("include", "expected"),
    [
        pytest.param(True, {"email": EMAIL, "first_name": "", "plan": "", "zip": ""},
                     id="include-all"),
        pytest.param(False, {"email": EMAIL, "first_name": ""}, id="names-only"),
    ],
)  # fmt: skip
def test_rule_05_deleted_attributes_are_sent_as_empty_string(
    include: bool, expected: dict[str, Any]
) -> None:
    config = settings(include_user_attributes=include)
    _, second = run(
        [
            make_batch(user_attributes={"$FirstName": "Ann", "plan": "pro", "$Zip": "1"}),
            make_batch(at=T0 + 1, deleted_user_attributes=["$firstname", "plan", "$Zipcode"]),
        ],
        config,
    )
    assert attributes(second) == expected
    assert second.state is not None
    assert second.state.attributes == {}


# --- rule 6 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("  Add To Cart ", "Add_To_Cart", id="trim-and-underscore"),
        pytest.param("Checkout", "Checkout", id="unchanged"),
        pytest.param("a  b", "a__b", id="each-space"),
        pytest.param("\tTabbed name\n", "Tabbed_name", id="trim-all-whitespace"),
    ],
)
def test_rule_06_event_name_trimmed_and_spaces_replaced(raw: str, expected: str) -> None:
    assert event_name(raw) == expected


def test_rule_06_custom_event_and_screen_view_mapping() -> None:
    (result,) = run(
        [
            make_batch(
                events=[
                    custom("  Add To Cart ", at=T0 - 1999, custom_attributes={"sku": "A1"}),
                    screen("Home Screen", at=T0 - 500),
                    custom("No Time", at=None),
                ]
            )
        ]
    )
    identify, event, screen_item, untimed = items(result)
    assert identify["action"] == "identify"
    assert (event["action"], event["name"], event["timestamp"], event["attributes"]) == (
        "event", "Add_To_Cart", (T0 - 1999) // 1000, {"sku": "A1"}
    )  # fmt: skip
    assert (screen_item["action"], screen_item["name"]) == ("screen", "Home_Screen")
    assert "attributes" not in screen_item
    assert untimed["timestamp"] == T0 // 1000  # fallback: the batch timestamp
    assert all(type(item["timestamp"]) is int for item in (event, screen_item, untimed))
    assert result.events == {"forwarded": 3}


def test_rule_06_other_event_types_are_not_forwarded() -> None:
    (result,) = run(
        [make_batch(events=[{"event_type": "commerce_event", "data": {}},
                            {"event_type": "first_run", "data": {}}])]
    )  # fmt: skip
    assert [item["action"] for item in items(result)] == ["identify"]


# --- rule 7 ----------------------------------------------------------------------------------


def test_rule_07_event_ids_are_deterministic_ulids() -> None:
    batch = make_batch(
        customer_id="c1",
        events=[
            custom("a", source_message_id="smid-1"),
            custom("b", event_id=123),
            custom("c"),
            custom("d"),
        ],
    )
    first = [item["id"] for item in items(transform(batch, None, DEFAULT))[1:]]
    again = [item["id"] for item in items(transform(batch, None, DEFAULT))[1:]]
    assert first == again
    assert len(set(first)) == 4
    for ulid_text in first:
        assert len(ulid_text) == 26
        assert set(ulid_text) <= CROCKFORD
        assert ulid_text != "c1"


@pytest.mark.parametrize(
    ("event_a", "event_b", "same_id"),
    [
        pytest.param(custom("x", source_message_id="m1"), custom("y", source_message_id="m1"),
                     True, id="same-source-message-id"),
        pytest.param(custom("x", source_message_id="m1"), custom("x", source_message_id="m2"),
                     False, id="other-source-message-id"),
        pytest.param(custom("x", event_id=1), custom("y", event_id=1), True, id="same-event-id"),
        pytest.param(custom("x", event_id=1), custom("x", event_id=2), False,
                     id="other-event-id"),
        pytest.param(custom("x", at=T0 - 1, source_message_id="m1"),
                     custom("x", at=T0 - 2000, source_message_id="m1"), False,
                     id="time-part-differs"),
    ],
)  # fmt: skip
def test_rule_07_event_id_derivation(
    event_a: dict[str, Any], event_b: dict[str, Any], same_id: bool
) -> None:
    id_a = items(transform(make_batch(events=[event_a]), None, DEFAULT))[1]["id"]
    id_b = items(transform(make_batch(events=[event_b]), None, DEFAULT))[1]["id"]
    assert (id_a == id_b) is same_id


def _event_id(event: dict[str, Any], **batch: Any) -> str:
    return items(transform(make_batch(events=[event], **batch), None, DEFAULT))[1]["id"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("batch_a", "event_a", "batch_b", "event_b", "same_id"),
    [
        # (a) two users whose events share a source_message_id and time: two events
        pytest.param({"mpid": 1}, custom("x", source_message_id="m1"),
                     {"mpid": 2}, custom("x", source_message_id="m1"), False,
                     id="shared-message-id-two-users"),
        pytest.param({"mpid": 1}, custom("x", event_id=7), {"mpid": 2}, custom("x", event_id=7),
                     False, id="shared-event-id-two-users"),
        # (b) one user's two batches without batch_id at the same batch time
        pytest.param({"batch_id": None}, custom("x"), {"batch_id": None}, custom("y"), False,
                     id="no-batch-id-other-name"),
        pytest.param({"batch_id": None}, screen("x"), {"batch_id": None}, custom("x"), False,
                     id="no-batch-id-other-type"),
        pytest.param({"batch_id": None}, custom("x", custom_attributes={"a": 1}),
                     {"batch_id": None}, custom("x", custom_attributes={"a": 2}), False,
                     id="no-batch-id-other-attributes"),
        pytest.param({"batch_id": None, "source_request_id": "r1"}, custom("x"),
                     {"batch_id": None, "source_request_id": "r2"}, custom("x"), True,
                     id="no-batch-id-identical-event-redelivered"),
        pytest.param({}, custom("x", custom_attributes={"a": 1, "b": 2}),
                     {}, custom("x", custom_attributes={"b": 2, "a": 1}), True,
                     id="attribute-order-is-not-content"),
        pytest.param({"mpid": 1}, custom("x"), {"mpid": 2}, custom("x"), False,
                     id="positional-two-users"),
    ],
)  # fmt: skip
def test_rule_07_distinct_events_never_share_an_id(
    batch_a: dict[str, Any],
    event_a: dict[str, Any],
    batch_b: dict[str, Any],
    event_b: dict[str, Any],
    same_id: bool,
) -> None:
    """Customer.io silently drops an event whose id it has seen: two different events must get
    two ids, and the same event delivered again its old id (SPEC §3 rule 7)."""
    assert (_event_id(event_a, **batch_a) == _event_id(event_b, **batch_b)) is same_id


def test_rule_07_position_fallback_depends_on_batch() -> None:
    id_a = items(transform(make_batch(events=[custom()]), None, DEFAULT))[1]["id"]
    id_b = items(transform(make_batch(events=[custom()], batch_id=6), None, DEFAULT))[1]["id"]
    assert id_a != id_b


def test_rule_07_event_id_time_part_is_event_time() -> None:
    event_id = items(transform(make_batch(events=[custom(at=T0 - 1)]), None, DEFAULT))[1]["id"]
    value = 0
    for char in event_id:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    assert value >> 80 == T0 - 1


# --- rule 8 ----------------------------------------------------------------------------------


def test_rule_08_identify_only_on_change() -> None:
    results = run(
        [
            make_batch(user_attributes={"plan": "pro"}, events=[custom()]),
            make_batch(at=T0 + 1, user_attributes={"plan": "pro"}, events=[custom()]),
            make_batch(at=T0 + 2, user_attributes={"plan": "max"}),
            make_batch(at=T0 + 3),
        ]
    )
    assert [len(identifies(result)) for result in results] == [1, 0, 1, 0]
    assert attributes(results[2]) == {"email": EMAIL, "plan": "max"}


def test_rule_08_no_identify_when_the_forwarded_attributes_are_the_same() -> None:
    # Found by the golden review of samples/ (eve: a tag null, then true): both are sent as
    # true, so the second batch changes nothing Customer.io would be told.
    results = run(
        [
            make_batch(user_attributes={"vip": None, "bio": "x" * 1200}),
            make_batch(at=T0 + 1, user_attributes={"vip": True, "bio": "x" * 1100}),
            make_batch(at=T0 + 2, user_attributes={"vip": False, "bio": "x" * 1100}),
        ]
    )
    assert [len(identifies(result)) for result in results] == [1, 0, 1]


def test_rule_08_identify_precedes_events() -> None:
    (result,) = run([make_batch(events=[custom(), screen()])])
    assert [item["action"] for item in items(result)] == ["identify", "event", "screen"]


def test_rule_08_same_batch_twice_sends_no_second_identify_and_same_event_ids() -> None:
    batch = make_batch(user_attributes={"plan": "pro"}, events=[custom(), screen()])
    first, second = run([batch, batch])
    assert [item["action"] for item in items(second)] == ["event", "screen"]
    assert [item["id"] for item in items(second)] == [item["id"] for item in items(first)[1:]]
    assert second.state == first.state
    assert not second.state_changed


# --- rule 9 ----------------------------------------------------------------------------------


def test_rule_09_opt_out_sends_unsubscribed_and_suppresses_events() -> None:
    (result,) = run(
        [make_batch(events=[custom("before"), opt_out(True), custom("after", at=T0 - 500)])]
    )
    assert [(item["action"], item.get("name")) for item in items(result)] == [
        ("identify", None),
        ("event", "before"),
    ]
    assert attributes(result)["unsubscribed"] is True
    assert result.events == {"forwarded": 1, "opted_out": 1}


def test_rule_09_events_stay_suppressed_while_opted_out() -> None:
    _, second = run([make_batch(events=[opt_out(True)]), make_batch(at=T0 + 1, events=[custom()])])
    assert second.operations == []
    assert second.events == {"opted_out": 1}


def test_rule_09_opted_out_profile_is_kept_and_updated() -> None:
    _, second = run(
        [make_batch(events=[opt_out(True)]), make_batch(at=T0 + 1, user_attributes={"a": 1})]
    )
    assert [item["action"] for item in items(second)] == ["identify"]
    assert all(item["action"] != "delete" for item in items(second))


@pytest.mark.parametrize(
    ("resubscribe", "expected_unsubscribed"),
    [
        pytest.param(False, None, id="default-does-not-resubscribe"),
        pytest.param(True, False, id="resubscribe-on-opt-in"),
    ],
)
def test_rule_09_opt_in_resumes_forwarding(
    resubscribe: bool, expected_unsubscribed: bool | None
) -> None:
    config = settings(resubscribe_on_opt_in=resubscribe)
    _, second = run(
        [
            make_batch(events=[opt_out(True, at=T0 - 700)]),
            make_batch(at=T0 + 1, events=[opt_out(False, at=T0 + 1), custom(at=T0 + 1)]),
        ],
        config,
    )
    assert [item["action"] for item in items(second)][-1] == "event"
    sent = [item["attributes"].get("unsubscribed") for item in identifies(second)]
    assert sent == ([] if expected_unsubscribed is None else [expected_unsubscribed])


def test_rule_09_opt_out_before_email_is_sent_with_first_identify() -> None:
    _, second = run(
        [make_batch(email=None, events=[opt_out(True)]), make_batch(at=T0 + 1, events=[custom()])]
    )
    assert attributes(second)["unsubscribed"] is True
    assert second.events == {"opted_out": 1}


def test_rule_09_opt_out_again_after_opt_in_without_resubscribe() -> None:
    results = run(
        [
            make_batch(events=[opt_out(True, at=T0)]),
            make_batch(at=T0 + 1, events=[opt_out(False, at=T0 + 1)]),
            make_batch(at=T0 + 2, events=[opt_out(True, at=T0 + 2)]),
        ]
    )
    assert [[i["attributes"].get("unsubscribed") for i in identifies(r)] for r in results] == [
        [True],
        [],
        [True],
    ]


def test_rule_09_opt_out_not_repeated_on_redelivery() -> None:
    batch = make_batch(events=[opt_out(True)])
    _, second = run([batch, batch])
    assert second.operations == []


@pytest.mark.parametrize(
    ("events", "forwarded"),
    [
        pytest.param([custom("late", at=T0 + 10), opt_out(True, at=T0 + 5)], [],
                     id="opt-out-listed-after-a-later-event-suppresses-it"),
        pytest.param([opt_out(True, at=T0 + 10), custom("early", at=T0 + 5)], ["early"],
                     id="opt-out-listed-before-an-earlier-event-does-not-suppress-it"),
        pytest.param([custom("a", at=T0), opt_out(True, at=T0), custom("b", at=T0)], ["a"],
                     id="same-time-follows-positions"),
        pytest.param([opt_out(True, at=T0 + 1), opt_out(False, at=T0 + 3), custom("x", at=T0 + 2),
                      custom("y", at=T0 + 4)], ["y"], id="each-event-sees-the-decision-before-it"),
    ],
)  # fmt: skip
def test_opt_out_order_is_event_time_then_position_for_state_and_events(
    events: list[dict[str, Any]], forwarded: list[str]
) -> None:
    """One rule (docs/mapping.md §4): the state's final decision and each event's suppression
    both follow (event time, position), whatever the order of the events in the batch."""
    (result,) = run([make_batch(events=events)])
    assert [item["name"] for item in items(result) if item["action"] == "event"] == forwarded
    newest = max((e for e in events if e["event_type"] == "opt_out"),
                 key=lambda e: e["data"]["timestamp_unixtime_ms"])  # fmt: skip
    assert result.state is not None
    assert result.state.opted_out is newest["data"]["is_opted_out"]


# --- rule 10 ---------------------------------------------------------------------------------


def test_rule_10_created_at_is_first_seen_of_most_recent_device_type() -> None:
    config = settings(send_created_at=True)
    ios_first = make_batch(events=[custom(at=T0 - 5000)])
    android_later = make_batch(
        at=T0 + 10_000, application_info={"os": "Android"}, events=[custom(at=T0 + 9000)]
    )
    ios_again = make_batch(at=T0 + 20_000, events=[custom(at=T0 + 19_000)])
    first, second, third = run([ios_first, android_later, ios_again], config)
    assert attributes(first)["created_at"] == (T0 - 5000) // 1000
    assert attributes(second)["created_at"] == (T0 + 9000) // 1000
    assert attributes(third)["created_at"] == (T0 - 5000) // 1000


def test_rule_10_install_signal_wins() -> None:
    config = settings(send_created_at=True)
    (result,) = run(
        [make_batch(events=[custom(at=T0 - 9000), install(at=T0 - 10)])],
        config,
    )  # fmt: skip
    assert attributes(result)["created_at"] == (T0 - 10) // 1000


def test_rule_10_created_at_not_sent_by_default() -> None:
    (result,) = run([make_batch(events=[custom()])])
    assert "created_at" not in attributes(result)


# --- rule 11 ---------------------------------------------------------------------------------


def test_rule_11_identity_change_identifies_new_id_with_email() -> None:
    first, second, third = run(
        [
            make_batch(events=[custom()]),
            make_batch(at=T0 + 1, customer_id="c-9", events=[custom()]),
            make_batch(at=T0 + 2, customer_id="c-9", events=[custom()]),
        ]
    )
    assert identifies(first)[0]["identifiers"] == {"email": EMAIL}
    (identify,) = identifies(second)
    assert identify["identifiers"] == {"id": "c-9"}
    assert identify["attributes"]["email"] == EMAIL
    assert items(second)[1]["identifiers"] == {"id": "c-9"}
    assert second.state is not None
    assert second.state.person_id == "c-9"
    assert identifies(third) == []


# --- rule 12 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environments", "environment", "forwarded"),
    [
        pytest.param("production,development", "development", True, id="both-default"),
        pytest.param("production", "development", False, id="development-filtered"),
        pytest.param("production", "production", True, id="production-kept"),
        pytest.param("development", "staging", False, id="unknown-environment-filtered"),
    ],
)
def test_rule_12_environment_filter(environments: str, environment: str, forwarded: bool) -> None:
    config = settings(environments=environments)
    previous = UserState(email="old@example.com")
    result = transform(make_batch(environment=environment, events=[custom()]), previous, config)
    assert bool(result.operations) is forwarded
    if not forwarded:
        assert result.outcome == "environment_filtered"
        assert result.events == {"environment_filtered": 1}
        assert result.state is previous
        assert not result.state_changed


# --- Customer.io limits ----------------------------------------------------------------------


def test_limit_person_id_over_150_bytes_drops_batch() -> None:
    (result,) = run([make_batch(customer_id="é" * 76, events=[custom()])])
    assert result.operations == []
    assert result.outcome == "person_id_invalid"
    assert result.limits == {LIMIT_PERSON_ID: 1}
    assert result.events == {"person_id_invalid": 1}


def test_limit_person_id_of_150_bytes_is_accepted() -> None:
    (result,) = run([make_batch(customer_id="é" * 75)])
    assert result.outcome == "forwarded"


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        pytest.param("n" * 150, True, id="150-bytes"),
        pytest.param("n" * 151, False, id="151-bytes"),
        pytest.param("é" * 76, False, id="152-utf8-bytes"),
        pytest.param("", False, id="empty"),
    ],
)
def test_limit_attribute_name(name: str, kept: bool) -> None:
    (result,) = run([make_batch(user_attributes={name: 1})])
    assert (name in attributes(result)) is kept
    assert result.limits.get(LIMIT_ATTRIBUTE_NAME, 0) == (0 if kept else 1)


@pytest.mark.parametrize(
    ("value", "expected", "counter"),
    [
        pytest.param("x" * 1000, "x" * 1000, None, id="1000-bytes-kept"),
        pytest.param("x" * 1001, "x" * 1000, LIMIT_ATTRIBUTE_VALUE_CUT, id="cut-to-1000"),
        pytest.param("€" * 400, "€" * 333, LIMIT_ATTRIBUTE_VALUE_CUT, id="cut-at-utf8-boundary"),
        pytest.param(["y" * 600, "z" * 600], None, LIMIT_ATTRIBUTE_VALUE_DROPPED,
                     id="long-list-dropped"),
    ],
)  # fmt: skip
def test_limit_attribute_value(value: Any, expected: Any, counter: str | None) -> None:
    (result,) = run([make_batch(user_attributes={"v": value})])
    assert attributes(result).get("v") == expected
    assert result.limits == ({counter: 1} if counter else {})


def test_limit_300_attributes_per_identify_splits() -> None:
    many = {f"attr_{index:03d}": index for index in range(290)}
    gone = [f"old_{index:03d}" for index in range(360)]  # removals are not capped
    (result,) = run([make_batch(user_attributes=many, deleted_user_attributes=gone)])
    sent = identifies(result)
    assert len(sent) == 3
    assert all(len(item["attributes"]) <= 300 for item in sent)
    assert all(item["attributes"]["email"] == EMAIL for item in sent)
    merged = {key: value for item in sent for key, value in item["attributes"].items()}
    assert merged == {"email": EMAIL, **dict.fromkeys(gone, ""), **many}
    assert list(merged)[1:361] == gone  # removals first: they make room on a full person
    assert result.limits[LIMIT_IDENTIFY_SPLIT] == 2


def _numbered(first: int, count: int) -> dict[str, Any]:
    return {f"a{index:04d}": index for index in range(first, first + count)}


CAP = MAX_USER_ATTRIBUTES_PER_PERSON


@pytest.mark.parametrize(
    ("batches", "sent_names", "held_back"),
    [
        pytest.param([{"user_attributes": _numbered(0, 10)}], list(_numbered(0, 10)), 0,
                     id="few"),
        pytest.param([{"user_attributes": _numbered(0, CAP)}], list(_numbered(0, CAP)), 0,
                     id="exactly-the-cap"),
        pytest.param([{"user_attributes": _numbered(0, CAP + 1)}], list(_numbered(0, CAP)), 1,
                     id="one-over"),
        pytest.param([{"user_attributes": _numbered(0, 400)}], list(_numbered(0, CAP)),
                     400 - CAP, id="many-over"),
        # a full person's new attribute is held back, the first-seen ones stay
        pytest.param([{"user_attributes": _numbered(100, CAP)},
                      {"user_attributes": _numbered(0, 1)}],
                     list(_numbered(100, CAP)), 1, id="new-name-on-a-full-person"),
        # removing a kept attribute lets the first held-back one in
        pytest.param([{"user_attributes": _numbered(0, CAP + 2)},
                      {"deleted_user_attributes": ["a0003"]}],
                     ["a0003", *[n for n in _numbered(0, CAP + 1) if n != "a0003"]], 2,
                     id="removal-makes-room"),
    ],
)  # fmt: skip
def test_limit_300_attributes_per_person_keeps_the_first_seen(
    batches: list[dict[str, Any]], sent_names: list[str], held_back: int
) -> None:
    """Customer.io keeps 300 attributes per person and drops a new one beyond them silently:
    the forwarder sends the first-seen 295 (5 left for its own) and counts the rest."""
    results = run([make_batch(at=T0 + i, **fields) for i, fields in enumerate(batches)])
    sent = next(identifies(result) for result in reversed(results) if identifies(result))
    (identify,) = sent
    assert [name for name in identify["attributes"] if name != "email"] == sent_names
    assert sum(result.limits.get(LIMIT_PERSON_CAP, 0) for result in results) == held_back


@pytest.mark.parametrize(
    ("second", "identify_sent", "held_back"),
    [
        pytest.param({"a0295": "changed"}, False, 1, id="held-back-value-changes"),
        pytest.param({"z_new": 1}, False, 1, id="new-name-on-a-full-person"),
        pytest.param({"a0001": "changed"}, True, 0, id="kept-value-changes"),
        pytest.param({}, False, 0, id="nothing-set"),
    ],
)  # fmt: skip
def test_held_back_attributes_are_counted_when_they_arrive_and_send_nothing(
    second: dict[str, Any], identify_sent: bool, held_back: int
) -> None:
    first = _numbered(0, CAP + 1)
    _, again = run(
        [make_batch(user_attributes=first), make_batch(at=T0 + 1, user_attributes=second)]
    )
    assert bool(identifies(again)) is identify_sent
    assert again.limits.get(LIMIT_PERSON_CAP, 0) == held_back


def test_limit_item_bytes_splits_identify() -> None:
    big = {f"attr_{index:02d}": "v" * 1000 for index in range(80)}
    (result,) = run([make_batch(user_attributes=big)])
    sent = result.operations
    assert len(sent) >= 3
    assert all(len(operation.payload) <= MAX_ITEM_BYTES for operation in sent)
    merged = {key: value for op in sent for key, value in op.item["attributes"].items()}
    assert merged == {"email": EMAIL, **big}


@pytest.mark.parametrize(
    ("raw", "expected", "cut"),
    [
        pytest.param("n" * 100, "n" * 100, False, id="100-bytes"),
        pytest.param("n" * 101, "n" * 100, True, id="101-bytes"),
        pytest.param("ü" * 60, "ü" * 50, True, id="utf8-boundary"),
    ],
)
def test_limit_event_name_100_bytes(raw: str, expected: str, cut: bool) -> None:
    (result,) = run([make_batch(events=[custom(raw)])])
    assert items(result)[-1]["name"] == expected
    assert result.limits.get(LIMIT_EVENT_NAME_CUT, 0) == int(cut)


def test_limit_event_data_too_large_is_dropped_event_kept() -> None:
    data = {f"k{index}": "v" * 900 for index in range(40)}
    (result,) = run([make_batch(events=[custom(custom_attributes=data)])])
    event = items(result)[-1]
    assert event["action"] == "event"
    assert "attributes" not in event
    assert result.limits == {LIMIT_EVENT_DATA_DROPPED: 1}


def test_payload_is_the_json_of_the_item() -> None:
    (result,) = run([make_batch(user_attributes={"a": 1}, events=[custom(), screen()])])
    for operation in result.operations:
        assert orjson.loads(operation.payload) == operation.item
        assert operation.action == operation.item["action"]


# --- issue 16: real-world data ---------------------------------------------------------------


def test_case_1_user_tag_is_sent_as_true_not_null() -> None:
    """mParticle stores a user tag as a null-valued attribute; Customer.io reads null as
    "remove", so the tag is sent as ``true``."""
    (parsed,) = parse_record(orjson.dumps({
        "mpid": 108, "environment": "production", "timestamp_unixtime_ms": 1764400000000,
        "user_identities": [{"identity_type": "email", "identity": "vip@example.com"}],
        "user_attributes": {"$FirstName": "Val", "platinum_member": None}, "events": [],
    }))  # fmt: skip
    (identify,) = transform(parsed, None, DEFAULT).operations
    assert identify.item["attributes"] == {
        "email": "vip@example.com", "first_name": "Val", "platinum_member": True,
    }  # fmt: skip


def test_case_2_event_data_routing_keys_are_renamed() -> None:
    """``recipient`` / ``reply_to`` / ``from_address`` re-address Customer.io's messages
    (OpenAPI person_event): the app's own data is kept as ``mp_<key>``."""
    data = {"recipient": "Mom", "reply_to": "n/a", "from_address": "x@example.com", "sku": "G-1"}
    (result,) = run([make_batch(events=[custom("Gift", custom_attributes=data)])])
    (event,) = [item for item in items(result) if item["action"] == "event"]
    assert event["attributes"] == {
        "mp_recipient": "Mom", "mp_reply_to": "n/a", "mp_from_address": "x@example.com",
        "sku": "G-1",
    }  # fmt: skip
    assert result.limits[LIMIT_EVENT_DATA_RENAMED] == 3


def test_case_2_an_own_mp_key_is_not_overwritten() -> None:
    data = {"recipient": "Mom", "mp_recipient": "kept"}
    (result,) = run([make_batch(events=[custom("Gift", custom_attributes=data)])])
    assert items(result)[-1]["attributes"] == {"mp_recipient": "kept"}


def test_case_3_placeholder_email_is_no_email_and_a_later_valid_one_works() -> None:
    placeholder = parse_batch({"mpid": 7, "timestamp_unixtime_ms": T0,
                               "user_identities": [{"identity_type": "email", "identity": "N/A"}],
                               "events": [custom("Viewed")]})  # fmt: skip
    assert placeholder.email is None
    assert placeholder.ignored == {"email_invalid": 1}
    first = transform(placeholder, None, DEFAULT)
    assert (first.operations, first.outcome) == ([], "skipped_no_email")
    later = make_batch(at=T0 + 1, email="val@example.com", events=[custom("Bought", at=T0 + 1)])
    second = transform(later, first.state, DEFAULT)
    assert [item["identifiers"] for item in items(second)] == [{"email": "val@example.com"}] * 2


@pytest.mark.parametrize(
    ("name", "sent_as"),
    [("id", "mp_id"), ("email", "mp_email"), ("cio_id", "mp_cio_id"), ("phone", "mp_phone"),
     ("anonymous_id", "mp_anonymous_id"), ("created_at", "mp_created_at"),
     ("unsubscribed", "mp_unsubscribed"), ("first_name", "mp_first_name"),
     ("SegmentMembership", "mp_SegmentMembership"), ("_update", "mp__update"),
     ("_timestamp", "mp__timestamp"), ("cio_subscription_preferences",
      "mp_cio_subscription_preferences"),
     ("cio_subscription_preferences.topics.topic_1",
      "mp_cio_subscription_preferences.topics.topic_1"),
     ("email.work", "mp_email.work"),
     ("Email", "Email"), ("plan", "plan"), ("mobile", "mobile"), ("emails", "emails")],
)  # fmt: skip
def test_reserved_person_attribute_names_are_renamed_and_counted(name: str, sent_as: str) -> None:
    (result,) = run([make_batch(user_attributes={name: "v"})])
    assert attributes(result)[sent_as] == "v"
    assert result.limits.get(LIMIT_ATTRIBUTE_RENAMED, 0) == (sent_as != name)


def test_deleting_a_reserved_name_deletes_its_renamed_attribute() -> None:
    (result,) = run([make_batch(deleted_user_attributes=["email", "_update"])])
    assert attributes(result) == {"email": EMAIL, "mp_email": "", "mp__update": ""}


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        pytest.param(None, True, id="null-is-a-tag"),
        pytest.param("text", "text", id="string"),
        pytest.param("", "", id="empty-string"),
        pytest.param(42, 42, id="integer"),
        pytest.param(2**53, 2**53, id="integer-at-2^53"),
        pytest.param(2**53 + 1, "9007199254740993", id="integer-beyond-2^53-as-text"),
        pytest.param(-(2**60), str(-(2**60)), id="negative-integer-beyond-2^53-as-text"),
        pytest.param(1.5, 1.5, id="float"),
        pytest.param(False, False, id="bool"),
        pytest.param(["a", 1, True], ["a", 1, True], id="list"),
        pytest.param([], [], id="empty-list"),
    ],
)
def test_every_json_value_kind_has_a_customerio_form(value: Any, sent: Any) -> None:
    (result,) = run([make_batch(user_attributes={"x": value})])
    assert attributes(result)["x"] == sent
    assert type(attributes(result)["x"]) is type(sent)


@pytest.mark.parametrize(
    "value", [{"nested": 1}, [{"a": 1}], [["a"]], ["a", None]], ids=["object", "list-of-objects",
                                                                    "list-of-lists", "list-null"]
)  # fmt: skip
def test_values_that_are_not_mparticle_attribute_values_are_not_sent(value: Any) -> None:
    (result,) = run([make_batch(user_attributes={"x": value, "y": 1})])
    assert "x" not in attributes(result)
    assert result.state is not None
    assert make_batch(user_attributes={"x": value}).ignored == {"attribute_value_invalid": 1}


# --- OpenAPI validation ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_validator() -> Any:
    document = load_json(CUSTOMERIO_OPENAPI_FILE)
    uri = "urn:customerio-track-api"
    registry: Registry[Any] = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT202012)
    )

    def validator(pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{uri}#{pointer}"}, registry=registry)

    return {
        "batch": validator(
            "/paths/~1api~1v2~1batch/post/requestBody/content/application~1json/schema"
        ),
        "identify": validator("/components/schemas/identify_person"),
        "event": validator("/components/schemas/person_event"),
        "screen": validator("/components/schemas/person_screen"),
    }


def every_kind_of_operation() -> list[Operation]:
    config = settings(send_created_at=True, resubscribe_on_opt_in=True)
    batches = [
        make_batch(
            user_attributes={**USER_ATTRIBUTES, "tags": ["a", "b"], "n": None, "f": 1.5},
            events=[custom("  Add To Cart ", custom_attributes={"sku": "A1", "price": 3.5}),
                    screen("Home")],
        ),
        make_batch(at=T0 + 1, customer_id="c-1", deleted_user_attributes=["plan"],
                   events=[opt_out(True, at=T0 + 1)]),
        make_batch(at=T0 + 2, customer_id="c-1", events=[opt_out(False, at=T0 + 2), custom()]),
        make_batch(at=T0 + 3, user_attributes={f"a{index}": index for index in range(400)}),
    ]  # fmt: skip
    operations = [op for result in run(batches, config) for op in result.operations]
    for batch in parse_record(read_bytes(MPARTICLE_SAMPLE_FILE)):
        batch.email = EMAIL
        operations.extend(transform(batch, None, config).operations)
    return operations


def test_every_item_validates_against_customerio_openapi_batch_schema(
    batch_validator: dict[str, Any],
) -> None:
    operations = every_kind_of_operation()
    assert {op.action for op in operations} == {"identify", "event", "screen"}
    batch_errors = list(
        batch_validator["batch"].iter_errors({"batch": [op.item for op in operations]})
    )
    assert batch_errors == []
    for operation in operations:
        errors = list(batch_validator[operation.action].iter_errors(operation.item))
        assert errors == [], (operation.item, [error.message for error in errors])
        assert len(operation.item["identifiers"]) == 1
        if operation.action != "identify":
            assert len(operation.item["id"]) == 26
            assert set(operation.item["id"]) <= CROCKFORD


def test_openapi_validator_catches_a_broken_item(batch_validator: dict[str, Any]) -> None:
    broken = {"type": "person", "identifiers": {"id": 5}, "action": "event", "name": "x"}
    assert list(batch_validator["event"].iter_errors(broken)) != []


def test_identify_carries_the_update_time_so_late_requests_cannot_overwrite() -> None:
    from app.core.mparticle import parse_record  # noqa: PLC0415
    from app.core.transform import transform  # noqa: PLC0415
    from app.settings import load_settings  # noqa: PLC0415

    raw = (
        b'{"mpid": 1, "timestamp_unixtime_ms": 1764400000999,'
        b' "user_identities": {"email": "a@example.com"}}'
    )
    (batch,) = parse_record(raw)
    (identify,) = transform(
        batch, None, core_options(load_settings(forwarding_enabled=False))
    ).operations
    assert identify.item["timestamp"] == 1_764_400_000


RECORD_MS = T0 + 5_000  # the Kafka record's time: mParticle wrote the batch after its time


@pytest.mark.parametrize(
    ("batch_time", "record_ms", "known_ms", "timestamp"),
    [
        pytest.param(T0, RECORD_MS, None, T0 // 1000, id="batch-time-wins"),
        pytest.param(None, RECORD_MS, None, RECORD_MS // 1000, id="missing-record-time"),
        pytest.param("soon", RECORD_MS, None, RECORD_MS // 1000, id="invalid-record-time"),
        pytest.param(-5, RECORD_MS, None, RECORD_MS // 1000, id="negative-record-time"),
        pytest.param(None, None, None, None, id="missing-no-record-time-left-out"),
        pytest.param(None, RECORD_MS, T0 - 60_000, RECORD_MS // 1000,
                     id="missing-record-time-newer-than-state"),
        pytest.param(None, RECORD_MS, RECORD_MS + 60_000, (RECORD_MS + 60_000) // 1000,
                     id="missing-state-time-newer-than-record"),
        pytest.param(None, None, T0 - 60_000, (T0 - 60_000) // 1000,
                     id="missing-no-record-time-state-time"),
    ],
)  # fmt: skip
def test_identify_without_batch_time_falls_back_to_the_record_time(
    batch_time: object, record_ms: int | None, known_ms: int | None, timestamp: int | None
) -> None:
    state = None if known_ms is None else UserState(email="old@example.com", profile_at_ms=known_ms)
    batch = make_batch(timestamp_unixtime_ms=batch_time, user_attributes={"plan": "pro"})
    (identify,) = identifies(transform(batch, state, DEFAULT, record_ms=record_ms))
    assert identify.get("timestamp") == timestamp


def test_the_pipeline_gives_the_record_time_to_the_identify() -> None:
    from app.core.pipeline import process_batch_record  # noqa: PLC0415
    from app.records import SourcePosition, decode_operation_batch  # noqa: PLC0415

    value = b'{"mpid": 1, "user_identities": {"email": "a@example.com"}}'
    result = process_batch_record(
        b"1", value, SourcePosition("t", 0, 3), {}.get, DEFAULT, record_ms=RECORD_MS
    )
    assert result.operations is not None
    (operation,) = decode_operation_batch(result.operations[1])["operations"]
    assert orjson.loads(operation["item"])["timestamp"] == RECORD_MS // 1000
