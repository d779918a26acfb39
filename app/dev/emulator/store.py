"""The emulated workspace: people and their events, changed by validated Track API operations.

Pure state, no I/O: the server calls :meth:`Store.apply` with v2 items that passed
:func:`app.dev.emulator.validation.item_error`, or the v1 methods with checked arguments, and tests
read the result. Behaviour follows Customer.io's documented rules:

- People are found by ``id``, by ``email`` (case-insensitively) or by ``cio_id`` (assigned
  here, ``cio_`` + 8 hex digits in the v1 path form, the bare digits in v2 identifiers).
- An identify of an unknown ``id`` or ``email`` creates the person, unless ``_update`` is true.
  An identify ``{"id": X}`` whose ``email`` attribute belongs to a person without an id updates
  that person and gives them the id X (SPEC §3 rule 11 relies on it).
- An identify carrying ``timestamp`` older than the newest one applied to the person is stale:
  ignored (counted in ``stale_identifies``), or applied anyway under pessimistic
  :class:`WorkspaceRules` (still counted), so that out-of-order delivery shows in the result.
- Every applied identify is kept in :attr:`Store.identifies_log` (arrival order), so a checker
  can see the order in which each person's updates arrived.
- Attributes merge; an empty string removes an attribute. ``email`` and ``id`` attributes change
  the person's identifiers: ``email`` when the person is referenced by ``id`` or ``cio_id``,
  ``id`` when the person has none yet or is referenced by ``cio_id``. ``unsubscribed`` is kept
  as an attribute and read as Customer.io does (true, any case of "true", 1 or "1").
- Events, screens and pages are stored with the person they were attributed to. An event whose
  ``id`` (a ULID, compared case-insensitively) was seen before in the workspace (or, with a
  finite ``dedup_window``, among the last ``dedup_window`` event ids) is dropped and counted in
  ``duplicates_suppressed``. An event for an unknown ``id`` or ``email`` creates the person.
- With ``max_attributes_per_person`` set (Customer.io: 300 unique attributes per person), a new
  attribute that would take the person past the cap is not stored and is counted in
  ``attributes_over_limit``; values of attributes the person already has still change.
- ``delete`` removes the person and their events from the workspace and keeps a scrubbed copy
  (ids only) in :attr:`Store.deleted`; their event ids stay known, so a replay is still
  de-duplicated. ``suppress`` and ``unsuppress`` set a flag.

Failure semantics: nothing raises for validated input. What Customer.io accepts with 200 but
does not carry out (an unknown ``cio_id``; ``_update`` for an unknown person; delete, suppress
or device changes of an unknown person) is counted in ``unresolved_operations``; an identifier
change that would take another person's id or email (Customer.io's *Attribute Update Failure*)
is skipped and counted in ``attribute_update_failures``, the rest of the update applies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.dev.emulator.validation import EVENT_ACTIONS, Identifier, IdentifierKind

# Attributes that are instructions to Customer.io rather than data about the person.
_CONTROL_ATTRIBUTES = frozenset({"_update", "_timestamp", "cio_relationships", "cio_id"})


@dataclass(frozen=True, slots=True)
class WorkspaceRules:
    """How the workspace treats what it is sent, where Customer.io's exact behaviour is looser or
    unpublished.

    ``apply_stale_identifies``: apply an identify older than one already applied (counted in
    ``stale_identifies`` either way) instead of dropping it, so out-of-order delivery changes the
    result. ``dedup_window``: how many of the most recent event ids are remembered for
    de-duplication (``None``: all of them). ``max_attributes_per_person``: the cap on a person's
    unique attributes (``None``: no cap).
    """

    apply_stale_identifies: bool = False
    dedup_window: int | None = None
    max_attributes_per_person: int | None = None


@dataclass(frozen=True, slots=True)
class AppliedIdentify:
    """One identify the workspace applied: to whom, what, whether it was older than one applied
    before (``stale``), and its place (``sequence``) among every identify and event applied."""

    identifier: Identifier
    person_cio_id: str
    attributes: Mapping[str, Any]
    timestamp: int | None
    stale: bool
    received_at: float
    sequence: int

    def as_json(self) -> dict[str, Any]:
        """The identify as the inspection API shows it."""
        kind, value = self.identifier
        return {
            "identifiers": {kind: value},
            "person_cio_id": self.person_cio_id,
            "attributes": self.attributes,
            "timestamp": self.timestamp,
            "stale": self.stale,
            "received_at": self.received_at,
            "sequence": self.sequence,
        }


@dataclass(slots=True)
class Person:
    """One person of the workspace."""

    cio_id: str
    id: str | None = None
    email: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    suppressed: bool = False
    deleted: bool = False
    event_count: int = 0
    attributes_at: int | None = None  # newest identify ``timestamp`` applied

    @property
    def unsubscribed(self) -> bool:
        """Customer.io's reading of the ``unsubscribed`` attribute."""
        value = self.attributes.get("unsubscribed")
        if type(value) is str:
            return value.lower() == "true" or value == "1"
        return value is True or (type(value) is int and value == 1)

    def as_json(self) -> dict[str, Any]:
        """The person as the inspection API shows it."""
        return {
            "cio_id": self.cio_id,
            "id": self.id,
            "email": self.email,
            "attributes": self.attributes,
            "unsubscribed": self.unsubscribed,
            "suppressed": self.suppressed,
            "deleted": self.deleted,
            "devices": self.devices,
            "event_count": self.event_count,
        }


