"""Differential: hypothesis-generated Track API items, judged by Customer.io's OpenAPI and by the
emulator's validation; every disagreement is a documented, intentional deviation.

The OpenAPI side is the ``jsonschema`` reference validator on the raw document (the batch item
schema and the action's component schema, formats included), as in
``tests/unit/test_openapi_conformance.py``. The emulator side is what its server runs for each v2
item: :func:`app.dev.emulator.validation.item_error`, then
:func:`app.dev.emulator.openapi.schema_error`.

- The emulator must never accept an item the OpenAPI refuses (it would hide a forwarder bug).
- Where it refuses an item the OpenAPI accepts, its reason must be one of :data:`DEVIATIONS`,
  the table ``docs/emulator.md`` ("Intentional deviations from the OpenAPI") lists; each has a
  concrete example below, so none is listed without being real.

Items are built field by field from valid and invalid choices (each field valid more often than
not, so a single bad field is what decides most items) for every action the forwarder can send.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.dev.emulator.openapi import schema_error
from app.dev.emulator.validation import ItemError, item_error
from tests.unit.test_openapi_conformance import openapi_errors
from tests.unit.test_properties import PROFILE

ULID = "01HZX3B9Q5K8M2N4P6R7S8T9VW"

# name → (does this emulator refusal belong to the deviation?, an item showing it)
DEVIATIONS: dict[str, tuple[Callable[[ItemError], bool], dict[str, Any]]] = {
    "exactly one identifier (the OpenAPI says so in prose only)": (
        lambda e: e.field == "identifiers" and "exactly one" in e.message,
        {"type": "person", "identifiers": {"id": "a", "email": None}, "action": "delete"},
    ),
    "phone identifiers are not modelled (unsupported)": (
        lambda e: e.field == "identifiers.phone" and e.reason == "unsupported",
        {"type": "person", "identifiers": {"phone": "+14155552671"}, "action": "delete"},
    ),
    "identifier non-empty and at most 150 bytes (Track API limits)": (
        lambda e: e.field.startswith("identifiers.") and "identifier" in e.message,
        {"type": "person", "identifiers": {"cio_id": ""}, "action": "delete"},
    ),
    "email identifier is an address (reserved-attributes doc)": (
        lambda e: e.field == "identifiers.email" and "not a valid address" in e.message,
        {"type": "person", "identifiers": {"email": "N/A"}, "action": "delete"},
    ),
    "an identify's email attribute is a string address (reserved-attributes doc)": (
        lambda e: e.field == "attributes.email",
        {"type": "person", "identifiers": {"id": "a"}, "action": "identify",
         "attributes": {"email": None}},
    ),
    "event name non-blank and at most 100 bytes (Track API limits)": (
        lambda e: e.field == "name" and e.reason in ("required", "too_long"),
        {"type": "person", "identifiers": {"id": "a"}, "action": "event", "name": " "},
    ),
    "attribute name, value and count limits (Track API limits)": (
        lambda e: e.field.startswith("attributes") and e.reason in ("too_long", "too_many"),
        {"type": "person", "identifiers": {"id": "a"}, "action": "identify",
         "attributes": {"a": "v" * 1001}},
    ),
    "attribute names are non-empty (the pessimistic reading)": (
        lambda e: e.field == "attributes" and e.message == "attribute name is empty",
        {"type": "person", "identifiers": {"id": "a"}, "action": "identify",
         "attributes": {"": "v"}},
    ),
    "timestamps are unix seconds from 0 to 9,999,999,999": (
        lambda e: e.field == "timestamp" and e.reason == "invalid",
        {"type": "person", "identifiers": {"id": "a"}, "action": "identify",
         "timestamp": 10_000_000_000},
    ),
    "device token non-empty": (
        lambda e: e.field == "device.token",
        {"type": "person", "identifiers": {"id": "a"}, "action": "add_device",
         "device": {"token": "", "platform": "ios"}},
    ),
}  # fmt: skip


def emulator_error(item: dict[str, Any]) -> ItemError | None:
    """What the emulator's server decides for one v2 item."""
    return item_error(item, check_size=True) or schema_error(item)


def deviation(error: ItemError) -> str | None:
    """The documented deviation an emulator refusal belongs to, if any."""
    return next((name for name, (belongs, _) in DEVIATIONS.items() if belongs(error)), None)


# --- generated items ------------------------------------------------------------------------------


def _mostly(valid: st.SearchStrategy[Any], *invalid: st.SearchStrategy[Any]) -> Any:
    """``valid`` three times as often as any invalid choice."""
    return st.one_of(valid, valid, valid, *invalid)


