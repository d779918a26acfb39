"""A generated, deterministic, realistic mParticle workload for the end-to-end benchmark.

Batches are mParticle's outgoing JSON (what its Kafka output writes): ``user_identities`` as
the outbound array, ``user_attributes`` with reserved ``$`` keys and custom ones,
``device_info`` + ``application_info`` (the device type), and a mix of ``custom_event`` and
``screen_view`` events. Every forwarded event's ``custom_attributes`` carries ``sent_at_ms``
(set when the record is produced) and ``phase`` so the emulator's copy tells when it left.

Shape knobs (:class:`Shape`): users, batches per user, events per batch, attributes per user,
device types, the share of users without an email (never forwarded, SPEC §3 rule 1) and the
share of users who opt out (an ``opt_out`` event at the start of their middle batch: later
events are not forwarded, rule 9). A quarter of the users switch device type every batch, and
every user's ``tier`` changes at the middle batch (a second identify for ``ours``).
Records are ordered round by round (every user's batch 1, then every user's batch 2, ...),
each round in a seeded random order, as traffic from many devices interleaves.
"""

from __future__ import annotations

import io
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from app.ops.dryrun import dry_run
from app.settings import Settings

#: (device_info.platform, application_info.os) pairs, in the order device types are used
DEVICE_TYPES = [
    ("iOS", "IOS"),
    ("Android", "Android"),
    ("web", "MobileWeb"),
    ("tvOS", "TVOS"),
    ("roku", "Roku"),
    ("alexa", "Alexa"),
    ("smart_tv", "Desktop"),
    ("fire_tv", "FireTV"),
]
EVENT_NAMES = [
    "Product Viewed",
    "Add To Cart",
    "Checkout Started",
    "Search",
    "Video Played",
    "Article Read",
    "Order Completed",
    "Coupon Applied",
]
SCREENS = ["Home", "Product Detail", "Cart", "Settings", "Search Results"]
CITIES = ["Berlin", "Lisbon", "Austin", "Osaka", "Toronto", "Nairobi"]
MPID_BASE = -7_300_000_000_000_000_000


@dataclass(frozen=True, slots=True)
class Shape:
    users: int = 4000
    batches_per_user: int = 5
    events_per_batch: int = 5
    attributes_per_user: int = 10
    device_types: int = 3
    no_email_share: float = 0.1
    opted_out_share: float = 0.05
    seed: int = 7


@dataclass(slots=True)
class Record:
    """One input record: the batch as a dict (so ``sent_at_ms`` can be set at produce time)."""

    key: bytes
    batch: dict[str, Any]
    events: int  # events in the batch (all types)

    def encode(self, sent_at_ms: int, phase: str) -> bytes:
        for event in self.batch["events"]:
            attributes = event["data"].get("custom_attributes")
            if attributes is not None:
                attributes["sent_at_ms"] = sent_at_ms
                attributes["phase"] = phase
        return orjson.dumps(self.batch)


def _user_flags(shape: Shape, user: int) -> tuple[bool, bool]:
    """(has_email, opts_out), spread evenly and deterministically over the users."""
    rng = random.Random(shape.seed * 1_000_003 + user)
    has_email = rng.random() >= shape.no_email_share
    opts_out = rng.random() < shape.opted_out_share
    return has_email, opts_out


def generate(shape: Shape, prefix: str = "u", t0_ms: int | None = None) -> list[Record]:
    """Every record of the workload, in produce order. ``prefix`` keeps user sets apart
    (a warm-up or paced phase uses other users than the backlog)."""
    t0 = t0_ms if t0_ms is not None else time.time_ns() // 1_000_000 - 3_600_000
    offset = sum(map(ord, prefix)) * 10_000_000
    rng = random.Random(shape.seed)
    records: list[Record] = []
    users = list(range(shape.users))
    for round_ in range(shape.batches_per_user):
        rng.shuffle(users)
        records.extend(_batch(shape, prefix, offset, user, round_, t0) for user in users)
    return records


