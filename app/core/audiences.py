"""Audience membership changes (SPEC §4): parse them and fold them into the user's state.

Accepted record values (JSON, key = mpid, on ``mparticle-audiences``):

- one profile: ``{"mpid": ..., "user_identities": ..., "audiences": [{"audience_id": 123,
  "audience_name": "VIPs", "action": "add" | "delete"}, ...], "timestamp_unixtime_ms": ...}``;
- mParticle's audience feed request, among them the Firehose
  ``audience_membership_change_request`` (what ``mpcio ingress`` writes, one profile per
  record): ``{"user_profiles": [<profile>, ...], ...}``;
- a JSON array of profiles.

``user_identities`` takes every shape batches accept, plus Firehose ``{type, encoding,
value}`` entries; hashed ones (``md5`` ...) cannot supply an email, so a user whose email is
not already in the state is held until a batch brings it (SPEC §4). ``delete`` means "left the
audience", never erasure. Firehose's ``attribute_update`` action changes no membership: its
``user_attributes[]`` ``{key, value | list_value, action: upsert | delete}`` become the
update's attribute changes, folded through the same rules as batch ``user_attributes`` /
``deleted_user_attributes`` (canonical ``$`` names, allowed value types); entries without a
key or action (the published example has an empty one) are skipped.

Failure semantics: a record that cannot be used raises
:class:`~app.errors.InvalidRecordError` (reasons: those of the batch parser for JSON, mpid and
identities, plus ``audiences_invalid`` for a change without an id or with an unknown action,
and ``empty_record`` for an empty array or ``user_profiles`` list);
the whole record is rejected so the dead letter holds exactly what arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from app.core.mparticle import (
    AttributeValue,
    Batch,
    int64_text,
    load_json,
    parse_deleted_attributes,
    parse_identities,
    parse_user_attributes,
    required_mpid,
)
from app.core.state import EMPTY_STATE, UserState, evolve
from app.core.transform import Transformed, transform
from app.errors import InvalidRecordError, Reason

if TYPE_CHECKING:
    from app.core.options import CoreOptions

AudienceAction = Literal["add", "delete"]
_ACTIONS: dict[str, AudienceAction | None] = {
    "add": "add",
    "delete": "delete",
    "remove": "delete",
    "attribute_update": None,  # attributes only, membership unchanged
}


@dataclass(frozen=True, slots=True)
class AudienceChange:
    audience_id: str
    name: str
    action: AudienceAction


@dataclass(frozen=True, slots=True)
class MembershipUpdate:
    """One user's membership changes, in order."""

    mpid: str
    email: str | None
    customer_id: str | None
    changes: tuple[AudienceChange, ...]
    user_attributes: dict[str, AttributeValue] = field(default_factory=dict)
    deleted_attributes: tuple[str, ...] = ()

    def as_batch(self, environment: str) -> Batch:
        """An eventless batch carrying the identities and attribute changes, so the batch
        transform folds them and builds the identify. It has no time, so device first-seen
        bookkeeping is untouched and the attribute changes apply in arrival order.
        Membership has no environment: pass one the options forward."""
        return Batch(
            mpid=self.mpid,
            environment=environment,
            timestamp_ms=None,
            batch_id=None,
            email=self.email,
            customer_id=self.customer_id,
            user_attributes=dict(self.user_attributes),
            deleted_user_attributes=list(self.deleted_attributes),
            device_type="Unknown",
            events=[],
            first_event_ms=None,
            last_event_ms=None,
            invalid_events={},
            ignored_events={},
            ignored={},
        )


def parse_audience_record(value: bytes) -> list[MembershipUpdate]:
    """The membership updates of one record, in order."""
    document = load_json(value)
    if type(document) is dict and "user_profiles" in document:
        document = document["user_profiles"]
    profiles = document if type(document) is list else [document]
    if not profiles:
        raise InvalidRecordError(Reason.EMPTY_RECORD, "no profile in the record")
    updates = []
    for index, profile in enumerate(profiles):
        if type(profile) is not dict:
            raise InvalidRecordError(Reason.NOT_AN_OBJECT, f"profile {index} is not an object")
        updates.append(_update(profile))
    return updates


