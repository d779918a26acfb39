"""Emulator workspace: Customer.io's identity, attribute, event and deletion rules."""

from __future__ import annotations

from typing import Any

import pytest

from app.dev.emulator.store import Person, Store, WorkspaceRules

AT = 1_795_000_000.0
ULID_A = "01HZX3B9Q5K8M2N4P6R7S8T9VW"
ULID_B = "01HZX3B9Q5K8M2N4P6R7S8T9VX"


def track(store: Store, who: tuple[Any, str], event_id: str | None = ULID_A, **fields: Any) -> bool:
    return store.track(
        who,
        fields.pop("action", "event"),
        fields.pop("name", "purchase"),
        event_id=event_id,
        timestamp=fields.pop("timestamp", 1_700_000_000),
        attributes=fields,
        received_at=AT,
    )


def only_person(store: Store) -> Person:
    (person,) = store.people
    return person


def test_identify_by_email_creates_an_email_only_person_found_case_insensitively() -> None:
    store = Store()
    store.identify(("email", "Ann@Example.com"), {"first_name": "Ann"})
    person = store.find(("email", "ann@example.COM"))
    assert person is not None
    assert (person.id, person.email, person.attributes) == (
        None,
        "Ann@Example.com",
        {"first_name": "Ann"},
    )
    assert store.find(("cio_id", person.cio_id)) is person


def test_identify_by_id_with_the_email_of_an_email_only_person_gives_them_the_id() -> None:
    store = Store()
    store.identify(("email", "ann@example.com"), {"first_name": "Ann"})
    store.identify(("id", "c-1"), {"email": "ANN@example.com", "plan": "pro"})
    person = only_person(store)
    assert (person.id, person.email) == ("c-1", "ANN@example.com")
    assert person.attributes == {"first_name": "Ann", "plan": "pro"}
    assert store.find(("id", "c-1")) is store.find(("email", "ann@example.com")) is person


def test_identify_by_a_new_id_with_the_email_of_someone_with_an_id_is_an_update_failure() -> None:
    store = Store()
    store.identify(("id", "c-1"), {"email": "ann@example.com"})
    store.identify(("id", "c-2"), {"email": "ann@example.com", "plan": "pro"})
    first, second = store.people
    assert (first.id, first.email) == ("c-1", "ann@example.com")
    assert (second.id, second.email, second.attributes) == ("c-2", None, {"plan": "pro"})
    assert store.attribute_update_failures == 1


def test_attributes_merge_and_an_empty_string_removes_one() -> None:
    store = Store()
    store.identify(("id", "1"), {"a": 1, "b": "x", "c": [1]})
    store.identify(("id", "1"), {"b": "", "c": None, "d": True, "never": ""})
    assert only_person(store).attributes == {"a": 1, "c": None, "d": True}


@pytest.mark.parametrize(
    ("value", "unsubscribed"),
    [(True, True), ("TRUE", True), ("true", True), ("1", True), (1, True),
     (False, False), ("false", False), (0, False), ("yes", False), (None, False)],
)  # fmt: skip
def test_unsubscribed_is_read_as_customerio_does(value: Any, unsubscribed: bool) -> None:
    store = Store()
    store.identify(("id", "1"), {"unsubscribed": value})
    person = only_person(store)
    assert person.unsubscribed is unsubscribed
    assert person.as_json()["unsubscribed"] is unsubscribed


def test_email_changes_when_referenced_by_id_and_the_old_email_is_free() -> None:
    store = Store()
    store.identify(("id", "1"), {"email": "old@example.com"})
    store.identify(("id", "1"), {"email": "new@example.com"})
    assert only_person(store).email == "new@example.com"
    assert store.find(("email", "old@example.com")) is None
    store.identify(("email", "old@example.com"), {})
    assert store.people_count == 2


def test_email_taken_by_someone_else_is_not_changed() -> None:
    store = Store()
    store.identify(("id", "1"), {"email": "one@example.com"})
    store.identify(("id", "2"), {"email": "two@example.com"})
    store.identify(("id", "2"), {"email": "one@example.com", "plan": "pro"})
    person = store.find(("id", "2"))
    assert person is not None
    assert (person.email, person.attributes) == ("two@example.com", {"plan": "pro"})
    assert store.attribute_update_failures == 1


def test_email_identifier_cannot_be_renamed_through_its_own_attribute() -> None:
    store = Store()
    store.identify(("email", "one@example.com"), {"email": "two@example.com"})
    assert only_person(store).email == "one@example.com"
    assert store.attribute_update_failures == 1


