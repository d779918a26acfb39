"""Per-user state (the ``users`` table value, keyed by mpid) and how a batch folds into it.

:func:`fold` is a pure function built so that the at-least-once pipeline cannot corrupt it
(SPEC §7: table updates and offset commits are not atomic, so a batch may be folded twice, and a
redelivered older batch may arrive after a newer one was already folded):

- Idempotent: ``fold(fold(s, b), b) == fold(s, b)`` for every state ``s`` and batch ``b``.
- Profile (identities, user attributes) is last-writer-wins by batch time: a batch older than the
  newest one applied (``profile_at_ms``) does not overwrite it; it only fills in an email or
  customer id the state does not know yet.
- Opt-out is last-writer-wins by event time (ties: later in the batch wins), so a redelivered
  old opt-out cannot undo a newer opt-in; :func:`opt_out_status` is that one rule, also used
  by the transform to decide which events of a batch are suppressed.
- First-seen per device type is the earliest time seen, except that an explicit install signal
  (``first_run``, or ``application_state_transition`` with ``is_first_run``) wins over plain
  activity; the most recently seen device type is the maximum of (time, device type). Both are
  commutative, so batch order does not matter.

``person_id``, ``sent_digest`` and ``unsubscribed_sent`` record what was last sent to
Customer.io; only :mod:`app.core.transform` sets them. ``audiences`` is carried through unchanged
(filled by the audience agent).

Failure semantics: :func:`fold` never raises for a parsed batch. :func:`decode_state` reads a
state written with the current ``user_state`` schema or any released one kept in
``schemas/history/`` (fields added since take their defaults, :mod:`app.core.avro`); it raises
:class:`~app.errors.InvalidRecordError` (reason ``avro_decode``) for bytes that are not a
``user_state`` record, including an unknown schema fingerprint and a stored attribute JSON that
is corrupt.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

import orjson

from app.core.avro import codec
from app.core.mparticle import FIRST_NAME_KEY, LAST_NAME_KEY, AttributeValue, Batch, Event
from app.errors import InvalidRecordError, Reason


@dataclass(frozen=True, slots=True)
class FirstSeen:
    """When a user was first seen on one device type; ``install`` = from an install signal."""

    ms: int
    install: bool


@dataclass(frozen=True)  # not slots: :func:`evolve` fills an instance's __dict__ at once
class UserState:
    """Everything remembered about one mpid. Attribute keys are canonical (see mparticle).

    Immutable (frozen, and no code changes its dicts in place). Build a changed copy with
    :func:`evolve`, the per-record path's cheaper ``dataclasses.replace``.
    """

    email: str | None = None
    customer_id: str | None = None
    person_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    profile_at_ms: int | None = None
    sent_digest: bytes | None = None
    opted_out: bool = False
    opt_out_at_ms: int | None = None
    unsubscribed_sent: bool = False
    first_seen: dict[str, FirstSeen] = field(default_factory=dict)
    last_device_type: str | None = None
    last_seen_ms: int | None = None
    audiences: dict[str, str] = field(default_factory=dict)
    audiences_left: dict[str, str] = field(default_factory=dict)
    # "<input kind>@<partition>" -> offset of the last input record applied to this state.
    applied_offsets: dict[str, int] = field(default_factory=dict)
    # Kafka time of the earliest input record folded in (None: unknown); see the schema's doc.
    first_record_ms: int | None = None

    @property
    def created_at_ms(self) -> int | None:
        """First-seen time of the most recently seen device type (SPEC §3 rule 10)."""
        if self.last_device_type is None:
            return None
        first_seen = self.first_seen.get(self.last_device_type)
        return None if first_seen is None else first_seen.ms


EMPTY_STATE = UserState()
_FIELD_NAMES = frozenset(f.name for f in fields(UserState))


class StateChanges(TypedDict, total=False):
    """Fields of :class:`UserState` to change, by name, each with its field's type: the change
    set :func:`evolve` takes, so mypy checks a call's keys and values. The same names and
    types as the dataclass (a unit test compares the two). A dict, not keyword arguments
    (PEP 692 ``**changes: Unpack[StateChanges]``): keyword arguments cost the step ~9,500
    more instructions per record (callgrind, ARCHITECTURE.md §5, Round 9)."""

    email: str | None
    customer_id: str | None
    person_id: str | None
    first_name: str | None
    last_name: str | None
    attributes: dict[str, AttributeValue]
    profile_at_ms: int | None
    sent_digest: bytes | None
    opted_out: bool
    opt_out_at_ms: int | None
    unsubscribed_sent: bool
    first_seen: dict[str, FirstSeen]
    last_device_type: str | None
    last_seen_ms: int | None
    audiences: dict[str, str]
    audiences_left: dict[str, str]
    applied_offsets: dict[str, int]
    first_record_ms: int | None


def evolve(state: UserState, changes: StateChanges) -> UserState:
    """A copy of ``state`` with the fields named in ``changes`` set to their values: what
    ``dataclasses.replace(state, **changes)`` returns, at a fifth of its cost or less.

    Why: the ingest step builds ~3 states per record; ``replace`` on this 17-field frozen
    dataclass spends its time in a per-field Python loop and then ``__init__``'s 17
    ``object.__setattr__`` calls, this in one ``__dict__`` copy: 13 to 17 µs against ~3 µs
    (``timeit`` on the e2e workload's states, busy 2-core machine; ARCHITECTURE.md §5, Round
    8b). mypy checks each name and value against :class:`StateChanges`; at run time a name
    that is not a field raises ``TypeError``, as ``replace`` does (values are not checked).
    """
    if not _FIELD_NAMES.issuperset(changes):
        raise TypeError(f"not UserState fields: {sorted(set(changes) - _FIELD_NAMES)}")
    copy = object.__new__(UserState)
    values = copy.__dict__
    values.update(state.__dict__)
    values.update(changes)
    return copy


def fold(state: UserState | None, batch: Batch) -> UserState:
    """The state after ``batch``; see the module docstring for the guarantees."""
    previous = EMPTY_STATE if state is None else state
    email, customer_id, first_name, last_name, attributes, profile_at_ms = _fold_profile(
        previous, batch
    )
    opted_out, opt_out_at_ms = opt_out_status(
        previous.opted_out, previous.opt_out_at_ms, batch.events
    )
    first_seen, last_device_type, last_seen_ms = _fold_devices(previous, batch)
    return evolve(
        previous,
        {
            "email": email,
            "customer_id": customer_id,
            "first_name": first_name,
            "last_name": last_name,
            "attributes": attributes,
            "profile_at_ms": profile_at_ms,
            "opted_out": opted_out,
            "opt_out_at_ms": opt_out_at_ms,
            "first_seen": first_seen,
            "last_device_type": last_device_type,
            "last_seen_ms": last_seen_ms,
        },
    )


def opt_out_status(
    opted_out: bool,
    opted_out_at_ms: int | None,
    events: list[Event],
    until: Event | None = None,
) -> tuple[bool, int | None]:
    """``(opted_out, opt_out_at_ms)`` after the opt-out events of ``events`` that happened no
    later than ``until`` (all of them when ``None``), starting from the stored decision.

    The one ordering rule of opt-outs, used by :func:`fold` for the state and by the transform
    for each event (docs/mapping.md, "Opt-out order"): events are ordered by (event time,
    position in the batch); the newest decision wins (:func:`apply_opt_out`). So an event is
    suppressed exactly when the newest opt-out decision at or before it says "opted out",
    whatever the order of the events in the batch.
    """
    limit = None if until is None else (until.timestamp_ms or 0, until.position)
    decisions = sorted(
        (event.timestamp_ms or 0, event.position, event.is_opted_out)
        for event in events
        if event.kind == "opt_out"
    )
    for event_ms, position, is_opted_out in decisions:
        if limit is not None and (event_ms, position) > limit:
            break
        opted_out, opted_out_at_ms = apply_opt_out(
            opted_out, opted_out_at_ms, is_opted_out, event_ms
        )
    return opted_out, opted_out_at_ms


def apply_opt_out(
    opted_out: bool, opted_out_at_ms: int | None, is_opted_out: bool, event_ms: int | None
) -> tuple[bool, int | None]:
    """``(opted_out, opt_out_at_ms)`` after one opt-out event: newest event time wins.

    An event without any time counts as time 0, so it never overrides a timed decision.
    """
    event_time = event_ms or 0
    if opted_out_at_ms is None or event_time >= opted_out_at_ms:
        return is_opted_out, event_time
    return opted_out, opted_out_at_ms


_Profile = tuple[
    str | None, str | None, str | None, str | None, dict[str, AttributeValue], int | None
]


def _fold_profile(previous: UserState, batch: Batch) -> _Profile:
    batch_ms = batch.timestamp_ms
    newest = (
        batch_ms is None or previous.profile_at_ms is None or batch_ms >= previous.profile_at_ms
    )
    if not newest:
        return (
            previous.email or batch.email,
            previous.customer_id or batch.customer_id,
            previous.first_name,
            previous.last_name,
            previous.attributes,
            previous.profile_at_ms,
        )
    first_name, last_name = previous.first_name, previous.last_name
    attributes = previous.attributes
    if batch.user_attributes or batch.deleted_user_attributes:
        attributes = {**previous.attributes, **batch.user_attributes}
        first_name = _name(attributes.pop(FIRST_NAME_KEY, first_name))
        last_name = _name(attributes.pop(LAST_NAME_KEY, last_name))
        for name in batch.deleted_user_attributes:
            if name == FIRST_NAME_KEY:
                first_name = None
            elif name == LAST_NAME_KEY:
                last_name = None
            else:
                attributes.pop(name, None)
        if attributes == previous.attributes:
            attributes = previous.attributes
    return (
        batch.email or previous.email,
        batch.customer_id or previous.customer_id,
        first_name,
        last_name,
        attributes,
        previous.profile_at_ms if batch_ms is None else batch_ms,
    )


def _name(value: AttributeValue) -> str | None:
    # The parser admits only strings and null for $FirstName / $LastName.
    return value if isinstance(value, str) else None


def _fold_devices(
    previous: UserState, batch: Batch
) -> tuple[dict[str, FirstSeen], str | None, int | None]:
    device = batch.device_type
    first_seen = previous.first_seen
    seen_from = batch.timestamp_ms if batch.first_event_ms is None else batch.first_event_ms
    candidates = [] if seen_from is None else [FirstSeen(seen_from, install=False)]
    candidates.extend(
        FirstSeen(event.timestamp_ms, install=True)
        for event in batch.events
        if event.kind == "install" and event.timestamp_ms is not None
    )
    current = first_seen.get(device)
    best = current
    for candidate in candidates:
        best = earlier_first_seen(best, candidate)
    if best is not current and best is not None:
        first_seen = {**first_seen, device: best}

    last_device_type, last_seen_ms = previous.last_device_type, previous.last_seen_ms
    seen_until = batch.timestamp_ms if batch.last_event_ms is None else batch.last_event_ms
    if seen_until is not None and (
        last_seen_ms is None
        or last_device_type is None
        or (seen_until, device) > (last_seen_ms, last_device_type)
    ):
        last_device_type, last_seen_ms = device, seen_until
    return first_seen, last_device_type, last_seen_ms


def earlier_first_seen(current: FirstSeen | None, candidate: FirstSeen) -> FirstSeen:
    """The first-seen that wins: an install signal beats plain activity, then the earliest.

    Commutative, associative and idempotent, so folding order and repetition do not matter.
    """
    if current is None:
        return candidate
    if current.install != candidate.install:
        return current if current.install else candidate
    return current if current.ms <= candidate.ms else candidate


# --- Avro ------------------------------------------------------------------------------------


def encode_state(state: UserState) -> bytes:
    """The ``schemas/user_state.avsc`` single-object encoding of ``state``."""
    return codec("user_state").encode(
        {
            "email": state.email,
            "customer_id": state.customer_id,
            "person_id": state.person_id,
            "first_name": state.first_name,
            "last_name": state.last_name,
            "attributes_json": orjson.dumps(state.attributes).decode("utf-8"),
            "profile_at_ms": state.profile_at_ms,
            "sent_digest": state.sent_digest,
            "opted_out": state.opted_out,
            "opt_out_at_ms": state.opt_out_at_ms,
            "unsubscribed_sent": state.unsubscribed_sent,
            "first_seen": {
                device: {"ms": seen.ms, "install": seen.install}
                for device, seen in state.first_seen.items()
            },
            "last_device_type": state.last_device_type,
            "last_seen_ms": state.last_seen_ms,
            "audiences": state.audiences,
            "audiences_left": state.audiences_left,
            "applied_offsets": state.applied_offsets,
            "first_record_ms": state.first_record_ms,
        }
    )


def decode_state(data: bytes) -> UserState:
    """The :class:`UserState` encoded by :func:`encode_state`."""
    record = codec("user_state").decode(data)
    try:
        attributes: Any = orjson.loads(record["attributes_json"])
    except orjson.JSONDecodeError as exc:
        raise InvalidRecordError(
            Reason.AVRO_DECODE, f"corrupt user_state attributes: {exc}"
        ) from exc
    if type(attributes) is not dict:
        raise InvalidRecordError(Reason.AVRO_DECODE, "user_state attributes are not a JSON object")
    # every field is given, so EMPTY_STATE only supplies the copy; evolve, not UserState(...):
    # decode_state 35 -> 24 µs
    return evolve(
        EMPTY_STATE,
        {
            "email": record["email"],
            "customer_id": record["customer_id"],
            "person_id": record["person_id"],
            "first_name": record["first_name"],
            "last_name": record["last_name"],
            "attributes": attributes,
            "profile_at_ms": record["profile_at_ms"],
            "sent_digest": record["sent_digest"],
            "opted_out": record["opted_out"],
            "opt_out_at_ms": record["opt_out_at_ms"],
            "unsubscribed_sent": record["unsubscribed_sent"],
            "first_seen": {
                device: FirstSeen(seen["ms"], seen["install"])
                for device, seen in record["first_seen"].items()
            },
            "last_device_type": record["last_device_type"],
            "last_seen_ms": record["last_seen_ms"],
            "audiences": record["audiences"],
            "audiences_left": record["audiences_left"],
            "applied_offsets": record["applied_offsets"],
            "first_record_ms": record["first_record_ms"],
        },
    )
