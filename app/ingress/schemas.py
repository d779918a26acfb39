"""Validation of Firehose request messages against mParticle's published JSON schemas.

The schema files live in ``schemas/firehose/`` unchanged (JSON Schema draft 3, sources and
commits in ``schemas/firehose/SOURCES.md``). The published files lag behind the published
messages in four places; :func:`_adjusted` patches those in memory, and SOURCES.md says why.

Speed: a valid message is checked by a compiled draft-4 equivalent (:func:`draft4`,
``fastjsonschema``, tens of times faster than ``jsonschema`` on large messages); a message it
rejects is checked again by ``jsonschema``'s Draft3Validator, which names the first error and
has the last word (so the fast path can only accept what the reference accepts, provided the
conversion is faithful: tests/unit/test_ingress_hardening.py compares both on the published
examples and on invalid variants).

Failure semantics: :func:`validate` raises :class:`FirehoseSchemaError` carrying the first
error (``<path>: <message>``, deterministic: the error nearest the document root, then the
first in document order); it never raises anything else for a decoded JSON value.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema
import orjson
from jsonschema import Draft3Validator
from jsonschema.exceptions import ValidationError

from app.errors import FirehoseSchemaError

if TYPE_CHECKING:
    from collections.abc import Callable

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "firehose"

#: Message ``type`` → the schema file of its request.
REQUEST_SCHEMAS = {
    "module_registration_request": "ModuleRegistrationRequest_schema.json",
    "audience_subscription_request": "AudienceSubscriptionRequest_schema.json",
    "audience_membership_change_request": "AudienceMembershipChangeRequest_schema.json",
    "dsr_processing_request": "DsrProcessingRequest_schema.json",
}
IDENTITY_ENCODINGS = ["raw", "md5", "sha1", "sha256"]
DSR_REQUEST_TYPES = ["erasure", "access", "portability"]


def load_schema(file_name: str) -> dict[str, Any]:
    """One schema file of ``schemas/firehose/`` as published."""
    schema: dict[str, Any] = orjson.loads((SCHEMA_DIR / file_name).read_bytes())
    return schema


@functools.cache
def _validator(message_type: str) -> Draft3Validator:
    return Draft3Validator(_adjusted(message_type, load_schema(REQUEST_SCHEMAS[message_type])))


@functools.cache
def _fast_check(message_type: str) -> Callable[[Any], Any]:
    """The compiled (fastjsonschema) check of :func:`draft4` of the adjusted schema."""
    schema = _adjusted(message_type, load_schema(REQUEST_SCHEMAS[message_type]))
    check: Callable[[Any], Any] = fastjsonschema.compile(draft4(schema), use_default=False)
    return check


def draft4(schema: dict[str, Any]) -> dict[str, Any]:
    """A draft-4 equivalent of one of these draft-3 schemas, ``$ref`` s inlined.

    Covers exactly the draft-3 features the published files use: ``required: true`` on a
    property becomes its parent's ``required`` list; ``type: any`` constrains nothing;
    ``$ref`` (to an ``id`` in the same schema; draft 3 ignores a ref's siblings) is inlined;
    ``id`` and ``format`` are dropped (Draft3Validator checks no format without a format
    checker). Other keywords (``type``, ``enum``, ``items``, ``additionalProperties``) mean
    the same in both drafts."""
    ids: dict[str, Any] = {}

    def collect(node: Any) -> None:
        if type(node) is dict:
            if type(node.get("id")) is str:
                ids[node["id"]] = node
            for value in node.values():
                collect(value)
        elif type(node) is list:
            for value in node:
                collect(value)

    def convert(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return convert(ids[node["$ref"]])
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("id", "format", "required") or (key, value) == ("type", "any"):
                continue
            if key == "properties":
                out[key] = {name: convert(sub) for name, sub in value.items()}
                required = [name for name, sub in value.items() if sub.get("required") is True]
                if required:
                    out["required"] = required
            elif key in ("items", "additionalProperties") and type(value) is dict:
                out[key] = convert(value)
            else:
                out[key] = value
        return out

    collect(schema)
    return {"$schema": "http://json-schema.org/draft-04/schema#", **convert(schema)}


def _adjusted(message_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The published schema with the adjustments listed in ``schemas/firehose/SOURCES.md``."""
    if message_type == "audience_membership_change_request":
        audience = load_schema("Audience_schema.json")
        attribute = audience["properties"]["user_attributes"]["items"]
        for field in attribute["properties"].values():
            field.pop("required", None)  # the published example carries an empty entry {}
        profile = schema["properties"]["user_profiles"]["items"]["properties"]
        profile["audiences"] = {"type": "array", "items": audience}
        profile["mpid"] = {"type": "string", "required": True}
    elif message_type == "dsr_processing_request":
        schema = copy.deepcopy(schema)
        schema["properties"]["account"]["required"] = False
        # Required (an erasure must say so) and the OpenDSR types besides erasure, which the
        # ingress answers without writing (app/ingress/messages.py).
        request_type = schema["properties"]["subject_request_type"]
        request_type["required"] = True
        request_type["enum"] = DSR_REQUEST_TYPES
        identity = schema["properties"]["subject_identities"]["additionalProperties"]
        identity["properties"]["encoding"]["enum"] = IDENTITY_ENCODINGS
    return schema


def validate(message: dict[str, Any]) -> str:
    """The message's ``type`` once ``message`` satisfies its schema.

    Raises :class:`FirehoseSchemaError` for an unknown or missing ``type`` and for the first
    schema violation."""
    message_type = message.get("type")
    if type(message_type) is not str or message_type not in REQUEST_SCHEMAS:
        known = ", ".join(sorted(REQUEST_SCHEMAS))
        raise FirehoseSchemaError(f"type: must be one of {known} (got {message_type!r})")
    try:
        _fast_check(message_type)(message)
    except fastjsonschema.JsonSchemaValueException:
        pass  # the reference validator below names the error (and has the last word)
    else:
        return message_type
    errors = sorted(
        _validator(message_type).iter_errors(message),
        key=lambda error: (len(error.absolute_path), [str(p) for p in error.absolute_path]),
    )
    if errors:
        raise FirehoseSchemaError(_describe(errors[0]))
    return message_type


def _describe(error: ValidationError) -> str:
    path = "/".join(str(part) for part in error.absolute_path) or "(message)"
    return f"{path}: {error.message}"
