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

Erasure (SPEC §5, README "Audiences and erasure"): a seeded share of the users who never opt
out get one OpenDSR erasure request on the erasure topic (keyed by mpid; three record forms:
mpid with an email identity, mpid only, mpid with mParticle's ``customer_id`` map). Its place
in the stream is one of three kinds, in turn:
- ``racing``: right after the user's batch of a seeded round that is not its last, so it races
  with that batch (and the earlier ones still being processed or delivered); the user's later
  batches come after it;
- ``racing_last``: right after the user's last batch;
- ``after``: after the whole workload.
The rules, stated here independently of ``app``: every batch that reached Kafka before the
erasure is erased with the person (dropped if it arrives after the erasure, deleted with the
person if before), so none of its events or attributes is visible at the end; a batch that
reached Kafka after it starts a new user, i.e. a new Customer.io person built from the later
batches alone (same customer id and email). The producer gives records strictly increasing
Kafka timestamps, so "before" and "after" are exactly the order of :attr:`Workload.sends`.
The product orders an erasure and the user's later batches only by the order it reads the
two topics in (README Limits): a later batch read first, or an erasure read again after a
crash, erases the new user too. So the later batches come a round after the erasure, and a
paced producer (the kill loop) holds each one until the worker has committed its erasure's
offset (:attr:`Workload.follows`); scenarios that send everything at once use a workload
without them (``reborn=False``: a run showed 3 such batches read before their erasure).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

T0 = 1_764_400_000_000
# The share of eligible users (those who never opt out: a new user after an erasure would not
# know an earlier opt-out, a rule this model leaves out) who get an erasure, and its seed.
ERASED_SHARE = 0.15
ERASURE_SEED = 21
ERASURE_KINDS = ("racing", "racing_last", "after")
# Sends go to the batches topic or the erasure topic.
BATCHES, ERASURE = "batches", "erasure"


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
    # Erased users: person id -> (email, the highest round erased with them). Seqs of events
    # sent before their erasure (never to be visible at the end).
    erased: dict[str, tuple[str, int]] = field(default_factory=dict)
    erased_events: dict[int, str] = field(default_factory=dict)  # seq -> its owner


@dataclass
class Workload:
    """``sends``: ``(topic kind, key, value)`` in the order to produce them, kind
    :data:`BATCHES` or :data:`ERASURE`, with strictly increasing Kafka timestamps.
    ``follows``: index in ``sends`` of a batch sent after its user's erasure → index of that
    erasure (a paced producer holds the batch until the erasure is read for good: module
    docstring)."""

    sends: list[tuple[str, bytes, bytes]]
    expected: Expected
    events_in: int
    follows: dict[int, int] = field(default_factory=dict)

    @property
    def records(self) -> list[tuple[bytes, bytes]]:
        """The batches alone, in order."""
        return [(key, value) for kind, key, value in self.sends if kind == BATCHES]

    @property
    def erasures(self) -> int:
        return sum(1 for kind, _, _ in self.sends if kind == ERASURE)


@dataclass(frozen=True)
class _Erasure:
    """One erased user's request: after which of its rounds it is sent (``None``: after the
    whole workload) and the record's form (0, 1, 2: module docstring)."""

    after_round: int | None
    form: int


def _erasures(users: int, rounds: int) -> dict[int, _Erasure]:
    rng = random.Random(ERASURE_SEED)
    eligible = [user for user in range(users) if user % 5 != 1]
    chosen = sorted(rng.sample(eligible, max(3, round(users * ERASED_SHARE))))
    plans: dict[int, _Erasure] = {}
    for index, user in enumerate(chosen):
        kind = ERASURE_KINDS[index % len(ERASURE_KINDS)]
        after_round = {
            "racing": rng.randrange(rounds - 1) if rounds > 1 else rounds - 1,
            "racing_last": rounds - 1,
            "after": None,
        }[kind]
        plans[user] = _Erasure(after_round, index % 3)
    return plans


def _erasure_record(user: int, form: int) -> tuple[str, bytes, bytes]:
    mpid = 500_000 + user
    request: dict[str, Any] = {
        "subject_request_type": "erasure",
        "subject_request_id": f"rel-erasure-{user}",
        "mpid": mpid,
    }
    if form == 0:
        request["subject_identities"] = [
            {"identity_type": "email", "identity_value": f"rel{user}@example.com"}
        ]
    elif form == 2:
        request["subject_identities"] = {"customer_id": {"value": f"r-{user}"}}
    return ERASURE, str(mpid).encode(), json.dumps(request).encode()


def generate(users: int, rounds: int, events: int, *, reborn: bool = True) -> Workload:
    """The workload of ``users`` x ``rounds`` batches (module docstring) and what it must
    leave in Customer.io. ``users`` >= 5 for every erasure kind to occur. ``reborn=False``:
    an erased user sends nothing after its erasure (for a producer that cannot hold the later
    batches until the erasure is read for good: module docstring)."""
    sends: list[tuple[str, bytes, bytes]] = []
    expected = Expected()
    erasures = _erasures(users, rounds) if users >= 5 else {}
    last_round: dict[int, int] = {}  # erased user -> its highest round erased with it
    erasure_at: dict[int, int] = {}  # erased user -> index of its erasure in sends
    follows: dict[int, int] = {}
    seq = 0
    for round_ in range(rounds):
        for user in range(users):
            mpid = 500_000 + user
            erasure = erasures.get(user)
            if not reborn and user in erasure_at:
                continue
            # Erased with the person: sent before its erasure (module docstring).
            doomed = erasure is not None and (
                erasure.after_round is None or round_ <= erasure.after_round
            )
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
                if doomed:
                    expected.erased_events[seq] = f"r-{user}"
                elif has_email and not opted_out:
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
            if user in erasure_at:
                follows[len(sends)] = erasure_at[user]
            sends.append((BATCHES, str(mpid).encode(), json.dumps(batch).encode()))
            if erasure is not None and round_ == erasure.after_round:
                erasure_at[user] = len(sends)
                sends.append(_erasure_record(user, erasure.form))
            if doomed:
                last_round[user] = round_
            elif has_email:
                person = expected.people.setdefault(f"r-{user}", {"unsubscribed": False})
                person.update(
                    {"email": f"rel{user}@example.com", "first_name": f"R{user}", "tier": round_}
                )
                if opted_out:  # an identify says so; without resubscribe it stays
                    person["unsubscribed"] = True
                expected.identifies += 1  # tier changes every round
    for user, erasure in erasures.items():
        if erasure.after_round is None:
            sends.append(_erasure_record(user, erasure.form))
        expected.erased[f"r-{user}"] = (f"rel{user}@example.com", last_round[user])
    return Workload(sends, expected, seq, follows)


def complete(expected: Expected, seqs: set[int]) -> bool:
    """True when ``seqs`` (those of the events the workspace holds) are exactly the expected
    ones: all delivered, and every erased user's earlier ones deleted."""
    return seqs == expected.events


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
    ``reappeared``: erased person id → how it came back: live at the end although no batch
    followed its erasure, or live carrying an identify or event sent before its erasure.
    ``erasures``: erasure requests in the workload; ``people_deleted``: erased users with a
    deleted person in the workspace (figures only: an erasure that overtakes all of its user's
    batches leaves no person to delete).
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
    reappeared: dict[str, str] = field(default_factory=dict)
    erasures: int = 0
    people_deleted: int = 0

    @property
    def ok(self) -> bool:
        return not self._failing()

    def problems(self) -> str:
        """Every failing field in full, one ``name: value`` line each ("" when :attr:`ok`):
        the message of every ``assert verdict.ok`` (the dataclass repr gets truncated)."""
        return "\n".join(f"{name}: {value}" for name, value in self._failing().items())

    def _failing(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "lost": self.lost,
            "unexpected": self.unexpected,
            "duplicated": self.duplicated,
            "wrong_people": self.wrong_people,
            "extra_people": self.extra_people,
            "misattributed": self.misattributed,
            "out_of_order": self.out_of_order,
            "unexplained_stale": self.unexplained_stale,
            "reappeared": self.reappeared,
        }
        failing = {name: value for name, value in fields.items() if value}
        if self.dead_letters != self.expected_dead_letters:
            failing["dead_letters"] = (
                f"found {dict(sorted(self.dead_letters.items()))}, "
                f"expected {dict(sorted(self.expected_dead_letters.items()))}"
            )
        return failing

    def summary(self, scenario: str, dead_letters: int) -> str:
        return (
            f"{scenario}: events in {self.events_in}, delivered {self.delivered}, duplicates "
            f"suppressed {self.duplicates_suppressed}, dead letters {dead_letters}, lost "
            f"{len(self.lost)}, unexpected {len(self.unexpected)}, visible duplicates "
            f"{len(self.duplicated)}, wrong people {len(self.wrong_people)}, extra people "
            f"{len(self.extra_people)}, misattributed {len(self.misattributed)}, out of order "
            f"{len(self.out_of_order)}, stale identifies {self.stale_identifies}, erasures "
            f"{self.erasures}, people deleted {self.people_deleted}, reappeared "
            f"{len(self.reappeared)}"
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
        reappeared=_reappeared(expected, observed),
        erasures=len(expected.erased),
        people_deleted=len(
            {
                p["id"]
                for p in observed.people
                if p.get("deleted") and p.get("id") in expected.erased
            }
        ),
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


def _reappeared(expected: Expected, observed: Observed) -> dict[str, str]:
    """Erased people who came back (see :class:`Verdict`). An identify tells its round by its
    ``tier``; one without it (attributes split over several identifies) is judged by the
    others."""
    found: dict[str, str] = {}
    identifies: dict[str, list[int]] = {}
    for identify in observed.identifies:
        tier = (identify.get("attributes") or {}).get("tier")
        if isinstance(tier, int):
            identifies.setdefault(identify["person_cio_id"], []).append(tier)
    for event in observed.events:
        seq = _seq(event)
        if seq is not None and seq in expected.erased_events:
            found.setdefault(
                expected.erased_events[seq], f"event {seq}, sent before the erasure, is visible"
            )
    for person_id, (email, last_round) in expected.erased.items():
        live = [
            p
            for p in observed.people
            if not p.get("deleted")
            and (p.get("id") == person_id or str(p.get("email")).lower() == email)
        ]
        if live and person_id not in expected.people:
            found.setdefault(person_id, "live again, though no batch followed its erasure")
        for person in live:
            earlier = [tier for tier in identifies.get(person["cio_id"], []) if tier <= last_round]
            if earlier:
                found.setdefault(
                    person_id, f"live with an identify of round {earlier[0]}, before its erasure"
                )
    return found


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
