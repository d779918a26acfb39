"""Per-user state: fold is idempotent and order-robust; the Avro encoding round-trips."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields, replace
from itertools import permutations
from typing import Any, get_type_hints

import pytest

from app.core.mparticle import Batch, parse_batch
from app.core.state import (
    FirstSeen,
    StateChanges,
    UserState,
    decode_state,
    earlier_first_seen,
    encode_state,
    evolve,
    fold,
)
from app.errors import InvalidRecordError

T0 = 1_700_000_000_000


def make_batch(
    *,
    at: int | None = T0,
    events: list[dict[str, Any]] | None = None,
    device: str | None = "IOS",
    **fields: Any,
) -> Batch:
    raw: dict[str, Any] = {"mpid": 7, "environment": "production", "events": events or []}
    if at is not None:
        raw["timestamp_unixtime_ms"] = at
    if device is not None:
        raw["application_info"] = {"os": device}
    raw.update(fields)
    return parse_batch(raw)


def custom(at: int, name: str = "Viewed") -> dict[str, Any]:
    return {"event_type": "custom_event", "data": {"event_name": name, "timestamp_unixtime_ms": at}}


def opt_out(at: int, value: bool) -> dict[str, Any]:
    return {"event_type": "opt_out", "data": {"is_opted_out": value, "timestamp_unixtime_ms": at}}


def install(at: int) -> dict[str, Any]:
    return {"event_type": "first_run", "data": {"timestamp_unixtime_ms": at}}


def fold_all(batches: list[Batch], state: UserState | None = None) -> UserState:
    for batch in batches:
        state = fold(state, batch)
    assert state is not None
    return state


BATCHES = {
    "identities-and-attributes": make_batch(
        user_identities={"email": "a@example.com", "customer_id": "c1"},
        user_attributes={"$FirstName": "Ann", "$City": "Porto", "plan": "pro"},
    ),
    "deletions": make_batch(deleted_user_attributes=["plan", "$FirstName"]),
    "opt-out": make_batch(events=[opt_out(T0 - 10, True), custom(T0 - 5)]),
    "opt-out-then-in": make_batch(events=[opt_out(T0 - 10, True), opt_out(T0 - 5, False)]),
    "install-and-events": make_batch(events=[custom(T0 - 50), install(T0 - 20)]),
    "no-timestamps": make_batch(at=None, user_attributes={"x": 1}, events=[custom(T0)]),
    "unknown-device": make_batch(device=None, events=[custom(T0 + 5)]),
}


@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
@pytest.mark.parametrize(
    "previous",
    [
        pytest.param(None, id="new-user"),
        pytest.param(fold_all(list(BATCHES.values())), id="known-user"),
    ],
)
def test_fold_is_idempotent(batch: Batch, previous: UserState | None) -> None:
    once = fold(previous, batch)
    assert fold(once, batch) == once


def test_fold_identities_and_names() -> None:
    state = fold(None, BATCHES["identities-and-attributes"])
    assert (state.email, state.customer_id) == ("a@example.com", "c1")
    assert state.first_name == "Ann"
    assert state.attributes == {"$city": "Porto", "plan": "pro"}
    assert state.person_id is None
    assert state.sent_digest is None


def test_fold_remembers_email_from_earlier_batch() -> None:
    state = fold_all([BATCHES["identities-and-attributes"], make_batch(at=T0 + 1)])
    assert state.email == "a@example.com"


def test_fold_deletions_remove_attributes_and_names() -> None:
    state = fold_all([BATCHES["identities-and-attributes"], BATCHES["deletions"]])
    assert state.attributes == {"$city": "Porto"}
    assert state.first_name is None


def test_fold_attributes_merge_across_batches() -> None:
    state = fold_all(
        [
            make_batch(user_attributes={"a": 1, "b": 2}),
            make_batch(at=T0 + 1, user_attributes={"b": 3, "c": [4]}),
        ]
    )
    assert state.attributes == {"a": 1, "b": 3, "c": [4]}


def test_older_batch_does_not_overwrite_newer_profile() -> None:
    newer = make_batch(
        at=T0 + 100, user_attributes={"plan": "pro"}, user_identities={"email": "new@x.io"}
    )
    older = make_batch(
        at=T0, user_attributes={"plan": "free"}, user_identities={"email": "old@x.io"}
    )
    state = fold_all([newer, older])
    assert state.attributes == {"plan": "pro"}
    assert state.email == "new@x.io"
    assert state.profile_at_ms == T0 + 100


def test_older_batch_fills_unknown_identity() -> None:
    newer = make_batch(at=T0 + 100, user_identities={"customer_id": "c1"})
    older = make_batch(at=T0, user_identities={"email": "old@x.io"})
    state = fold_all([newer, older])
    assert (state.email, state.customer_id) == ("old@x.io", "c1")


@pytest.mark.parametrize(
    ("batches", "opted_out"),
    [
        pytest.param([BATCHES["opt-out"]], True, id="opt-out"),
        pytest.param([BATCHES["opt-out-then-in"]], False, id="opt-out-then-in-same-batch"),
        pytest.param([make_batch(events=[opt_out(T0, False), opt_out(T0 - 1, True)])], False,
                     id="newest-event-wins-within-batch"),
    ],
)  # fmt: skip
def test_fold_opt_out(batches: list[Batch], opted_out: bool) -> None:
    assert fold_all(batches).opted_out is opted_out


def test_redelivered_old_opt_out_does_not_undo_newer_opt_in() -> None:
    old_out = make_batch(at=T0, events=[opt_out(T0, True)])
    new_in = make_batch(at=T0 + 10, events=[opt_out(T0 + 10, False)])
    assert fold_all([old_out, new_in]).opted_out is False
    assert fold_all([old_out, new_in, old_out]).opted_out is False


DEVICE_BATCHES = [
    make_batch(device="IOS", events=[custom(T0 + 300)]),
    make_batch(device="IOS", events=[custom(T0 + 100), custom(T0 + 900)]),
    make_batch(device="Android", events=[custom(T0 + 500)]),
    make_batch(device="Android", events=[install(T0 + 700)]),
]


@pytest.mark.parametrize(
    "order",
    list(permutations(range(len(DEVICE_BATCHES)))),
    ids=lambda order: "-".join(map(str, order)),
)
def test_first_seen_is_order_robust(order: tuple[int, ...]) -> None:
    state = fold_all([DEVICE_BATCHES[index] for index in order])
    assert state.first_seen == {
        "IOS": FirstSeen(T0 + 100, install=False),
        "Android": FirstSeen(T0 + 700, install=True),  # the install signal wins over T0+500
    }
    assert (state.last_device_type, state.last_seen_ms) == ("IOS", T0 + 900)
    assert state.created_at_ms == T0 + 100


def test_first_seen_falls_back_to_batch_time_and_unknown_device() -> None:
    state = fold(None, make_batch(device=None, at=T0 + 3))
    assert state.first_seen == {"Unknown": FirstSeen(T0 + 3, install=False)}
    assert state.last_device_type == "Unknown"


def test_no_time_at_all_records_nothing() -> None:
    state = fold(None, make_batch(at=None))
    assert state.first_seen == {}
    assert state.last_device_type is None
    assert state.created_at_ms is None


@pytest.mark.parametrize(
    ("current", "candidate", "winner"),
    [
        pytest.param(None, FirstSeen(5, False), FirstSeen(5, False), id="nothing-yet"),
        pytest.param(FirstSeen(5, False), FirstSeen(3, False), FirstSeen(3, False), id="earlier"),
        pytest.param(FirstSeen(3, False), FirstSeen(5, False), FirstSeen(3, False), id="later"),
        pytest.param(
            FirstSeen(3, False), FirstSeen(9, True), FirstSeen(9, True), id="install-wins"
        ),
        pytest.param(
            FirstSeen(9, True), FirstSeen(3, False), FirstSeen(9, True), id="install-kept"
        ),
        pytest.param(
            FirstSeen(9, True), FirstSeen(4, True), FirstSeen(4, True), id="earliest-install"
        ),
    ],
)
def test_earlier_first_seen(
    current: FirstSeen | None, candidate: FirstSeen, winner: FirstSeen
) -> None:
    assert earlier_first_seen(current, candidate) == winner


STATES = {
    "empty": UserState(),
    "full": UserState(
        email="a@example.com",
        customer_id="c1",
        person_id="c1",
        first_name="Ann",
        last_name="Lee",
        attributes={
            "s": "ü text",
            "i": -(2**63),
            "big": 2**64 - 1,
            "f": 0.1,
            "b": False,
            "n": None,
            "l": ["a", "b"],
        },
        profile_at_ms=T0,
        sent_digest=bytes(range(16)),
        opted_out=True,
        opt_out_at_ms=T0 - 1,
        unsubscribed_sent=True,
        first_seen={"IOS": FirstSeen(T0, install=True), "web": FirstSeen(T0 + 1, install=False)},
        last_device_type="web",
        last_seen_ms=T0 + 2,
        audiences={"123": "VIPs"},
    ),
    "folded-sample": fold_all(list(BATCHES.values())),
}


@pytest.mark.parametrize("state", STATES.values(), ids=STATES.keys())
def test_state_avro_round_trip(state: UserState) -> None:
    encoded = encode_state(state)
    assert encoded[:2] == b"\xc3\x01"
    assert decode_state(encoded) == state


def test_state_avro_round_trip_keeps_value_types() -> None:
    decoded = decode_state(encode_state(STATES["full"]))
    assert [type(value) for value in decoded.attributes.values()] == [
        str, int, int, float, bool, type(None), list
    ]  # fmt: skip


@pytest.mark.parametrize("name", [f.name for f in fields(UserState)])
def test_evolve_is_dataclasses_replace(name: str) -> None:
    full, other = STATES["full"], STATES["folded-sample"]
    before = vars(full).copy()
    changed = evolve(full, {name: getattr(other, name)})  # type: ignore[arg-type]
    assert changed == replace(full, **{name: getattr(other, name)})
    assert [getattr(changed, f.name) for f in fields(UserState)] == [
        getattr(other if f.name == name else full, f.name) for f in fields(UserState)
    ]
    assert vars(full) == before  # the original is untouched
    assert changed is not full
    with pytest.raises(FrozenInstanceError):
        changed.email = "b@example.com"  # type: ignore[misc]


def test_evolves_change_set_has_the_fields_of_the_state_and_their_types() -> None:
    # StateChanges repeats the dataclass's fields for mypy: the two lists must not drift
    state_types = get_type_hints(UserState)
    assert get_type_hints(StateChanges) == {f.name: state_types[f.name] for f in fields(UserState)}
    assert list(StateChanges.__annotations__) == [f.name for f in fields(UserState)]


def test_evolve_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(TypeError, match="emial"):
        evolve(STATES["full"], {"emial": "a@example.com"})  # type: ignore[typeddict-unknown-key]


def test_decode_state_gives_every_field() -> None:
    decoded = decode_state(encode_state(STATES["full"]))
    assert vars(decoded).keys() == {f.name for f in fields(UserState)}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not avro at all", id="garbage"),
        pytest.param(encode_state(STATES["full"])[:-3], id="truncated"),
    ],
)
def test_decode_state_rejects_bytes_that_are_not_a_state(data: bytes) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        decode_state(data)
    assert caught.value.reason == "avro_decode"
