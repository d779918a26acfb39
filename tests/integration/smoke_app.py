"""A minimal faust app for the smoke test: one agent, one changelog-backed table.

For each record it increments ``counts[key]`` and sends ``key:count`` to the output topic, so
the counts seen after a restart prove the table was recovered from its changelog. Like the
worker, it skips a record handed out again (offset at or below the last applied one of its
partition, kept in the same table under ``@<partition>``), and logs each record it applies.
Configured from the environment: SMOKE_APP_ID, SMOKE_BROKER, SMOKE_IN, SMOKE_OUT.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import faust

from app.dev.localkafka import free_port
from app.faust_app import create_app
from app.settings import Settings
from app.worker import ForwarderWorker

log = logging.getLogger(__name__)


def build() -> tuple[faust.App, Settings]:
    settings = Settings(
        app_id=os.environ["SMOKE_APP_ID"],
        broker=os.environ["SMOKE_BROKER"],
        store="memory://",
        forwarding_enabled=False,
        topic_partitions=4,
        web_port=free_port(),
    )
    app = create_app(settings, web_enabled=False)
    source = app.topic(os.environ["SMOKE_IN"], key_serializer="raw", value_serializer="raw")
    sink = app.topic(os.environ["SMOKE_OUT"], key_serializer="raw", value_serializer="raw")
    # bytes key and value types make faust use the raw codec for the table and its changelog
    # (faust derives table codecs from the types and ignores a Schema's serializers).
    counts = app.Table("counts", default=bytes, partitions=4, key_type=bytes, value_type=bytes)

    @app.agent(source, concurrency=1)
    async def count(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            partition, offset = event.message.partition, event.message.offset
            # The worker's redelivery guard in small (app.core.pipeline._already_applied): after
            # a restart faust can hand out a record it fetched while recovering, then again once
            # it has sought to the committed offset; the last offset applied, kept in the table
            # beside the counts, makes the second handout a no-op.
            applied = b"@%d" % partition
            if int(counts[applied] or b"-1") >= offset:
                log.info("smoke: %s@%d handed out again: skipped", partition, offset)
                continue
            key = event.key
            count = int(counts[key] or b"0") + 1
            counts[key] = str(count).encode()
            counts[applied] = str(offset).encode()
            await sink.send(key=key, value=f"{key.decode()}:{count}".encode())
            log.info("smoke: %s@%d -> %s:%d", partition, offset, key.decode(), count)
            yield None

    return app, settings


if __name__ == "__main__":
    smoke_app, smoke_settings = build()
    ForwarderWorker(smoke_app, smoke_settings).execute_from_commandline()
