"""The next design, as a measurement prototype: our ingest on plain aiokafka transactions.

``python -m bench.e2e.raweos``: the worker's settings from ``MPCIO_*`` (as ``mpcio worker``),
the input and changelog topic names from the JSON in ``$BENCH_CONFIG``. One process:

- a consumer (group = the app id, ``read_committed``, no auto-commit) on the input topic and
  ONE transactional producer (transactional id ``<app id>-raweos``);
- per chunk of up to ``MAX_RECORDS`` records from ``getmany``: one transaction holding, per
  record, the real per-record work (:func:`bench.ceiling.workload.ingest` →
  :func:`app.core.pipeline.process_batch_record`), its operations record (operations topic,
  key = mpid) and its state (changelog topic, the source partition), then the chunk's offsets
  (``send_offsets_to_transaction``) and ``commit_transaction``. Per-record sends are not
  awaited one by one: the commit flushes them;
- the state store is an in-memory dict (ours: RocksDB) that takes a chunk's states only when
  its transaction committed; records of one chunk read their own chunk's held states first;
- the product's sink (:class:`~app.sink.service.OperationsSink`, built from the settings exactly
  as the worker builds it, reading ``read_committed``) in the same process and event loop,
  delivering to Customer.io (the emulator), so its events/s is measured where ours' is.

Limits (a prototype for measurement, not a product path): no recovery (the store starts empty
and is never restored from the changelog), no rebalance handling (one member; a revoke would
leave its chunk's transaction to fail), no fencing by group generation (aiokafka's
``send_offsets_to_transaction`` sends only the group id), dead letters and re-keyed records of
the step are not written (the e2e workload produces none), no erasure marker lookup, no
metrics or web server. The step is timed (:class:`bench.stepclock.StepClock`, marked at the
first chunk and after every chunk); at the end its summary goes to ``result_file`` of the
config, when given. A failed send or commit ends the process with the exception (exit 1,
nothing of the chunk committed). SIGTERM/SIGINT: the chunk in hand is committed, then the sink
and the clients stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app import wiring
from app.settings import load_settings
from app.sink.service import OperationsSink, kafka_io
from app.topics import topics_for
from bench.ceiling.workload import ingest
from bench.stepclock import StepClock

#: records per transaction at most (one ``getmany``)
MAX_RECORDS = 2000
#: the producer's linger (ms): the commit flushes whatever is left
LINGER_MS = 10


async def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run until SIGTERM / SIGINT; returns the step clock's summary (:mod:`bench.stepclock`)."""
    settings = load_settings()
    topics = topics_for(settings)
    group = settings.app_id
    consumer = AIOKafkaConsumer(
        config["source"],
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        transactional_id=f"{group}-raweos",
        enable_idempotence=True,
        acks="all",
        linger_ms=LINGER_MS,
    )
    sink = OperationsSink(
        settings, topics, lambda: kafka_io(settings), wiring.retry_policy(settings)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store: dict[bytes, bytes] = {}
    clock = StepClock()
    step = clock.timed(ingest)
    await producer.start()
    await consumer.start()
    await sink.start()
    try:
        while not stop.is_set():
            chunk = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            if chunk:
                if clock.first is None:
                    clock.mark()  # the measured span starts with the first chunk
                outputs = (topics.operations.name, config["changelog"])
                store.update(await transact(producer, chunk, store, outputs, group, step))
                clock.mark()
    finally:
        await sink.stop()
        await consumer.stop()
        await producer.stop()
    return clock.summary()


async def transact(
    producer: AIOKafkaProducer,
    chunk: dict[TopicPartition, list[Any]],
    store: dict[bytes, bytes],
    outputs: tuple[str, str],
    group: str,
    step: Callable[..., tuple[bytes, bytes | None, int]],
) -> dict[bytes, bytes]:
    """One transaction for ``chunk``: every record's ``step``
    (:func:`bench.ceiling.workload.ingest`, possibly timed), operations record and state
    (``outputs`` = the operations and changelog topic names), then the chunk's next offsets
    for ``group``.
    Returns the states it committed (key → encoded state), for the store. Raises what the
    producer raises (the transaction is then aborted, nothing committed)."""
    operations, changelog = outputs
    held: dict[bytes, bytes] = {}
    async with producer.transaction():
        for tp, messages in chunk.items():
            for message in messages:
                key = message.key
                previous = held.get(key, store.get(key))
                state, record, _ = step(key, message.value, previous, tp.partition, message.offset)
                if record is not None:
                    await producer.send(operations, record, key=key)
                await producer.send(changelog, state, key=key, partition=tp.partition)
                held[key] = state
        offsets = {tp: messages[-1].offset + 1 for tp, messages in chunk.items()}
        await producer.send_offsets_to_transaction(offsets, group)
    return held


def main() -> None:
    config = json.loads(os.environ["BENCH_CONFIG"])
    timed = asyncio.run(run(config))
    if "result_file" in config:
        Path(config["result_file"]).write_text(json.dumps(timed), encoding="utf-8")


if __name__ == "__main__":
    main()