def test_id_is_set_through_the_email_then_changed_only_through_cio_id() -> None:
    store = Store()
    store.identify(("email", "ann@example.com"), {"id": "c-1"})
    person = only_person(store)
    assert person.id == "c-1"
    store.identify(("email", "ann@example.com"), {"id": "c-2"})
    assert (person.id, store.attribute_update_failures) == ("c-1", 1)
    store.identify(("cio_id", person.cio_id), {"id": "c-2"})
    assert person.id == "c-2"
    assert store.find(("id", "c-1")) is None
    assert store.find(("id", "c-2")) is person


def test_update_only_and_unknown_cio_id_create_nobody() -> None:
    store = Store()
    store.identify(("id", "1"), {"_update": True, "a": 1}, update_only=True)
    store.identify(("cio_id", "ffffffff"), {"a": 1})
    assert store.people_count == 0
    assert store.unresolved_operations == 2
    store.identify(("id", "1"), {"_update": True, "a": 1})
    assert only_person(store).attributes == {"a": 1}  # _update is an instruction, not data


def test_repeated_event_id_is_dropped_and_counted_case_insensitively() -> None:
    store = Store()
    assert track(store, ("id", "1"), ULID_A) is True
    assert track(store, ("id", "1"), ULID_A.lower()) is False
    assert track(store, ("id", "2"), ULID_A) is False
    assert track(store, ("id", "1"), ULID_B) is True
    assert [event.id for event in store.events] == [ULID_A, ULID_B]
    assert store.duplicates_suppressed == 2


def test_events_without_id_are_never_deduplicated() -> None:
    store = Store()
    assert track(store, ("id", "1"), None) is True
    assert track(store, ("id", "1"), None) is True
    assert (len(store.events), store.duplicates_suppressed) == (2, 0)


def test_event_for_unknown_person_creates_them_except_by_cio_id() -> None:
    store = Store()
    track(store, ("id", "1"), ULID_A, action="screen", name=" Home ", sku="A1")
    track(store, ("email", "ann@example.com"), ULID_B)
    assert track(store, ("cio_id", "ffffffff"), None) is False
    assert [(p.id, p.email, p.event_count) for p in store.people] == [
        ("1", None, 1),
        (None, "ann@example.com", 1),
    ]
    assert store.unresolved_operations == 1
    first = store.events[0].as_json()
    assert first == {
        "action": "screen",
        "name": "Home",
        "id": ULID_A,
        "timestamp": 1_700_000_000,
        "attributes": {"sku": "A1"},
        "person_cio_id": "00000001",
        "person_id": "1",
        "person_email": None,
        "received_at": AT,
        "sequence": 1,
    }


def test_delete_removes_the_person_and_events_and_keeps_a_scrubbed_copy() -> None:
    store = Store()
    store.identify(("id", "1"), {"email": "ann@example.com", "plan": "pro"})
    track(store, ("id", "1"))
    store.delete(("email", "ANN@example.com"))
    assert store.people_count == 0
    assert store.find(("id", "1")) is None
    assert [(p.id, p.email, p.attributes, p.deleted) for p in store.deleted] == [
        ("1", None, {}, True)
    ]
    assert store.events == []
    store.identify(("id", "1"), {})
    assert only_person(store).cio_id != store.deleted[0].cio_id


def test_operations_on_unknown_people_are_unresolved() -> None:
    store = Store()
    store.delete(("id", "1"))
    store.set_suppressed(("id", "1"), suppressed=True)
    store.add_device(("id", "1"), {"token": "t"})
    store.delete_device(("id", "1"), "t")
    assert (store.people_count, store.unresolved_operations) == (0, 4)


