"""A reference model of what Customer.io must hold after a workload, and a checker.

Independent of the pipeline on purpose: it does not import ``app``. It generates a workload
whose rules are simple enough to state here (SPEC §3 rules 1, 2, 3/4, 9), computes the
expected final Customer.io state from it, and compares that with the emulator's state and
the order in which the emulator received each person's updates (:func:`check`).

Workload: ``users`` users, ``rounds`` batches each, ``events`` custom events per batch. Every
event carries a unique ``seq`` attribute, so the checker matches events by ``seq`` without
knowing how event ids are derived. Per user (deterministic from its index):
- every 7th user has no email until round ``rounds // 2`` (its earlier events are skipped);
- every 5th user opts out in round 1 and back in at round 3 (events in rounds 1-2 after the
  opt-out are suppressed; resubscribe is off, so once Customer.io was told - by an identify
  while opted out and known by email - it stays unsubscribed; a user whose email arrives only
  after opting back in is never unsubscribed there);
- attribute ``tier`` = the round number (last writer wins), ``$FirstName`` constant.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

T0 = 1_764_400_000_000


@dataclass
class Expected:
    """What Customer.io must hold: people by id (every one with ``email``, ``first_name``,
    ``tier`` and ``unsubscribed``), the forwarded event ``seq``s, whose each is (``owner``) and
    in which round (= the ``tier`` its person had when it happened) it was sent."""

    people: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: set[int] = field(default_factory=set)
    owner: dict[int, str] = field(default_factory=dict)
    round_of: dict[int, int] = field(default_factory=dict)
    identifies: int = 0  # identifies the rules call for (no redelivery)


@dataclass
class Workload:
    records: list[tuple[bytes, bytes]]
    expected: Expected
    events_in: int


def generate(users: int, rounds: int, events: int) -> Workload:
    records: list[tuple[bytes, bytes]] = []
    expected = Expected()
    seq = 0
    for round_ in range(rounds):
        for user in range(users):
            mpid = 500_000 + user
            late_email = user % 7 == 3
            opt_user = user % 5 == 1
            has_email = not late_email or round_ >= rounds // 2
            identities: dict[str, str] = {"customer_id": f"r-{user}"}
            if has_email:
                identities["email"] = f"rel{user}@example.com"
            batch_events: list[dict[str, Any]] = []
            if opt_user and round_ in (1, 3):
                batch_events.append(
                    {
                        "event_type": "opt_out",
                        "data": {
                            "is_opted_out": round_ == 1,
                            "timestamp_unixtime_ms": _time(round_, -1),
                        },
                    }
                )
            opted_out = opt_user and round_ in (1, 2)
            for index in range(events):
                seq += 1
                batch_events.append(
                    {
                        "event_type": "custom_event",
                        "data": {
                            "event_name": f"Step {index}",
                            "source_message_id": f"rel-{seq}",
                            "timestamp_unixtime_ms": _time(round_, index),
                            "custom_attributes": {"seq": seq},
                        },
                    }
                )
                if has_email and not opted_out:
                    expected.events.add(seq)
                    expected.owner[seq] = f"r-{user}"
                    expected.round_of[seq] = round_
            batch = {
                "mpid": mpid,
                "environment": "production",
                "timestamp_unixtime_ms": _time(round_, 0),
                "user_identities": identities,
                "user_attributes": {"$FirstName": f"R{user}", "tier": round_},
                "events": batch_events,
            }
            records.append((str(mpid).encode(), json.dumps(batch).encode()))
            if has_email:
                person = expected.people.setdefault(f"r-{user}", {"unsubscribed": False})
                person.update(
                    {"email": f"rel{user}@example.com", "first_name": f"R{user}", "tier": round_}
                )
                if opted_out:  # an identify says so; without resubscribe it stays
                    person["unsubscribed"] = True
                expected.identifies += 1  # tier changes every round
    return Workload(records, expected, seq)


def _time(round_: int, index: int) -> int:
    return T0 + round_ * 60_000 + 10 + index


@dataclass
class Verdict:
    """What the checker found; :attr:`ok` when every list and mapping is empty.

    ``lost``/``unexpected``/``duplicated``: event ``seq``s missing, not expected, or stored
    twice. ``wrong_people``: person id → the first attribute that differs (unsubscribed
    included, for everyone). ``extra_people``: live people the model does not expect (an
    email-only twin, a person created by an event). ``misattributed``: ``seq`` → the person it
    landed on, when that is not its owner with its email. ``out_of_order``: person id → the
    first update that arrived before one it must follow. ``unexplained_stale``: identifies the
    workspace saw arrive after a newer one, when no fault or crash of the scenario explains one.
    ``dead_letters``: the reasons found on the dead-letter topic vs the expected multiset.
    """

    events_in: int
    delivered: int
    lost: list[int]
    unexpected: list[int]
    duplicated: list[int]
    duplicates_suppressed: int
    wrong_people: dict[str, str]
    extra_people: list[str] = field(default_factory=list)
    misattributed: dict[int, str] = field(default_factory=dict)
    out_of_order: dict[str, str] = field(default_factory=dict)
    stale_identifies: int = 0
    unexplained_stale: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    expected_dead_letters: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.unexpected
            or self.duplicated
            or self.wrong_people
            or self.extra_people
            or self.misattributed
            or self.out_of_order
            or self.unexplained_stale
            or self.dead_letters != self.expected_dead_letters
        )

    def summary(self, scenario: str, dead_letters: int) -> str:
        return (
            f"{scenario}: events in {self.events_in}, delivered {self.delivered}, duplicates "
            f"suppressed {self.duplicates_suppressed}, dead letters {dead_letters}, lost "
            f"{len(self.lost)}, unexpected {len(self.unexpected)}, visible duplicates "
            f"{len(self.duplicated)}, wrong people {len(self.wrong_people)}, extra people "
            f"{len(self.extra_people)}, misattributed {len(self.misattributed)}, out of order "
            f"{len(self.out_of_order)}, stale identifies {self.stale_identifies}"
        )


@dataclass
class Observed:
    """What the emulator holds (its inspection API's JSON): ``people``, ``events`` and
    ``identifies`` in arrival order, its ``duplicates_suppressed`` and ``stale_identifies``
    counters, and the ``mpcio.reason`` of every record on the dead-letter topic."""

    people: list[dict[str, Any]]
    events: list[dict[str, Any]]
    identifies: list[dict[str, Any]] = field(default_factory=list)
    duplicates_suppressed: int = 0
    stale_identifies: int = 0
    dead_letter_reasons: list[str] = field(default_factory=list)


def check(
    expected: Expected,
    events_in: int,
    observed: Observed,
    *,
    stale_explained: bool = False,
    expected_dead_letters: Counter[str] | None = None,
    other_emails: frozenset[str] = frozenset(),
) -> Verdict:
    """Compare what the emulator holds with ``expected``.

    ``stale_explained``: the scenario delays requests or crashes workers, so an identify may
    arrive after a newer one (a redelivery); otherwise one that does is a fault.
    ``expected_dead_letters``: the multiset of dead-letter reasons the scenario must produce
    (none by default). ``other_emails``: people (known by email only) the scenario adds beside
    the workload, who are therefore not extra.
    """
    seqs = Counter(_seq(e) for e in observed.events if _seq(e) is not None)
    delivered = set(seqs)
    live = [p for p in observed.people if not p.get("deleted")]
    by_id = {p["id"]: p for p in live if p.get("id")}
    return Verdict(
        events_in=events_in,
        delivered=len(delivered),
        lost=sorted(expected.events - delivered),
        unexpected=sorted(delivered - expected.events),
        duplicated=sorted(seq for seq, count in seqs.items() if count > 1),
        duplicates_suppressed=observed.duplicates_suppressed,
        wrong_people=_wrong_people(expected, by_id),
        extra_people=[
            f"id={p.get('id')!r} email={p.get('email')!r}"
            for p in live
            if p.get("id") not in expected.people
            and not (p.get("id") is None and p.get("email") in other_emails)
        ],
        misattributed=_misattributed(expected, observed.events),
        out_of_order=_out_of_order(expected, observed),
        stale_identifies=observed.stale_identifies,
        unexplained_stale=0 if stale_explained else observed.stale_identifies,
        dead_letters=Counter(observed.dead_letter_reasons),
        expected_dead_letters=expected_dead_letters or Counter(),
    )


def _seq(event: dict[str, Any]) -> int | None:
    attributes = event.get("attributes")
    return attributes.get("seq") if isinstance(attributes, dict) else None


def _wrong_people(expected: Expected, by_id: dict[str, dict[str, Any]]) -> dict[str, str]:
    wrong: dict[str, str] = {}
    for person_id, want in expected.people.items():
        got = by_id.get(person_id)
        if got is None:
            wrong[person_id] = "missing"
            continue
        attributes = {
            **got["attributes"],
            "email": got.get("email"),
            "unsubscribed": bool(got.get("unsubscribed")),
        }
        for name, value in want.items():
            if attributes.get(name) != value:
                wrong[person_id] = f"{name}: want {value!r}, got {attributes.get(name)!r}"
                break
    return wrong


def _misattributed(expected: Expected, events: list[dict[str, Any]]) -> dict[int, str]:
    """Events stored on someone else than their owner, or on their owner before the owner had
    their email (an event that arrived before the identify that must precede it)."""
    wrong: dict[int, str] = {}
    for event in events:
        seq = _seq(event)
        owner = expected.owner.get(seq) if seq is not None else None
        if owner is None:
            continue
        email = expected.people[owner]["email"]
        if event.get("person_id") != owner or event.get("person_email") != email:
            landed = (event.get("person_id"), event.get("person_email"))
            wrong[seq] = f"landed on id={landed[0]!r} email={landed[1]!r}"
    return wrong


def _out_of_order(expected: Expected, observed: Observed) -> dict[str, str]:
    """Per person, in the emulator's arrival order: the first arrival of each ``tier`` must come
    in increasing order, and each event must arrive after the identify of its round and after
    every event with a lower ``seq`` (redeliveries only repeat what already arrived, so first
    arrivals are what order is judged on)."""
    arrivals: dict[str, list[tuple[int, str, int]]] = {}
    for identify in observed.identifies:
        person_id = identify.get("identifiers", {}).get("id")
        tier = (identify.get("attributes") or {}).get("tier")
        if person_id in expected.people and isinstance(tier, int):
            arrivals.setdefault(person_id, []).append((identify["sequence"], "identify", tier))
    for event in observed.events:
        seq = _seq(event)
        owner = expected.owner.get(seq) if seq is not None else None
        if owner is not None and seq is not None:
            arrivals.setdefault(owner, []).append((event["sequence"], "event", seq))
    wrong: dict[str, str] = {}
    for person_id, seen in arrivals.items():
        problem = _first_disorder(expected, seen)
        if problem is not None:
            wrong[person_id] = problem
    return wrong


def _first_disorder(expected: Expected, seen: list[tuple[int, str, int]]) -> str | None:
    tiers: set[int] = set()
    newest_tier = newest_seq = -1
    for _sequence, kind, value in sorted(seen):
        if kind == "identify":
            if value in tiers:
                continue  # a redelivery
            if value < newest_tier:
                return f"identify tier {value} arrived after tier {newest_tier}"
            tiers.add(value)
            newest_tier = value
            continue
        round_ = expected.round_of[value]
        if round_ not in tiers:
            return f"event {value} (round {round_}) arrived before the identify of its round"
        if value < newest_seq:
            return f"event {value} arrived after event {newest_seq}"
        newest_seq = value
    return None
