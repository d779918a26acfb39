"""A generated, deterministic mParticle workload for delivery tests: many users, many events."""

from __future__ import annotations

import io

import orjson

from app.ops.dryrun import dry_run
from app.settings import Settings

T0 = 1_764_400_000_000


def batches(users: int, batches_per_user: int, events_per_batch: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` records; every 10th user has no email (skipped by rule 1)."""
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


def expected_items(values: list[bytes], settings: Settings) -> list[dict]:  # type: ignore[type-arg]
    """Every item the pure pipeline derives from ``values`` (what Customer.io must receive)."""
    out = io.BytesIO()
    dry_run(values, settings, out, io.StringIO())
    return [orjson.loads(line) for line in out.getvalue().splitlines()]
