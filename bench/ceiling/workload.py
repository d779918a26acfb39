"""Synthetic but realistic records: mParticle JSON batches and the work the hot path does.

The same functions are used by the faust contenders (in the worker subprocess) and by the raw
aiokafka contenders, so both sides do exactly the same per-record work.
"""

from __future__ import annotations

import orjson

from app.core.avro import codec
from app.core.pipeline import process_batch_record
from app.customerio.batching import pack
from app.records import SourcePosition
from app.settings import Settings
from app.wiring import core_options

SOURCE_TOPIC = "mparticle-batches"
OPTIONS = core_options(Settings(forwarding_enabled=False))


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


def ingest(key: bytes, value: bytes, previous: bytes | None, partition: int, offset: int):
    """The ingest agent's real per-record work: :func:`app.core.pipeline.process_batch_record`
    (parse, state decode, fold + transform, state encode, ONE operations record in Avro).

    Returns ``(state_to_store, operation_batch_bytes, event_count)``.
    """
    result = process_batch_record(
        key, value, SourcePosition(SOURCE_TOPIC, partition, offset), lambda _: previous, OPTIONS
    )
    state = result.states.get(key.decode(), previous)
    record = None if result.operations is None else result.operations[1]
    events = sum(count for (kind, *_), count in result.counts.items() if kind == "events")
    return state or b"", record, events


def operation_batch(index: int, events: int) -> tuple[bytes, bytes, int]:
    """``(key, avro_value, operation_count)`` exactly as the ingest agent writes them."""
    key, value = mparticle_batch(index, events)
    _, record, _ = ingest(key, value, None, index % 4, index)
    assert record is not None
    operations = len(codec("operation_batch").decode(record)["operations"])
    return key, record, operations


class RequestBuilder:
    """The sink's body building (:func:`app.customerio.batching.pack`), counted."""

    def __init__(self, max_bytes: int = 500_000, max_items: int = 1000) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.items: list[tuple[bytes, None]] = []
        self.bodies = 0
        self.body_bytes = 0

    def add(self, item: bytes) -> None:
        self.items.append((item, None))

    def flush(self) -> None:
        packed = pack(self.items, max_items=self.max_items, max_bytes=self.max_bytes)
        for request in packed.requests:
            self.bodies += 1
            self.body_bytes += len(request.body())
        self.items = []
