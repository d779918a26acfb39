"""Hand-written checks of Customer.io Track API requests, with production's limits.

Pure functions: nothing here does I/O or keeps state. :func:`item_error` checks one v2 item (a
``/api/v2/batch`` element or an ``/api/v2/entity`` body); :func:`v1_identify_error` and
:func:`v1_event_error` check v1 bodies; :func:`path_identifier` reads a v1 path identifier.
They run once per item on the hot path of benchmarks, so they test types with ``type(x) is``,
measure UTF-8 only when a string could be over its limit, and serialise an item only when the
whole request is larger than the item limit.

Limits (SPEC §3 end and §6), the strict reading where "KB" is ambiguous, so the emulator never
accepts what the real service might reject: person identifier non-empty and at most 150 bytes;
exactly one identifier among ``id``, ``email``, ``cio_id``; attribute name non-empty and at most
150 bytes; attribute value at most 1000 bytes (strings as UTF-8, lists and objects as JSON); at
most 300 attributes per identify; event name non-blank after trimming and at most 100 bytes;
event data an object of at most 100,000 bytes of JSON; event ``id`` a ULID; timestamps integer
unix seconds (a value of 10^10 or more is taken for milliseconds and refused); a v2 item at most
32,000 bytes; a v2 batch request at most 500,000 bytes.

Failure semantics: nothing raises. A v2 check returns an :class:`ItemError` (``reason`` is a
stable slug, ``field`` a dotted path inside the item, ``message`` the detail) or ``None``; a v1
check returns the error message or ``None``. Person items with the actions ``merge``,
``add_relationships`` and ``delete_relationships``, object and delivery items, and ``phone``
identifiers are refused as ``unsupported``: the forwarder never sends them and the emulator does
not model them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import orjson

from app.customerio.limits import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES_PER_IDENTIFY,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_ITEM_BYTES,
)

# Unix seconds up to the year 2286; anything larger is a millisecond timestamp sent by mistake.
MAX_TIMESTAMP_SECONDS: Final = 9_999_999_999

# ItemError.reason values.
REASON_REQUIRED: Final = "required"
REASON_INVALID: Final = "invalid"
REASON_TOO_LONG: Final = "too_long"
REASON_TOO_MANY: Final = "too_many"
REASON_TOO_LARGE: Final = "too_large"
REASON_UNSUPPORTED: Final = "unsupported"

IdentifierKind: TypeAlias = Literal["id", "email", "cio_id"]
Identifier: TypeAlias = tuple[IdentifierKind, str]

IDENTIFIER_KINDS: Final[frozenset[str]] = frozenset({"id", "email", "cio_id"})
EVENT_ACTIONS: Final[frozenset[str]] = frozenset({"event", "screen", "page"})
PLAIN_ACTIONS: Final[frozenset[str]] = frozenset({"delete", "suppress", "unsuppress"})
DEVICE_ACTIONS: Final[frozenset[str]] = frozenset({"add_device", "delete_device"})
UNSUPPORTED_ACTIONS: Final[frozenset[str]] = frozenset(
    {"merge", "add_relationships", "delete_relationships"}
)
V1_EVENT_TYPES: Final[frozenset[str]] = frozenset({"event", "page", "screen"})
# Keys of a v1 identify body that are instructions, not attributes.
V1_IDENTIFY_CONTROL_KEYS: Final[frozenset[str]] = frozenset(
    {"_update", "_timestamp", "cio_relationships"}
)

ULID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one v2 item is refused, in the shape of Customer.io's 207 and 400 error objects."""

    reason: str
    field: str
    message: str

    def as_json(self, batch_index: int | None = None) -> dict[str, Any]:
        """The error object; with ``batch_index`` for a 207 batch answer."""
        error: dict[str, Any] = {
            "reason": self.reason,
            "field": self.field,
            "message": self.message,
        }
        if batch_index is not None:
            error = {"batch_index": batch_index, **error}
        return error