_text = st.text(max_size=12)
_int64 = st.integers(-(2**63), 2**63 - 1)
_identifiers = _mostly(
    st.one_of(
        st.fixed_dictionaries({"id": st.text(min_size=1, max_size=20)}),
        st.fixed_dictionaries({"email": st.emails()}),
        st.fixed_dictionaries({"cio_id": st.text(alphabet="0123456789abcdef", min_size=1)}),
    ),
    st.dictionaries(
        st.sampled_from(["id", "email", "cio_id", "phone", "other"]),
        st.one_of(_text, _int64, st.none(), st.just("x" * 151)),
        max_size=2,
    ),
)
_timestamps = _mostly(
    st.integers(0, 9_999_999_999),
    st.integers(-(2**40), -1),
    st.integers(10_000_000_000, 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
    st.none(),
)
_attribute_names = _mostly(
    st.text(min_size=1, max_size=20),
    st.sampled_from(["", "email", "id", "_update", "cio_subscription_preferences", "n" * 151]),
)
_attribute_values = _mostly(
    st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=20), st.lists(_text, max_size=2)),
    st.none(),
    st.floats(allow_nan=False),
    st.just("v" * 1001),
    st.dictionaries(_text, _text, max_size=2),
    st.emails(),
)
_attributes = _mostly(
    st.dictionaries(_attribute_names, _attribute_values, max_size=5),
    st.none(),
    _text,
    st.lists(_text, max_size=1),
)
_event_names = _mostly(st.text(min_size=1, max_size=30), st.just(" "), st.just("N" * 101), _int64)
_event_ids = _mostly(st.just(ULID), st.none(), _text, st.just(ULID.lower()))
_PLATFORMS = ("ios", "android")
_device_attributes = st.dictionaries(_text, _text, max_size=2)
_devices = _mostly(
    st.fixed_dictionaries(
        {"token": st.text(min_size=1, max_size=20), "platform": st.sampled_from(_PLATFORMS)},
        optional={"last_used": _timestamps, "attributes": _device_attributes},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "token": st.one_of(st.just(""), _int64, _text),
            "platform": st.sampled_from(["web", "", "IOS", "ios"]),
        },
    ),
    st.none(),
    _text,
)
_ACTIONS = ("identify", "event", "screen", "page", "delete", "suppress", "unsuppress",
            "add_device", "delete_device")  # fmt: skip


@st.composite
def track_items(draw: st.DrawFn) -> dict[str, Any]:
    """One v2 person item of an action the forwarder sends, each field valid or not."""
    action = draw(st.sampled_from(_ACTIONS))
    item: dict[str, Any] = {"type": "person", "identifiers": draw(_identifiers), "action": action}
    optional: dict[str, st.SearchStrategy[Any]] = {"timestamp": _timestamps}
    if action == "identify":
        optional["attributes"] = _attributes
    elif action in ("event", "screen", "page"):
        item["name"] = draw(_event_names)
        optional |= {"id": _event_ids, "attributes": _attributes}
    elif action in ("add_device", "delete_device"):
        item["device"] = draw(_devices)
    for key, values in optional.items():
        if draw(st.booleans()):
            item[key] = draw(values)
    return item


@PROFILE
@given(track_items())
def test_the_emulator_refuses_what_the_openapi_refuses_and_deviates_only_as_documented(
    item: dict[str, Any],
) -> None:
    openapi = openapi_errors(item)
    emulator = emulator_error(item)
    if openapi:
        assert emulator is not None, f"the emulator accepts what the OpenAPI refuses: {openapi}"
    elif emulator is not None:
        assert deviation(emulator) is not None, f"undocumented deviation: {emulator}"


@pytest.mark.parametrize("name", list(DEVIATIONS))
def test_each_documented_deviation_is_real(name: str) -> None:
    """The OpenAPI accepts the example and the emulator refuses it for that very reason."""
    example = DEVIATIONS[name][1]
    assert openapi_errors(example) == []
    error = emulator_error(example)
    assert error is not None
    assert deviation(error) == name


@pytest.mark.parametrize(
    "item",
    [
        {"type": "person", "identifiers": {"id": "a"}, "action": "identify", "attributes": None},
        {"type": "person", "identifiers": {"id": "a"}, "action": "event", "name": "x",
         "attributes": None},
        {"type": "person", "identifiers": {"id": "a"}, "action": "add_device",
         "device": {"token": "t"}},
        {"type": "person", "identifiers": {"id": "a"}, "action": "add_device",
         "device": {"token": "t", "platform": "web"}},
        {"type": "person", "identifiers": {"id": "a"}, "action": "identify", "timestamp": 1.5},
        {"type": "person", "identifiers": {"id": "a"}, "action": "event", "name": "x", "id": None},
    ],
    ids=["identify attributes null", "event attributes null", "device without platform",
         "device platform web", "timestamp not an integer", "event id null"],
)  # fmt: skip
def test_issue_21_strictness_cases_agree_with_the_openapi(item: dict[str, Any]) -> None:
    """The cases issue 21 named (``attributes: null``, devices without a platform, ...): the
    OpenAPI refuses each, and so does the emulator."""
    assert openapi_errors(item) != []
    assert emulator_error(item) is not None