def _batch(shape: Shape, prefix: str, offset: int, user: int, round_: int, t0: int) -> Record:
    has_email, opts_out = _user_flags(shape, user)
    mpid = MPID_BASE + offset + user * 7919
    now = t0 + round_ * 60_000 + user
    identities: list[dict[str, Any]] = [
        {"identity_type": "customer_id", "identity": f"{prefix}-cust-{user}"}
    ]
    if has_email:
        identities.append({"identity_type": "email", "identity": f"{prefix}.{user}@example.com"})
    attributes: dict[str, Any] = {
        "$FirstName": f"First{user}",
        "$LastName": f"Last{user}",
        "$City": CITIES[user % len(CITIES)],
        "tier": "gold" if round_ >= shape.batches_per_user // 2 else "silver",
    }
    for index in range(max(shape.attributes_per_user - len(attributes), 0)):
        attributes[f"attr_{index}"] = f"value-{user % 97}-{index}"
    kinds = max(min(shape.device_types, len(DEVICE_TYPES)), 1)
    device = (user + (round_ if user % 4 == 0 else 0)) % kinds
    platform, os_name = DEVICE_TYPES[device]
    events: list[dict[str, Any]] = []
    if opts_out and round_ == shape.batches_per_user // 2:
        events.append({"event_type": "opt_out", "data": {"is_opted_out": True}})
    for index in range(shape.events_per_batch):
        stamp = now + index * 250
        message_id = f"{prefix}-{user}-{round_}-{index}"
        if index % 4 == 3:
            events.append(
                {
                    "event_type": "screen_view",
                    "data": {
                        "screen_name": SCREENS[(user + index) % len(SCREENS)],
                        "custom_attributes": {"referrer": "push", "slot": str(index)},
                        "timestamp_unixtime_ms": stamp,
                        "source_message_id": message_id,
                    },
                }
            )
            continue
        events.append(
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": EVENT_NAMES[(user + round_ + index) % len(EVENT_NAMES)],
                    "custom_event_type": "navigation" if index % 2 else "transaction",
                    "custom_attributes": {
                        "sku": f"SKU-{(user * 31 + index) % 5000}",
                        "price": f"{(user % 50) + 0.99:.2f}",
                        "category": ["shoes", "books", "games"][index % 3],
                        "currency": "EUR",
                    },
                    "timestamp_unixtime_ms": stamp,
                    "source_message_id": message_id,
                    "event_id": 1_000_000_000 + user * 1000 + round_ * 50 + index,
                },
            }
        )
    batch = {
        "events": events,
        "user_identities": identities,
        "user_attributes": attributes,
        "device_info": {"platform": platform, "os_version": "17.4", "device_model": "m1"},
        "application_info": {"os": os_name, "application_version": "4.2.0"},
        "mpid": mpid,
        "environment": "production",
        "timestamp_unixtime_ms": now,
        "batch_id": 8_000_000_000 + user * 100 + round_,
        "source_request_id": f"req-{prefix}-{user}-{round_}",
    }
    return Record(str(mpid).encode(), batch, len(events))


@dataclass(frozen=True, slots=True)
class Expected:
    """What each contender should deliver for a list of records."""

    records: int
    input_events: int  # every event in the input, any type (what the ceiling forwards)
    ours_events: int  # events + screens the pipeline sends (dry-run)
    ours_identifies: int
    naive_events: int  # what the per-event forwarder sends (its own rules)
    naive_identifies: int


def expected(records: list[Record], settings: Settings) -> Expected:
    from bench.e2e.naive import NaiveState, plan  # noqa: PLC0415 - avoid an import cycle

    values = [r.encode(0, "x") for r in records]
    out = io.BytesIO()
    dry_run(values, settings, out, io.StringIO())
    actions = [orjson.loads(line)["action"] for line in out.getvalue().splitlines()]
    naive = NaiveState()
    naive_events = naive_identifies = 0
    for record in records:
        for method, _path, _body in plan(record.batch, naive):
            if method == "POST":
                naive_events += 1
            else:
                naive_identifies += 1
    return Expected(
        records=len(records),
        input_events=sum(r.events for r in records),
        ours_events=sum(1 for a in actions if a != "identify"),
        ours_identifies=sum(1 for a in actions if a == "identify"),
        naive_events=naive_events,
        naive_identifies=naive_identifies,
    )