def item_error(  # noqa: PLR0911 - one guard per rule reads best
    item: Any, *, check_size: bool
) -> ItemError | None:
    """Why the v2 ``item`` would be refused, or ``None`` when it is valid.

    ``check_size`` asks for the 32,000-byte item limit to be measured; callers skip it when the
    whole request is no larger than that.
    """
    if type(item) is not dict:
        return ItemError(REASON_INVALID, "", "each item must be a JSON object")
    if check_size and len(orjson.dumps(item)) > MAX_ITEM_BYTES:
        return ItemError(
            REASON_TOO_LARGE, "", f"item is larger than {MAX_ITEM_BYTES} bytes of JSON"
        )
    kind = item.get("type")
    if kind != "person":
        if kind in ("object", "delivery"):
            return ItemError(REASON_UNSUPPORTED, "type", f"the emulator does not model {kind}s")
        return ItemError(REASON_INVALID, "type", "type must be 'person', 'object' or 'delivery'")
    action = item.get("action")
    if type(action) is not str:
        return ItemError(REASON_REQUIRED, "action", "action must be a string")
    if action in UNSUPPORTED_ACTIONS:
        return ItemError(REASON_UNSUPPORTED, "action", f"the emulator does not model {action}")
    error = identifiers_error(item.get("identifiers"))
    if error is not None:
        return error
    if action == "identify":
        return _timestamp_error(item, "timestamp") or _identify_attributes_error(
            item.get("attributes"), "attributes."
        )
    if action in EVENT_ACTIONS:
        return _event_error(item, "attributes")
    if action in DEVICE_ACTIONS:
        return _device_error(item.get("device"))
    if action in PLAIN_ACTIONS:
        return None
    return ItemError(REASON_INVALID, "action", f"unknown person action {action!r}")


def identifiers_error(identifiers: Any) -> ItemError | None:
    """Why ``identifiers`` is not exactly one usable person identifier, or ``None``."""
    if type(identifiers) is not dict:
        return ItemError(REASON_REQUIRED, "identifiers", "identifiers must be an object")
    if len(identifiers) != 1:
        return ItemError(
            REASON_INVALID, "identifiers", "identifiers must hold exactly one of id, email, cio_id"
        )
    ((kind, value),) = identifiers.items()
    field = f"identifiers.{kind}"
    if kind == "phone":  # a workspace option of Customer.io's; the forwarder never sends it
        return ItemError(REASON_UNSUPPORTED, field, "the emulator does not model phone identifiers")
    if kind not in IDENTIFIER_KINDS:
        return ItemError(REASON_INVALID, field, "identifier must be one of id, email, cio_id")
    message = identifier_value_error(value)
    if message is not None:
        reason = REASON_TOO_LONG if type(value) is str and value else REASON_INVALID
        return ItemError(reason, field, message)
    return None


def identifier_value_error(value: Any) -> str | None:
    """Why ``value`` cannot name a person (not a non-empty string of at most 150 bytes)."""
    if type(value) is not str or not value:
        return "identifier must be a non-empty string"
    if _over(value, MAX_IDENTIFIER_BYTES):
        return f"identifier is longer than {MAX_IDENTIFIER_BYTES} bytes"
    return None


def path_identifier(value: str) -> Identifier:
    """The identifier a v1 path names, told by its shape as Customer.io does.

    ``cio_<value>`` is a ``cio_id``, a value with ``@`` an email, anything else an ``id``.
    """
    if value.startswith("cio_"):
        return "cio_id", value.removeprefix("cio_")
    if "@" in value:
        return "email", value
    return "id", value


def v1_identify_error(identifier: str, body: Any) -> str | None:
    """Why a ``PUT /api/v1/customers/{identifier}`` would be refused, or ``None``."""
    message = identifier_value_error(identifier)
    if message is not None:
        return message
    if type(body) is not dict:
        return "the body must be a JSON object of attributes"
    attributes = {k: v for k, v in body.items() if k not in V1_IDENTIFY_CONTROL_KEYS}
    error = _timestamp_error(body, "_timestamp") or _identify_attributes_error(attributes, "")
    return None if error is None else error.message


def v1_event_error(identifier: str, body: Any, body_bytes: int) -> str | None:
    """Why a ``POST /api/v1/customers/{identifier}/events`` would be refused, or ``None``.

    ``body_bytes`` is the request's size: event data cannot be larger, so it is only
    serialised again when the body is over the event data limit.
    """
    message = identifier_value_error(identifier)
    if message is not None:
        return message
    if type(body) is not dict:
        return "the body must be a JSON object"
    event_type = body.get("type", "event")
    if event_type not in V1_EVENT_TYPES:
        return "type must be one of event, page, screen"
    error = _event_error(body, "data", measure_data=body_bytes > MAX_EVENT_DATA_BYTES)
    return None if error is None else error.message