@dataclass(slots=True)
class StoredEvent:
    """An event, screen or page view as stored, with who it was attributed to then and its
    place (``sequence``) among every identify and event applied."""

    action: str
    name: str
    id: str | None
    timestamp: int | None
    attributes: dict[str, Any]
    person_cio_id: str
    person_id: str | None
    person_email: str | None
    received_at: float
    sequence: int = 0

    def as_json(self) -> dict[str, Any]:
        """The event as the inspection API shows it (``timestamp`` null when none was sent)."""
        return {
            "action": self.action,
            "name": self.name,
            "id": self.id,
            "timestamp": self.timestamp,
            "attributes": self.attributes,
            "person_cio_id": self.person_cio_id,
            "person_id": self.person_id,
            "person_email": self.person_email,
            "received_at": self.received_at,
            "sequence": self.sequence,
        }


class Store:
    """People, events and the counters of what happened to operations (module docstring)."""

    def __init__(self, rules: WorkspaceRules | None = None) -> None:
        self.rules = WorkspaceRules() if rules is None else rules
        self.events: list[StoredEvent] = []
        self.deleted: list[Person] = []
        self.identifies_log: list[AppliedIdentify] = []
        self.identifies = 0
        self.stale_identifies = 0
        self.duplicates_suppressed = 0
        self.unresolved_operations = 0
        self.attribute_update_failures = 0
        self.attributes_over_limit = 0
        self._by_cio_id: dict[str, Person] = {}
        self._by_id: dict[str, Person] = {}
        self._by_email: dict[str, Person] = {}
        self._event_ids: set[str] = set()
        # Insertion order of _event_ids, kept only for a finite dedup window (oldest first).
        self._event_id_order: deque[str] = deque()
        self._next_cio_number = 1
        self._applied = 0  # identifies and events applied so far: their ``sequence``

    # --- reading ---------------------------------------------------------------------------------

    @property
    def people(self) -> Iterator[Person]:
        """Everyone in the workspace now, in order of creation."""
        return iter(self._by_cio_id.values())

    @property
    def people_count(self) -> int:
        """How many people are in the workspace now."""
        return len(self._by_cio_id)

    def find(self, identifier: Identifier) -> Person | None:
        """The person ``identifier`` names now, if any (emails match case-insensitively)."""
        kind, value = identifier
        if kind == "id":
            return self._by_id.get(value)
        if kind == "email":
            return self._by_email.get(value.lower())
        return self._by_cio_id.get(value)

    # --- v2 items --------------------------------------------------------------------------------

    def apply(self, item: dict[str, Any], received_at: float) -> None:
        """Carry out one validated v2 person item received at ``received_at`` (epoch seconds)."""
        ((kind, value),) = item["identifiers"].items()
        identifier: Identifier = (kind, value)
        action = item["action"]
        if action == "identify":
            attributes = item.get("attributes") or {}
            self.identify(
                identifier,
                attributes,
                update_only=attributes.get("_update") is True,
                timestamp=item.get("timestamp"),
                received_at=received_at,
            )
        elif action in EVENT_ACTIONS:
            self.track(
                identifier,
                action,
                item["name"],
                event_id=item.get("id"),
                timestamp=item.get("timestamp"),
                attributes=item.get("attributes") or {},
                received_at=received_at,
            )
        elif action == "delete":
            self.delete(identifier)
        elif action in ("suppress", "unsuppress"):
            self.set_suppressed(identifier, suppressed=action == "suppress")
        elif action == "add_device":
            self.add_device(identifier, item["device"])
        else:  # delete_device: validation lets no other action through
            self.delete_device(identifier, item["device"]["token"])

    # --- operations ------------------------------------------------------------------------------

    def identify(
        self,
        identifier: Identifier,
        attributes: Mapping[str, Any],
        *,
        update_only: bool = False,
        timestamp: int | None = None,
        received_at: float = 0.0,
    ) -> None:
        """Create or update the person ``identifier`` names and merge ``attributes``.

        An identify whose ``timestamp`` is older than one already applied to the person is a
        stale update (a request that arrived late, e.g. after its client timed out and retried):
        it is counted in ``stale_identifies`` and changes nothing, which is what Customer.io's
        ``timestamp`` is for ("control the order of attribute updates") - unless the rules say
        ``apply_stale_identifies``, when it is applied like any other. ``received_at`` (epoch
        seconds) goes into :attr:`identifies_log`."""
        self.identifies += 1
        kind, value = identifier
        person = self.find(identifier)
        if person is None and kind == "id":
            person = self._email_only_owner(attributes.get("email"))
            if person is not None:
                self._index_id(person, value)
        if person is None:
            if kind == "cio_id" or update_only:
                self.unresolved_operations += 1
                return
            person = self._create(kind, value)
        newest = person.attributes_at
        stale = newest is not None and timestamp is not None and timestamp < newest
        if stale:
            self.stale_identifies += 1
            if not self.rules.apply_stale_identifies:
                return
        elif timestamp is not None:
            person.attributes_at = timestamp
        self._applied += 1
        self.identifies_log.append(
            AppliedIdentify(
                identifier, person.cio_id, attributes, timestamp, stale, received_at, self._applied
            )
        )
        self._merge(person, kind, attributes)

    def track(
        self,
        identifier: Identifier,
        action: str,
        name: str,
        *,
        event_id: str | None,
        timestamp: int | None,
        attributes: dict[str, Any],
        received_at: float,
    ) -> bool:
        """Store an event for the person; ``False`` when it is a duplicate or nobody is named."""
        dedup_key = None if event_id is None else event_id.upper()
        if dedup_key is not None and dedup_key in self._event_ids:
            self.duplicates_suppressed += 1
            return False
        person = self.find(identifier)
        if person is None:
            kind, value = identifier
            if kind == "cio_id":
                self.unresolved_operations += 1
                return False
            person = self._create(kind, value)
        if dedup_key is not None:
            self._remember_event_id(dedup_key)
        self._applied += 1
        person.event_count += 1
        self.events.append(
            StoredEvent(
                action=action,
                name=name.strip(),
                id=event_id,
                timestamp=timestamp,
                attributes=attributes,
                person_cio_id=person.cio_id,
                person_id=person.id,
                person_email=person.email,
                received_at=received_at,
                sequence=self._applied,
            )
        )
        return True

    def delete(self, identifier: Identifier) -> None:
        """Remove the person and their events (Customer.io deletes the profile's data); keep
        a scrubbed copy (ids only: no email, no attributes) in :attr:`deleted`."""
        person = self._existing(identifier)
        if person is None:
            return
        del self._by_cio_id[person.cio_id]
        if person.id is not None:
            del self._by_id[person.id]
        if person.email is not None:
            del self._by_email[person.email.lower()]
        self.events = [e for e in self.events if e.person_cio_id != person.cio_id]
        person.email = None
        person.attributes = {}
        person.devices = {}
        person.deleted = True
        self.deleted.append(person)

    def set_suppressed(self, identifier: Identifier, *, suppressed: bool) -> None:
        """Suppress or unsuppress the person."""
        person = self._existing(identifier)
        if person is not None:
            person.suppressed = suppressed

    def add_device(self, identifier: Identifier, device: dict[str, Any]) -> None:
        """Add or replace the device with ``device["token"]``."""
        person = self._existing(identifier)
        if person is not None:
            person.devices[device["token"]] = device

    def delete_device(self, identifier: Identifier, token: str) -> None:
        """Remove the device ``token`` from the person, if it is there."""
        person = self._existing(identifier)
        if person is not None:
            person.devices.pop(token, None)

    # --- internals -------------------------------------------------------------------------------

    def _existing(self, identifier: Identifier) -> Person | None:
        person = self.find(identifier)
        if person is None:
            self.unresolved_operations += 1
        return person

    def _remember_event_id(self, key: str) -> None:
        self._event_ids.add(key)
        window = self.rules.dedup_window
        if window is not None:
            self._event_id_order.append(key)
            if len(self._event_id_order) > window:
                self._event_ids.discard(self._event_id_order.popleft())

    def _create(self, kind: IdentifierKind, value: str) -> Person:
        person = Person(cio_id=f"{self._next_cio_number:08x}")
        self._next_cio_number += 1
        self._by_cio_id[person.cio_id] = person
        if kind == "id":
            self._index_id(person, value)
        else:
            self._index_email(person, value)
        return person

    def _email_only_owner(self, email: Any) -> Person | None:
        if type(email) is not str or not email:
            return None
        owner = self._by_email.get(email.lower())
        return owner if owner is not None and owner.id is None else None

    def _merge(self, person: Person, kind: IdentifierKind, attributes: Mapping[str, Any]) -> None:
        stored = person.attributes
        cap = self.rules.max_attributes_per_person
        for name, value in attributes.items():
            if name in _CONTROL_ATTRIBUTES:
                continue
            if name == "email":
                self._change_email(person, kind, value)
            elif name == "id":
                if value not in ("", person.id):
                    self._change_id(person, kind, str(value))
            elif value == "":
                stored.pop(name, None)
            elif cap is not None and name not in stored and len(stored) >= cap:
                self.attributes_over_limit += 1
            else:
                stored[name] = value

    def _change_email(self, person: Person, kind: IdentifierKind, email: str) -> None:
        if email == "":
            if kind != "email" and person.email is not None:
                del self._by_email[person.email.lower()]
                person.email = None
            return
        owner = self._by_email.get(email.lower())
        if owner is person:
            person.email = email
        elif owner is not None or kind == "email":
            self.attribute_update_failures += 1
        else:
            if person.email is not None:
                del self._by_email[person.email.lower()]
            self._index_email(person, email)

    def _change_id(self, person: Person, kind: IdentifierKind, new_id: str) -> None:
        if new_id in self._by_id or (person.id is not None and kind != "cio_id"):
            self.attribute_update_failures += 1
            return
        if person.id is not None:
            del self._by_id[person.id]
        self._index_id(person, new_id)

    def _index_id(self, person: Person, person_id: str) -> None:
        person.id = person_id
        self._by_id[person_id] = person

    def _index_email(self, person: Person, email: str) -> None:
        person.email = email
        self._by_email[email.lower()] = person
