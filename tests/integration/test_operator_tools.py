"""Operator tools on the real broker: replay, deadletter list/show/redrive, check-config."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.core.avro import codec
from app.dev.emulator.faults import parse_faults
from app.dev.localkafka import LocalKafka
from app.ops.replay import FLUSH_EVERY
from app.records import SourcePosition, dead_letter
from tests.integration import workload
from tests.integration.cli import mpcio
from tests.integration.conftest import API_KEY
from tests.integration.support import (
    REPO,
    consume_until,
    create_topics,
    produce,
    wait_for,
    worker_env,
)

if TYPE_CHECKING:
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment, Names

pytestmark = pytest.mark.integration

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def _env(kafka: LocalKafka, names: Names, **overrides: str) -> dict[str, str]:
    return worker_env(kafka.url, names.prefix, 0, **overrides)


async def test_replay_keys_by_mpid_reports_bad_lines_and_reads_gzip(
    kafka: LocalKafka, names: Names, tmp_path: Path
) -> None:
    topic = names.topic("batches")
    await create_topics(kafka.bootstrap, [topic])
    sample = (REPO / "samples" / "mparticle-batches.jsonl").read_bytes()
    extra = b'\n{"mpid": "-42", "environment": "production"}\n[1, 2]\n[]\n'
    compressed = tmp_path / "batches.jsonl.data"  # gzip without the .gz suffix: magic bytes
    compressed.write_bytes(gzip.compress(sample + extra))

    result = await mpcio("replay", str(compressed), env=_env(kafka, names))

    assert result.code == 0, result.both
    errors = [line for line in result.err.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in errors] == [
        "line 5",
        "line 8",
        "line 10",
        "line 17",
        "line 18",
    ]  # line 15 is blank: skipped, not invalid
    assert "line 17: not_an_object" in result.err
    assert "line 18: empty_record" in result.err
    assert f"sent 12 to {topic}, 5 invalid" in result.err
    records = await consume_until(kafka.bootstrap, topic, lambda rs: len(rs) >= 12)
    assert len(records) == 12
    keys = {r.key for r in records}
    assert b"-42" in keys
    for record in records:
        document = orjson.loads(record.value)
        first = document[0] if isinstance(document, list) else document
        assert record.key == str(int(first["mpid"])).encode()  # canonical decimal text


async def test_replay_sends_everything_honours_rate_and_dry_run(
    kafka: LocalKafka, names: Names, tmp_path: Path
) -> None:
    # Behaviour only: replay speed is a figure of `python -m bench.replay`, never a test.
    topic = names.topic("batches")
    await create_topics(kafka.bootstrap, [topic])
    records = workload.batches(users=200, batches_per_user=25, events_per_batch=3)
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(value for _, value in records) + b"\n")

    dry = await mpcio("replay", str(path), "--dry-run", env=_env(kafka, names))
    assert dry.code == 0, dry.both
    assert "5000 valid (dry run, nothing sent), 0 invalid" in dry.err

    result = await mpcio("replay", str(path), "--progress-every", "0.1", env=_env(kafka, names))
    assert result.code == 0, result.both
    assert re.search(r"sent 5000 to .*, 0 invalid, [\d.]+ s, [\d,]+ records/s", result.err)
    assert re.search(r"replay: [\d,]+ sent .*/s .*% +ETA \d+:\d\d:\d\d", result.err), result.err
    arrived = await consume_until(kafka.bootstrap, topic, lambda rs: len(rs) >= 5000)
    assert len(arrived) == 5000  # the dry run sent nothing

    small = tmp_path / "small.jsonl"
    small.write_bytes(b"\n".join(value for _, value in records[:30]) + b"\n")
    began = time.monotonic()
    paced = await mpcio(
        "replay", "-", "--rate", "100", env=_env(kafka, names), stdin=small.read_bytes()
    )
    assert paced.code == 0, paced.both
    assert "sent 30" in paced.err
    # A lower bound on time: a busy machine can only make it slower, never break it.
    assert time.monotonic() - began >= 0.29  # 30 records at 100/s take at least 0.29 s


async def test_replay_fails_with_one_line_when_kafka_or_file_is_missing(
    names: Names, tmp_path: Path
) -> None:
    env = worker_env("kafka://127.0.0.1:1", names.prefix, 0)
    sample = str(REPO / "samples" / "mparticle-batches.jsonl")
    unreachable = await mpcio("replay", sample, env=env)
    assert unreachable.code == 1
    assert unreachable.err.strip() == (
        "mpcio: cannot use Kafka at kafka://127.0.0.1:1: 127.0.0.1:1: connection refused"
    )
    missing = await mpcio("replay", str(tmp_path / "nope.jsonl"), env=env)
    assert missing.code == 1
    assert missing.err.strip().startswith("mpcio: cannot read ")
    assert len(missing.err.strip().splitlines()) == 1


def _progress_count(line: str) -> int:
    """The count of a ``replay: 12,345 sent`` progress line (0 for any other line)."""
    match = re.search(r"replay: ([\d,]+) sent", line)
    return int(match.group(1).replace(",", "")) if match else 0


async def test_replay_on_broker_loss_fails_once_and_counts_only_acknowledged(
    names: Names, tmp_path: Path
) -> None:
    """A broker of this test's own (not the session's) is SIGKILLed mid-replay, then
    restarted on its data to count what landed."""
    broker = LocalKafka(data_dir=tmp_path / "kafka")
    await asyncio.to_thread(broker.start)
    try:
        topic = names.topic("batches")
        await create_topics(broker.bootstrap, [topic], partitions=2)
        source = tmp_path / "many.jsonl"
        source.write_bytes(b"".join(b'{"mpid": %d}\n' % n for n in range(1, 300_001)))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            "replay",
            str(source),
            "--topic",
            topic,
            "--rate",
            "2000",
            "--progress-every",
            "0.2",
            env={**os.environ, **worker_env(broker.url, names.prefix, 0), "PYTHONPATH": str(REPO)},
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stderr is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(180):
                # Past the first flush (every FLUSH_EVERY records), so some records are
                # acknowledged before the loss whatever the machine's load.
                while _progress_count(seen[-1] if seen else "") <= FLUSH_EVERY:
                    line = (await process.stderr.readline()).decode()
                    assert line, "replay ended before the broker was lost:\n" + "".join(seen)
                    seen.append(line)
                await asyncio.to_thread(broker.kill)  # the broker is lost mid-replay
                rest = (await process.stderr.read()).decode()
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        err = "".join(seen) + rest
        assert code == 1, err
        errors = [line for line in err.splitlines() if line.startswith("mpcio:")]
        assert len(errors) == 1, err
        assert "Kafka" in errors[0]
        assert "Traceback" not in err
        assert "never retrieved" not in err
        summary = re.search(
            r"^replay: sent (\d+) to \S+ \(acknowledged before the error\)", err, re.MULTILINE
        )
        assert summary, err
        acknowledged = int(summary.group(1))
        assert acknowledged > 0

        await asyncio.to_thread(broker.start)  # the same data: count what landed
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in (0, 1)]
            landed = sum((await consumer.end_offsets(partitions)).values())
        finally:
            await consumer.stop()
        assert landed >= acknowledged  # every record counted as sent is in Kafka
    finally:
        await asyncio.to_thread(broker.close)


def _letter(**fields: object) -> bytes:
    defaults: dict[str, object] = {
        "reason": "invalid_json",
        "detail": "bad",
        "stage": "ingest",
        "source": SourcePosition("src", 0, 0),
        "key": None,
        "payload": b"",
        "failed_at_ms": int(time.time() * 1000),
    }
    defaults.update(fields)
    return dead_letter(**defaults)  # type: ignore[arg-type]


async def test_deadletter_list_show_and_redrive(kafka: LocalKafka, names: Names) -> None:
    env = _env(kafka, names)
    batches, operations, deadletter = (
        names.topic("batches"),
        names.topic("operations"),
        names.topic("deadletter"),
    )
    await create_topics(kafka.bootstrap, [batches, operations, deadletter], partitions=2)
    bad_batch = b'{"mpid": 7, "user_identities": {"email": "ann@example.com"}, "events": {}}'
    item = {
        "type": "person",
        "identifiers": {"id": "cust-7"},
        "action": "event",
        "name": "Bought",
        "id": "01KB76YVZ81KCWPR9P11ZZAW00",
        "attributes": {"contact": "ann@example.com"},
    }
    old = int(time.time() * 1000) - 3 * 86_400_000
    await produce(
        kafka.bootstrap,
        deadletter,
        [
            (
                b"7",
                _letter(
                    reason="events_not_a_list",
                    detail="events is an object",
                    source=SourcePosition(batches, 1, 41),
                    key=b"7",
                    payload=bad_batch,
                ),
            ),
            (
                b"7",
                _letter(
                    reason="http_400",
                    detail="rejected ann@example.com",
                    stage="sink",
                    source=SourcePosition(operations, 1, 9),
                    key=b"7",
                    payload=orjson.dumps(item),
                    http_status=400,
                    response='{"meta": {"error": "bad"}}',
                    attempts=1,
                ),
            ),
            (
                b"8",
                _letter(
                    reason="state_corrupt",
                    source=SourcePosition(batches, 0, 3),
                    key=b"8",
                    payload=b"\xc3\x01corrupt",
                    failed_at_ms=old,
                ),
            ),
        ],
    )

    listed = await mpcio("deadletter", "list", env=env)
    assert listed.code == 0, listed.both
    lines = listed.out.strip().splitlines()
    assert len(lines) == 3
    assert "3 dead letter(s)" in listed.err
    sink_line = next(line for line in lines if "http_400" in line)
    assert re.match(r"\s*\d@\d+  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  sink ", sink_line), sink_line
    assert f"{operations}[1]@9" in sink_line
    assert "http=400" in sink_line
    assert not EMAIL.search(listed.out)
    position = sink_line.split()[0]

    recent = await mpcio("deadletter", "list", "--since", "1d", "--stage", "ingest", env=env)
    assert [line.split()[3] for line in recent.out.strip().splitlines()] == ["events_not_a_list"]
    limited = await mpcio("deadletter", "list", "--limit", "1", env=env)
    assert len(limited.out.strip().splitlines()) == 1

    shown = await mpcio("deadletter", "show", position, env=env)
    assert shown.code == 0, shown.both
    document = json.loads(shown.out)
    assert document["reason"] == "http_400"
    assert document["payload_encoding"] == "utf-8"
    assert "ann@example.com" not in shown.out
    assert json.loads(document["payload"])["attributes"]["contact"].startswith("<email:")
    unmasked = await mpcio("deadletter", "show", position, "--unmasked", env=env)
    assert json.loads(json.loads(unmasked.out)["payload"]) == item
    corrupt = next(line for line in lines if "state_corrupt" in line).split()[0]
    binary = json.loads((await mpcio("deadletter", "show", corrupt, env=env)).out)
    # masked, bytes that are not UTF-8 are escaped text (base64 would hide nothing from anyone)
    assert binary["payload_encoding"] == "text-with-escapes"
    assert binary["payload"] == "\\xc3\x01corrupt"  # \x01 is valid UTF-8
    binary = json.loads((await mpcio("deadletter", "show", corrupt, "--unmasked", env=env)).out)
    assert binary["payload_encoding"] == "base64"
    nothing = await mpcio("deadletter", "show", "1@999", env=env)
    assert nothing.code == 1
    assert "no record at 1@999" in nothing.err

    refused = await mpcio("deadletter", "redrive", env=env)
    assert refused.code == 2
    assert "--all" in refused.err
    dry = await mpcio("deadletter", "redrive", "--all", "--dry-run", env=env)
    assert dry.code == 0, dry.both
    assert "2 would be sent (dry run), 1 skipped" in dry.err
    assert "skip" in dry.out
    assert "state_corrupt" in dry.out

    redriven = await mpcio("deadletter", "redrive", "--all", env=env)
    assert redriven.code == 0, redriven.both
    assert "redrive: 2 sent, 1 skipped" in redriven.err
    back = await consume_until(kafka.bootstrap, batches, lambda rs: len(rs) >= 1)
    assert [(r.key, r.value) for r in back] == [(b"7", bad_batch)]
    ops = await consume_until(kafka.bootstrap, operations, lambda rs: len(rs) >= 1)
    assert ops[0].key == b"7"
    wrapped = codec("operation_batch").decode(ops[0].value)
    assert wrapped["mpid"] == "7"
    assert wrapped["source_topic"] == deadletter
    assert [(op["action"], op["person_id"]) for op in wrapped["operations"]] == [
        ("event", "cust-7")
    ]
    assert orjson.loads(wrapped["operations"][0]["item"]) == item

    chosen = await mpcio("deadletter", "redrive", "--offsets", position, "--dry-run", env=env)
    assert "1 would be sent (dry run), 0 skipped" in chosen.err


async def test_deadletter_tools_skip_dead_letters_of_aborted_transactions(
    kafka: LocalKafka, names: Names
) -> None:
    # Under exactly_once a worker that crashed mid-transaction leaves dead letters the broker
    # aborts; its successor writes them again. Only the committed ones are dead letters.
    env = _env(kafka, names)
    deadletter = names.topic("deadletter")
    await create_topics(kafka.bootstrap, [deadletter], partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, transactional_id=names.topic("txn"), acks="all"
    )
    await producer.start()
    try:
        for reason, commit in (("committed_first", True), ("aborted", False)):
            await producer.begin_transaction()
            await producer.send_and_wait(deadletter, _letter(reason=reason), partition=0)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
        # the partition ends with an abort marker: the reader must still reach its end
    finally:
        await producer.stop()

    listed = await mpcio("deadletter", "list", "--json", env=env)
    assert listed.code == 0, listed.both
    assert [json.loads(line)["reason"] for line in listed.out.splitlines()] == ["committed_first"]
    redrive = await mpcio("deadletter", "redrive", "--all", "--dry-run", env=env)
    assert redrive.code == 0, redrive.both
    assert "1 would be sent (dry run)" in redrive.err, redrive.err


async def test_deadletter_tools_wait_for_an_open_transaction_and_name_one_left_open(
    kafka: LocalKafka, names: Names
) -> None:
    # Under exactly_once a worker's dead letters become readable when its transaction commits
    # (every few seconds); records committed after an open transaction are behind it too.
    env = _env(kafka, names)
    deadletter = names.topic("deadletter")
    await create_topics(kafka.bootstrap, [deadletter], partitions=1)
    plain = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    worker = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, transactional_id=names.topic("txn"), acks="all"
    )
    await plain.start()
    await worker.start()
    try:
        await plain.send_and_wait(deadletter, _letter(reason="before"), partition=0)
        await worker.begin_transaction()
        await worker.send_and_wait(deadletter, _letter(reason="in_transaction"), partition=0)
        await plain.send_and_wait(deadletter, _letter(reason="after"), partition=0)

        listing = asyncio.create_task(mpcio("deadletter", "list", "--json", env=env))
        await asyncio.sleep(2)  # the listing must wait for the commit, not stop before it
        assert not listing.done()
        await worker.commit_transaction()
        listed = await listing
        assert listed.code == 0, listed.both
        reasons = [json.loads(line)["reason"] for line in listed.out.splitlines()]
        assert reasons == ["before", "in_transaction", "after"]

        # a transaction left open (a worker killed mid-transaction) ends the reading there,
        # with one line naming what was not read
        await worker.begin_transaction()
        await worker.send_and_wait(deadletter, _letter(reason="left_open"), partition=0)
        await plain.send_and_wait(deadletter, _letter(reason="behind_it"), partition=0)
        stuck = await mpcio("deadletter", "list", "--json", env=env)
        assert stuck.code == 0, stuck.both
        reasons = [json.loads(line)["reason"] for line in stuck.out.splitlines()]
        assert reasons == ["before", "in_transaction", "after"]
        assert f"{deadletter}[0]: offsets 4..5 are in a transaction still open" in stuck.err
        await worker.abort_transaction()
    finally:
        await plain.stop()
        await worker.stop()


async def test_deadletter_list_json_newest_first_since_by_time_and_a_closed_pipe(
    kafka: LocalKafka, names: Names
) -> None:
    env = _env(kafka, names)
    deadletter = names.topic("deadletter")
    # No time retention: the letter stamped 240 h ago would otherwise sit alone in a segment
    # (a segment rolls when its first record is older than segment.ms, 7 days) that the
    # broker's retention check (every 5 min, retention 7 days) deletes mid-test.
    await create_topics(kafka.bootstrap, [deadletter], partitions=2, configs={"retention.ms": "-1"})
    now = int(time.time() * 1000)
    hour = 3_600_000
    big = b'{"note": "' + b"x" * 300_000 + b'"}'  # far more than a pipe buffers
    # (partition, Kafka timestamp, failed_at, reason); "stale" failed recently but was written
    # with an old Kafka timestamp: only a scan (not a seek by time) would find it for --since
    letters = [
        (0, now - 240 * hour, now, "stale"),
        (0, now, now - 2 * hour, "two_hours"),
        (1, now, now - 1 * hour, "one_hour"),
        (1, now, now - 3 * hour, "three_hours"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for partition, written, failed, reason in letters:
            value = _letter(reason=reason, failed_at_ms=failed, payload=big)
            await producer.send_and_wait(
                deadletter, value, partition=partition, timestamp_ms=written
            )
    finally:
        await producer.stop()

    listed = await mpcio("deadletter", "list", "--json", env=env)
    assert listed.code == 0, listed.err
    documents = [json.loads(line) for line in listed.out.splitlines()]
    assert sorted(d["reason"] for d in documents) == sorted(r for *_, r in letters)
    assert {d["position"] for d in documents} == {"0@0", "0@1", "1@0", "1@1"}
    assert all(d["stage"] == "ingest" for d in documents)

    newest = await mpcio("deadletter", "list", "--json", "--newest-first", env=env)
    order = [json.loads(line)["reason"] for line in newest.out.splitlines()]
    assert order == ["stale", "one_hour", "two_hours", "three_hours"]
    top = await mpcio("deadletter", "list", "--newest-first", "--limit", "2", env=env)
    assert [line.split()[3] for line in top.out.splitlines()] == ["stale", "one_hour"]

    recent = await mpcio("deadletter", "list", "--json", "--since", "150m", env=env)
    assert recent.code == 0, recent.err
    assert sorted(json.loads(line)["reason"] for line in recent.out.splitlines()) == [
        "one_hour",
        "two_hours",
    ]

    for command in ("deadletter show 1@0", "deadletter list --json"):
        piped = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            f"{sys.executable} -m app {command} | head -n 2 >/dev/null; exit ${{PIPESTATUS[0]}}",
            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            cwd=REPO,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(piped.communicate(), 120)
        assert piped.returncode == 141, (command, err.decode())
        assert b"Traceback" not in err
        assert b"Exception ignored" not in err


async def test_redriven_sink_letter_reaches_customerio(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    records = workload.batches(users=3, batches_per_user=1, events_per_batch=2)
    emulator.faults.add(parse_faults([{"kind": "status", "status": 400, "count": 1}])[0])
    await produce(deployment.kafka.bootstrap, deployment.topics.batches.name, records)
    worker = deployment.start_worker()
    letters = await consume_until(
        deployment.kafka.bootstrap,
        deployment.topics.deadletter.name,
        lambda rs: len(rs) >= 1,
        workers=[worker],
    )
    # Every item of the rejected request is a letter, and the rejected request need not hold
    # them all (the sink may send a first partial chunk): wait until letters and items taken
    # add up to the workload, not for the first letter only.
    total = len(workload.expected_items([value for _, value in records], deployment.settings))
    log = emulator.state.requests
    letters = await consume_until(
        deployment.kafka.bootstrap,
        deployment.topics.deadletter.name,
        lambda rs: len(rs) + sum(r.items for r in log.records if r.status == 200) >= total,
        workers=[worker],
    )
    count = len(letters)
    assert count + sum(r.items for r in log.records if r.status == 200) == total
    assert all(codec("dead_letter").decode(r.value)["reason"] == "http_400" for r in letters)
    env = dict(deployment.env)
    result = await mpcio("deadletter", "redrive", "--reason", "http_400", env=env)
    assert result.code == 0, result.both
    assert f"redrive: {count} sent" in result.err

    def delivered() -> bool:
        worker.assert_running()
        return emulator.state.stats()["items_accepted"] >= count

    await wait_for(delivered, 60, "the redriven items at the emulator")


async def _topics_with(kafka: LocalKafka, spec: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in spec.items()])
    finally:
        await admin.close()


async def test_check_config_reaches_kafka_and_customerio(
    deployment: Deployment, emulator: RunningEmulator, kafka: LocalKafka, names: Names
) -> None:
    good = await mpcio("check-config", env=deployment.env)
    assert good.code == 0, good.both
    verdicts = dict(line.split(":", 1) for line in good.out.splitlines()[-7:-1] if ":" in line)
    assert {name: text.split()[0] for name, text in verdicts.items()} == {
        "settings": "ok",
        "kafka": "ok",
        "topics": "ok",
        "co-partitioning": "ok",
        "transactions": "ok",
        "customerio": "ok",
    }
    assert "all checks passed" in good.out
    assert API_KEY not in good.both

    # mParticle's form of the setting: a comma-separated list, no scheme; shown as parsed.
    listed = await mpcio(
        "check-config",
        env={**deployment.env, "MPCIO_BROKER": f"{kafka.bootstrap},{kafka.bootstrap}"},
    )
    assert listed.code == 0, listed.both
    servers = re.escape(f"{kafka.bootstrap}, {kafka.bootstrap}")
    assert re.search(rf"^kafka: +ok \({servers}, 1 broker answered", listed.out, re.MULTILINE), (
        listed.out
    )

    bad = await mpcio(
        "check-config", env={**deployment.env, "MPCIO_CUSTOMERIO_API_KEY": "wrong-key"}
    )
    assert bad.code == 1
    assert re.search(r"^customerio: +FAILED: GET .*/auth answered 401", bad.out, re.MULTILINE), (
        bad.out
    )
    assert "wrong-key" not in bad.both
    assert "FAILED: customerio" in bad.out

    other = names.topic("other")
    await _topics_with(
        kafka, {f"{other}-batches": 4, f"{other}-audiences": 2, f"{other}-erasure": 4}
    )
    split = await mpcio(
        "check-config",
        env={
            **deployment.env,
            "MPCIO_TOPIC_BATCHES": f"{other}-batches",
            "MPCIO_TOPIC_AUDIENCES": f"{other}-audiences",
            "MPCIO_TOPIC_ERASURE": f"{other}-erasure",
            "MPCIO_TOPIC_OPERATIONS": f"{other}-operations",
            "MPCIO_FORWARDING_ENABLED": "false",
        },
    )
    assert split.code == 1
    assert (
        re.search(rf"^topics: +FAILED: missing {other}-operations$", split.out, re.MULTILINE)
        is None
    )
    assert f"FAILED: missing {other}-operations (mpcio worker creates them)" in split.out
    assert re.search(
        r"^co-partitioning: +FAILED: topics read by ingest differ", split.out, re.MULTILINE
    )
    assert f"{other}-audiences=2" in split.out
    assert re.search(r"^customerio: +skipped \(MPCIO_FORWARDING_ENABLED", split.out, re.MULTILINE)
    assert "FAILED: topics, co-partitioning (skipped: customerio)" in split.out

    down = await mpcio(
        "check-config", env={**deployment.env, "MPCIO_BROKER": "kafka://127.0.0.1:1"}
    )
    assert down.code == 1
    assert re.search(r"^kafka: +FAILED: .*connection refused", down.out, re.MULTILINE), down.out
    assert re.search(r"^transactions: +skipped \(no broker\)", down.out, re.MULTILINE)
    assert re.search(r"^customerio: +ok", down.out, re.MULTILINE)  # checked independently