def _event_error(  # noqa: PLR0911 - one guard per rule reads best
    event: dict[str, Any], data_key: str, *, measure_data: bool = False
) -> ItemError | None:
    name = event.get("name")
    if type(name) is not str or not name.strip():
        return ItemError(REASON_REQUIRED, "name", "event name must be a non-blank string")
    if _over(name.strip(), MAX_EVENT_NAME_BYTES):
        return ItemError(
            REASON_TOO_LONG, "name", f"event name is longer than {MAX_EVENT_NAME_BYTES} bytes"
        )
    event_id = event.get("id")
    if event_id is not None and (type(event_id) is not str or not ULID_PATTERN.fullmatch(event_id)):
        return ItemError(REASON_INVALID, "id", "event id must be a ULID")
    error = _timestamp_error(event, "timestamp")
    if error is not None:
        return error
    data = event.get(data_key)
    if data is None:
        return None
    if type(data) is not dict:
        return ItemError(REASON_INVALID, data_key, "event data must be an object")
    if measure_data and len(orjson.dumps(data)) > MAX_EVENT_DATA_BYTES:
        return ItemError(
            REASON_TOO_LARGE, data_key, f"event data is larger than {MAX_EVENT_DATA_BYTES} bytes"
        )
    return None


def _timestamp_error(container: dict[str, Any], key: str) -> ItemError | None:
    if key not in container:
        return None
    value = container[key]
    if type(value) is not int or value < 0:
        return ItemError(REASON_INVALID, key, "timestamp must be integer unix seconds")
    if value > MAX_TIMESTAMP_SECONDS:
        return ItemError(
            REASON_INVALID, key, "timestamp must be unix seconds; this looks like milliseconds"
        )
    return None


def _identify_attributes_error(  # noqa: PLR0911 - one guard per rule reads best
    attributes: Any, prefix: str
) -> ItemError | None:
    """Attribute limits of an identify; ``prefix`` is how fields are named in errors."""
    if attributes is None:
        return None
    if type(attributes) is not dict:
        return ItemError(REASON_INVALID, prefix.rstrip("."), "attributes must be an object")
    if len(attributes) > MAX_ATTRIBUTES_PER_IDENTIFY:
        return ItemError(
            REASON_TOO_MANY,
            prefix.rstrip("."),
            f"more than {MAX_ATTRIBUTES_PER_IDENTIFY} attributes in one identify",
        )
    for name, value in attributes.items():
        if not name:
            return ItemError(REASON_INVALID, prefix.rstrip("."), "attribute name is empty")
        if _over(name, MAX_ATTRIBUTE_NAME_BYTES):
            return ItemError(
                REASON_TOO_LONG,
                prefix + name,
                f"attribute name is longer than {MAX_ATTRIBUTE_NAME_BYTES} bytes",
            )
        if name == "email" and type(value) is not str:
            return ItemError(REASON_INVALID, prefix + name, "email must be a string")
        if _value_over_limit(value):
            return ItemError(
                REASON_TOO_LONG,
                prefix + name,
                f"attribute value is longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes",
            )
    return None


def _device_error(device: Any) -> ItemError | None:
    if type(device) is not dict:
        return ItemError(REASON_REQUIRED, "device", "device must be an object")
    token = device.get("token")
    if type(token) is not str or not token:
        return ItemError(REASON_REQUIRED, "device.token", "device token must be a non-empty string")
    return None


def _value_over_limit(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return _over(value, MAX_ATTRIBUTE_VALUE_BYTES)
    if kind is list or kind is dict:
        return len(orjson.dumps(value)) > MAX_ATTRIBUTE_VALUE_BYTES
    return False


def _over(text: str, limit: int) -> bool:
    """Whether ``text`` is longer than ``limit`` bytes of UTF-8 (encoded only when it may be)."""
    return len(text) * 4 > limit and len(text.encode("utf-8")) > limit
