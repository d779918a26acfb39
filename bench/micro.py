"""Micro-benchmark of the pure hot path (SPEC §9): parse, fold + transform, JSON encoding.

Run: ``.venv/bin/python bench/micro.py``. Prints microseconds per batch for a realistic
single-event batch (~600 bytes) and a ten-event batch, on one core, for:

- ``parse``: :func:`app.core.mparticle.parse_record` (orjson + normalisation);
- ``fold+transform``: :func:`app.core.transform.transform` against the state the previous batch
  left, i.e. the steady state of a known user whose attributes did not change (no identify), plus
  the first batch of a new user (identify + events);
- ``encode``: ``orjson.dumps`` of every operation's item (transform already returns the bytes in
  ``Operation.payload``; this is the cost of doing it again);
- ``state avro``: :func:`app.core.state.encode_state` / :func:`app.core.state.decode_state`;
- ``ingest record``: :func:`app.core.pipeline.process_batch_record`, the whole per-record work of
  the ingest agent (state decode, parse, fold + transform, state encode when changed, operations
  record Avro encode) for a known user; the issue's target is <= 60 µs for one event;
- ``sensor hooks``: the four monitor hooks faust calls per record our agents process (message
  in, stream event in and out, message out) with faust's ``PrometheusMonitor`` and with ours
  (:class:`app.sensors.LeanPrometheusMonitor`).
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.mparticle import parse_record
from app.core.pipeline import process_batch_record
from app.core.state import decode_state, encode_state
from app.core.transform import transform
from app.records import SourcePosition
from app.sensors import LeanPrometheusMonitor
from app.settings import Settings
from app.wiring import core_options

BATCH_TIME_MS = 1_700_000_000_000
SOURCE = SourcePosition("mparticle-batches", 0, 0)


def make_batch(event_count: int) -> bytes:
    events = [
        {
            "event_type": "custom_event",
            "data": {
                "event_name": f"  Add To Cart {index} ",
                "custom_event_type": "transaction",
                "custom_attributes": {"sku": f"SKU-{index:04d}", "price": "19.99", "qty": "1"},
                "timestamp_unixtime_ms": BATCH_TIME_MS - 1000 + index,
                "source_message_id": f"4f9c2a4e-8b1d-4c55-9a77-0d5e3a1b{index:04d}",
                "event_id": 6558165446704400378 + index,
                "session_id": 6051321688317951794,
            },
        }
        for index in range(event_count)
    ]
    batch = {
        "mpid": -7636538281262557000,
        "environment": "production",
        "timestamp_unixtime_ms": BATCH_TIME_MS,
        "batch_id": 8602161397754364000,
        "user_identities": {"customer_id": "cust-123456", "email": "jane.doe@example.com"},
        "user_attributes": {
            "$FirstName": "Jane",
            "$LastName": "Doe",
            "$City": "Lisbon",
            "$Zip": "1000-001",
            "plan": "premium",
            "tags": ["a", "b"],
        },
        "device_info": {"platform": "iOS"},
        "application_info": {"os": "IOS"},
        "events": events,
    }
    return orjson.dumps(batch)


def per_call_us(function: Callable[[], object], repeat: int) -> float:
    timer = timeit.Timer(function)
    return min(timer.repeat(repeat=5, number=repeat)) / repeat * 1e6


class _Stream:
    """What faust's monitors read of a stream (weakly referenced, labelled)."""

    shortlabel = "Stream: mparticle-batches"

    def __init__(self) -> None:
        self.task_owner = self  # the agent's task in faust; any weakly referable object


def sensor_hooks_us(monitor_type: type[PrometheusMonitor], runs: int) -> float:
    """µs per record of the monitor hooks faust's stream and consumer call per message."""
    monitor = monitor_type(metrics=FaustMetrics.create(CollectorRegistry(), "faust"))
    tp = TP("mparticle-batches", 0)
    stream: Any = _Stream()
    message: Any = SimpleNamespace(tp=tp, offset=1, time_in=None)

    def one_record() -> None:
        monitor.on_message_in(tp, 1, message)
        state = monitor.on_stream_event_in(tp, 1, stream, message)
        monitor.on_stream_event_out(tp, 1, stream, message, state)
        monitor.on_message_out(tp, 1, message)

    return per_call_us(one_record, runs)


def main() -> None:
    settings = core_options(Settings(forwarding_enabled=False, send_created_at=True))
    for event_count in (1, 10):
        raw = make_batch(event_count)
        batch = parse_record(raw)[0]
        first = transform(batch, None, settings)
        known = first.state
        assert known is not None
        steady = transform(batch, known, settings)
        operations = first.operations
        state_bytes = encode_state(known)
        runs = 20_000 if event_count == 1 else 4_000
        figures = {
            "parse": per_call_us(lambda raw=raw: parse_record(raw), runs),
            "fold+transform (known user)": per_call_us(
                lambda batch=batch, known=known: transform(batch, known, settings), runs
            ),
            "fold+transform (new user)": per_call_us(
                lambda batch=batch: transform(batch, None, settings), runs
            ),
            "encode items (orjson)": per_call_us(
                lambda operations=operations: [orjson.dumps(op.item) for op in operations], runs
            ),
            "state avro encode": per_call_us(lambda known=known: encode_state(known), runs),
            "state avro decode": per_call_us(
                lambda state_bytes=state_bytes: decode_state(state_bytes), runs
            ),
            "ingest record (known user)": per_call_us(
                lambda raw=raw, state_bytes=state_bytes: process_batch_record(
                    b"-7636538281262557000", raw, SOURCE, lambda _: state_bytes, settings
                ),
                runs,
            ),
        }
        print(
            f"{event_count} event(s), {len(raw)} bytes, "
            f"{len(first.operations)} ops new user / {len(steady.operations)} ops known user"
        )
        for label, micros in figures.items():
            print(f"  {label:<30} {micros:8.2f} µs/batch")
        end_to_end = figures["parse"] + figures["fold+transform (known user)"]
        print(f"  {'parse+fold+transform (known)':<30} {end_to_end:8.2f} µs/batch")
    print("sensor hooks per record (faust: message in, stream event in/out, message out)")
    for label, monitor_type in (
        ("faust PrometheusMonitor", PrometheusMonitor),
        ("LeanPrometheusMonitor", LeanPrometheusMonitor),
    ):
        print(f"  {label:<30} {sensor_hooks_us(monitor_type, 20_000):8.2f} µs/record")


if __name__ == "__main__":
    main()
