"""What one validated Firehose message writes and what the ingress answers (pure).

:func:`plan_message` maps a request message (already checked by
:func:`app.ingress.schemas.validate`) to the records to write and the Firehose response to
send once they are durable:

- ``audience_membership_change_request``: one record per user profile on the audiences topic,
  key = the profile's mpid, value = the message reduced to that profile (``type``, ``id``,
  ``timestamp_ms``, ``firehose_version`` and ``user_profiles: [{mpid, user_identities,
  audiences}]``). Device and partner identities and the account settings are not kept: the
  worker does not use them, and account settings may hold credentials.
- ``dsr_processing_request``: the request without its account, on EVERY partition of the
  erasure topic without key (``all_partitions``): Firehose DSRs name identities, not an mpid,
  so each partition's worker looks for the subject among the users it holds (app/core/erasure.py).
  Only ``subject_request_type`` ``erasure`` writes; ``access`` and ``portability`` (the schema
  requires the field, app/ingress/schemas.py) write nothing and are answered with the
  ``dsr_processing_response``; :attr:`Plan.ignored` names them (``dsr_access``, ...).
- ``audience_subscription_request`` and ``module_registration_request``: nothing to write.

Each record is parsed here by the worker's own parser before anything is written, so a
message the worker would reject is answered 400 instead of being dead-lettered later.

Failure semantics: :func:`plan_message` raises :class:`~app.errors.InvalidRecordError` (the
worker parser's reason and detail) for a record the worker could not use; nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from app.core.audiences import parse_audience_record
from app.core.erasure import parse_erasure_record

if TYPE_CHECKING:
    from collections.abc import Callable

TopicKind = Literal["audiences", "erasure"]
DEFAULT_FIREHOSE_VERSION = "2.8.1"
MODULE_NAME = "mpcio"
_PROFILE_FIELDS = ("mpid", "user_identities", "audiences")
_DSR_FIELDS = (
    "type",
    "id",
    "timestamp_ms",
    "firehose_version",
    "subject_request_id",
    "subject_request_type",
    "submitted_time",
    "subject_identities",
    "regulation",
)
# The account setting the relay reads to authenticate to the ingress (README "Firehose").
_SECRET_SETTING = {
    "type": "text",
    "id": "ingress_secret",
    "name": "Ingress shared secret",
    "description": "The bearer token your relay presents to mpcio ingress "
    "(the ingress's MPCIO_INGRESS_SECRET).",
    "visible": True,
    "required": True,
    "confidential": True,
}


@dataclass(frozen=True, slots=True)
class Record:
    """One record to produce: ``all_partitions`` = once on every partition, without key."""

    topic: TopicKind
    key: bytes | None
    value: bytes
    all_partitions: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    records: tuple[Record, ...]
    response: dict[str, Any]
    profiles: int  # user profiles the records carry (membership requests), for metrics
    ignored: str | None = None  # why a message that could write does not (metrics label)


def plan_message(
    message_type: str, message: dict[str, Any], *, now_ms: int, new_id: Callable[[], str]
) -> Plan:
    """The records and response for one valid message (module docstring)."""
    version = message.get("firehose_version") or DEFAULT_FIREHOSE_VERSION
    response: dict[str, Any] = {
        "type": message_type.replace("_request", "_response"),
        "id": new_id(),
        "timestamp_ms": now_ms,
        "firehose_version": version,
    }
    records: list[Record] = []
    ignored = None
    if message_type == "audience_membership_change_request":
        header = {
            field: message[field]
            for field in ("type", "id", "timestamp_ms", "firehose_version")
            if field in message
        }
        for profile in message.get("user_profiles") or []:
            kept = {field: profile[field] for field in _PROFILE_FIELDS if field in profile}
            value = orjson.dumps({**header, "user_profiles": [kept]})
            (update,) = parse_audience_record(value)
            # The canonical mpid (e.g. "007" → "7"), as the worker keys its state.
            records.append(Record("audiences", update.mpid.encode(), value))
        response["suspend_subscription"] = False
    elif message_type == "dsr_processing_request":
        value = orjson.dumps({field: message[field] for field in _DSR_FIELDS if field in message})
        if parse_erasure_record(value).request_type == "erasure":
            records.append(Record("erasure", None, value, all_partitions=True))
        else:  # access / portability: nothing of ours to export; answered, counted
            ignored = f"dsr_{message['subject_request_type']}"
    elif message_type == "audience_subscription_request":
        response["audience_subscription_settings"] = message.get(
            "audience_subscription_settings", {}
        )
    elif message_type == "module_registration_request":
        response.update(registration(version))
    return Plan(
        tuple(records), response, profiles=len(message.get("user_profiles") or []), ignored=ignored
    )


def registration(version: str) -> dict[str, Any]:
    """The module registration: audience and DSR (erasure) processing, the identities and
    permissions the worker uses (raw email and customer id, the mpid, audience attributes),
    and the one account setting the relay needs."""
    return {
        "sdk_version": version,
        "name": MODULE_NAME,
        "description": "Self-hosted mParticle to Customer.io forwarder: audience membership "
        "and erasure requests.",
        "version": "1.0",
        "permissions": {
            "user_identities": [
                {"type": "email", "encoding": "raw", "required": False},
                {"type": "customer", "encoding": "raw", "required": False},
            ],
            "allow_access_mpid": True,
            "allow_audience_user_attributes": True,
        },
        "audience_processing_registration": {"account_settings": [_SECRET_SETTING]},
        "dsr_processing_registration": {
            "account_settings": [_SECRET_SETTING],
            "supported_dsr_types": ["erasure"],
        },
    }
