"""The reliability verdict (tests/integration/reliability_model.py) fails every broken outcome.

An outcome is built the way the integration scenarios see one: the workload's Customer.io items
(dry run) applied in order to a pessimistic emulator workspace, read back as the inspection API
shows it. The faithful outcome passes; each test then breaks it in one way a faulty pipeline
could, and the verdict must name that fault.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from app.dev.emulator.server import EmulatorConfig
from app.dev.emulator.store import Store
from app.ops.dryrun import dry_run
from tests.integration import reliability_model
from tests.unit.test_properties import SETTINGS

USERS, ROUNDS, EVENTS = 10, 4, 2
WORKLOAD = reliability_model.generate(USERS, ROUNDS, EVENTS)
Item = dict[str, Any]


def _items() -> list[Item]:
    out = io.BytesIO()
    dry_run([value for _, _, value in WORKLOAD.sends], SETTINGS, out, io.StringIO())
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


ITEMS = _items()


def _store(items: list[Item]) -> Store:
    store = Store(EmulatorConfig("s", "k", pessimistic=True).workspace_rules)
    for index, item in enumerate(items):
        store.apply(item, received_at=float(index))
    return store


def _observed(store: Store, reasons: list[str] | None = None) -> reliability_model.Observed:
    return reliability_model.Observed(
        people=[p.as_json() for p in (*store.people, *store.deleted)],
        events=[e.as_json() for e in store.events],
        identifies=[i.as_json() for i in store.identifies_log],
        duplicates_suppressed=store.duplicates_suppressed,
        stale_identifies=store.stale_identifies,
        dead_letter_reasons=reasons or [],
    )


def _verdict(items: list[Item], **options: Any) -> reliability_model.Verdict:
    reasons = options.pop("reasons", None)
    return reliability_model.check(
        WORKLOAD.expected, WORKLOAD.events_in, _observed(_store(items), reasons), **options
    )


def _first(action: str, person: str, when: Callable[[Item], bool] = lambda _: True) -> int:
    return next(
        index
        for index, item in enumerate(ITEMS)
        if item["action"] == action and item["identifiers"] == {"id": person} and when(item)
    )


def _identify(who: dict[str, str], **attributes: Any) -> Item:
    return {"type": "person", "identifiers": who, "action": "identify", "attributes": attributes}


def _tier(tier: int) -> Callable[[Item], bool]:
    return lambda item: item["attributes"].get("tier") == tier


def test_the_faithful_outcome_passes() -> None:
    verdict = _verdict(ITEMS)
    assert verdict.ok, verdict.problems()
    assert verdict.problems() == ""
    assert verdict.delivered == len(WORKLOAD.expected.events) > 0


def test_a_lost_event_fails() -> None:
    index = _first("event", "r-0")
    verdict = _verdict(ITEMS[:index] + ITEMS[index + 1 :])
    assert not verdict.ok
    assert verdict.lost == [ITEMS[index]["attributes"]["seq"]]


def test_an_event_visible_twice_fails() -> None:
    index = _first("event", "r-0")
    twin = {**ITEMS[index], "id": "01KB00000000000000000000ZZ"}  # a new id: not de-duplicated
    verdict = _verdict([*ITEMS, twin])
    assert not verdict.ok
    assert verdict.duplicated == [twin["attributes"]["seq"]]


def test_an_email_only_twin_fails() -> None:
    twin = _identify({"email": "someone-else@example.com"}, tier=0)
    verdict = _verdict([*ITEMS, twin])
    assert not verdict.ok
    assert verdict.extra_people == ["id=None email='someone-else@example.com'"]


def test_an_event_on_the_wrong_person_fails() -> None:
    index = _first("event", "r-0")
    moved = {**ITEMS[index], "identifiers": {"id": "r-1"}}
    verdict = _verdict([*ITEMS[:index], moved, *ITEMS[index + 1 :]])
    assert not verdict.ok
    assert list(verdict.misattributed) == [moved["attributes"]["seq"]]
    assert "r-1" in verdict.misattributed[moved["attributes"]["seq"]]


def test_an_event_arriving_before_its_identify_fails() -> None:
    """The same final state (the identify later gives the person created by the event its
    email): only attribution and order show it."""
    identify = _first("identify", "r-0", _tier(0))
    event = _first("event", "r-0")
    items = [ITEMS[event], *(item for i, item in enumerate(ITEMS) if i != event)]
    verdict = _verdict(items)
    assert not verdict.ok
    assert identify < event
    assert (verdict.lost, verdict.wrong_people, verdict.extra_people) == ([], {}, [])
    assert ITEMS[event]["attributes"]["seq"] in verdict.misattributed
    assert "before the identify of its round" in verdict.out_of_order["r-0"]


def test_identifies_out_of_order_fail() -> None:
    """Round 3's identify delivered before round 2's: the pessimistic workspace applies the
    late one, so the person ends on the wrong tier, and the order check names it."""
    two, three = _first("identify", "r-0", _tier(2)), _first("identify", "r-0", _tier(3))
    items = list(ITEMS)
    items[two], items[three] = items[three], items[two]
    verdict = _verdict(items)
    assert not verdict.ok
    assert verdict.wrong_people["r-0"] == "tier: want 3, got 2"
    assert "r-0" in verdict.out_of_order
    assert verdict.stale_identifies == 1
    assert verdict.unexplained_stale == 1


def test_a_redelivered_old_identify_is_a_fault_unless_a_crash_explains_it() -> None:
    """After a crash, the sink re-sends a run it had sent: the workspace sees an older identify
    once more (then the newer one again). Order of first arrivals is still right."""
    start = _first("identify", "r-0", _tier(2))
    end = _first("identify", "r-0", _tier(3))
    redelivered = [*ITEMS[: end + 1], *ITEMS[start : end + 1], *ITEMS[end + 1 :]]
    unexplained = _verdict(redelivered)
    assert not unexplained.ok
    assert unexplained.unexplained_stale == unexplained.stale_identifies >= 1
    assert unexplained.out_of_order == {}
    explained = _verdict(redelivered, stale_explained=True)
    assert explained.ok, explained.problems()


@pytest.mark.parametrize("opted_out", [False, True])
def test_an_unsubscribed_flag_the_rules_do_not_call_for_fails(opted_out: bool) -> None:
    """A user who never opted out must not be unsubscribed; one who opted out must stay so."""
    person = next(
        person
        for person, want in WORKLOAD.expected.people.items()
        if want["unsubscribed"] is opted_out
    )
    verdict = _verdict([*ITEMS, _identify({"id": person}, unsubscribed=not opted_out)])
    assert not verdict.ok
    assert verdict.wrong_people == {person: f"unsubscribed: want {opted_out}, got {not opted_out}"}


@pytest.mark.parametrize(
    ("found", "wanted", "ok"),
    [
        ([], Counter(), True),
        (["invalid_json"], Counter(), False),
        (["invalid_json", "invalid_json"], Counter({"invalid_json": 2}), True),
        (["invalid_json"], Counter({"invalid_json": 2}), False),
        (["invalid_json", "too_deep"], Counter({"invalid_json": 1, "other": 1}), False),
    ],
)
def test_dead_letter_reasons_must_be_the_exact_multiset(
    found: list[str], wanted: Counter[str], ok: bool
) -> None:
    verdict = _verdict(ITEMS, reasons=found, expected_dead_letters=wanted)
    assert verdict.ok is ok
    assert verdict.dead_letters == Counter(found)


def test_the_summary_names_every_count() -> None:
    summary = _verdict(ITEMS).summary("scenario", 0)
    for words in (
        "lost 0",
        "extra people 0",
        "misattributed 0",
        "out of order 0",
        "stale",
        f"erasures {len(WORKLOAD.expected.erased)}",
        "people deleted",
        "reappeared 0",
    ):
        assert words in summary


def test_the_problems_name_every_failing_field_in_full() -> None:
    """The assertion message of a failed scenario: each failing field with its whole value,
    nothing about the fields that pass."""
    event = _first("event", "r-0")
    lost = ITEMS[event]["attributes"]["seq"]
    twin = _identify({"email": "someone-else@example.com"}, tier=0)
    items = [*ITEMS[:event], *ITEMS[event + 1 :], twin]
    problems = _verdict(
        items, reasons=["invalid_json"], expected_dead_letters=Counter(["too_deep"])
    ).problems()
    assert problems.splitlines() == [
        f"lost: [{lost}]",
        "extra_people: [\"id=None email='someone-else@example.com'\"]",
        "dead_letters: found {'invalid_json': 1}, expected {'too_deep': 1}",
    ]


def test_every_way_to_fail_is_named_in_the_problems() -> None:
    """A verdict that is not ok always says why: each field :attr:`Verdict.ok` looks at."""
    base = _verdict(ITEMS)
    broken: dict[str, object] = {
        "lost": [1],
        "unexpected": [1],
        "duplicated": [1],
        "wrong_people": {"r-0": "missing"},
        "extra_people": ["id='x' email=None"],
        "misattributed": {1: "landed on id='x' email=None"},
        "out_of_order": {"r-0": "event 2 arrived after event 3"},
        "unexplained_stale": 2,
        "reappeared": {"r-1": "live again"},
        "dead_letters": Counter(["too_deep"]),
    }
    for name, value in broken.items():
        verdict = dataclasses.replace(base, **{name: value})
        assert not verdict.ok
        assert verdict.problems().startswith(f"{name}: "), name


def test_people_the_scenario_adds_by_email_are_not_extra() -> None:
    other = _identify({"email": "wide@example.com"}, a=1)
    assert _verdict([*ITEMS, other], other_emails=frozenset({"wide@example.com"})).ok
    assert not _verdict([*ITEMS, other], other_emails=frozenset({"long@example.com"})).ok


# Erasure: users erased in the workload (reliability_model's docstring names the kinds).
GONE = next(p for p, (_, last) in WORKLOAD.expected.erased.items() if last == ROUNDS - 1)
REBORN = next(p for p in WORKLOAD.expected.erased if p in WORKLOAD.expected.people)


def _deletes_of(person: str) -> list[int]:
    email = WORKLOAD.expected.erased[person][0]
    return [
        index
        for index, item in enumerate(ITEMS)
        if item["action"] == "delete" and item["identifiers"] in ({"id": person}, {"email": email})
    ]


def test_the_faithful_outcome_deletes_the_erased_and_starts_the_reborn_afresh() -> None:
    verdict = _verdict(ITEMS)
    assert verdict.erasures == len(WORKLOAD.expected.erased) == WORKLOAD.erasures >= 3
    assert verdict.people_deleted >= 1
    assert verdict.reappeared == {}
    assert GONE not in WORKLOAD.expected.people
    assert WORKLOAD.expected.people[REBORN]["tier"] == ROUNDS - 1


def test_an_erasure_never_carried_out_fails() -> None:
    """The deletes never reach Customer.io: the person is still there, with its events."""
    deletes = set(_deletes_of(GONE))
    assert deletes
    verdict = _verdict([item for index, item in enumerate(ITEMS) if index not in deletes])
    assert not verdict.ok
    assert GONE in verdict.reappeared
    assert verdict.people_deleted == _verdict(ITEMS).people_deleted - 1


def test_an_identify_sent_before_the_erasure_arriving_after_it_fails() -> None:
    """A late re-sent identify of the erased person recreates it."""
    email = WORKLOAD.expected.erased[GONE][0]
    verdict = _verdict([*ITEMS, _identify({"id": GONE}, email=email, tier=0)])
    assert not verdict.ok
    assert verdict.reappeared == {GONE: "live again, though no batch followed its erasure"}


def test_an_event_sent_before_the_erasure_arriving_after_it_fails() -> None:
    """A late re-sent event (its id forgotten by the workspace's window) recreates the person
    and shows an event the erasure removed."""
    seq = next(s for s, owner in WORKLOAD.expected.erased_events.items() if owner == GONE)
    event = {
        "type": "person",
        "identifiers": {"id": GONE},
        "action": "event",
        "name": "Step 0",
        "id": "01KB00000000000000000000ZY",
        "attributes": {"seq": seq},
    }
    verdict = _verdict([*ITEMS, event])
    assert not verdict.ok
    assert verdict.reappeared[GONE] == f"event {seq}, sent before the erasure, is visible"


def test_an_old_identify_landing_before_the_new_user_fails_though_the_end_state_is_right() -> None:
    """Between the delete and the new user's first identify, an identify from before the
    erasure recreates the person; the new user's identifies then overwrite every attribute, so
    only the identify log shows that the erased person came back."""
    first_after = max(_deletes_of(REBORN)) + 1
    old = _identify({"id": REBORN}, tier=0)
    verdict = _verdict([*ITEMS[:first_after], old, *ITEMS[first_after:]])
    assert not verdict.ok
    assert (verdict.lost, verdict.wrong_people, verdict.extra_people) == ([], {}, [])
    assert verdict.reappeared == {REBORN: "live with an identify of round 0, before its erasure"}


def test_deleting_someone_not_erased_fails() -> None:
    delete = {"type": "person", "identifiers": {"id": "r-0"}, "action": "delete"}
    verdict = _verdict([*ITEMS, delete])
    assert not verdict.ok
    assert verdict.wrong_people == {"r-0": "missing"}
    assert verdict.reappeared == {}


def test_a_workload_without_rebirths_sends_nothing_after_an_erasure() -> None:
    """For scenarios that send everything at once (test_reliability's ``_workload``)."""
    plain = reliability_model.generate(USERS, ROUNDS, EVENTS, reborn=False)
    assert plain.erasures == WORKLOAD.erasures
    assert plain.follows == {}
    assert not set(plain.expected.erased) & set(plain.expected.people)
    assert len(plain.records) < len(WORKLOAD.records)
