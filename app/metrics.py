"""Prometheus metrics of the forwarder (prefix ``mpcio_``), on the worker's ``/metrics``.

Counters are incremented from the outcome summaries the pure functions return (the agents
apply them), never from inside the pure logic, so the mapping stays testable without a
registry.
"""

from __future__ import annotations

from prometheus_client import Counter

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
