"""The faust application: configuration only; agents are attached by :mod:`agents`.

The app is built by a factory from :class:`~app.settings.Settings` (not at import time) so the
worker, the tests and the benchmarks each get an app with their own id, topics and store.

Delivery semantics (SPEC §7): ``processing_guarantee="at_least_once"``, agents run with
``concurrency=1``; faust flushes the producer before committing source offsets and commits only
the contiguous acked prefix, so a crash redelivers, never skips.
"""

from __future__ import annotations

from typing import Any

import faust

from app.settings import Settings

# Throughput settings measured by bench/ceiling (see ARCHITECTURE.md for the figures).
FAUST_TUNING: dict[str, Any] = {
    "stream_buffer_maxsize": 4096,
    "broker_commit_every": 10_000,
    "broker_commit_interval": 2.8,
    "producer_linger_ms": 0,
}


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A configured faust app for ``settings``; ``overrides`` win over everything else."""
    config: dict[str, Any] = {
        "broker": settings.broker,
        "store": settings.store,
        "datadir": settings.data_dir,
        "processing_guarantee": "at_least_once",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_in_thread": False,
        "autodiscover": False,
        **FAUST_TUNING,
        **overrides,
    }
    return faust.App(settings.app_id, **config)
