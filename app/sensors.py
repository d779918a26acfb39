"""faust's own Prometheus metrics (``faust_*``) without their per-message cost.

faust's :class:`~faust.sensors.prometheus.PrometheusMonitor` runs on every message and every
stream event: its base ``Monitor`` counts and timestamps each one (dicts keyed by stream and
task, a deque of runtimes) and it adds labelled Prometheus updates (``labels()`` validates and
locks per call; the stream label is re-normalised per event). The bench.e2e profile put it at
~5 % of the worker's CPU. Our own ``mpcio_*`` counters already count what those hooks would
(records read per topic and outcome, operations, dead letters: :mod:`app.metrics`, from the
ingest results), so :class:`LeanPrometheusMonitor` keeps faust's metrics of the rare events
only — commits, committed offsets, rebalances, assignments, send errors, web requests — and
turns the per-message and per-send hooks into no-ops, except the one timestamp faust's own
stall detection reads and the partitions' end-offset gauge, set only when it moves. Measured
in ARCHITECTURE.md §5.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Any

from faust.sensors.prometheus import PrometheusMonitor, setup_prometheus_sensors
from prometheus_client import REGISTRY

if TYPE_CHECKING:
    import faust
    from faust.types import TP, CollectionT, EventT, Message, StreamT
    from faust.types.transports import ProducerT
    from prometheus_client import CollectorRegistry


class LeanPrometheusMonitor(PrometheusMonitor):
    """:class:`PrometheusMonitor` whose per-message, per-event, per-send and per-table-access
    hooks do nothing but note when each partition's stream last took an event (and set the
    end-offset gauge when a partition's high-water mark moved); its other hooks
    (commits, rebalances, assignment, send errors, web requests) are faust's. The ``faust_*``
    series of the no-op hooks (messages received, active events, events per stream, send
    latency, table keys) stay at zero."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        """Per message read: nothing (``mpcio_*`` counters count records by outcome)."""

    def on_stream_event_in(
        self,
        tp: TP,
        offset: int,  # noqa: ARG002 - faust's hook signature
        stream: StreamT[Any],  # noqa: ARG002
        event: EventT[Any],  # noqa: ARG002
    ) -> dict[str, Any] | None:
        """Per stream event: only when the partition's stream last took an event, and no state
        for :meth:`on_stream_event_out`. faust's consumer reads that time to tell a stalled
        stream from a working one (without it, a backlog older than
        ``stream_processing_timeout`` would be logged as "stream idle" while it is processed)."""
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT[Any],
        event: EventT[Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        """Per stream event done: nothing."""

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        """Per message acked: nothing."""

    def on_send_initiated(
        self,
        producer: ProducerT,
        topic: str,
        message: Any,
        keysize: int,
        valsize: int,
    ) -> Any:
        """Per produced record: nothing, and no state for :meth:`on_send_completed`."""

    def on_send_completed(self, producer: ProducerT, state: Any, metadata: Any) -> None:
        """Per produced record acknowledged: nothing."""

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        """Per message read (faust's consumer passes the partition's high-water mark): faust's
        record of it and its labelled gauge (``labels()`` validates and locks: 0.6 % of the
        worker's CPU in the bench.e2e profile) only when the mark moved; it stays the same for
        the messages of one fetch. faust clears this record whenever it clears the gauges
        (rebalance), so a cleared gauge is set again at the next message."""
        if self.tp_end_offsets.get(tp) != offset:
            super().track_tp_end_offset(tp, offset)

    def on_table_get(self, table: CollectionT, key: Any) -> None:
        """Per table read: nothing."""

    def on_table_set(self, table: CollectionT, key: Any, value: Any) -> None:
        """Per table write: nothing."""

    def on_table_del(self, table: CollectionT, key: Any) -> None:
        """Per table delete: nothing."""


def setup_faust_metrics(app: faust.App, registry: CollectorRegistry = REGISTRY) -> None:
    """Serve ``registry`` — faust's ``faust_*`` metrics and, in the default registry, ours
    (``mpcio_*``) — on ``/metrics``, with :class:`LeanPrometheusMonitor` as the app's monitor.
    Call it once per registry (prometheus_client refuses a metric name registered twice)."""
    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    # faust's helper registers the metrics, the page and its full monitor in one go; keep the
    # first two and swap the monitor (before the worker starts: faust adds it to its sensors then)
    full: Any = app.monitor
    app.monitor = LeanPrometheusMonitor(metrics=full._metrics)
