"""A reference model of what Customer.io must hold after a workload, and a checker.

Independent of the pipeline on purpose: it does not import ``app``. It generates a workload
whose rules are simple enough to state here (SPEC §3 rules 1, 2, 3/4, 9), computes the
expected final Customer.io state from it, and compares that with the emulator's state.

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
    """What Customer.io must hold: people by identifier and the forwarded event ``seq``s."""

    people: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: set[int] = field(default_factory=set)
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
                person = expected.people.setdefault(f"r-{user}", {})
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
    events_in: int
    delivered: int
    lost: list[int]
    unexpected: list[int]
    duplicated: list[int]
    duplicates_suppressed: int
    wrong_people: dict[str, str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.duplicated or self.wrong_people)

    def summary(self, scenario: str, dead_letters: int) -> str:
        return (
            f"{scenario}: events in {self.events_in}, delivered {self.delivered}, duplicates "
            f"suppressed {self.duplicates_suppressed}, dead letters {dead_letters}, lost "
            f"{len(self.lost)}, unexpected {len(self.unexpected)}, visible duplicates "
            f"{len(self.duplicated)}, wrong people {len(self.wrong_people)}"
        )


def check(
    expected: Expected,
    events_in: int,
    people: list[dict[str, Any]],
    events: list[dict[str, Any]],
    duplicates_suppressed: int,
) -> Verdict:
    """Compare the emulator's people and events with ``expected``."""
    seqs = Counter(
        e["attributes"]["seq"]
        for e in events
        if isinstance(e.get("attributes"), dict) and "seq" in e["attributes"]
    )
    delivered = set(seqs)
    by_id = {p["id"]: p for p in people if not p.get("deleted") and p.get("id")}
    wrong: dict[str, str] = {}
    for person_id, want in expected.people.items():
        got = by_id.get(person_id)
        if got is None:
            wrong[person_id] = "missing"
            continue
        attributes = {**got["attributes"], "email": got.get("email")}
        if got.get("unsubscribed"):
            attributes["unsubscribed"] = True
        for name, value in want.items():
            if attributes.get(name) != value:
                wrong[person_id] = f"{name}: want {value!r}, got {attributes.get(name)!r}"
                break
    return Verdict(
        events_in=events_in,
        delivered=len(delivered),
        lost=sorted(expected.events - delivered),
        unexpected=sorted(delivered - expected.events),
        duplicated=sorted(seq for seq, count in seqs.items() if count > 1),
        duplicates_suppressed=duplicates_suppressed,
        wrong_people=wrong,
    )
