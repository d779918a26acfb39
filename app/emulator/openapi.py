"""Checks of v2 person items against Customer.io's own OpenAPI document, formats included.

:func:`schema_error` validates one item against the component schema of its action in
``customerio-track-api-openapi.json`` (shipped in :mod:`app.reference`): the
``/api/v2/batch`` item schema is an ``anyOf`` of those components with a ``discriminator`` on
``action``, so validating against the one the action names is the same check, without trying
the other eleven. Formats are checked (``email`` with the ``email-validator`` library, as
:mod:`app.emails`; ``ULID``), and two rules of Customer.io's reserved-attributes doc that the
OpenAPI leaves to prose are added: an ``email`` identifier and an identify's ``email``
attribute must be valid addresses.

It runs after the hand-written limit checks of :mod:`app.emulator.validation` (which name the
limit that was crossed); what passes them but not the schema is refused here with reason
``invalid``, ``field`` the dotted path of the offending value and ``message`` the schema's
complaint. The document is loaded and the validators built once per process, on first use.

Failure semantics: nothing raises for an item. A missing or corrupt OpenAPI document raises
on first use (the emulator must not run without its reference).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.emails import is_email_address
from app.emulator.validation import REASON_INVALID, ULID_PATTERN, ItemError
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

_URI: Final = "urn:customerio-track-api"


def format_checker() -> FormatChecker:
    """The formats the Track API's person schemas use, checked as Customer.io documents them."""
    checker = FormatChecker(formats=())
    checker.checks("email")(_is_email)
    checker.checks("ULID")(_is_ulid)
    return checker


def schema_error(item: dict[str, Any]) -> ItemError | None:
    """Why the person ``item`` fails the OpenAPI schema of its action, or ``None``.

    ``item`` must already have passed :func:`app.emulator.validation.item_error` (a person
    item with a known action)."""
    validator = validators().get(item["action"])
    if validator is None:
        return None
    error = best_match(validator.iter_errors(item))
    if error is not None:
        field = ".".join(str(part) for part in error.absolute_path)
        return ItemError(REASON_INVALID, field, error.message[:300])
    identifiers = item["identifiers"]
    if "email" in identifiers and not _is_email(identifiers["email"]):
        return ItemError(REASON_INVALID, "identifiers.email", "email is not a valid address")
    attributes = item.get("attributes")
    if (
        item["action"] == "identify"
        and type(attributes) is dict
        and "email" in attributes
        and not _is_email(attributes["email"])
    ):
        return ItemError(REASON_INVALID, "attributes.email", "email is not a valid address")
    return None


@cache
def validators() -> dict[str, Draft202012Validator]:
    """One validator per person action, sharing the OpenAPI document and the format checker."""
    document = load_json(CUSTOMERIO_OPENAPI_FILE)
    registry: Registry[Any] = Registry().with_resource(
        _URI, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    checker = format_checker()
    return {
        action: Draft202012Validator(
            {"$ref": f"{_URI}#/components/schemas/{component}"},
            registry=registry,
            format_checker=checker,
        )
        for action, component in PERSON_SCHEMAS.items()
    }


def _is_email(value: object) -> bool:
    return type(value) is not str or is_email_address(value)


def _is_ulid(value: object) -> bool:
    return type(value) is not str or ULID_PATTERN.fullmatch(value) is not None
