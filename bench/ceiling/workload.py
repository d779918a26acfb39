"""Synthetic but realistic records: mParticle JSON batches and the work the hot path does.

The same functions are used by the faust contenders (in the worker subprocess) and by the raw
aiokafka contenders, so both sides do exactly the same per-record work.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.avro import codec

SOURCE_TOPIC = "mparticle-batches"


def mparticle_batch(index: int, events: int) -> tuple[bytes, bytes]:
    """``(key, value)`` of one batch: ~600 bytes with one event, ~3.6 KB with ten."""
    mpid = str(-8_000_000_000_000_000_000 + index * 7919)
    now = 1_760_000_000_000 + index
    batch = {
        "events": [
            {
                "data": {
                    "event_name": f"Product Viewed {n}",
                    "custom_event_type": "navigation",
                    "custom_attributes": {"sku": f"SKU-{index % 977}-{n}", "price": "19.99"},
                    "timestamp_unixtime_ms": now + n,
                    "event_id": 6558165446704400378 - index * 16 - n,
                    "source_message_id": f"3DBFC52E-{index:08d}-{n:04d}",
                },
                "event_type": "custom_event",
            }
            for n in range(events)
        ],
        "user_identities": [
            {"identity_type": "customer_id", "identity": f"cust-{index}"},
            {"identity_type": "email", "identity": f"user{index}@example.com"},
        ],
        "user_attributes": {"$FirstName": "Ada", "$LastName": "Lovelace", "plan": "pro"},
        "device_info": {"platform": "iOS", "os_version": "17.4"},
        "mpid": mpid,
        "environment": "production",
        "timestamp_unixtime_ms": now,
        "batch_id": 7_000_000_000 + index,
    }
    return mpid.encode(), orjson.dumps(batch)


def fold(batch: dict[str, Any], previous: bytes | None) -> bytes:
    """Table-fold-like work: merge the batch into a small per-user state, as bytes."""
    state: dict[str, Any] = orjson.loads(previous) if previous else {"seen": 0}
    state["seen"] += len(batch.get("events") or ())
    state["last_ms"] = batch.get("timestamp_unixtime_ms")
    state["attributes"] = batch.get("user_attributes") or {}
    return orjson.dumps(state)


def operations(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Transform-like work: one identify + one event item per event, each ~300 bytes JSON."""
    identities = {u["identity_type"]: u["identity"] for u in batch.get("user_identities") or ()}
    person = identities.get("customer_id") or batch["mpid"]
    ids = {"id": person}
    attributes = {**(batch.get("user_attributes") or {}), "email": identities.get("email")}
    platform = (batch.get("device_info") or {}).get("platform", "Unknown")
    attributes["device_type"] = platform
    ops = [
        {
            "action": "identify",
            "person_id": person,
            "item": orjson.dumps(
                {"type": "person", "identifiers": ids, "action": "identify",
                 "attributes": attributes, "timestamp": batch["timestamp_unixtime_ms"] // 1000}
            ),
        }
    ]  # fmt: skip
    for event in batch.get("events") or ():
        data = event["data"]
        ops.append(
            {
                "action": "event",
                "person_id": person,
                "item": orjson.dumps(
                    {"type": "person", "identifiers": ids, "action": "event",
                     "name": data["event_name"], "id": data["source_message_id"],
                     "timestamp": data["timestamp_unixtime_ms"] // 1000,
                     "attributes": {**data.get("custom_attributes", {}),
                                    "event_id": str(data["event_id"]),
                                    "event_type": data["custom_event_type"],
                                    "platform": platform, "mpid": batch["mpid"],
                                    "environment": batch["environment"]}}
                ),
            }
        )  # fmt: skip
    return ops


def ingest(key: bytes, value: bytes, previous: bytes | None, partition: int, offset: int):
    """The ingest design's per-record work: decode, fold, transform, Avro-encode.

    Returns ``(new_state, operation_batch_bytes, event_count)``.
    """
    batch = orjson.loads(value)
    state = fold(batch, previous)
    record = {
        "mpid": key.decode(),
        "source_topic": SOURCE_TOPIC,
        "source_partition": partition,
        "source_offset": offset,
        "ingested_at_ms": int(time.time() * 1000),
        "operations": operations(batch),
    }
    return state, codec("operation_batch").encode(record), len(batch.get("events") or ())


def operation_batch(index: int, events: int) -> tuple[bytes, bytes, int]:
    """``(key, avro_value, operation_count)`` as the ingest design writes them."""
    key, value = mparticle_batch(index, events)
    batch = orjson.loads(value)
    ops = operations(batch)
    record = {
        "mpid": key.decode(),
        "source_topic": SOURCE_TOPIC,
        "source_partition": index % 4,
        "source_offset": index,
        "ingested_at_ms": 1_760_000_000_000,
        "operations": ops,
    }
    return key, codec("operation_batch").encode(record), len(ops)


class RequestBuilder:
    """The drain design's body building: ``{"batch":[...]}`` capped by bytes and items."""

    def __init__(self, max_bytes: int = 500_000, max_items: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.items: list[bytes] = []
        self.size = 0
        self.bodies = 0
        self.body_bytes = 0

    def add(self, item: bytes) -> None:
        # 12 bytes of envelope, one comma per item
        if self.items and (
            len(self.items) >= self.max_items or self.size + len(item) + 13 > self.max_bytes
        ):
            self.flush()
        self.items.append(item)
        self.size += len(item) + 1

    def flush(self) -> None:
        if not self.items:
            return
        body = b'{"batch":[' + b",".join(self.items) + b"]}"
        self.bodies += 1
        self.body_bytes += len(body)
        self.items = []
        self.size = 0
