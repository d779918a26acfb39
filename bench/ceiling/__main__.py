"""``python -m bench.ceiling``: every contender on one real local broker, one table, one JSON.

Flow: start :class:`~app.dev.localkafka.LocalKafka`; per batch size create a 4-partition input
topic and pre-produce the mParticle batches, plus an operations topic pre-filled with the Avro
``operation_batch`` records the ingest design writes (the drain's input); then run each
contender as a subprocess, round-robin over the runs (run 1 of every contender, then run 2, ...)
so background noise spreads over all of them. Each subprocess times itself from its first
record to its last and reads its own CPU time (all threads) over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.dev.localkafka import LocalKafka
from bench.ceiling.workload import mparticle_batch, operation_batch
from bench.e2e.procs import cpu_seconds, machine_busy

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
PARTITIONS = 4

#: contender -> worker module, table title, "flush": flush the producer before the last
#: timestamp, "ops": reads the operations topic (its "events" are operations)
CONTENDERS: dict[str, dict[str, Any]] = {
    "raw_decode": {"module": "raw_worker", "title": "1 raw aiokafka getmany + orjson"},
    "faust_decode": {"module": "faust_worker", "title": "2 faust agent, decode only"},
    "faust_table": {"module": "faust_worker", "title": "3 faust + table set"},
    "faust_produce": {"module": "faust_worker", "title": "4 faust + produce", "flush": True},
    "faust_take": {"module": "faust_worker", "title": "5 faust take(500, 0.1s) decode"},
    "faust_ingest": {"module": "faust_worker", "title": "6 ingest design (faust)", "flush": True},
    "raw_drain": {"module": "raw_worker", "title": "7 drain design (aiokafka)", "ops": True},
    "raw_ingest": {"module": "raw_worker", "title": "8 ingest work on raw aiokafka"},
    "faust_table_produce": {
        "module": "faust_worker",
        "title": "9 faust + table set + produce",
        "flush": True,
    },
}
DEFAULT_CASES = [
    "raw_decode", "faust_decode", "faust_table", "faust_produce", "faust_take",
    "faust_ingest", "raw_drain", "raw_ingest",
]  # fmt: skip

#: one-at-a-time settings experiments of ``--sweep`` (each merged over the baseline)
SWEEP: list[tuple[str, dict[str, Any]]] = [
    ("baseline", {}),
    ("stream_buffer_maxsize=512", {"stream_buffer_maxsize": 512}),
    ("stream_buffer_maxsize=32768", {"stream_buffer_maxsize": 32768}),
    ("broker_max_poll_records=500", {"broker_max_poll_records": 500}),
    ("broker_max_poll_records=1000", {"broker_max_poll_records": 1000}),
    ("broker_max_poll_records=5000", {"broker_max_poll_records": 5000}),
    ("consumer_max_fetch_size=262144", {"consumer_max_fetch_size": 262_144}),
    ("consumer_max_fetch_size=2MB", {"consumer_max_fetch_size": 2 * 1024 * 1024}),
    ("consumer_max_fetch_size=4MB", {"consumer_max_fetch_size": 4 * 1024 * 1024}),
    ("consumer_max_fetch_size=8MB", {"consumer_max_fetch_size": 8 * 1024 * 1024}),
    ("consumer_max_fetch_size=16MB", {"consumer_max_fetch_size": 16 * 1024 * 1024}),
    ("broker_commit_every=1000", {"broker_commit_every": 1000}),
    ("broker_commit_every=100000", {"broker_commit_every": 100_000}),
    ("broker_commit_interval=0.5", {"broker_commit_interval": 0.5}),
    ("broker_commit_interval=10", {"broker_commit_interval": 10.0}),
    ("stream_wait_empty=False", {"stream_wait_empty": False}),
    # producer_linger, not the deprecated producer_linger_ms: FAUST_TUNING sets the former,
    # which faust prefers, so a producer_linger_ms variant would silently measure the base
    ("producer_linger=0", {"producer_linger": 0.0}),
    ("producer_linger=0.005", {"producer_linger": 0.005}),
    ("producer_linger=0.02", {"producer_linger": 0.02}),
    ("producer_max_batch_size=262144", {"producer_max_batch_size": 262_144}),
    ("producer_acks=1", {"producer_acks": 1}),
    ("stream_processing_timeout=600", {"stream_processing_timeout": 600.0}),
    ("sensors cleared", {"__no_sensors__": True}),
    ("unused table declared", {"__always_table__": True}),
    ("store=rocksdb://", {"__store__": "rocksdb://"}),
    ("event_loop=asyncio", {"__event_loop__": "asyncio"}),
    ("event_loop=uvloop", {"__event_loop__": "uvloop"}),
]


async def create_topics(bootstrap: str, names: list[str], compacted: bool = False) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = {"cleanup.policy": "compact"} if compacted else {}
        await admin.create_topics(
            [NewTopic(name, PARTITIONS, 1, topic_configs=configs) for name in names]
        )
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=-1, linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        pending = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def prepare(kafka: LocalKafka, sizes: list[int], records: int) -> dict[int, dict[str, Any]]:
    """Create and fill the input and operations topics; return their names and counts."""
    inputs: dict[int, dict[str, Any]] = {}
    for events in sizes:
        source, ops_topic = f"bench-in-{events}ev", f"bench-ops-{events}ev"
        asyncio.run(create_topics(kafka.bootstrap, [source, ops_topic]))
        began = time.monotonic()
        batches = [mparticle_batch(i, events) for i in range(records)]
        asyncio.run(produce(kafka.bootstrap, source, batches))
        made = [operation_batch(i, events) for i in range(records)]
        asyncio.run(produce(kafka.bootstrap, ops_topic, [(k, v) for k, v, _ in made]))
        inputs[events] = {
            "source": source,
            "ops_topic": ops_topic,
            "operations": sum(n for _, _, n in made),
            "record_bytes": sum(len(v) for _, v in batches) // records,
            "ops_record_bytes": sum(len(v) for _, v, _ in made) // records,
        }
        print(
            f"# produced {records} x {events}-event batches "
            f"(~{inputs[events]['record_bytes']} B) and their operations "
            f"(~{inputs[events]['ops_record_bytes']} B/record) in "
            f"{time.monotonic() - began:.1f}s",
            flush=True,
        )
    return inputs


def run_one(
    kafka: LocalKafka,
    case: str,
    events: int,
    topics: dict[str, Any],
    records: int,
    workdir: Path,
    overrides: dict[str, Any],
    profile: str | None,
    timeout: float,
) -> dict[str, Any]:
    spec = CONTENDERS[case]
    tag = f"{case}-{events}ev-{uuid.uuid4().hex[:6]}"
    sink, changelog = f"bench-out-{tag}", f"bench-changelog-{tag}"
    faust_overrides = {k: v for k, v in overrides.items() if not k.startswith("__")}
    if case in {"faust_produce", "faust_ingest", "faust_table_produce", "raw_ingest"}:
        asyncio.run(create_topics(kafka.bootstrap, [sink]))
    if case == "raw_ingest":
        asyncio.run(create_topics(kafka.bootstrap, [changelog], compacted=True))
    result_file = workdir / f"{tag}.json"
    config = {
        "case": case,
        "app_id": f"bench-{tag}",
        "broker": kafka.url,
        "bootstrap": kafka.bootstrap,
        "source": topics["ops_topic"] if spec.get("ops") else topics["source"],
        "sink": sink,
        "changelog": changelog,
        "events": events,
        "records": records,
        "result_file": str(result_file),
        "data_dir": str(workdir / tag),
        "store": overrides.get("__store__", "memory://"),
        "no_sensors": bool(overrides.get("__no_sensors__")),
        "overrides": faust_overrides,
        "flush": bool(spec.get("flush")),
        "loglevel": overrides.get("__loglevel__", "warning"),
        "task_sampler": bool(overrides.get("__task_sampler__")),
        "always_table": bool(overrides.get("__always_table__")),
        "event_loop": overrides.get("__event_loop__"),
    }
    env = {**os.environ, "BENCH_CONFIG": json.dumps(config), "PYTHONPATH": str(REPO)}
    log = workdir / f"{tag}.log"
    began = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"bench.ceiling.{spec['module']}"],
            env=env,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    spy: subprocess.Popen[bytes] | None = None
    rusage = None

    def reap() -> bool:
        # os.wait4 (not Popen.poll) so the child's own rusage is ours to read
        nonlocal rusage
        if process.returncode is not None:
            return True
        pid, status_code, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status_code)
            rusage = usage
        return bool(pid)

    broker_pid = kafka._process.pid if kafka._process else None
    samples: list[tuple[float, float, float]] = []
    try:
        started = result_file.with_suffix(".started")
        while not result_file.exists():
            samples.append((time.monotonic(), cpu_seconds(broker_pid), machine_busy()))
            if reap():
                break
            if profile and spy is None and started.exists():
                spy = start_profiler(process.pid, workdir / "profiles", tag, profile)
            if time.monotonic() - began > timeout:
                break
            time.sleep(0.05)
    finally:
        if not reap():
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not reap():
            if time.monotonic() > deadline:
                process.kill()
            time.sleep(0.05)
        if spy is not None:
            spy.wait(30)
    row: dict[str, Any] = {"contender": case, "title": spec["title"], "events_per_batch": events}
    row["overrides"] = dict(overrides)
    if not result_file.exists():
        tail = log.read_text(errors="replace")[-3000:]
        row["error"] = f"no result within {timeout:.0f}s (exit {process.returncode}): {tail}"
        return row
    measured = json.loads(result_file.read_text())
    seconds = measured["seconds"]
    row.update(
        records=measured["records"],
        events=measured["events"],
        seconds=round(seconds, 4),
        records_per_s=round(measured["records"] / seconds, 1),
        events_per_s=round(measured["events"] / seconds, 1),
        cpu_seconds=round(measured["cpu_seconds"], 4),
        cpu_s_per_1000_records=round(measured["cpu_seconds"] / measured["records"] * 1000, 5),
        cpu_utilisation=round(measured["cpu_seconds"] / seconds, 3),
        process_cpu_seconds=round(rusage.ru_utime + rusage.ru_stime, 3) if rusage else None,
        wall_incl_startup=round(time.monotonic() - began, 2),
    )
    inside = [s for s in samples if measured["t0"] <= s[0] <= measured["t1"]]
    if len(inside) >= 2 and seconds > 0.2:
        span = inside[-1][0] - inside[0][0]
        row["broker_cpu_utilisation"] = round((inside[-1][1] - inside[0][1]) / span, 3)
        row["machine_cpu_utilisation"] = round((inside[-1][2] - inside[0][2]) / span, 3)
    if "requests" in measured:
        row["requests"] = measured["requests"]
        row["request_bytes"] = measured["request_bytes"]
    if spy is not None:
        row["profile"] = str(workdir / "profiles" / f"{tag}.{profile}")
    return row


def start_profiler(pid: int, folder: Path, tag: str, fmt: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--threads", "--idle",
            "--format", fmt, "-o", str(folder / f"{tag}.{fmt}"), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(rows: list[dict[str, Any]], label_of: Any) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(label_of(row), []).append(row)
    summary = []
    for label, group in groups.items():
        ok = [r for r in group if "error" not in r]
        entry: dict[str, Any] = {"label": label, "runs": len(group), "failed": len(group) - len(ok)}
        if ok:
            for field in ("records_per_s", "events_per_s", "cpu_s_per_1000_records"):
                values = [r[field] for r in ok]
                entry[field] = (statistics.median(values), min(values), max(values))
            for field in ("cpu_utilisation", "broker_cpu_utilisation", "machine_cpu_utilisation"):
                entry[field] = statistics.median(r.get(field, float("nan")) for r in ok)
            entry["records"] = ok[0]["records"]
            entry["unit"] = "ops" if CONTENDERS[ok[0]["contender"]].get("ops") else "events"
        summary.append(entry)
    return summary


def print_table(summary: list[dict[str, Any]], label_header: str) -> None:
    header = (
        f"{label_header:<44} {'records/s  med [min-max]':>28} {'events/s (drain: ops/s) med':>30}"
        f" {'CPU s/1000 rec':>16} {'CPU%':>5} {'JVM%':>5} {'box%':>5}"
    )
    print(header)
    print("-" * len(header))
    for entry in summary:
        label = " ".join(str(part) for part in entry["label"])
        if "records_per_s" not in entry:
            print(f"{label:<44} FAILED ({entry['failed']} of {entry['runs']} runs)")
            continue
        rec, ev, cpu = (
            entry["records_per_s"],
            entry["events_per_s"],
            entry["cpu_s_per_1000_records"],
        )
        print(
            f"{label:<44} {rec[0]:>9,.0f} [{rec[1]:>7,.0f}-{rec[2]:>7,.0f}]"
            f" {ev[0]:>11,.0f} [{ev[1]:>7,.0f}-{ev[2]:>7,.0f}] {entry['unit']:<4}"
            f" {cpu[0]:>7.3f} [{cpu[1]:.3f}-{cpu[2]:.3f}] {entry['cpu_utilisation'] * 100:>4.0f}"
            f" {entry['broker_cpu_utilisation'] * 100:>5.0f}"
            f" {entry['machine_cpu_utilisation'] * 100:>5.0f}"
        )
    print(flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--records", type=int, default=20_000, help="records per case")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1,10", help="events per batch, comma-separated")
    parser.add_argument(
        "--cases", default=",".join(DEFAULT_CASES), help=f"any of {', '.join(CONTENDERS)}"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SETTING=JSON",
        help="faust setting override for every faust contender (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-sensors", action="store_true", help="clear faust's sensors")
    parser.add_argument(
        "--sweep", action="store_true", help="run the one-at-a-time settings experiments"
    )
    parser.add_argument("--only", default="", help="with --sweep: comma-separated labels")
    parser.add_argument(
        "--profile", choices=["speedscope", "raw", "flamegraph"], help="py-spy each contender"
    )
    parser.add_argument("--loglevel", default="warning", help="faust workers' log level")
    parser.add_argument(
        "--task-sampler", action="store_true", help="sample where asyncio tasks wait"
    )
    parser.add_argument("--keep-logs", action="store_true", help="copy worker logs to results/")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contenders: {unknown}")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base: dict[str, Any] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        base[name] = json.loads(value)
    base["__loglevel__"] = args.loglevel
    if args.task_sampler:
        base["__task_sampler__"] = True
    if args.no_sensors:
        base["__no_sensors__"] = True
    variants = [("baseline", {})]
    if args.sweep:
        wanted = {w for w in args.only.split(",") if w}
        variants = [(n, o) for n, o in SWEEP if not wanted or n in wanted or n == "baseline"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_file = RESULTS / f"ceiling-{stamp}.json"
    began = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp, LocalKafka() as kafka:
        workdir = Path(tmp)
        print(f"# Kafka {kafka.version} at {kafka.bootstrap} ({kafka.started_in:.1f}s to start)")
        topics = prepare(kafka, sizes, args.records)
        for run in range(1, args.runs + 1):
            for events in sizes:
                for case in cases:
                    for variant, extra in variants:
                        if variant != "baseline" and not case.startswith("faust"):
                            continue
                        settings = {**base, **extra}
                        row = run_one(kafka, case, events, topics[events], args.records,
                                      workdir, settings, args.profile, args.timeout)  # fmt: skip
                        row.update(run=run, variant=variant, started=stamp)
                        rows.append(row)
                        shown = row.get("error", "")[:300] or (
                            f"{row['records_per_s']:>9,.0f} rec/s {row['events_per_s']:>9,.0f} "
                            f"ev/s  {row['cpu_s_per_1000_records']:.3f} CPU s/1000"
                        )
                        print(f"# run {run} {events:>2}ev {case:<20} {variant:<32} {shown}",
                              flush=True)  # fmt: skip
                        out_file.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        if args.keep_logs:
            logs = RESULTS / f"logs-{stamp}"
            logs.mkdir()
            for log in [*workdir.glob("*.log"), *workdir.glob("*.tasks.json")]:
                shutil.copy(log, logs / log.name)
            print(f"# worker logs in {logs}")
        if args.profile:
            keep = RESULTS / f"profiles-{stamp}"
            with contextlib.suppress(FileNotFoundError):
                (workdir / "profiles").rename(keep)
                print(f"# profiles in {keep}")
    print(
        f"\n# {len(rows)} runs in {time.monotonic() - began:.0f}s; "
        f"per-run JSON: {out_file.relative_to(REPO)}"
    )
    shown = {k: v for k, v in base.items() if k not in {"__loglevel__", "__task_sampler__"}}
    print(f"# base overrides: {shown or 'none'} (over app.faust_app.FAUST_TUNING)\n")
    summary = summarise(rows, lambda r: (r["events_per_batch"], "ev", r["title"], r["variant"]))
    print_table(summary, "batch size / contender / variant")


if __name__ == "__main__":
    main()
