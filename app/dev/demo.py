"""``mpcio demo`` (the README's ``make run``): the whole product on one machine, on sample data.

Starts a local Kafka broker, the Customer.io emulator and a worker (subprocesses), produces the
sample mParticle batches shipped in ``samples/``, shows progress while they flow, then drives
the Firehose ingress (``mpcio ingress``, another subprocess) the way mParticle would: one
audience join, the matching leave and one erasure (DSR) of a sample user, each followed until
Customer.io shows it. It then prints what Customer.io received (people, events, unsubscribed
users) and the dead letters, and where the metrics are. Everything it started is stopped at
the end or on Ctrl-C; ``--keep-running`` leaves it all up until Ctrl-C for exploring.

Failure semantics: a part that does not come up stops the demo with a message naming it and
the log to read; whatever was started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from app.dev.localkafka import LocalKafka, free_port, signals_deferred
from app.errors import DemoError, MpcioError
from app.kafka_admin import ensure_topics
from app.ops.deadletters import Selection, StoredLetter, select
from app.ops.dryrun import dry_run
from app.settings import Settings
from app.topics import topics_for
from app.wiring import settings_as_env

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mparticle-batches.jsonl"
SITE_ID, API_KEY = "demo-site", "demo-key"
INGRESS_SECRET = "demo-ingress-secret"  # noqa: S105 - the local demo's own, printed nowhere
DEMO_AUDIENCE = {"audience_id": 9001, "audience_name": "Demo VIPs"}
WAIT_SECONDS = 90
STOP_SECONDS = 30  # above the worker's own bounded stop


def run_demo(*, kafka_port: int | None, keep_running: bool, sample: Path = SAMPLE) -> None:
    """Run the demo (module docstring). SIGTERM and SIGINT stop it at any point: every child
    is stopped and the temp folder removed. When a part does not come up, the folder (with
    the log the error names) is kept.

    A SIGTERM (``docker stop``) is a normal stop: this returns (``mpcio demo`` exits 0, as
    ``mpcio worker`` does). A Ctrl-C (SIGINT) during the run raises :class:`KeyboardInterrupt`
    (exit 130: the demo was interrupted); in ``--keep-running``'s wait it is the way to end it
    and returns too."""
    workdir = Path(tempfile.mkdtemp(prefix="mpcio-demo-"))
    lines = [line for line in sample.read_bytes().splitlines() if line.strip()]
    keep_logs = False
    stopped = "stopped the ingress, the worker, the emulator and Kafka"
    try:
        with _stopped_by_signals(), contextlib.ExitStack() as stack:
            # close() is registered before start(): a signal during start-up stops Java too
            broker = LocalKafka(port=kafka_port, data_dir=workdir / "kafka")
            stack.callback(broker.close)
            broker.start()
            print(
                f"✓ Kafka {broker.version} on {broker.bootstrap} "
                f"(started in {broker.started_in:.1f}s)"
            )
            emulator = stack.enter_context(local_emulator(workdir))
            print(f"✓ Customer.io emulator on {emulator.url} (pid {emulator.pid})")
            settings = _settings(broker, emulator.url, workdir)
            topics = topics_for(settings)
            asyncio.run(ensure_topics(settings.bootstrap_servers, topics))
            worker = stack.enter_context(_worker(settings, workdir / "worker.log"))
            # the worker listens on MPCIO_WEB_HOST exactly: shown once it answers there
            web_url = f"http://{settings.web_host}:{settings.web_port}"
            _wait_until(
                lambda: _get(web_url, "/health/live") is not None,
                WAIT_SECONDS,
                "the worker's web server",
                workdir / "worker.log",
            )
            print(f"✓ worker started (pid {worker.pid}); metrics on {web_url}/metrics")
            asyncio.run(_produce(settings, topics.batches.name, lines))
            print(f"→ produced {len(lines)} records from {sample.name} to {topics.batches.name}")
            expected = _expected_events(lines, settings)
            _show_progress(emulator.url, expected, worker, workdir / "worker.log")
            ingress_log = workdir / "ingress.log"
            ingress = stack.enter_context(_worker(settings, ingress_log, command="ingress"))
            _firehose_tour(settings, emulator.url, lines, ingress, ingress_log)
            _report(emulator.url, settings)
            if keep_running:
                _keep_running(settings, workdir, worker)
    except DemoError:
        keep_logs = True
        raise
    except _Terminated:  # a normal stop (exit 0): what was started stopped as the blocks unwound
        stopped = "SIGTERM: stopped what the demo had started"
    finally:
        if not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"✓ {stopped}; removed {workdir}")


def _settings(broker: LocalKafka, emulator_url: str, workdir: Path) -> Settings:
    return Settings(
        broker=broker.url,
        store="memory://",
        topic_partitions=4,
        web_port=free_port(),
        customerio_site_id=SITE_ID,
        customerio_api_key=API_KEY,
        customerio_url=emulator_url,
        batch_linger_ms=20,
        data_dir=str(workdir / "data"),
        ingress_secret=INGRESS_SECRET,
        ingress_port=free_port(),
        one_attribute_per_audience=True,
    )


def _keep_running(settings: Settings, workdir: Path, worker: subprocess.Popen[bytes]) -> None:
    """Print how to reach the running stack, then wait for Ctrl-C/SIGTERM (or the worker's
    exit)."""

    print(f"\nEverything keeps running (logs in {workdir}); Ctrl-C stops it.")
    print("To explore it from another shell (the emulator's demo key, not a real secret):")
    for name, value in sorted(settings_as_env(settings, changed_only=True).items()):
        if name != "MPCIO_INGRESS_SECRET":  # the ingress is the demo's own: no need to reach it
            print(f"  export {name}={shlex.quote(value)}")
    print("  mpcio deadletter list; mpcio check-config")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        while worker.poll() is None:
            time.sleep(0.5)


class _Terminated(KeyboardInterrupt):
    """The demo got SIGTERM: unwinds like Ctrl-C, but :func:`run_demo` then returns."""


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM (:class:`_Terminated`) and SIGINT raise :class:`KeyboardInterrupt` once, so every
    ``with`` block unwinds and stops what it started; further signals are ignored while that
    cleanup runs."""

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopping = _Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        raise stopping(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True, slots=True)
class LocalEmulator:
    url: str
    pid: int


