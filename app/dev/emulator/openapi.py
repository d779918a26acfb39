"""Checks of v2 person items against Customer.io's own OpenAPI document, formats included.

:func:`schema_error` validates one item against the component schema of its action in
``customerio-track-api-openapi.json`` (shipped in :mod:`app.reference`): the
``/api/v2/batch`` item schema is an ``anyOf`` of those components with a ``discriminator`` on
``action``, so validating against the one the action names is the same check, without trying
the other eleven. Formats are checked (``email`` with the ``email-validator`` library, as
:mod:`app.core.emails`; ``ULID``), and two rules of Customer.io's reserved-attributes doc that the
OpenAPI leaves to prose are added: an ``email`` identifier and an identify's ``email``
attribute must be valid addresses.

Speed: the emulator checks every item of every benchmark, so the schemas are compiled to Python
with ``fastjsonschema`` (the person schemas use only draft-07 keywords; tests compare its
verdicts with the ``jsonschema`` reference implementation on the raw OpenAPI document). Before
compiling, ``$ref`` s are inlined, ``default`` s dropped (``fastjsonschema`` would write them
into the item) and ``identifiers`` left to :func:`app.dev.emulator.validation.identifiers_error`,
which runs first and is stricter than the OpenAPI's ``oneOf`` (exactly one of ``id``,
``email``, ``cio_id``, a non-empty string of at most 150 bytes): every item it lets through
passes that ``oneOf``, whose failed branches would cost more than the rest of the schema.

It runs after the hand-written limit checks of :mod:`app.dev.emulator.validation` (which name the
limit that was crossed); what passes them but not the schema is refused here with reason
``invalid``, ``field`` the dotted path of the offending value and ``message`` the schema's
complaint. The document is loaded and the schemas compiled once per process, on first use.

Failure semantics: nothing raises for an item. A missing or corrupt OpenAPI document raises
on first use (the emulator must not run without its reference).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Final

import fastjsonschema

from app.core.emails import is_email_address
from app.dev.emulator.validation import REASON_INVALID, ULID_PATTERN, ItemError
from app.reference import CUSTOMERIO_OPENAPI_FILE, load_json

# The component schema of each person action (OpenAPI: /api/v2/batch items, "Person" anyOf).
PERSON_SCHEMAS: Final = {
    "identify": "identify_person",
    "delete": "person_delete",
    "event": "person_event",
    "screen": "person_screen",
    "page": "person_page",
    "add_relationships": "person_add_relationships",
    "delete_relationships": "person_delete_relationships",
    "add_device": "person_add_device",
    "delete_device": "person_delete_device",
    "merge": "person_merge",
    "suppress": "person_suppress",
    "unsuppress": "person_unsuppress",
}

_REF_PREFIX: Final = "#/components/schemas/"

Check = Callable[[Any], Any]


def is_email_format(value: object) -> bool:
    """The OpenAPI ``email`` format: an address by :func:`app.core.emails.is_email_address`."""
    return type(value) is not str or is_email_address(value)


def is_ulid_format(value: object) -> bool:
    """The OpenAPI ``ULID`` format: 26 Crockford base-32 characters, time part in range."""
    return type(value) is not str or ULID_PATTERN.fullmatch(value) is not None


FORMATS: Final[dict[str, Callable[[Any], bool]]] = {
    "email": is_email_format,
    "ULID": is_ulid_format,
}


def schema_error(item: dict[str, Any]) -> ItemError | None:
    """Why the person ``item`` fails the OpenAPI schema of its action, or ``None``.

    ``item`` must already have passed :func:`app.dev.emulator.validation.item_error` (a person
    item with a known action and valid identifiers)."""
    action = item["action"]
    fast = _compiled(detailed=False).get(action)
    if fast is None:
        return None
    try:
        fast(item)
    except fastjsonschema.JsonSchemaValueException:
        return _detailed_error(action, item)
    identifiers = item["identifiers"]
    if "email" in identifiers and not is_email_format(identifiers["email"]):
        return ItemError(REASON_INVALID, "identifiers.email", "email is not a valid address")
    attributes = item.get("attributes")
    if (
        action == "identify"
        and type(attributes) is dict
        and "email" in attributes
        and not is_email_format(attributes["email"])
    ):
        return ItemError(REASON_INVALID, "attributes.email", "email is not a valid address")
    return None


def _detailed_error(action: str, item: dict[str, Any]) -> ItemError:
    try:
        _compiled(detailed=True)[action](item)
    except fastjsonschema.JsonSchemaValueException as exc:
        field = ".".join(str(part) for part in exc.path[1:])  # path[0] is "data"
        return ItemError(REASON_INVALID, field, exc.message.removeprefix("data.")[:300])
    return ItemError(REASON_INVALID, "", "item does not match the OpenAPI schema")


@cache
def _compiled(*, detailed: bool) -> dict[str, Check]:
    """One compiled check per person action; ``detailed`` ones report the failing path."""
    schemas = load_json(CUSTOMERIO_OPENAPI_FILE)["components"]["schemas"]
    return {
        action: fastjsonschema.compile(
            compilable_schema(schemas, component),
            formats=FORMATS,
            use_default=False,
            detailed_exceptions=detailed,
        )
        for action, component in PERSON_SCHEMAS.items()
    }


def compilable_schema(schemas: dict[str, Any], component: str) -> dict[str, Any]:
    """The component schema with ``$ref`` s inlined, no ``default`` s and ``identifiers``
    left to the hand-written check (module docstring)."""
    inlined: dict[str, Any] = _inline(schemas[component], schemas)
    for part in inlined.get("allOf", ()):
        identifiers = part.get("properties", {}).get("identifiers")
        if identifiers is not None:
            part["properties"]["identifiers"] = {"type": "object"}
    return inlined


def _inline(node: Any, schemas: dict[str, Any]) -> Any:
    if type(node) is dict:
        ref = node.get("$ref")
        if type(ref) is str and ref.startswith(_REF_PREFIX):
            return _inline(schemas[ref.removeprefix(_REF_PREFIX)], schemas)
        return {key: _inline(value, schemas) for key, value in node.items() if key != "default"}
    if type(node) is list:
        return [_inline(value, schemas) for value in node]
    return node
