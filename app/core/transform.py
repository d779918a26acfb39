"""Map one parsed mParticle batch to Customer.io Track API v2 batch items (SPEC §3, rules 1-12).

:func:`transform` folds the batch into the user's previous state (:func:`app.core.state.fold`) and
returns the new state together with the ordered operations and counters. It is pure and
deterministic: the same batch and the same previous state always give the same result, and
transforming a batch a second time with the state the first run returned sends no identify
again and repeats the same event ids (ULIDs), which Customer.io de-duplicates.

Operations, in order: the identify item(s) when needed (rule 8), then the user's events.
An identify is needed the first time a user is forwarded, when the profile digest (email,
names, created_at when enabled, other attributes when enabled) differs from the one last sent,
when the person id changed (rule 11) and on an opt-out transition (rule 9). Every item is
serialised once here (``Operation.payload``) to enforce Customer.io's size limits. An
event is suppressed while the user is opted out at the event's time, by the one ordering rule
of :func:`app.core.state.opt_out_status` (event time, then position in the batch).

Values and names (docs/mapping.md): a user tag (null value) is sent as ``true``; a name
Customer.io reads specially (:data:`RESERVED_PERSON_NAMES`, the ``_`` and ``cio_`` prefixes,
dotted paths under them; event data keys in :data:`RESERVED_EVENT_DATA_NAMES`) is sent as
``mp_<name>`` and counted (``attribute_name_renamed``, ``event_data_name_renamed``).

Failure semantics: nothing raises for a parsed batch. What Customer.io would reject is cut or
dropped before sending and counted in ``Transformed.limits`` (keys ``LIMIT_*``):
person id empty or over 150 bytes drops the whole batch's operations; an attribute name that is
empty or over 150 bytes (after renaming) is dropped; a string
value over 1000 bytes is cut at a UTF-8 boundary; a list value over 1000 bytes of JSON is
dropped; more than 300 attributes or more than 32,000 bytes split an identify into several;
event names over 100 bytes are cut; event data making an item exceed 32,000 bytes is dropped
(which also keeps it under Customer.io's 100,000-byte event data limit) and the event is sent
without it. Names that are blank after trimming never get here (the parser rejects them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import blake2b
from itertools import islice
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import orjson

from app.core.mparticle import FIRST_NAME_KEY, LAST_NAME_KEY, AttributeValue, Batch, Event
from app.core.state import UserState, evolve, fold, opt_out_status
from app.core.ulid import event_ulid
from app.customerio.limits import (
    MAX_ATTRIBUTE_NAME_BYTES,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES_PER_IDENTIFY,
    MAX_ATTRIBUTES_PER_PERSON,
    MAX_EVENT_NAME_BYTES,
    MAX_IDENTIFIER_BYTES,
    MAX_ITEM_BYTES,
    OWN_ATTRIBUTES_PER_PERSON,
)

if TYPE_CHECKING:
    from app.core.options import CoreOptions

BatchOutcome: TypeAlias = Literal[
    "forwarded", "skipped_no_email", "environment_filtered", "person_id_invalid"
]

# Transformed.limits keys.
LIMIT_PERSON_ID: Final = "person_id_invalid"
LIMIT_ATTRIBUTE_NAME: Final = "attribute_name_dropped"
LIMIT_ATTRIBUTE_RENAMED: Final = "attribute_name_renamed"
LIMIT_EVENT_DATA_RENAMED: Final = "event_data_name_renamed"
LIMIT_ATTRIBUTE_VALUE_CUT: Final = "attribute_value_truncated"
LIMIT_ATTRIBUTE_VALUE_DROPPED: Final = "attribute_value_dropped"
LIMIT_IDENTIFY_SPLIT: Final = "identify_split"
LIMIT_EVENT_NAME_CUT: Final = "event_name_truncated"
LIMIT_EVENT_DATA_DROPPED: Final = "event_data_dropped"
LIMIT_MEMBERSHIP_CUT: Final = "segment_membership_truncated"
LIMIT_PERSON_CAP: Final = "attribute_over_person_cap"

#: User attributes sent per person: Customer.io keeps 300 per person and silently drops a new
#: one beyond them, so the first-seen ones are kept and the rest are held back, counted.
MAX_USER_ATTRIBUTES_PER_PERSON: Final = MAX_ATTRIBUTES_PER_PERSON - OWN_ATTRIBUTES_PER_PERSON

MEMBERSHIP_ATTRIBUTE: Final = "SegmentMembership"

# Transformed.events keys (custom_event and screen_view events only).
EVENTS_FORWARDED: Final = "forwarded"
EVENTS_OPTED_OUT: Final = "opted_out"

# Names Customer.io reads specially are never sent as a user's own data: they are kept under
# this prefix (docs/mapping.md, "Reserved names"), so nothing is lost and nothing is re-routed.
RENAME_PREFIX: Final = "mp_"

# Person attribute names Customer.io reads specially (reserved-attributes doc: identifiers,
# created_at, unsubscribed; OpenAPI identify_person: cio_subscription_preferences, _update,
# cio_relationships) and the names this forwarder sets itself (rules 3, 9, 10, SPEC §4).
RESERVED_PERSON_NAMES: Final = frozenset(
    {
        "id",
        "email",
        "phone",
        "cio_id",
        "anonymous_id",
        "created_at",
        "unsubscribed",
        "first_name",
        "last_name",
        MEMBERSHIP_ATTRIBUTE,
    }
)
# Prefixes Customer.io keeps for itself: "_" (internal attributes such as _update, _timestamp,
# _created_in_customerio_at) and "cio_" (cio_id, cio_subscription_preferences, ...).
RESERVED_PERSON_PREFIXES: Final = ("_", "cio_")
# Event data keys with a meaning (OpenAPI person_event.attributes: email-format fields that
# re-address the messages an event triggers).
RESERVED_EVENT_DATA_NAMES: Final = frozenset({"recipient", "from_address", "reply_to"})

# Integers beyond ±2^53 lose digits in a JSON reader that uses doubles; they are sent as text.
_MAX_EXACT_INTEGER: Final = 1 << 53

_ACTIONS: Final = {"custom_event": "event", "screen_view": "screen"}


@dataclass(slots=True)
class Operation:
    """One Customer.io v2 batch item: ``item`` as a dict and ``payload`` its exact JSON bytes."""

    action: str
    person_id: str
    item: dict[str, Any]
    payload: bytes


@dataclass(slots=True)
class Transformed:
    """The result of :func:`transform`.

    ``state`` is what to store for the mpid (``None`` only if there was none and the batch was
    filtered out); ``state_changed`` says whether it differs from the previous one, so an
    unchanged state need not be written. ``events`` counts the batch's custom and screen events
    by outcome (``forwarded``, ``opted_out``, or the batch outcome when the whole batch is not
    forwarded); ``limits`` counts what was cut or dropped by kind.
    """

    state: UserState | None
    state_changed: bool
    operations: list[Operation]
    outcome: BatchOutcome
    events: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)


def transform(
    batch: Batch, state: UserState | None, options: CoreOptions, *, record_ms: int | None = None
) -> Transformed:
    """Fold ``batch`` into ``state`` and derive the Customer.io operations (module docstring).

    ``record_ms`` is the Kafka timestamp (unix ms) of the record that carried the batch, if
    known: the identify's ``timestamp`` when the batch has no valid time (:func:`identify_time`).
    """
    # the kinds counted in C (list.count) rather than by a generator per event
    kinds = [event.kind for event in batch.events]
    forwardable = kinds.count("custom_event") + kinds.count("screen_view")
    if batch.environment not in options.environments:
        return _not_forwarded(state, state, "environment_filtered", forwardable, {})

    folded = fold(state, batch)
    email = folded.email
    if email is None:
        return _not_forwarded(state, folded, "skipped_no_email", forwardable, {})
    customer_id = folded.customer_id
    person_id = customer_id or email
    limits: dict[str, int] = {}
    if not is_person_identifier(person_id):
        limits[LIMIT_PERSON_ID] = 1
        return _not_forwarded(state, folded, "person_id_invalid", forwardable, limits)
    identifiers = {"id": customer_id} if customer_id else {"email": email}
    if options.include_user_attributes and len(folded.attributes) > MAX_USER_ATTRIBUTES_PER_PERSON:
        _count_held_back(batch, folded, limits)

    # Rule 9 compares with what Customer.io was told, not with the previous state, so a user
    # who opted out before having an email is unsubscribed on the first identify.
    unsubscribed: bool | None = None
    if folded.opted_out and not folded.unsubscribed_sent:
        unsubscribed = True
    elif folded.unsubscribed_sent and not folded.opted_out and options.resubscribe_on_opt_in:
        unsubscribed = False

    digest = profile_digest(folded, options)
    operations: list[Operation] = []
    if (
        digest != folded.sent_digest
        or person_id != folded.person_id
        or unsubscribed is not None
        or folded.audiences_left
    ):
        attributes = _identify_attributes(folded, batch, options, unsubscribed, limits)
        operations.extend(
            _identifies(
                person_id, identifiers, attributes, limits, identify_time(folded, batch, record_ms)
            )
        )
        folded = _with_sent(folded, person_id, digest)
    elif folded.unsubscribed_sent and not folded.opted_out:
        folded = _with_sent(folded, person_id, digest)  # opted in, resubscribe disabled

    events: dict[str, int] = {}
    stored_opted_out = state is not None and state.opted_out
    stored_opt_out_at_ms = None if state is None else state.opt_out_at_ms
    has_opt_outs = "opt_out" in kinds
    for event in batch.events:
        if event.kind in _ACTIONS:
            opted_out = (
                opt_out_status(stored_opted_out, stored_opt_out_at_ms, batch.events, event)[0]
                if has_opt_outs
                else stored_opted_out
            )
            if opted_out:
                events[EVENTS_OPTED_OUT] = events.get(EVENTS_OPTED_OUT, 0) + 1
                continue
            operations.append(_event_operation(event, batch, person_id, identifiers, limits))
            events[EVENTS_FORWARDED] = events.get(EVENTS_FORWARDED, 0) + 1
    # positional (state, state_changed, operations, outcome, events, limits): cheaper than
    # keywords for a slots dataclass (see app.core.mparticle.parse_batch)
    return Transformed(folded, folded != state, operations, "forwarded", events, limits)


def is_person_identifier(value: str) -> bool:
    """Whether ``value`` can name a Customer.io person: non-empty, at most 150 bytes."""
    return bool(value) and len(value.encode("utf-8")) <= MAX_IDENTIFIER_BYTES


def profile_digest(state: UserState, options: CoreOptions) -> bytes:
    """BLAKE2b-128 of everything an identify would carry for ``state`` under ``options``.

    Attribute values enter in their Customer.io form (:func:`_fit_value`), so a change that
    sends the same thing (a user tag ``null`` becoming ``true``, text changed past 1000 bytes)
    sends no identify again (rule 8: only when the forwarded attributes differ)."""
    # A short text (most values) is its own Customer.io form: no call for it (-0.4 to -0.7 µs
    # of ~8 µs per state, A/B timeit). The pairs are _fit_value's (keep, value), as hashed.
    attributes = (
        {
            name: (True, value)
            if type(value) is str and len(value) * 4 <= MAX_ATTRIBUTE_VALUE_BYTES
            else _fit_value(value, {})
            for name, value in within_person_cap(state.attributes)[0].items()
        }
        if options.include_user_attributes
        else None
    )
    material = (
        state.email,
        state.first_name,
        state.last_name,
        state.created_at_ms // 1000
        if options.send_created_at and state.created_at_ms is not None
        else None,
        attributes,
        sorted(state.audiences.items()),
    )
    return blake2b(orjson.dumps(material, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def output_attribute_name(canonical: str) -> str:
    """The Customer.io attribute name of a canonical mParticle attribute name (rules 3-4)."""
    if canonical[:1] != "$":
        return canonical
    if canonical == FIRST_NAME_KEY:
        return "first_name"
    if canonical == LAST_NAME_KEY:
        return "last_name"
    return canonical[1:]


def event_name(raw: str) -> str:
    """Rule 6: trim leading and trailing whitespace, then each space becomes ``_``."""
    return raw.strip().replace(" ", "_")


def event_identity(event: Event, batch: Batch) -> bytes:
    """What names an event uniquely, for its ULID (rule 7); never the person id.

    Always the mpid, so two users whose events share a ``source_message_id`` or ``event_id``
    never share an id (SPEC rule 7 hashes ``source_message_id`` alone; that lets Customer.io
    drop one of two users' events, so the mpid is added for safety). Then ``source_message_id``,
    else ``event_id``, else the batch (``batch_id``, else batch time), the position in the batch
    and the event's content (kind, name, custom attributes as canonical JSON): two batches of a
    user without ``batch_id`` at the same time differ in content, while a redelivered identical
    event keeps its id. The prefixes keep the three kinds apart; ``\x00`` separates fields (it
    cannot occur in an mpid, and a message id containing it only names itself).
    """
    if event.source_message_id is not None:
        return f"m\x00{batch.mpid}\x00{event.source_message_id}".encode()
    if event.event_id is not None:
        return f"e\x00{batch.mpid}\x00{event.event_id}".encode()
    batch_ref = batch.batch_id if batch.batch_id is not None else f"t{batch.timestamp_ms}"
    content = orjson.dumps(
        [event.kind, event.name, event.custom_attributes or {}], option=orjson.OPT_SORT_KEYS
    )
    return f"p\x00{batch.mpid}\x00{batch_ref}\x00{event.position}\x00".encode() + content


def _not_forwarded(
    previous: UserState | None,
    state: UserState | None,
    outcome: BatchOutcome,
    forwardable: int,
    limits: dict[str, int],
) -> Transformed:
    return Transformed(
        state=state,
        state_changed=state != previous,
        operations=[],
        outcome=outcome,
        events={outcome: forwardable} if forwardable else {},
        limits=limits,
    )


def _with_sent(state: UserState, person_id: str, digest: bytes) -> UserState:
    """``state`` recording that Customer.io now knows ``person_id``, ``digest`` and its
    subscription (unsubscribed exactly when opted out)."""
    return evolve(
        state,
        {
            "person_id": person_id,
            "sent_digest": digest,
            "unsubscribed_sent": state.opted_out,
            "audiences_left": {},
        },
    )


def _identify_attributes(
    state: UserState,
    batch: Batch,
    options: CoreOptions,
    unsubscribed: bool | None,
    limits: dict[str, int],
) -> dict[str, AttributeValue]:
    """Rules 3, 4, 5, 9, 10: the attributes of the identify, limits applied, email first."""
    attributes: dict[str, AttributeValue] = {"email": state.email}
    for name, known in (("first_name", state.first_name), ("last_name", state.last_name)):
        if known is not None:
            attributes[name] = _fit_text(known, limits)
    if options.send_created_at and state.created_at_ms is not None:
        attributes["created_at"] = state.created_at_ms // 1000
    if unsubscribed is not None:
        attributes["unsubscribed"] = unsubscribed
    # Removals before additions: an attribute removed makes room for one held back by the cap.
    for canonical in batch.deleted_user_attributes:
        if canonical in (FIRST_NAME_KEY, LAST_NAME_KEY):
            attributes[output_attribute_name(canonical)] = ""
        elif options.include_user_attributes:
            deleted_name = _sent_name(output_attribute_name(canonical), limits)
            if deleted_name is not None:
                attributes[deleted_name] = ""
    if options.include_user_attributes:
        _add_user_attributes(attributes, state, limits)
    attributes.update(membership_attributes(state, options, limits))
    return attributes


def _count_held_back(batch: Batch, state: UserState, limits: dict[str, int]) -> None:
    """Count (``attribute_over_person_cap``) each attribute ``batch`` sets that the person cap
    holds back (:func:`within_person_cap`): every value not forwarded is counted once, when it
    arrives, whether or not an identify is sent."""
    kept = within_person_cap(state.attributes)[0]
    held_back = sum(
        1 for name in batch.user_attributes if name in state.attributes and name not in kept
    )
    if held_back:
        limits[LIMIT_PERSON_CAP] = limits.get(LIMIT_PERSON_CAP, 0) + held_back


def _add_user_attributes(
    attributes: dict[str, AttributeValue], state: UserState, limits: dict[str, int]
) -> None:
    """Rule 4 into ``attributes``: the user's attributes within the person cap, named and
    fitted for Customer.io; custom names first, then reserved ($) ones, so "$City" wins over a
    custom "city"."""
    user_attributes = within_person_cap(state.attributes)[0]
    custom = [name for name in user_attributes if name[:1] != "$"]
    for canonical in custom + [name for name in user_attributes if name[:1] == "$"]:
        sent_name = _sent_name(output_attribute_name(canonical), limits)
        if sent_name is not None:
            value = user_attributes[canonical]
            if type(value) is str and len(value) * 4 <= MAX_ATTRIBUTE_VALUE_BYTES:
                attributes[sent_name] = value  # as _fit_value would return it, without a call
                continue
            keep, value = _fit_value(value, limits)
            if keep:
                attributes[sent_name] = value


def within_person_cap(
    attributes: dict[str, AttributeValue],
) -> tuple[dict[str, AttributeValue], int]:
    """``(kept, held back)``: the first :data:`MAX_USER_ATTRIBUTES_PER_PERSON` of a user's
    attributes in the order they were first seen, and how many more there are.

    Customer.io keeps at most 300 attributes per person and silently drops a new one beyond
    them; every identify carries all of the user's attributes, so what Customer.io holds is
    what was sent. The state keeps attributes in first-seen order (a new name is added at the
    end, a removed one leaves), so the same ones are kept each time, a new name on a full
    person is held back (counted by the transform, ``attribute_over_person_cap``), and removing
    one lets the first held-back one in. Attributes with the same Customer.io name (``$City``
    and ``city``) or dropped for their name count once each, so the cap errs on the safe side.
    """
    if len(attributes) <= MAX_USER_ATTRIBUTES_PER_PERSON:
        return attributes, 0
    kept = dict(islice(attributes.items(), MAX_USER_ATTRIBUTES_PER_PERSON))
    return kept, len(attributes) - len(kept)


def membership_attributes(
    state: UserState, options: CoreOptions, limits: dict[str, int]
) -> dict[str, AttributeValue]:
    """SPEC §4: ``SegmentMembership`` = quoted, comma-separated ids of the user's audiences
    (empty once the last one is left), and ``In <Audience Name>`` true/false when enabled.
    Nothing for a user who never was in an audience."""
    if not state.audiences and not state.audiences_left:
        return {}
    quoted = [f"'{audience_id}'" for audience_id in sorted(state.audiences, key=_id_order)]
    membership = ",".join(quoted)
    if len(membership.encode("utf-8")) > MAX_ATTRIBUTE_VALUE_BYTES:
        # Cut at a whole id: a half id could match another audience's "contains '12'". The
        # longest prefix that fits, in one pass (popping and re-joining was quadratic: 6 s
        # per record for a user in 20,000 audiences, stalling the worker).
        limits[LIMIT_MEMBERSHIP_CUT] = limits.get(LIMIT_MEMBERSHIP_CUT, 0) + 1
        size, kept = -1, 0  # -1: no comma before the first id
        for item in quoted:
            size += len(item.encode("utf-8")) + 1
            if size > MAX_ATTRIBUTE_VALUE_BYTES:
                break
            kept += 1
        membership = ",".join(quoted[:kept])
    attributes: dict[str, AttributeValue] = {MEMBERSHIP_ATTRIBUTE: membership}
    if options.one_attribute_per_audience:
        for flag, audiences in ((False, state.audiences_left), (True, state.audiences)):
            for name in audiences.values():
                attribute = _sent_name(f"In {name}", limits)
                if attribute is not None:
                    attributes[attribute] = flag
    return attributes


def _id_order(audience_id: str) -> tuple[int, str]:
    return (int(audience_id), "") if audience_id.isdigit() else (1 << 62, audience_id)


def is_reserved_person_name(name: str) -> bool:
    """Whether Customer.io would read the attribute ``name`` specially; Customer.io reads
    ``a.b`` as the path ``b`` inside ``a`` (JSON dot notation), so the first segment counts."""
    head = name.partition(".")[0]
    return head in RESERVED_PERSON_NAMES or head.startswith(RESERVED_PERSON_PREFIXES)


def _sent_name(name: str, limits: dict[str, int]) -> str | None:
    """The name a user attribute is sent under: ``name``, or ``mp_<name>`` for a reserved one
    (counted); ``None`` (dropped, counted) when empty or over 150 bytes."""
    if is_reserved_person_name(name):
        name = RENAME_PREFIX + name
        limits[LIMIT_ATTRIBUTE_RENAMED] = limits.get(LIMIT_ATTRIBUTE_RENAMED, 0) + 1
    if not name or (
        len(name) * 4 > MAX_ATTRIBUTE_NAME_BYTES
        and len(name.encode("utf-8")) > MAX_ATTRIBUTE_NAME_BYTES
    ):
        limits[LIMIT_ATTRIBUTE_NAME] = limits.get(LIMIT_ATTRIBUTE_NAME, 0) + 1
        return None
    return name


def _fit_value(value: AttributeValue, limits: dict[str, int]) -> tuple[bool, AttributeValue]:
    """``(keep, value)``: the Customer.io form of one attribute value (docs/mapping.md).

    A null is a user tag and is sent as ``true`` (Customer.io reads null as "remove"); strings
    are cut at a UTF-8 boundary to 1000 bytes; lists over 1000 bytes of JSON are not kept;
    integers beyond ±2^53 become decimal text; numbers, booleans and other lists as they are.
    """
    if type(value) is str:  # the usual value first
        return True, _fit_text(value, limits)
    if value is None:
        return True, True
    if type(value) is int and not -_MAX_EXACT_INTEGER <= value <= _MAX_EXACT_INTEGER:
        return True, str(value)
    if type(value) is list and len(orjson.dumps(value)) > MAX_ATTRIBUTE_VALUE_BYTES:
        limits[LIMIT_ATTRIBUTE_VALUE_DROPPED] = limits.get(LIMIT_ATTRIBUTE_VALUE_DROPPED, 0) + 1
        return False, None
    return True, value


def _fit_text(value: str, limits: dict[str, int]) -> str:
    """``value`` cut at a UTF-8 boundary to 1000 bytes (counted when cut)."""
    if len(value) * 4 <= MAX_ATTRIBUTE_VALUE_BYTES:
        return value
    encoded = value.encode("utf-8")
    if len(encoded) <= MAX_ATTRIBUTE_VALUE_BYTES:
        return value
    limits[LIMIT_ATTRIBUTE_VALUE_CUT] = limits.get(LIMIT_ATTRIBUTE_VALUE_CUT, 0) + 1
    return _cut_utf8(encoded, MAX_ATTRIBUTE_VALUE_BYTES)


def _identifies(
    person_id: str,
    identifiers: dict[str, str],
    attributes: dict[str, AttributeValue],
    limits: dict[str, int],
    timestamp: int | None,
) -> list[Operation]:
    """One identify, or several when over 300 attributes or 32,000 bytes; email in each."""
    item = _identify_item(identifiers, attributes, timestamp)
    payload = orjson.dumps(item)
    if len(attributes) <= MAX_ATTRIBUTES_PER_IDENTIFY and len(payload) <= MAX_ITEM_BYTES:
        return [Operation("identify", person_id, item, payload)]

    email = attributes["email"]
    base_bytes = len(orjson.dumps(_identify_item(identifiers, {"email": email}, timestamp)))
    operations: list[Operation] = []
    chunk: dict[str, AttributeValue] = {"email": email}
    chunk_bytes = base_bytes
    for name, value in attributes.items():
        if name == "email":
            continue
        size = len(orjson.dumps({name: value})) - 1  # '{' '}' out, ',' in
        if len(chunk) == MAX_ATTRIBUTES_PER_IDENTIFY or chunk_bytes + size > MAX_ITEM_BYTES:
            operations.append(_identify_operation(person_id, identifiers, chunk, timestamp))
            chunk = {"email": email}
            chunk_bytes = base_bytes
        chunk[name] = value
        chunk_bytes += size
    operations.append(_identify_operation(person_id, identifiers, chunk, timestamp))
    limits[LIMIT_IDENTIFY_SPLIT] = limits.get(LIMIT_IDENTIFY_SPLIT, 0) + len(operations) - 1
    return operations


def _identify_item(
    identifiers: dict[str, str], attributes: dict[str, AttributeValue], timestamp: int | None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "person",
        "identifiers": identifiers,
        "action": "identify",
        "attributes": attributes,
    }
    if timestamp is not None:
        item["timestamp"] = timestamp
    return item


def update_time(state: UserState) -> int | None:
    """The identify ``timestamp`` (unix seconds): when the newest fact it carries happened.

    Customer.io uses it to order attribute updates, so a request that lands late (its client
    timed out and retried, then later updates went through) cannot overwrite newer ones."""
    times = [ms for ms in (state.profile_at_ms, state.opt_out_at_ms) if ms]
    return max(times) // 1000 if times else None


def identify_time(state: UserState, batch: Batch, record_ms: int | None) -> int | None:
    """The identify ``timestamp`` (unix seconds) for ``batch`` folded into ``state``.

    :func:`update_time`, except for a batch without a valid time (missing or unusable
    ``timestamp_unixtime_ms``): then the Kafka record's time ``record_ms`` (when mParticle
    wrote the batch, so no earlier than its facts), or the later of the two when the state
    knows an older time; ``None`` (no ``timestamp``) when neither is known."""
    seconds = update_time(state)
    if batch.timestamp_ms is not None or record_ms is None:
        return seconds
    return record_ms // 1000 if seconds is None else max(seconds, record_ms // 1000)


def _identify_operation(
    person_id: str,
    identifiers: dict[str, str],
    attributes: dict[str, AttributeValue],
    timestamp: int | None,
) -> Operation:
    item = _identify_item(identifiers, attributes, timestamp)
    return Operation("identify", person_id, item, orjson.dumps(item))


def _event_operation(
    event: Event,
    batch: Batch,
    person_id: str,
    identifiers: dict[str, str],
    limits: dict[str, int],
) -> Operation:
    """Rules 6 and 7: a Customer.io event or screen item for ``event``."""
    action = _ACTIONS[event.kind]
    name = event_name(event.name)
    if len(name) * 4 > MAX_EVENT_NAME_BYTES:
        encoded = name.encode("utf-8")
        if len(encoded) > MAX_EVENT_NAME_BYTES:
            name = _cut_utf8(encoded, MAX_EVENT_NAME_BYTES)
            limits[LIMIT_EVENT_NAME_CUT] = limits.get(LIMIT_EVENT_NAME_CUT, 0) + 1
    item: dict[str, Any] = {
        "type": "person",
        "identifiers": identifiers,
        "action": action,
        "name": name,
        "id": event_ulid(event.timestamp_ms, event_identity(event, batch)),
    }
    if event.timestamp_ms is not None:
        item["timestamp"] = event.timestamp_ms // 1000
    if event.custom_attributes:
        item["attributes"] = _event_data(event.custom_attributes, limits)
    payload = orjson.dumps(item)
    if len(payload) > MAX_ITEM_BYTES:
        del item["attributes"]
        payload = orjson.dumps(item)
        limits[LIMIT_EVENT_DATA_DROPPED] = limits.get(LIMIT_EVENT_DATA_DROPPED, 0) + 1
    return Operation(action, person_id, item, payload)


def _event_data(data: dict[str, Any], limits: dict[str, int]) -> dict[str, Any]:
    """Event data with each key Customer.io reads specially renamed ``mp_<key>`` (counted);
    an ``mp_<key>`` already present is not overwritten."""
    if data.keys().isdisjoint(RESERVED_EVENT_DATA_NAMES):
        return data
    renamed: dict[str, Any] = {}
    for key, value in data.items():
        if key in RESERVED_EVENT_DATA_NAMES:
            limits[LIMIT_EVENT_DATA_RENAMED] = limits.get(LIMIT_EVENT_DATA_RENAMED, 0) + 1
            key = RENAME_PREFIX + key  # noqa: PLW2901 - the new name is the point
            if key in data:
                continue
        renamed[key] = value
    return renamed


def _cut_utf8(encoded: bytes, limit: int) -> str:
    """The longest prefix of ``encoded`` within ``limit`` bytes that ends on a character."""
    return encoded[:limit].decode("utf-8", "ignore")
