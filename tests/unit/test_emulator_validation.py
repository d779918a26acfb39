"""Emulator validation: every Customer.io limit accepts its boundary and refuses one past it."""

from __future__ import annotations

from typing import Any

import pytest

from app.customerio.limits import MAX_ITEM_BYTES
from app.dev.emulator.validation import (
    ItemError,
    item_error,
    path_identifier,
    v1_event_error,
    v1_identify_error,
)

ULID = "01HZX3B9Q5K8M2N4P6R7S8T9VW"


def person(action: str, identifiers: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "type": "person",
        "identifiers": {"id": "42"} if identifiers is None else identifiers,
        "action": action,
        **fields,
    }


def identify(**attributes: Any) -> dict[str, Any]:
    return person("identify", attributes=attributes)


def event(**fields: Any) -> dict[str, Any]:
    return person("event", **{"name": "purchase", "id": ULID, "timestamp": 1_700_000_000, **fields})


VALID_ITEMS = {
    "identify by id with what transform sends": identify(
        email="ann@example.com", first_name="Ann", unsubscribed=True, created_at=1_700_000_000
    ),
    "identify by email": person("identify", {"email": "ann@example.com"}, attributes={}),
    "identify by cio_id": person("identify", {"cio_id": "0000002a"}, attributes={"a": 1}),
    "identify without attributes": person("identify"),
    "identify removing an attribute": identify(plan=""),
    "identify with a timestamp": person("identify", timestamp=1_700_000_000, attributes={}),
    "300 attributes": identify(**{f"a{n}": n for n in range(300)}),
    "150-byte attribute name": identify(**{"é" * 75: 1}),
    "1000-byte string value": identify(bio="€" * 333 + "x"),
    "1000-byte list value": identify(tags=["x" * 996]),
    "null, number and bool values": identify(n=None, f=1.5, b=False),
    "150-byte identifier": person("delete", {"id": "x" * 150}),
    "event with data": event(attributes={"sku": "A1", "price": 3.5}),
    "event without id or timestamp": person("event", name="purchase"),
    "100-byte event name, trimmed": event(name="  " + "n" * 100 + " "),
    "lower-case ULID": event(id=ULID.lower()),
    "timestamp 0": event(timestamp=0),
    "largest timestamp in seconds": event(timestamp=9_999_999_999),
    "screen": person("screen", name="Home", id=ULID, timestamp=1_700_000_000),
    "page": person("page", name="/pricing"),
    "delete": person("delete"),
    "suppress": person("suppress"),
    "unsuppress": person("unsuppress", {"email": "ann@example.com"}),
    "add_device": person("add_device", device={"token": "t", "platform": "ios"}),
    "delete_device": person("delete_device", device={"token": "t"}),
}


@pytest.mark.parametrize("item", VALID_ITEMS.values(), ids=VALID_ITEMS.keys())
def test_valid_items_pass(item: dict[str, Any]) -> None:
    assert item_error(item, check_size=True) is None


