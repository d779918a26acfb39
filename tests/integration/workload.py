"""A generated, deterministic mParticle workload for delivery tests, and what Customer.io must get.

:func:`batches` makes the records (no randomness: the same arguments always give the same bytes);
:func:`expected_items` says which Customer.io v2 items they must become. The expectation is a
small, hand-written model of SPEC §3 for this workload's one shape, deliberately **not** the
product's transform or dry-run, so a mapping bug in the product cannot also be in the
expectation. The model is checked against the hand-reviewed golden file
``tests/golden/workload-10x3x2.json`` and against the product's dry-run for every size the suite
uses (``tests/unit/test_golden.py``).
"""

from __future__ import annotations

from hashlib import blake2b
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from app.settings import Settings

T0 = 1_764_400_000_000
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def batches(users: int, batches_per_user: int, events_per_batch: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` records, round by round; every 10th user has no email (skipped by rule 1).

    A user's ``tier`` attribute is ``round // 2``, so an identify is due in rounds 0, 2, 4, ...
    """
    records = []
    for round_ in range(batches_per_user):
        for user in range(users):
            mpid = 10_000 + user
            identities = {"customer_id": f"c-{user}"}
            if user % 10 != 9:
                identities["email"] = f"user{user}@example.com"
            events = [
                {
                    "event_type": "custom_event",
                    "data": {
                        "event_name": f"Event {index % 5}",
                        "timestamp_unixtime_ms": T0 + round_ * 60_000 + index,
                        "source_message_id": f"u{user}-r{round_}-e{index}",
                        "custom_attributes": {"round": round_, "index": index},
                    },
                }
                for index in range(events_per_batch)
            ]
            batch = {
                "mpid": mpid,
                "environment": "production",
                "timestamp_unixtime_ms": T0 + round_ * 60_000,
                "user_identities": identities,
                "user_attributes": {"$FirstName": f"U{user}", "tier": round_ // 2},
                "application_info": {"os": "IOS" if user % 2 else "Android"},
                "events": events,
            }
            records.append((str(mpid).encode(), orjson.dumps(batch)))
    return records


def scenario(
    settings: Settings, *, users: int, batches_per_user: int, events_per_batch: int
) -> tuple[list[tuple[bytes, bytes]], list[dict[str, Any]]]:
    """The records of :func:`batches` and the items Customer.io must receive for them under
    ``settings`` (:func:`expected_items`): the setup of every end-to-end workload test."""
    records = batches(users, batches_per_user, events_per_batch)
    return records, expected_items([value for _, value in records], settings)


def golden_items(name: str) -> list[dict[str, Any]]:
    """The hand-reviewed items of ``tests/golden/<name>`` (README.md there), in order."""
    return [entry["item"] for entry in orjson.loads((GOLDEN / name).read_bytes())["items"]]


def expected_items(values: list[bytes], settings: Settings) -> list[dict[str, Any]]:
    """The items Customer.io must receive for ``values`` made by :func:`batches`, in order.

    The rules this shape exercises: 1 (no email, not forwarded), 2 (person id = customer id),
    3-4 (email, ``first_name`` and the custom ``tier``), 6 (``Event 3`` → ``Event_3``, data =
    custom attributes, integer seconds), 7 (event id: ULID of the event time and BLAKE2b-80 of
    ``"m\\0" + mpid + "\\0" + source_message_id``) and 8 (identify only when the attributes
    change; before the batch's events; ``timestamp`` = the batch time in seconds). Raises
    ``ValueError`` for settings under which the model does not hold (attributes off,
    ``created_at`` on).
    """
    if not settings.include_user_attributes or settings.send_created_at:
        raise ValueError("the workload model assumes the default mapping settings")
    items: list[dict[str, Any]] = []
    last_sent: dict[int, dict[str, Any]] = {}
    for value in values:
        batch = orjson.loads(value)
        identities = batch["user_identities"]
        if "email" not in identities:
            continue
        person = {"id": identities["customer_id"]}
        attributes = {
            "email": identities["email"],
            "first_name": batch["user_attributes"]["$FirstName"],
            "tier": batch["user_attributes"]["tier"],
        }
        if last_sent.get(batch["mpid"]) != attributes:
            last_sent[batch["mpid"]] = attributes
            items.append(
                {
                    "type": "person",
                    "identifiers": person,
                    "action": "identify",
                    "attributes": attributes,
                    "timestamp": batch["timestamp_unixtime_ms"] // 1000,
                }
            )
        for event in batch["events"]:
            data = event["data"]
            items.append(
                {
                    "type": "person",
                    "identifiers": person,
                    "action": "event",
                    "name": data["event_name"].strip().replace(" ", "_"),
                    "id": event_ulid(
                        data["timestamp_unixtime_ms"], batch["mpid"], data["source_message_id"]
                    ),
                    "timestamp": data["timestamp_unixtime_ms"] // 1000,
                    "attributes": data["custom_attributes"],
                }
            )
    return items


def event_ulid(time_ms: int, mpid: int | str, source_message_id: str) -> str:
    """SPEC §3 rule 7, written out independently of ``app.core.ulid``: 48 bits of ``time_ms``
    then 80 bits of BLAKE2b(``"m\\0" + mpid + "\\0" + source_message_id``) (the mpid in decimal:
    two users' events never share an id), in 26 Crockford base32 digits."""
    identity = f"m\x00{int(mpid)}\x00{source_message_id}"
    randomness = blake2b(identity.encode(), digest_size=10).digest()
    value = time_ms << 80 | int.from_bytes(randomness, "big")
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def person_sequences(items: list[dict[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    """Each person's ``(action, id or attributes)`` in the order of ``items``: what per-person
    order is judged on (an event by its id, an identify by what it sets). A repeat of an item
    already in the sequence (an at-least-once redelivery) is left out: order is judged on
    first arrivals, and the emulator's de-duplication on what stays."""
    sequences: dict[str, list[tuple[str, Any]]] = {}
    seen: set[bytes] = set()
    for item in items:
        ((_, person),) = item["identifiers"].items()
        what = item.get("id") if item["action"] != "identify" else item.get("attributes")
        key = orjson.dumps([person, item["action"], what], option=orjson.OPT_SORT_KEYS)
        if key not in seen:
            seen.add(key)
            sequences.setdefault(person, []).append((item["action"], what))
    return sequences


def expected_people(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """By email: the ``id`` and ``attributes`` a workspace holds after ``items`` (identifies
    merged in order, ``""`` removing, the identifiers not kept as attributes), and
    ``unsubscribed`` as Customer.io reads it. Every item of the forwarder's carries the email."""
    people: dict[str, dict[str, Any]] = {}
    for item in items:
        if item["action"] != "identify":
            continue
        attributes = dict(item["attributes"])
        person = people.setdefault(attributes.pop("email"), {"id": None, "attributes": {}})
        person["id"] = item["identifiers"].get("id", person["id"])
        for name, value in attributes.items():
            if value == "":
                person["attributes"].pop(name, None)
            else:
                person["attributes"][name] = value
    for person in people.values():
        person["unsubscribed"] = person["attributes"].get("unsubscribed") is True
    return people


def expected_events(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """By event id: what the workspace stores for each event or screen of ``items``, and the
    identifier (``person_id`` or ``person_email``) it must be attributed to."""
    events = {}
    for item in items:
        if item["action"] == "identify":
            continue
        ((kind, person),) = item["identifiers"].items()
        events[item["id"]] = {
            "action": item["action"],
            "name": item["name"],
            "timestamp": item["timestamp"],
            "attributes": item.get("attributes", {}),
            "person_id" if kind == "id" else "person_email": person,
        }
    return events
