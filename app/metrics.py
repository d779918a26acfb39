"""Prometheus metrics of the forwarder (prefix ``mpcio_``), on the worker's ``/metrics``.

Counters are incremented from the outcome summaries the pure functions return (the agents
apply them), never from inside the pure logic, so the mapping stays testable without a
registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCHES = Counter(
    "mpcio_batches_total",
    "mParticle batches read, by outcome (forwarded, skipped_no_email, environment_filtered, "
    "person_id_invalid, rerouted, rejected).",
    ["outcome"],
)
EVENTS = Counter(
    "mpcio_events_total",
    "mParticle events read, by event type and outcome (forwarded, opted_out, "
    "skipped_no_email, environment_filtered, invalid, ignored).",
    ["event_type", "outcome"],
)
AUDIENCE_UPDATES = Counter(
    "mpcio_audience_updates_total",
    "Audience membership updates read, by outcome (forwarded, skipped_no_email, rekeyed, "
    "rejected, ...).",
    ["outcome"],
)
ERASURES = Counter(
    "mpcio_erasure_requests_total",
    "Erasure requests read, by outcome (erased, no_match, not_erasure, rekeyed, rejected).",
    ["outcome"],
)
OPERATIONS = Counter(
    "mpcio_operations_total", "Customer.io operations produced, by action.", ["action"]
)
DEAD_LETTERS = Counter(
    "mpcio_dead_letters_total", "Records or items dead-lettered, by stage and reason.",
    ["stage", "reason"],
)  # fmt: skip
LIMITS = Counter(
    "mpcio_limit_enforcements_total",
    "Values cut, split or dropped to respect Customer.io's limits, by kind.",
    ["kind"],
)
IGNORED = Counter(
    "mpcio_input_ignored_total",
    "Unknown or unusable parts of otherwise valid input (unknown keys, bad values), by kind.",
    ["kind"],
)

SINK_REQUESTS = Counter(
    "mpcio_sink_requests_total",
    "Customer.io batch requests, by status class (2xx, 207, 4xx, 429, 5xx, transport).",
    ["status_class"],
)
SINK_ITEMS_PER_REQUEST = Histogram(
    "mpcio_sink_items_per_request",
    "Items in each Customer.io batch request.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
SINK_REQUEST_SECONDS = Histogram(
    "mpcio_sink_request_duration_seconds",
    "Latency of Customer.io batch requests.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SINK_RETRIES = Counter("mpcio_sink_retries_total", "Customer.io requests sent again.")
SINK_THROTTLED = Counter("mpcio_sink_throttled_total", "Customer.io answers with status 429.")
SINK_ITEMS_DELIVERED = Counter("mpcio_sink_items_delivered_total", "Items Customer.io accepted.")
SINK_FATAL_STOPS = Counter(
    "mpcio_sink_fatal_stops_total",
    "Times delivery stopped on a configuration error (401/403/redirect).",
)
SINK_STOPPED = Gauge(
    "mpcio_sink_stopped", "1 while delivery is stopped by a configuration error, else 0."
)
SINK_END_TO_END_SECONDS = Histogram(
    "mpcio_end_to_end_latency_seconds",
    "From ingest producing an operation to Customer.io accepting it.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