def _update(profile: dict[str, Any]) -> MembershipUpdate:
    mpid = required_mpid(profile, "membership update")
    email, customer_id = parse_identities(profile.get("user_identities"), {})
    raw_changes = profile.get("audiences")
    if type(raw_changes) is not list:
        raise InvalidRecordError(Reason.AUDIENCES_INVALID, "audiences is not a list")
    changes = []
    upserts: dict[str, Any] = {}
    deletes: list[str] = []
    for index, raw in enumerate(raw_changes):
        if type(raw) is not dict:
            raise InvalidRecordError(Reason.AUDIENCES_INVALID, f"audience {index} is not an object")
        audience_id = int64_text(raw.get("audience_id"))
        if audience_id is None and type(raw.get("audience_id")) is str:
            audience_id = raw["audience_id"].strip() or None
        action_name = str(raw.get("action", "")).lower()
        if audience_id is None or action_name not in _ACTIONS:
            raise InvalidRecordError(
                Reason.AUDIENCES_INVALID,
                f"audience {index} needs an audience_id and action add|delete|attribute_update",
            )
        if "'" in audience_id or "," in audience_id:
            # SegmentMembership quotes each id and separates them with commas: "x','y" would
            # read as two ids and match another audience's segment ("contains 'y'")
            raise InvalidRecordError(
                Reason.AUDIENCES_INVALID, f"audience {index}: its audience_id holds ' or ,"
            )
        action = _ACTIONS[action_name]
        if action is None:
            _attribute_changes(raw.get("user_attributes"), upserts, deletes)
            continue
        name = raw.get("audience_name")
        changes.append(
            AudienceChange(audience_id, name if type(name) is str and name else audience_id, action)
        )
    ignored: dict[str, int] = {}  # same value rules as batches; nothing to report per update
    return MembershipUpdate(
        mpid,
        email,
        customer_id,
        tuple(changes),
        parse_user_attributes(upserts, ignored),
        tuple(parse_deleted_attributes(deletes, ignored)),
    )


def _attribute_changes(entries: object, upserts: dict[str, Any], deletes: list[str]) -> None:
    """Collect Firehose ``user_attributes[]`` changes, in order (a later change of a key wins)."""
    for entry in entries if type(entries) is list else []:
        if type(entry) is not dict or type(entry.get("key")) is not str or not entry["key"]:
            continue
        key = entry["key"]
        if entry.get("action") == "upsert":
            list_value = entry.get("list_value")
            upserts[key] = list_value if type(list_value) is list else entry.get("value")
            if key in deletes:
                deletes.remove(key)
        elif entry.get("action") == "delete":
            upserts.pop(key, None)
            deletes.append(key)


def apply_membership(state: UserState | None, changes: tuple[AudienceChange, ...]) -> UserState:
    """The state after ``changes``: idempotent (adding a present audience or leaving an absent
    one changes nothing), so a redelivered update is harmless."""
    previous = EMPTY_STATE if state is None else state
    audiences = dict(previous.audiences)
    left = dict(previous.audiences_left)
    for change in changes:
        if change.action == "add":
            audiences[change.audience_id] = change.name
            left.pop(change.audience_id, None)
        elif change.audience_id in audiences:
            left[change.audience_id] = audiences.pop(change.audience_id)
    if audiences == previous.audiences and left == previous.audiences_left:
        return previous
    return evolve(previous, {"audiences": audiences, "audiences_left": left})


def transform_membership(
    update: MembershipUpdate, state: UserState | None, options: CoreOptions
) -> Transformed:
    """Fold ``update`` into ``state`` and derive the identify that carries the new membership
    (the batch transform on the update's identities; membership has no environment, so the
    first forwarded one is used)."""
    environment = next(iter(sorted(options.environments)))
    return transform(update.as_batch(environment), apply_membership(state, update.changes), options)
