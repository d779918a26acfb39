"""The plain-aiokafka contenders in their own process: ``python -m bench.ceiling.raw_worker``.

Same protocol as :mod:`bench.ceiling.faust_worker` (``$BENCH_CONFIG``, a result file written at
the last record). Every contender reads with ``getmany``, does its work for the whole chunk and
commits the chunk's offsets by hand (``enable_auto_commit=False``), which is at-least-once.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.core.avro import codec
from bench.ceiling.workload import RequestBuilder, ingest


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(config: dict[str, Any]) -> dict[str, Any]:
    case = config["case"]
    expected = int(config["records"])
    result_file = Path(config["result_file"])
    consumer = AIOKafkaConsumer(
        config["source"],
        bootstrap_servers=config["bootstrap"],
        group_id=config["app_id"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=config.get("max_poll_records"),
        max_partition_fetch_bytes=config.get("max_partition_fetch_bytes", 1024 * 1024),
    )
    producer = None
    if case == "raw_ingest":
        producer = AIOKafkaProducer(
            bootstrap_servers=config["bootstrap"],
            acks=-1,
            linger_ms=config.get("linger_ms", 0),
            max_batch_size=config.get("max_batch_size", 16384),
        )
        await producer.start()
    await consumer.start()
    operation_codec = codec("operation_batch")
    table: dict[bytes, bytes] = {}
    builder = RequestBuilder()
    records = events = 0
    t0 = cpu0 = 0.0
    try:
        while records < expected:
            chunk = await consumer.getmany(timeout_ms=1000)
            if not chunk:
                continue
            if not records:
                t0, cpu0 = time.monotonic(), _cpu()
                result_file.with_suffix(".started").write_text(str(os.getpid()), encoding="utf-8")
            for tp, messages in chunk.items():
                for msg in messages:
                    if case == "raw_decode":
                        events += len(orjson.loads(msg.value)["events"])
                    elif case == "raw_ingest":
                        assert producer is not None
                        key = msg.key
                        state, record, n = ingest(
                            key, msg.value, table.get(key), tp.partition, msg.offset
                        )
                        table[key] = state
                        # the table's changelog write, as faust does, then the operations record
                        await producer.send(config["changelog"], state, key=key)
                        await producer.send(config["sink"], record, key=key)
                        events += n
                    elif case == "raw_drain":
                        for operation in operation_codec.decode(msg.value)["operations"]:
                            builder.add(operation["item"])
                            events += 1
                records += len(messages)
            if case == "raw_drain":
                builder.flush()  # the chunk's last (partial) request, before committing it
            if producer is not None:
                await producer.flush()  # at-least-once: outputs acked before the commit
            await consumer.commit()
        t1, cpu1 = time.monotonic(), _cpu()
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    out = {
        "records": records,
        "events": events,
        "t0": t0,
        "t1": t1,
        "seconds": t1 - t0,
        "cpu_seconds": cpu1 - cpu0,
        "requests": builder.bodies,
        "request_bytes": builder.body_bytes,
    }
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(out), encoding="utf-8")
    tmp.replace(result_file)
    return out


def main() -> None:
    asyncio.run(run(json.loads(os.environ["BENCH_CONFIG"])))


if __name__ == "__main__":
    main()