@contextlib.contextmanager
def local_emulator(workdir: Path) -> Iterator[LocalEmulator]:
    """The Customer.io emulator in a subprocess (log in ``workdir``), stopped on exit."""
    port = free_port()
    argv = ["emulator", "--port", str(port), "--site-id", SITE_ID, "--api-key", API_KEY]
    with _child(argv, workdir / "emulator.log") as process:
        url = f"http://127.0.0.1:{port}"
        _wait_until(
            lambda: _get(url, "/_emulator/stats") is not None,
            30,
            "the emulator",
            workdir / "emulator.log",
        )
        yield LocalEmulator(url, process.pid)


@contextlib.contextmanager
def _worker(
    settings: Settings, log_path: Path, command: str = "worker"
) -> Iterator[subprocess.Popen[bytes]]:
    """``mpcio <command>`` (the worker, or the ingress) in a subprocess, stopped on exit."""

    with _child([command], log_path, env=settings_as_env(settings)) as process:
        yield process


@contextlib.contextmanager
def _child(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``mpcio <argv>`` in a subprocess logging to ``log_path`` (``env`` added to ours);
    on exit SIGTERM, then SIGKILL after :data:`STOP_SECONDS`. A SIGTERM or Ctrl-C while it is
    being started takes effect once its stop is registered (a SIGTERM in between once left
    the emulator running)."""
    with log_path.open("wb") as log, contextlib.ExitStack() as stack:
        with signals_deferred(signal.SIGTERM, signal.SIGINT):
            process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed argv
                [sys.executable, "-m", "app", *argv],
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(_stop_child, process)
        yield process


def _stop_child(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _produce(settings: Settings, topic: str, lines: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    # A topic created a moment ago answers "not leader" once or twice; the producer retries.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for line in lines:
            await producer.send(topic, line, key=_mpid_key(line))
        await producer.flush()
    finally:
        await producer.stop()


def _mpid_key(line: bytes) -> bytes | None:
    """What mParticle's Kafka output uses as the key: the batch's mpid."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    first = document[0] if isinstance(document, list) and document else document
    mpid = first.get("mpid") if isinstance(first, dict) else None
    return None if mpid is None else str(mpid).encode()


def _expected_events(lines: list[bytes], settings: Settings) -> int:
    import io  # noqa: PLC0415

    out = io.BytesIO()
    dry_run(lines, settings, out, io.StringIO())
    return sum(
        1 for raw in out.getvalue().splitlines() if orjson.loads(raw)["action"] != "identify"
    )


def _show_progress(url: str, expected: int, worker: subprocess.Popen[bytes], log: Path) -> None:
    began = time.monotonic()
    stored = 0
    while stored < expected:
        if worker.poll() is not None:
            raise DemoError(f"the worker exited; see {log}")
        if time.monotonic() - began > WAIT_SECONDS:
            raise DemoError(
                f"only {stored}/{expected} events arrived in {WAIT_SECONDS}s; see {log}"
            )
        stats = _get(url, "/_emulator/stats") or {}
        stored = int(stats.get("events_stored", 0))
        bar = "#" * (30 * stored // max(expected, 1))
        print(
            f"\r  Customer.io events [{bar:<30}] {stored}/{expected} "
            f"({time.monotonic() - began:.1f}s)",
            end="",
            flush=True,
        )
        time.sleep(0.2)
    print()


def _firehose_tour(
    settings: Settings,
    emulator_url: str,
    lines: list[bytes],
    ingress: subprocess.Popen[bytes],
    log: Path,
) -> None:
    """Join, leave and erase one sample user through the ingress, as mParticle would."""
    url = f"http://127.0.0.1:{settings.ingress_port}"
    _wait_until(lambda: _get(url, "/healthz") is not None, 60, "the ingress", log)
    print(f"✓ Firehose ingress on {url} (pid {ingress.pid})")
    mpid, email = _sample_user(lines, emulator_url)

    def attributes() -> dict[str, Any] | None:
        people = (_get(emulator_url, "/_emulator/people") or {}).get("people", [])
        live = [p for p in people if p["email"] == email and not p["deleted"]]
        return live[0]["attributes"] if live else None

    steps = [
        ("add", "joined", lambda: (attributes() or {}).get("SegmentMembership") == "'9001'"),
        ("delete", "left", lambda: (attributes() or {}).get("In Demo VIPs") is False),
    ]
    for action, verb, shown in steps:
        _post_firehose(url, _membership_message(mpid, action))
        _wait_until(shown, WAIT_SECONDS, f"the audience {verb!r} change", log)
        membership = (attributes() or {}).get("SegmentMembership", "")
        print(
            f"→ Firehose: mpid {mpid} {verb} 'Demo VIPs' → SegmentMembership={membership!r}, "
            f"In Demo VIPs={(attributes() or {}).get('In Demo VIPs')}"
        )
    _post_firehose(url, _dsr_message(email))
    _wait_until(lambda: attributes() is None, WAIT_SECONDS, "the erasure", log)
    print(f"→ Firehose: erasure (GDPR DSR) of mpid {mpid} → the person is deleted in Customer.io")


def _sample_user(lines: list[bytes], emulator_url: str) -> tuple[str, str]:
    """The mpid and email of the first sample user that Customer.io holds."""
    from app.core.mparticle import parse_record  # noqa: PLC0415

    people = (_get(emulator_url, "/_emulator/people") or {}).get("people", [])
    emails = {p["email"] for p in people if p["email"] and not p["deleted"]}
    for line in lines:
        with contextlib.suppress(MpcioError):
            for batch in parse_record(line):
                if batch.email is not None and batch.email in emails:
                    return batch.mpid, batch.email
    raise DemoError("no sample user reached Customer.io")


def _membership_message(mpid: str, action: str) -> bytes:
    return orjson.dumps(
        {
            "type": "audience_membership_change_request",
            "id": str(uuid.uuid4()),
            "timestamp_ms": int(time.time() * 1000),
            "firehose_version": "2.8.1",
            "account": {"account_id": 1},
            "user_profiles": [{"mpid": mpid, "audiences": [{**DEMO_AUDIENCE, "action": action}]}],
        }
    )


def _dsr_message(email: str) -> bytes:
    return orjson.dumps(
        {
            "type": "dsr_processing_request",
            "id": str(uuid.uuid4()),
            "timestamp_ms": int(time.time() * 1000),
            "firehose_version": "3.3.0",
            "subject_request_id": str(uuid.uuid4()),
            "subject_request_type": "erasure",
            "subject_identities": {"email": {"encoding": "raw", "value": email}},
            "regulation": "gdpr",
        }
    )


def _post_firehose(url: str, body: bytes) -> None:
    request = urllib.request.Request(  # noqa: S310 - loopback
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {INGRESS_SECRET}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        if response.status != 200:
            raise DemoError(f"the ingress answered {response.status}")


def _report(url: str, settings: Settings) -> None:
    everyone = (_get(url, "/_emulator/people") or {}).get("people", [])
    people = [person for person in everyone if not person["deleted"]]
    events = (_get(url, "/_emulator/events") or {}).get("events", [])
    stats = _get(url, "/_emulator/stats") or {}
    print(
        f"\nCustomer.io now holds {len(people)} people and {len(events)} events "
        f"({stats.get('requests')} requests, {stats.get('items_accepted')} items; "
        f"{len(everyone) - len(people)} person deleted by erasure):"
    )
    per_person = Counter(e["person_email"] or e["person_id"] for e in events)
    for person in people:
        flag = "  UNSUBSCRIBED" if person["unsubscribed"] else ""
        names = ", ".join(sorted(k for k in person["attributes"] if k != "email"))
        print(
            f"  {person['id'] or '-':>10}  {person['email']:<18} "
            f"{per_person[person['email']]:>2} events  [{names}]{flag}"
        )
    letters = asyncio.run(_dead_letters(settings))
    print(f"\nDead letters ({len(letters)}) in {settings.topic_deadletter}:")
    for stored in letters:
        letter = stored.letter or {"reason": "not a dead letter", "detail": stored.error}
        print(f"  {stored.position!s:>5}  {letter['reason']}: {letter['detail']}")
    if letters:
        print(f"  (mpcio deadletter show {letters[0].position} shows one in full)")


async def _dead_letters(settings: Settings) -> list[StoredLetter]:
    """Every dead letter, in topic order, named by its position in the dead-letter topic."""
    async with contextlib.aclosing(select(settings, Selection())) as letters:
        return [stored async for stored in letters]


def _get(url: str, path: str) -> Any:
    try:
        with urllib.request.urlopen(url + path, timeout=2) as response:  # noqa: S310 - loopback
            return orjson.loads(response.read())
    except OSError:
        return None


def _wait_until(condition: Any, seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not start within {seconds:.0f}s; see {log}")
        time.sleep(0.1)
