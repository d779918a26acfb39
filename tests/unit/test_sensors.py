"""faust's metrics without per-message hooks (app.sensors.LeanPrometheusMonitor)."""

from __future__ import annotations

from types import SimpleNamespace

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from app.sensors import LeanPrometheusMonitor, setup_faust_metrics


def test_per_message_hooks_count_nothing_and_commits_are_still_exported() -> None:
    registry = CollectorRegistry()
    app = faust.App("sensors-test", broker="kafka://127.0.0.1:1")
    setup_faust_metrics(app, registry)
    monitor = app.monitor
    assert isinstance(monitor, LeanPrometheusMonitor)

    tp = TP("batches", 0)
    message = SimpleNamespace(tp=tp, offset=7, time_in=None)
    monitor.on_message_in(tp, 7, message)  # type: ignore[arg-type]
    monitor.on_message_out(tp, 7, message)  # type: ignore[arg-type]
    assert registry.get_sample_value("faust_messages_received_total") == 0
    assert monitor.messages_received_total == 0  # faust's own Monitor counters skipped too

    # what faust's consumer reads to tell a working stream from a stalled one is kept
    assert tp not in monitor.stream_inbound_time
    monitor.on_stream_event_in(tp, 7, stream=None, event=None)  # type: ignore[arg-type]
    assert tp in monitor.stream_inbound_time

    monitor.on_tp_commit({tp: 8})
    committed = {"topic": "batches", "partition": "0"}
    assert registry.get_sample_value("faust_topic_partition_offset_commited", committed) == 8


def test_the_end_offset_gauge_follows_the_high_water_mark_also_after_faust_clears_it() -> None:
    registry = CollectorRegistry()
    app = faust.App("sensors-end-offset", broker="kafka://127.0.0.1:1")
    setup_faust_metrics(app, registry)
    monitor = app.monitor
    tp, labels = TP("batches", 1), {"topic": "batches", "partition": "1"}

    def gauge() -> float | None:
        return registry.get_sample_value("faust_topic_partition_end_offset", labels)

    for mark in (10, 10, 12, 12):  # the messages of two fetches
        monitor.track_tp_end_offset(tp, mark)
    assert (gauge(), monitor.tp_end_offsets[tp]) == (12, 12)

    monitor._clear_partition_related_metrics()
    assert gauge() is None
    monitor.track_tp_end_offset(tp, 12)
    assert (gauge(), monitor.tp_end_offsets[tp]) == (12, 12)
