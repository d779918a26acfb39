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

from app.kafka_security import broker_credentials
from app.settings import Settings

# Measured by bench/ceiling (ARCHITECTURE.md has the figures). With faust's default fetch
# size the ingest agent stalls about 0.9 s per fetch round once it writes a table or produces
# (~1,500 records/s, the worker mostly idle); 8 MiB per partition makes it CPU-bound
# (~3,000-5,000 records/s). Every other setting tried was within noise.
FAUST_TUNING: dict[str, Any] = {
    "consumer_max_fetch_size": 8 * 1024 * 1024,
}


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A configured faust app for ``settings``; ``overrides`` win over everything else."""
    config: dict[str, Any] = {
        "broker": settings.broker,
        "broker_credentials": broker_credentials(settings),
        "store": settings.store,
        "datadir": settings.data_dir,
        "processing_guarantee": "at_least_once",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        # web_bind is where faust listens, web_host only the host it advertises (both
        # default to every interface / the host name otherwise).
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        # faust's /router, /table (raw records), /, /assignment and /graph views; /performance
        # (table statistics) stays off in any case. app.web guards them with the token too.
        "web_router_enabled": settings.web_faust_views,
        "web_tables_enabled": settings.web_faust_views,
        "web_stats_enabled": settings.web_faust_views,
        "web_graph_enabled": settings.web_faust_views,
        "web_metrics_enabled": False,
        "web_in_thread": False,
        "autodiscover": False,
        **FAUST_TUNING,
        **overrides,
    }
    return faust.App(settings.app_id, **config)
