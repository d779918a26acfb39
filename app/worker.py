"""Run the forwarder: the production entry point behind ``mpcio worker``.

Start-up order: settings were validated by the caller; the web port must be free (else one
line, exit 2); topics are created if missing and the
inputs' co-partitioning is checked before the first agent consumes (a mismatch stops the worker
with one :class:`~app.errors.ConfigError` line); under ``exactly_once`` the cluster must be able
to run transactions (:mod:`app.transactions_check`: exit 2 with one line when it cannot,
exit 1 after a bounded wait when brokers are down); the local table store is kept only if the last
run stopped cleanly (:mod:`app.localstore`); then faust runs until SIGTERM/SIGINT, which stop it
gracefully (agents finish the record in hand, the last transaction commits the acked offsets).

A SIGTERM/SIGINT before faust's handlers are installed stops the start-up at once, exit code 0
(:mod:`app.stopping`). A graceful stop is bounded: ``STOP_DEADLINE_SECONDS`` after the first
SIGTERM/SIGINT the process exits with code 1 whatever it was waiting for (e.g. a broker that is
down, where faust's producer alone would wait 60 s), after writing to stderr (the worker's log)
where every thread and task waited (:mod:`app.stacks`: code locations only). Nothing is lost by
that: what was not committed is aborted by the broker and redone on the next start, which also
rebuilds the local store. After a stop with exit code 0 and every store write committed, the
clean-stop marker is written (not after a stop during start-up).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import faust
from faust.worker import Worker

from agents import attach_agents
from app import masking
from app.faust_app import create_app, tracked_writes, use_event_loop
from app.kafka_admin import ensure_topics
from app.kafka_security import client_kwargs
from app.localstore import lock_data_dir, mark_clean, open_store
from app.logs import configure_logging
from app.restore import prepare_tables
from app.sensors import setup_faust_metrics
from app.serving import listen
from app.settings import Settings
from app.stacks import report_now
from app.topics import changelog_topics, topics_for
from app.transactions_check import check_transactions
from app.web import attach_web

log = logging.getLogger(__name__)

# Kubernetes' default grace period is 30 s; stop well inside it, logs flushed.
STOP_DEADLINE_SECONDS = 25.0
EXIT_STOP_DEADLINE = 1


class ForwarderWorker(Worker):
    """faust's worker with our logging (redacted, text or JSON) instead of mode's."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, loglevel=settings.log_level, **kwargs)
        self.settings = settings

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:  # noqa: ARG002
        configure_logging(self.settings.log_level, self.settings.log_format)

    def _on_sigterm(self) -> None:
        arm_stop_deadline()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        arm_stop_deadline()
        super()._on_sigint()


_deadline: threading.Timer | None = None


def arm_stop_deadline(seconds: float = STOP_DEADLINE_SECONDS) -> None:
    """Exit the process ``seconds`` from now unless it has exited by then (first call only).

    A thread, not a task: it must fire even when the event loop is stuck in a blocking call."""
    global _deadline  # noqa: PLW0603 - one deadline per process
    if _deadline is not None:
        return
    loop = _running_loop()

    def expire() -> None:
        # where it waited (code locations only): a stop that hangs names its cause in the log
        sys.stderr.write(
            f"mpcio: graceful stop exceeded {seconds:.0f} s; exiting now (uncommitted work "
            "is redone on the next start); where it waited:\n" + report_now(loop)
        )
        sys.stderr.flush()
        os._exit(EXIT_STOP_DEADLINE)

    _deadline = threading.Timer(seconds, expire)
    _deadline.daemon = True
    _deadline.start()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running this call (faust's signal handlers run on it), or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def build_worker_app(settings: Settings) -> faust.App:
    """The faust app with every agent attached, and the web views of :mod:`app.web`."""
    app = create_app(settings)
    # faust's own metrics (faust_*, without per-message hooks) and ours (mpcio_*) on /metrics.
    setup_faust_metrics(app)
    topics = topics_for(settings)
    sink = attach_agents(app, settings, topics)
    # /health/live, /health/ready, /users/{mpid}, mpcio_build_info and the sampled gauges.
    attach_web(app, settings, topics, sink)
    return app


async def prepare_cluster(settings: Settings) -> int:
    """Create missing topics (:func:`~app.kafka_admin.ensure_topics`; their shared partition
    count is returned) and, under ``exactly_once``, check that the cluster can run
    transactions (:func:`~app.transactions_check.check_transactions`): a cluster that cannot
    stops the worker here with one line, before faust starts producers that would wait for
    the transaction coordinator for ever."""
    partitions = await ensure_topics(
        settings.bootstrap_servers,
        topics_for(settings),
        settings.topic_replication_factor,
        security=client_kwargs(settings),
        changelogs=changelog_topics(settings.app_id),
    )
    if settings.processing_guarantee == "exactly_once":
        found = await check_transactions(settings)
        log.info("Kafka transactions: %s", found.reason)
    return partitions


def run_worker(settings: Settings) -> None:
    """Check topics, then run until stopped by a signal; exits the process like faust does.

    The deployment's masker (mask key, secrets) and the logging are set up first: every log
    line after it is masked with it.
    """
    masking.install(masking.masker_for(settings))
    use_event_loop(settings.event_loop)
    # faust configures logging again when it starts; this covers the lines before it
    configure_logging(settings.log_level, settings.log_format)
    # aiokafka logs each failed connection attempt; ensure_topics reports the cause (wrong CA,
    # host name, password, refused) in one line, so its lines would only repeat it noisily
    # faust binds the web port only after topics and tables are ready, and reports a port in
    # use with a traceback: check it first (one line, exit 2); the socket is closed at once
    listen(settings.web_host, settings.web_port, settings="MPCIO_WEB").close()
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        partitions = asyncio.run(prepare_cluster(settings))
    finally:
        client_log.setLevel(level)
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
    tabledir = Path(app.conf.tabledir)
    persistent = not settings.store.startswith("memory")
    kept = False
    if persistent:
        # held until the process exits: a second worker on this dir stops here, exit 2
        data_lock = lock_data_dir(Path(app.conf.datadir))  # noqa: F841
        kept = open_store(tabledir, settings.changelog_delete_retention_seconds)
    restore = persistent and not kept and settings.fast_restore
    # on faust's own loop: the stores opened here bind to it (asyncio.run would close it)
    app.loop.run_until_complete(prepare_tables(app, settings, restore=restore))
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        if persistent:
            code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
            mark_clean(tabledir, tracked_writes(app), code)
        raise