INVALID_ITEMS: list[tuple[str, Any, str, str]] = [
    ("not an object", ["person"], "invalid", ""),
    ("no type", {"identifiers": {"id": "1"}, "action": "identify"}, "invalid", "type"),
    ("object type", {**person("identify"), "type": "object"}, "unsupported", "type"),
    ("no action", {"type": "person", "identifiers": {"id": "1"}}, "required", "action"),
    ("merge", person("merge"), "unsupported", "action"),
    ("unknown action", person("fly"), "invalid", "action"),
    ("no identifiers", {"type": "person", "action": "delete"}, "required", "identifiers"),
    ("two identifiers", person("delete", {"id": "1", "email": "a@b.c"}), "invalid", "identifiers"),
    ("no identifier", person("delete", {}), "invalid", "identifiers"),
    ("phone identifier", person("delete", {"phone": "+1555"}), "unsupported", "identifiers.phone"),
    ("empty id", person("delete", {"id": ""}), "invalid", "identifiers.id"),
    ("numeric id", person("delete", {"id": 42}), "invalid", "identifiers.id"),
    ("151-byte id", person("delete", {"id": "x" * 151}), "too_long", "identifiers.id"),
    ("151-byte email", person("delete", {"email": "é" * 75 + "@"}), "too_long",
     "identifiers.email"),
    ("attributes not an object", person("identify", attributes=[1]), "invalid", "attributes"),
    ("301 attributes", identify(**{f"a{n}": n for n in range(301)}), "too_many", "attributes"),
    ("151-byte attribute name", identify(**{"é" * 75 + "x": 1}), "too_long",
     "attributes." + "é" * 75 + "x"),
    ("empty attribute name", identify(**{"": 1}), "invalid", "attributes"),
    ("1001-byte string value", identify(bio="x" * 1001), "too_long", "attributes.bio"),
    ("1002-byte UTF-8 value", identify(bio="€" * 334), "too_long", "attributes.bio"),
    ("1001-byte list value", identify(tags=["x" * 997]), "too_long", "attributes.tags"),
    ("email attribute not a string", identify(email=5), "invalid", "attributes.email"),
    ("identify timestamp in ms", person("identify", timestamp=1_700_000_000_000), "invalid",
     "timestamp"),
    ("event without name", person("event", id=ULID), "required", "name"),
    ("blank event name", event(name="   "), "required", "name"),
    ("101-byte event name", event(name="n" * 101), "too_long", "name"),
    ("event id not a ULID", event(id="not-a-ulid"), "invalid", "id"),
    ("event id a number", event(id=7), "invalid", "id"),
    ("event id out of ULID range", event(id="8" + ULID[1:]), "invalid", "id"),
    ("float timestamp", event(timestamp=1_700_000_000.5), "invalid", "timestamp"),
    ("timestamp in milliseconds", event(timestamp=1_700_000_000_000), "invalid", "timestamp"),
    ("negative timestamp", event(timestamp=-1), "invalid", "timestamp"),
    ("bool timestamp", event(timestamp=True), "invalid", "timestamp"),
    ("string timestamp", event(timestamp="1700000000"), "invalid", "timestamp"),
    ("event data a list", event(attributes=[1]), "invalid", "attributes"),
    ("screen without name", person("screen"), "required", "name"),
    ("add_device without device", person("add_device"), "required", "device"),
    ("device without token", person("add_device", device={"token": ""}), "required",
     "device.token"),
    ("item over 32,000 bytes", event(attributes={"blob": "x" * MAX_ITEM_BYTES}), "too_large", ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("item", "reason", "field"),
    [case[1:] for case in INVALID_ITEMS],
    ids=[case[0] for case in INVALID_ITEMS],
)
def test_invalid_items_name_reason_and_field(item: Any, reason: str, field: str) -> None:
    error = item_error(item, check_size=True)
    assert error is not None
    assert (error.reason, error.field) == (reason, field)
    assert error.message


def test_item_size_is_measured_only_when_asked() -> None:
    big = event(attributes={"blob": "x" * MAX_ITEM_BYTES})
    assert item_error(big, check_size=False) is None
    assert item_error(big, check_size=True) == ItemError(
        "too_large", "", f"item is larger than {MAX_ITEM_BYTES} bytes of JSON"
    )


def test_error_json_puts_the_batch_index_first() -> None:
    error = ItemError("too_long", "name", "too long")
    assert error.as_json() == {"reason": "too_long", "field": "name", "message": "too long"}
    assert list(error.as_json(3)) == ["batch_index", "reason", "field", "message"]
    assert error.as_json(3)["batch_index"] == 3


@pytest.mark.parametrize(
    ("path_value", "expected"),
    [
        ("42", ("id", "42")),
        ("ann@example.com", ("email", "ann@example.com")),
        ("cio_0000002a", ("cio_id", "0000002a")),
        ("+14155552671", ("id", "+14155552671")),
    ],
)
def test_path_identifier_is_told_by_shape(path_value: str, expected: tuple[str, str]) -> None:
    assert path_identifier(path_value) == expected


@pytest.mark.parametrize(
    ("identifier", "body", "fragment"),
    [
        ("42", {"email": "a@b.c", "plan": "pro", "_update": True}, None),
        ("42", {}, None),
        ("42", {"x": "€" * 333}, None),
        ("", {}, "non-empty"),
        ("x" * 151, {}, "150 bytes"),
        ("42", [], "JSON object"),
        ("42", {"x": "y" * 1001}, "1000 bytes"),
        ("42", {f"a{n}": n for n in range(301)}, "300 attributes"),
        ("42", {"_timestamp": 1_700_000_000_000}, "milliseconds"),
        ("42", {"email": None}, "email must be a string"),
    ],
)
def test_v1_identify(identifier: str, body: Any, fragment: str | None) -> None:
    message = v1_identify_error(identifier, body)
    if fragment is None:
        assert message is None
    else:
        assert message is not None
        assert fragment in message


@pytest.mark.parametrize(
    ("body", "body_bytes", "fragment"),
    [
        ({"name": "purchase", "data": {"p": 1}, "timestamp": 1_700_000_000, "id": ULID}, 99, None),
        ({"name": "Home", "type": "screen"}, 30, None),
        ({"name": "/p", "type": "page"}, 30, None),
        ({"name": "x", "data": {"blob": "y" * 100_000}}, 100_030, "100000 bytes"),
        ({"name": "x", "data": {"blob": "y" * 99_980}}, 100_010, None),
        ({"name": " "}, 12, "non-blank"),
        ({"name": "n" * 101}, 120, "100 bytes"),
        ({"name": "x", "type": "track"}, 30, "type must be"),
        ({"name": "x", "data": "text"}, 30, "object"),
        ({"name": "x", "timestamp": 1.5}, 30, "integer unix seconds"),
        ({"name": "x", "id": "nope"}, 30, "ULID"),
        ("purchase", 10, "JSON object"),
    ],
)  # fmt: skip
def test_v1_event(body: Any, body_bytes: int, fragment: str | None) -> None:
    message = v1_event_error("42", body, body_bytes)
    if fragment is None:
        assert message is None
    else:
        assert message is not None
        assert fragment in message


def test_v1_event_checks_the_path_identifier() -> None:
    assert v1_event_error("", {"name": "x"}, 12) == "identifier must be a non-empty string"
