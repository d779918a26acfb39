"""Run the forwarder: the production entry point behind ``mpcio worker``.

Start-up order: settings were validated by the caller; topics are created if missing and the
inputs' co-partitioning is checked before the first agent consumes (a mismatch stops the worker
with one :class:`~app.errors.ConfigError` line); then faust runs until SIGTERM/SIGINT, which
stop it gracefully (agents finish the record in hand, the producer is flushed, offsets of
acked records are committed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.worker import Worker

from agents import attach_agents
from app import masking
from app.faust_app import create_app
from app.kafka_admin import ensure_topics
from app.kafka_security import client_kwargs
from app.logs import configure_logging
from app.settings import Settings
from app.topics import changelog_topics, topics_for
from app.web import attach_web

log = logging.getLogger(__name__)


class ForwarderWorker(Worker):
    """faust's worker with our logging (redacted, text or JSON) instead of mode's."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, loglevel=settings.log_level, **kwargs)
        self.settings = settings

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:  # noqa: ARG002
        configure_logging(self.settings.log_level, self.settings.log_format)


def build_worker_app(settings: Settings) -> faust.App:
    """The faust app with every agent attached, and the web views of :mod:`app.web`."""
    app = create_app(settings)
    # faust's own metrics (faust_*) and ours (mpcio_*) share the default registry on /metrics.
    setup_prometheus_sensors(app, name_prefix="faust")
    topics = topics_for(settings)
    sink = attach_agents(app, settings, topics)
    # /health/live, /health/ready, /users/{mpid}, mpcio_build_info and the sampled gauges.
    attach_web(app, settings, topics, sink)
    return app


def run_worker(settings: Settings) -> None:
    """Check topics, then run until stopped by a signal; exits the process like faust does.

    The deployment's masker (mask key, secrets) and the logging are set up first: every log
    line after it is masked with it.
    """
    masking.install(masking.masker_for(settings))
    # faust configures logging again when it starts; this covers the lines before it
    configure_logging(settings.log_level, settings.log_format)
    partitions = asyncio.run(
        ensure_topics(
            settings.bootstrap_servers,
            topics_for(settings),
            settings.topic_replication_factor,
            security=client_kwargs(settings),
            changelogs=changelog_topics(settings.app_id),
        )
    )
    # The batches topic (mParticle's) decides; MPCIO_TOPIC_PARTITIONS only names the count
    # of topics created before it exists.
    settings = settings.model_copy(update={"topic_partitions": partitions})
    app = build_worker_app(settings)
    worker = ForwarderWorker(app, settings)
    log.info("settings: %s", settings.redacted())
    if settings.mask_key is None:
        log.warning(
            "MPCIO_MASK_KEY is not set: emails in logs and views are masked with a random key "
            "of this process, so masks differ between workers and restarts; "
            "`mpcio check-config` generates a key"
        )
    worker.execute_from_commandline()
