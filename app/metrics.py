"""Prometheus metrics of the forwarder (prefix ``mpcio_``), on the worker's ``/metrics``.

Counters are incremented from the outcome summaries the pure functions return (the agents
apply them), never from inside the pure logic, so the mapping stays testable without a
registry. The gauges at the end (lag, table size, readiness) are sampled periodically by the
worker's observability timer (:mod:`app.web`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, Info

if TYPE_CHECKING:
    from app.settings import Settings

BATCHES = Counter(
    "mpcio_batches_total",
    "mParticle batches read, by outcome (forwarded, skipped_no_email, environment_filtered, "
    "person_id_invalid, rerouted, rejected, erased).",
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
    "rejected, erased, ...).",
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
    "Values cut, split, dropped or renamed to respect Customer.io's limits and reserved names, "
    "by kind.",
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
SINK_RATE_LIMIT = Gauge(
    "mpcio_sink_rate_limit_per_second",
    "This worker's share of the workspace's request limit (MPCIO_RATE_LIMIT_PER_SECOND times "
    "its share of the operations partitions), re-set on every rebalance.",
)
SINK_STOPPED = Gauge(
    "mpcio_sink_stopped",
    "1 while delivery is stopped by a configuration error or by a chunk that keeps failing "
    "unexpectedly, else 0.",
)
SINK_UNEXPECTED_ERRORS = Counter(
    "mpcio_sink_unexpected_errors_total",
    "Sink chunks that failed with an unexpected error (a bug or a setting the client cannot "
    "use); each is rewound and retried.",
)
SINK_END_TO_END_SECONDS = Histogram(
    "mpcio_end_to_end_latency_seconds",
    "From ingest producing an operation to Customer.io accepting it.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

CONSUMER_LAG = Gauge(
    "mpcio_consumer_lag",
    "Records not yet consumed, per assigned partition: the ingest input topics (highwater "
    "minus committed offset) and the sink's operations topic (highwater minus position).",
    ["topic", "partition"],
)
TABLE_KEYS = Gauge(
    "mpcio_table_keys",
    "Keys held by this worker in each table (its active partitions only; with rocksdb:// "
    "counted exactly a slice per sample, so it trails the truth by one pass).",
    ["table"],
)
RECOVERY_IN_PROGRESS = Gauge(
    "mpcio_table_recovery_in_progress",
    "1 while this worker rebuilds table state from the changelogs (the fast restore before "
    "faust starts, or faust's own recovery of newly assigned partitions), else 0.",
)
RECOVERY_REMAINING = Gauge(
    "mpcio_table_recovery_remaining_records",
    "Changelog records this worker still has to read before its tables are recovered.",
)
#: What the two recovery gauges read at every scrape: each source answers the records it has
#: left, or None when it is not recovering (the restore before faust starts, faust's recovery).
_RECOVERY_SOURCES: list[Callable[[], int | None]] = []


def _recovering() -> list[int]:
    return [left for left in (source() for source in _RECOVERY_SOURCES) if left is not None]


# Read when scraped, not sampled: faust runs no timer while it recovers tables.
RECOVERY_IN_PROGRESS.set_function(lambda: 1.0 if _recovering() else 0.0)
RECOVERY_REMAINING.set_function(lambda: float(sum(_recovering())))


def track_recovery(source: Callable[[], int | None]) -> None:
    """Have the recovery gauges also read ``source`` (records left; None: not recovering)."""
    _RECOVERY_SOURCES.append(source)


READY = Gauge(
    "mpcio_ready",
    "1 while this worker is ready (partitions assigned, agents running, delivery not stopped).",
)
BUILD = Info(
    "mpcio_build",
    "Version and the behaviour-changing settings of this worker (no secrets).",
)


def package_version() -> str:
    try:
        return version("mpcio")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def build_labels(settings: Settings) -> dict[str, str]:
    """The ``mpcio_build_info`` labels: version and settings that change behaviour, no secret.

    Neither the API key nor the Site ID nor an overridden Track API URL (which could carry
    credentials) is included.
    """

    def flag(value: bool) -> str:
        return "true" if value else "false"

    return {
        "version": package_version(),
        "app_id": settings.app_id,
        "region": settings.customerio_region,
        "forwarding_enabled": flag(settings.forwarding_enabled),
        "include_user_attributes": flag(settings.include_user_attributes),
        "send_created_at": flag(settings.send_created_at),
        "resubscribe_on_opt_in": flag(settings.resubscribe_on_opt_in),
        "one_attribute_per_audience": flag(settings.one_attribute_per_audience),
        "environments": ",".join(sorted(settings.environments)),
        "partitions": str(settings.topic_partitions),
        "sink_lanes": str(settings.sink_lanes),
        "rate_limit_per_second": f"{settings.rate_limit_per_second:g}",
        "batch_max_items": str(settings.batch_max_items),
    }


class LagGauge:
    """Sets ``mpcio_consumer_lag`` for one group of topics and removes partitions it lost.

    Each source (the ingest consumer, the sink) owns its topics: after a rebalance the series
    of partitions no longer assigned disappear instead of freezing at their last value.
    """

    def __init__(self, gauge: Gauge = CONSUMER_LAG) -> None:
        self.gauge = gauge
        self._shown: set[tuple[str, str]] = set()

    def update(self, lags: Mapping[tuple[str, int], int]) -> None:
        current = {(topic, str(partition)) for topic, partition in lags}
        for labels in self._shown - current:
            self.gauge.remove(*labels)
        for (topic, partition), lag in lags.items():
            self.gauge.labels(topic, str(partition)).set(lag)
        self._shown = current


def partition_lag(highwater: int | None, consumed: int | None) -> int | None:
    """Records after ``consumed`` (the next offset to read); ``None`` when unknown."""
    if highwater is None or consumed is None:
        return None
    return max(highwater - consumed, 0)
