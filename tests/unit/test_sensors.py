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
