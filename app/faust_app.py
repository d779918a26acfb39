"""The faust application: configuration only; agents are attached by :mod:`agents`.

The app is built by a factory from :class:`~app.settings.Settings` (not at import time) so the
worker, the tests and the benchmarks each get an app with their own id, topics and store.

Delivery semantics (ARCHITECTURE.md, "Crash safety"): ``processing_guarantee`` comes from the
settings (``at_least_once`` by default; ``exactly_once`` is opt-in until its open problems in
ARCHITECTURE.md §4 are solved). Under ``exactly_once`` faust keeps one transactional producer
per assigned input partition, reads with ``read_committed`` and commits the input offsets of a
partition inside that partition's transaction (``send_offsets_to_transaction``); agents send
everything a record produces through the same producer (:class:`agents.ingest.RecordWriter`).
Agents run with ``concurrency=1``; faust commits only the contiguous acked prefix, so a crash
redoes, never skips. :class:`TrackingTableManager` tells :class:`~app.localstore.PendingWrites`
which input offsets each successful commit covered (the clean-stop marker depends on it).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

import faust
import uvloop
from faust.tables import TableManager
from faust.transport.drivers import aiokafka as faust_aiokafka

from app.kafka_security import broker_credentials
from app.localstore import PendingWrites

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

    from faust.types import TP, TransportT

    from app.settings import Settings

# Measured by bench/ceiling (ARCHITECTURE.md has the figures). With faust's default fetch
# size the ingest agent stalls about 0.9 s per fetch round once it writes a table or produces
# (~1,500 records/s, the worker mostly idle); 8 MiB per partition makes it CPU-bound
# (~3,000-5,000 records/s). Every other setting tried was within noise.
FAUST_TUNING: dict[str, Any] = {
    "consumer_max_fetch_size": 8 * 1024 * 1024,
}


def use_event_loop(name: Literal["asyncio", "uvloop"]) -> None:
    """Make ``name`` the loop of every event loop this process creates from now on.

    Call before the worker (or ``asyncio.run``) creates its loop; faust's consumer thread
    creates its own loop from the same policy (``MPCIO_EVENT_LOOP``; README "Benchmarks and
    reliability" has uvloop's measurement)."""
    policy = uvloop.EventLoopPolicy() if name == "uvloop" else asyncio.DefaultEventLoopPolicy()
    asyncio.set_event_loop_policy(policy)


class TrackingTableManager(TableManager):
    """faust's table manager, also reporting each successful commit to ``pending``.

    faust calls ``on_commit`` only after the offsets were committed (inside the transaction
    under ``exactly_once``); a failed commit raises before it and crashes the worker."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.pending = PendingWrites()

    def on_commit(self, offsets: MutableMapping[TP, int]) -> None:
        super().on_commit(offsets)
        self.pending.committed({(tp.topic, tp.partition): offset for tp, offset in offsets.items()})


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # faust 0.15.3 answers with the consumer's cached last stable offset under
        # transactions, which is None until the partition was fetched once: table recovery
        # then sees a highwater of -1, skips the changelog and starts every table empty.
        # A ListOffsets request with the consumer's read_committed isolation returns the
        # last stable offset from the broker.
        consumer = self._ensure_consumer()
        offsets: Mapping[TP, int] = await consumer.end_offsets(partitions)
        return offsets


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class ForwarderApp(faust.App):
    """faust's app on a transport whose table recovery works under transactions."""

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)


def tracked_writes(app: faust.App) -> PendingWrites:
    """The :class:`PendingWrites` of an app made by :func:`create_app`."""
    tables = app.tables
    if not isinstance(tables, TrackingTableManager):
        raise TypeError("the app was not made by app.faust_app.create_app")
    return tables.pending


def create_app(settings: Settings, **overrides: Any) -> faust.App:
    """A configured faust app for ``settings``; ``overrides`` win over everything else."""
    config: dict[str, Any] = {
        "broker": settings.broker,
        "broker_credentials": broker_credentials(settings),
        "store": settings.store,
        "datadir": settings.data_dir,
        "processing_guarantee": settings.processing_guarantee,
        "broker_session_timeout": settings.kafka_session_timeout_seconds,
        "broker_heartbeat_interval": settings.kafka_session_timeout_seconds / 3,
        "TableManager": TrackingTableManager,
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
    return ForwarderApp(settings.app_id, **config)