def item(action: str, **fields: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": "1"}, "action": action, **fields}


def test_apply_dispatches_every_supported_action() -> None:
    store = Store()
    store.apply(item("identify", attributes={"a": 1}), AT)
    store.apply(item("event", name="e", id=ULID_A, timestamp=5, attributes={"x": 1}), AT)
    store.apply(item("screen", name="s"), AT)
    store.apply(item("page", name="/p"), AT)
    store.apply(item("add_device", device={"token": "t1", "platform": "ios"}), AT)
    store.apply(item("add_device", device={"token": "t2"}), AT)
    store.apply(item("delete_device", device={"token": "t1"}), AT)
    store.apply(item("suppress"), AT)
    person = only_person(store)
    assert person.attributes == {"a": 1}
    assert [(e.action, e.name, e.id, e.timestamp) for e in store.events] == [
        ("event", "e", ULID_A, 5),
        ("screen", "s", None, None),
        ("page", "/p", None, None),
    ]
    assert (person.devices, person.suppressed) == ({"t2": {"token": "t2"}}, True)
    store.apply(item("unsuppress"), AT)
    assert person.suppressed is False
    store.apply(item("identify", attributes={"_update": True, "b": 2}), AT)
    assert person.attributes == {"a": 1, "b": 2}
    store.apply(item("delete"), AT)
    assert (store.people_count, store.identifies) == (0, 2)


def test_stale_identify_does_not_overwrite_a_newer_one() -> None:
    from app.dev.emulator.store import Store  # noqa: PLC0415

    store = Store()
    store.identify(("id", "p1"), {"tier": 2}, timestamp=200)
    store.identify(("id", "p1"), {"tier": 1}, timestamp=100)  # arrived late
    store.identify(("id", "p1"), {"plan": "pro"})  # no timestamp: always applied
    person = store.find(("id", "p1"))
    assert person is not None
    assert person.attributes == {"tier": 2, "plan": "pro"}
    assert store.stale_identifies == 1


# --- pessimistic rules ---------------------------------------------------------------------------


def test_pessimistic_store_applies_a_stale_identify_and_logs_it() -> None:
    store = Store(WorkspaceRules(apply_stale_identifies=True))
    store.identify(("id", "p1"), {"tier": 2}, timestamp=200, received_at=AT)
    store.identify(("id", "p1"), {"tier": 1}, timestamp=100, received_at=AT + 1)  # late
    store.identify(("id", "p1"), {"tier": 3}, timestamp=150)  # newer than the late one only
    assert only_person(store).attributes == {"tier": 3}
    assert store.stale_identifies == 2
    assert [(a.attributes["tier"], a.stale, a.sequence) for a in store.identifies_log] == [
        (2, False, 1),
        (1, True, 2),
        (3, True, 3),
    ]
    assert store.identifies_log[1].as_json() == {
        "identifiers": {"id": "p1"},
        "person_cio_id": "00000001",
        "attributes": {"tier": 1},
        "timestamp": 100,
        "stale": True,
        "received_at": AT + 1,
        "sequence": 2,
    }


def test_lenient_store_does_not_log_the_stale_identify_it_drops() -> None:
    store = Store()
    store.identify(("id", "p1"), {"tier": 2}, timestamp=200)
    store.identify(("id", "p1"), {"tier": 1}, timestamp=100)
    assert [a.attributes for a in store.identifies_log] == [{"tier": 2}]


def test_identifies_and_events_share_one_arrival_sequence() -> None:
    store = Store()
    store.identify(("id", "p1"), {"tier": 1})
    track(store, ("id", "p1"), ULID_A)
    track(store, ("id", "p1"), ULID_A)  # a duplicate: not applied, takes no place
    store.identify(("id", "p1"), {"tier": 2})
    track(store, ("id", "p1"), ULID_B)
    assert [a.sequence for a in store.identifies_log] == [1, 3]
    assert [e.sequence for e in store.events] == [2, 4]


def test_finite_dedup_window_forgets_the_oldest_event_ids() -> None:
    store = Store(WorkspaceRules(dedup_window=2))
    ulid_c = "01HZX3B9Q5K8M2N4P6R7S8T9VY"
    for event_id in (ULID_A, ULID_B, ulid_c):
        assert track(store, ("id", "p1"), event_id) is True
    assert track(store, ("id", "p1"), ULID_B) is False  # still in the window
    assert track(store, ("id", "p1"), ULID_A) is True  # forgotten: stored again
    assert store.duplicates_suppressed == 1
    assert [e.id for e in store.events] == [ULID_A, ULID_B, ulid_c, ULID_A]


def test_unlimited_dedup_window_remembers_every_event_id() -> None:
    store = Store()
    for number in range(50):
        track(store, ("id", "p1"), f"01HZX3B9Q5K8M2N4P6R7S8T9{number:02d}")
    assert track(store, ("id", "p1"), "01HZX3B9Q5K8M2N4P6R7S8T900") is False


def test_attribute_cap_keeps_existing_attributes_updatable_and_drops_new_ones() -> None:
    store = Store(WorkspaceRules(max_attributes_per_person=3))
    store.identify(("id", "p1"), {"a": 1, "b": 2, "c": 3, "d": 4, "email": "p1@example.com"})
    person = only_person(store)
    assert person.attributes == {"a": 1, "b": 2, "c": 3}
    assert person.email == "p1@example.com"  # an identifier, not one of the attributes
    store.identify(("id", "p1"), {"a": 10, "e": 5})
    assert person.attributes == {"a": 10, "b": 2, "c": 3}
    store.identify(("id", "p1"), {"b": "", "e": 5})  # a removal makes room
    assert person.attributes == {"a": 10, "c": 3, "e": 5}
    assert store.attributes_over_limit == 2
