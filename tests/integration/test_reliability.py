"""Fault scenarios on the real broker and the emulator: nothing lost, nothing doubled.

Each scenario runs the reference workload (:mod:`tests.integration.reliability_model`) through
real workers while something goes wrong, then checks the invariant: the emulator holds exactly
the events and people the model expects, each event on its person, each person's updates in
order, the exact dead letters. The emulator is pessimistic (``docs/emulator.md``): stale
identifies are applied, so out-of-order delivery shows. Each prints its figures (events in,
delivered, duplicates the emulator suppressed, dead letters, lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections import Counter
from typing import TYPE_CHECKING

import orjson
import pytest

from app.dev.emulator.faults import parse_faults
from app.dev.emulator.server import running_emulator
from app.dev.localkafka import LocalKafka, free_port
from tests.integration import reliability_model
from tests.integration.conftest import Deployment, pessimistic_config
from tests.integration.killloop import KillLoopPlan, run_kill_loop
from tests.integration.support import (
    committed_offsets,
    judge,
    message_count,
    poll,
    produce_workload,
    stored_seqs,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from app.dev.emulator.validation import Identifier
    from tests.integration.conftest import Names
    from tests.integration.support import WorkerProcess

pytestmark = pytest.mark.integration

USERS, ROUNDS, EVENTS = 40, 4, 5


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """The pessimistic emulator for every scenario here (and the ``deployment`` it feeds)."""
    async with running_emulator(pessimistic_config()) as running:
        yield running


def _workload(*, reborn: bool = False) -> reliability_model.Workload:
    """The reference workload; without batches after an erasure unless ``reborn``: sent at
    once, such a batch could be read before its erasure and erased with it (README Limits),
    so only a producer that holds it until the erasure is committed sends one."""
    return reliability_model.generate(USERS, ROUNDS, EVENTS, reborn=reborn)


def _stored(emulator: RunningEmulator) -> int:
    """Events the emulator holds now (an erased user's earlier ones until their delete)."""
    return len(stored_seqs(emulator))


async def _until_delivered(
    emulator: RunningEmulator, count: int, workers: list[WorkerProcess], timeout: float = 120
) -> None:
    def done() -> bool:
        for worker in workers:
            worker.assert_running()
        return _stored(emulator) >= count

    try:
        await wait_for(done, timeout, f"{count} events at the emulator")
    except AssertionError as exc:
        logs = "\n".join(worker.output()[-3000:] for worker in workers)
        raise AssertionError(f"{exc}; emulator: {emulator.state.stats()}\n{logs}") from None


async def _verdict(
    deployment: Deployment,
    emulator: RunningEmulator,
    workload: reliability_model.Workload,
    scenario: str,
    capsys: pytest.CaptureFixture[str],
    *,
    stale_explained: bool = False,
    dead_letters: Counter[str] | None = None,
    other_emails: frozenset[str] = frozenset(),
) -> reliability_model.Verdict:
    verdict = await judge(
        emulator,
        workload,
        deployment,
        stale_explained=stale_explained,
        expected_dead_letters=dead_letters,
        other_emails=other_emails,
    )
    dead = await message_count(deployment.kafka.bootstrap, deployment.topics.deadletter.name)
    with capsys.disabled():
        print("\n" + verdict.summary(scenario, dead))
    assert verdict.ok, verdict.problems()
    return verdict


async def _settle(emulator: RunningEmulator, workload: reliability_model.Workload) -> None:
    """Wait for exactly the expected events (every erased user's earlier ones deleted; when
    that does not come, the verdict names what differs), then until no request arrives for a
    moment, so late duplicates (which the emulator would show) have had their chance."""
    with contextlib.suppress(AssertionError):
        await wait_for(
            lambda: reliability_model.complete(workload.expected, stored_seqs(emulator)),
            120,
            "exactly the expected events",
        )
    last = -1
    while emulator.state.stats()["requests"] != last:
        last = emulator.state.stats()["requests"]
        await asyncio.sleep(1.0)


# The default suite's short form of the kill loop (`python -m bench.killloop` runs the long
# one, >= 20 kills over >= 2,000 batches): 400 batches paced over ~80 s, at least 5 SIGKILLs.
# A 6 s group session (the broker's minimum) lets each restarted worker take over the killed
# one's partitions quickly.
KILL_LOOP = KillLoopPlan(users=100, rounds=4, events=2, rate=5.0, kills=5, seed=1311)


async def test_kill_loop_loses_nothing(
    deployment: Deployment, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await run_kill_loop(
        deployment,
        emulator,
        KILL_LOOP,
        worker_env={"batch_max_items": "50", "kafka_session_timeout_seconds": "6"},
    )
    with capsys.disabled():
        print("\n" + result.summary())
    assert result.kills >= KILL_LOOP.kills
    assert result.verdict.ok, result.verdict.problems()


KILLS_AT_DELETES = 2
# Records per second: slow enough that the worker reads each erasure after the user's batches
# produced before it (so its deletes find a person), as they would arrive in production.
PACE = 10.0


async def test_sink_killed_between_a_delete_and_its_commit_erases_for_good(
    deployment: Deployment, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """The workload with its erasures, paced while the worker runs; the worker SIGKILLed inside
    the emulator's handling of a delete that finds its person (carried out, its offset not
    committed), twice: at the first such delete, and at the first one the restarted worker
    carries out. The third worker delivers the rest; the verdict: nothing lost, every erased
    person gone or new, and everyone else exact."""
    workload = _workload(reborn=True)
    expected = len(workload.expected.events)
    store = emulator.state.store
    delete = store.delete
    victims: list[WorkerProcess] = []

    def delete_then_kill(identifier: Identifier) -> None:
        carried_out = store.find(identifier) is not None
        delete(identifier)
        if carried_out and len(victims) <= KILLS_AT_DELETES:
            victims[-1].kill()  # no-op for a worker already dead

    def killed() -> bool:
        if producer.done():
            producer.result()  # raises what stopped the producer
        return victims[-1].process is not None and victims[-1].process.poll() is not None

    store.delete = delete_then_kill  # type: ignore[method-assign]
    env = {"batch_max_items": "20", "kafka_session_timeout_seconds": "6", **_rocksdb(deployment)}
    victims.append(deployment.start_worker(**env))
    producer = asyncio.create_task(
        produce_workload(deployment, workload.sends, PACE, workload.follows)
    )
    try:
        for kill in range(KILLS_AT_DELETES):
            if kill:
                victims.append(deployment.start_worker(**env))
            await wait_for(killed, 300, "the worker killed at a delete")
        victims.append(deployment.start_worker(**env))
        await producer
    finally:
        producer.cancel()
    await _until_delivered(emulator, expected, victims[-1:], timeout=180)
    await _settle(emulator, workload)
    verdict = await _verdict(
        deployment, emulator, workload, "sink killed at a delete", capsys, stale_explained=True
    )
    assert verdict.erasures == workload.erasures > 0
    assert verdict.people_deleted >= KILLS_AT_DELETES
    assert verdict.reappeared == {}


async def test_broker_killed_and_restarted(
    names: Names, tmp_path: Path, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    async with _own_broker(names, tmp_path, emulator) as (broker, deployment, workload):
        expected = len(workload.expected.events)
        worker = deployment.start_worker(
            batch_max_items="20", rate_limit_per_second="40", **_rocksdb(deployment)
        )
        await _until_delivered(emulator, expected // 3, [worker])
        broker.kill()
        await asyncio.sleep(2)  # an outage, not a synchronisation: the broker is down 2 s
        broker.start()
        await _until_delivered(emulator, expected, [worker], timeout=180)
        await _settle(emulator, workload)
        await _verdict(
            deployment, emulator, workload, "broker restart", capsys, stale_explained=True
        )


async def test_customerio_errors_throttling_timeouts_and_drops(
    deployment: Deployment, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = _workload()
    expected = len(workload.expected.events)
    # Customer.io orders identifies by their timestamp (its OpenAPI: "control the order of
    # attribute updates"), and the delayed requests below arrive after their retries: keep that
    # documented ordering here rather than the pessimistic one.
    store = emulator.state.store
    store.rules = dataclasses.replace(store.rules, apply_stale_identifies=False)
    rules, _ = parse_faults(
        [
            {"kind": "status", "status": 503, "probability": 0.3, "count": 30, "seed": 2101},
            {"kind": "throttle", "retry_after": 1, "count": 5},
            {"kind": "throttle", "count": 10},
            {"kind": "delay", "delay_seconds": 3, "count": 3},
            {"kind": "drop", "count": 5},
        ]
    )
    emulator.faults.add(rules)
    await produce_workload(deployment, workload.sends)
    # 45 faults in a row can hit one request: the budget must outlast the storm (exhausting
    # it dead-letters, which test_delivery covers), so allow more attempts than faults.
    worker = deployment.start_worker(
        batch_max_items="20",
        request_timeout_seconds="1",
        retry_max_attempts="60",
        **_rocksdb(deployment),
    )
    await _until_delivered(emulator, expected, [worker], timeout=180)
    await _settle(emulator, workload)
    # A delayed request is answered (and counted) 3 s after it arrived, possibly after the
    # storm's last retry and a quiet second: its late copy must have had its chance too.
    await wait_for(
        lambda: emulator.state.stats()["faults_injected"].get("delay", 0) == 3,
        60,
        "the three delayed requests' answers",
    )
    verdict = await _verdict(
        deployment, emulator, workload, "api storm", capsys, stale_explained=True
    )
    faults = emulator.state.stats()["faults_injected"]
    assert faults.get("throttle", 0) >= 15
    assert faults.get("drop", 0) == 5
    assert faults.get("delay", 0) == 3
    # Each delayed request was applied after the client had timed out and its retry had been
    # applied too: the copies' events were recognised by their ids, none is visible twice.
    assert verdict.duplicates_suppressed > 0


async def test_second_worker_joins_and_leaves(
    deployment: Deployment, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = _workload()
    expected = len(workload.expected.events)
    half = len(workload.sends) // 2
    await produce_workload(deployment, workload.sends[:half])
    first = deployment.start_worker(
        rate_limit_per_second="40", batch_max_items="20", **_rocksdb(deployment, "first")
    )
    await _until_delivered(emulator, 10, [first])
    second = deployment.start_worker(
        rate_limit_per_second="40",
        batch_max_items="20",
        web_port=str(free_port()),
        **_rocksdb(deployment, "second"),
    )
    # joined (its recovery done) before the rest arrives: on a busy machine it could still be
    # starting when the stop below comes (a fresh-clone CI run), leaving one worker
    await wait_for(lambda: "Worker ready" in second.output(), 180, "the second worker's join")
    await produce_workload(deployment, workload.sends[half:])
    await _until_delivered(emulator, expected * 2 // 3, [first, second])
    assert await second.stop() < 30  # leaves: its partitions (and state) move back
    await _until_delivered(emulator, expected, [first])
    await _settle(emulator, workload)
    # A sink chunk in flight at a rebalance or a stop is left uncommitted and redelivered by its
    # partitions' next owner (app/sink/service.py, each case logged): an identify of it may then
    # arrive after a newer one (a fresh-clone CI run: 60 events redelivered, 7 stale identifies,
    # nothing else amiss). Without such a line, a stale identify stays a fault.
    await _verdict(
        deployment,
        emulator,
        workload,
        "rebalance",
        capsys,
        stale_explained=_redelivered([first, second]),
    )


def _poison() -> list[tuple[bytes | None, bytes]]:
    rng = random.Random(7)
    nested = b'{"mpid": 4, "user_attributes": {"a": ' + b'{"n": ' * 1100 + b"1" + b"}" * 1102
    big = {
        "mpid": 999_001,
        "user_identities": {"email": "big@example.com"},
        "user_attributes": {"blob": "x" * 900_000},
    }
    wide = {
        "mpid": 999_002,
        "user_identities": {"email": "wide@example.com"},
        "user_attributes": {f"attr_{i}": i for i in range(10_000)},
    }
    long_names = {
        "mpid": 999_003,
        "user_identities": {"email": "long@example.com"},
        "user_attributes": {"n" * 300: "v" * 5000},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "E" * 500,
                    "source_message_id": "p1",
                    "custom_attributes": {"v": "x" * 200_000},
                },
            }
        ],
    }
    return [
        (None, bytes(rng.getrandbits(8) for _ in range(200))),
        (b"1", b'{"mpid": 1, "events": [{"event_type": "custom_ev'),
        (b"2", orjson.dumps({"mpid": [1], "events": "x", "user_identities": 5})),
        (b"3", orjson.dumps({"mpid": 3, "events": [1, None, {"event_type": 5}]})),
        (b"4", nested),
        (b"5", ("[" * 300 + "]" * 300).encode()),
        (b"999001", orjson.dumps(big)),
        (b"999002", orjson.dumps(wide)),
        (b"999003", orjson.dumps(long_names)),
    ]


async def test_poison_input_keeps_the_stream_flowing(
    deployment: Deployment, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = _workload()
    expected = len(workload.expected.events)
    sends: list[tuple[str, bytes | None, bytes]] = []
    poison = [(reliability_model.BATCHES, key, value) for key, value in _poison()]
    step = len(workload.sends) // len(poison)
    for index, send in enumerate(workload.sends):
        sends.append(send)
        if index % step == 0 and poison:
            sends.append(poison.pop())
    sends.extend(poison)
    await produce_workload(deployment, sends)
    worker = deployment.start_worker(**_rocksdb(deployment))
    await _until_delivered(emulator, expected, [worker])
    await _settle(emulator, workload)
    # One dead letter per unusable record, each with its own reason: random bytes, truncated
    # JSON, a wrong mpid type, a too-deep nesting, and an array of arrays (a bulk record whose
    # item is not a batch). Record "3" has no email: skipped, not dead-lettered.
    await _verdict(
        deployment,
        emulator,
        workload,
        "poison input",
        capsys,
        dead_letters=Counter(
            ["invalid_utf8", "invalid_json", "mpid_invalid", "too_deep", "not_an_object"]
        ),
        other_emails=frozenset({"big@example.com", "wide@example.com", "long@example.com"}),
    )
    store = emulator.state.store
    big = store.find(("email", "big@example.com"))
    assert big is not None
    assert len(big.attributes["blob"].encode()) <= 1000  # the 900,000-byte value was cut
    # 10,000 attributes: Customer.io keeps 300 per person and drops a new one beyond them, so
    # the forwarder sends the first-seen 295 (5 left for its own) and counts the rest itself
    # (README Limits): nothing reaches the pessimistic emulator's silent cap.
    wide = store.find(("email", "wide@example.com"))
    assert wide is not None
    assert set(wide.attributes) == {f"attr_{i}" for i in range(295)}
    assert store.attributes_over_limit == 0
    long = store.find(("email", "long@example.com"))
    assert long is not None  # delivered, with the oversized attribute name dropped,
    assert long.attributes == {}
    (event,) = [e for e in store.events if e.person_email == "long@example.com"]
    assert event.name == "E" * 100  # the event name cut to 100 bytes,
    assert event.attributes == {}  # and its 200,000-byte data dropped
    worker.assert_running()


async def test_sigterm_stops_gracefully_and_loses_nothing(
    deployment: Deployment, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = _workload()
    expected = len(workload.expected.events)
    rules, _ = parse_faults([{"kind": "delay", "delay_seconds": 0.5, "count": 20}])
    emulator.faults.add(rules)
    await produce_workload(deployment, workload.sends)
    # rocksdb with one data directory: the restart keeps the store of the clean stop and
    # replays only the changelog written after the last commit's persisted offset
    store = _rocksdb(deployment)
    first = deployment.start_worker(batch_max_items="20", **store)
    await _until_delivered(emulator, expected // 4, [first])
    seconds = await first.stop()  # SIGTERM, as orchestrators send
    assert seconds < 30, f"SIGTERM took {seconds:.1f}s"
    with capsys.disabled():
        print(f"\nSIGTERM during delivery: stopped in {seconds:.1f} s")
    second = deployment.start_worker(**store)
    await _until_delivered(emulator, expected, [second])
    await _settle(emulator, workload)
    await _verdict(deployment, emulator, workload, "sigterm", capsys)


# SIGTERMs right after restarts, at the moments a worker passes one after another: its table
# recovery has ended ("Worker ready"), its first transaction has committed input offsets, it
# has delivered something. A paced producer keeps a backlog waiting at each restart. Seen
# before the fix: a SIGTERM ~2 s after "Worker ready", while the worker consumed its backlog,
# made faust's last commit fail (IllegalOperation('Not in the middle of a transaction'),
# `Error while stopping child <_Consumer ...>`) and the worker exit 1.
STOP_LOOP = reliability_model.generate(100, 4, 2)
STOP_LOOP_RATE = 5.0  # batches/s: ~80 s of input, so every restart meets a backlog
STOP_MOMENTS = ("recovered", "committed", "delivering") * 2
MOMENT_TIMEOUT = 180.0  # a loaded machine; the condition is awaited, not the time


async def test_sigterm_right_after_restarts_stops_gracefully_and_loses_nothing(
    deployment: Deployment, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = STOP_LOOP
    store = _rocksdb(deployment)
    producer = asyncio.create_task(
        produce_workload(deployment, workload.sends, STOP_LOOP_RATE, workload.follows)
    )
    workers: list[WorkerProcess] = []
    stops: list[str] = []
    try:
        for moment in STOP_MOMENTS:
            worker = deployment.start_worker(batch_max_items="20", **store)
            workers.append(worker)
            await _until_moment(deployment, emulator, worker, moment)
            seconds = await worker.stop(timeout=60)
            output = worker.output()
            assert worker.process is not None
            assert worker.process.returncode == 0, (
                f"SIGTERM at {moment!r}: exit {worker.process.returncode}; log:\n"
                + _stop_lines(output)
            )
            assert "Error while stopping" not in output, _stop_lines(output)
            stops.append(f"{moment} {seconds:.1f} s")
        # before awaiting the producer: its erasures wait for a worker to commit what they
        # follow, and the stops above may end before the paced input does
        final = deployment.start_worker(**store)
        workers.append(final)
        await producer
        await _until_delivered(emulator, len(workload.expected.events), [final], timeout=300)
    finally:
        producer.cancel()
    with capsys.disabled():
        print(f"\nSIGTERMs after restarts, exit 0 each: {', '.join(stops)}")
    await _settle(emulator, workload)
    await _verdict(
        deployment,
        emulator,
        workload,
        "sigterm after restarts",
        capsys,
        stale_explained=_redelivered(workers),
    )


async def _until_moment(
    deployment: Deployment, emulator: RunningEmulator, worker: WorkerProcess, moment: str
) -> None:
    """Wait until ``worker`` (just started) reached ``moment`` of :data:`STOP_MOMENTS`; fails
    if it exits first."""
    bootstrap, group = deployment.kafka.bootstrap, deployment.settings.app_id
    batches = deployment.topics.batches.name
    committed = await committed_offsets(bootstrap, group, batches)
    requests = emulator.state.stats()["requests"]
    await poll(_logged(worker, "Worker ready"), MOMENT_TIMEOUT, "the end of recovery", worker)
    if moment == "committed":

        async def moved() -> bool:
            return await committed_offsets(bootstrap, group, batches) > committed

        await poll(moved, MOMENT_TIMEOUT, "a commit of the restarted worker", worker)
    elif moment == "delivering":

        async def delivered() -> bool:
            return bool(emulator.state.stats()["requests"] > requests)

        await poll(delivered, MOMENT_TIMEOUT, "a request of the restarted worker", worker)


def _logged(worker: WorkerProcess, line: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return line in worker.output()

    return check


def _stop_lines(output: str) -> str:
    """The worker's log from the SIGTERM on (where a failed stop shows), at most 6,000 chars."""
    return output[output.rfind("Signal received") :][:6000]


def _redelivered(workers: list[WorkerProcess]) -> bool:
    """True when a worker logged a sink chunk left uncommitted at a stop or rebalance (its
    next owner redelivers it, so an identify of it may arrive after a newer one)."""
    return any(
        "it will be redelivered" in worker.output()
        or "did not finish before the rebalance" in worker.output()
        for worker in workers
    )


async def test_sigterm_with_the_broker_down_is_bounded_and_loses_nothing(
    names: Names, tmp_path: Path, emulator: RunningEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    async with _own_broker(names, tmp_path, emulator) as (broker, deployment, workload):
        expected = len(workload.expected.events)
        store = _rocksdb(deployment)
        worker = deployment.start_worker(batch_max_items="20", rate_limit_per_second="40", **store)
        await _until_delivered(emulator, expected // 3, [worker])
        broker.kill()
        # The bound must hold whatever faust waits for (its producer alone waits 60 s).
        seconds = await worker.stop(timeout=60)
        with capsys.disabled():
            print(f"\nSIGTERM with the broker down: stopped in {seconds:.1f} s")
        assert seconds <= 30, f"SIGTERM with the broker down took {seconds:.1f}s"
        broker.start()
        restarted = deployment.start_worker(**store)
        await _until_delivered(emulator, expected, [restarted], timeout=240)
        await _settle(emulator, workload)
        await _verdict(
            deployment, emulator, workload, "sigterm, broker down", capsys, stale_explained=True
        )


def _rocksdb(deployment: Deployment, worker: str = "worker") -> dict[str, str]:
    """The production store (RocksDB) with a data dir of the worker's own, kept across its
    restarts (each worker needs its own: a data dir in use by another worker is refused)."""
    return {"store": "rocksdb://", "data_dir": str(deployment.tmp_path / f"data-{worker}")}


@contextlib.asynccontextmanager
async def _own_broker(
    names: Names, tmp_path: Path, emulator: RunningEmulator
) -> AsyncIterator[tuple[LocalKafka, Deployment, reliability_model.Workload]]:
    """A broker of the test's own (to kill), its topics, and the workload already produced."""
    broker = LocalKafka(data_dir=tmp_path / "kafka")
    broker.start()
    try:
        deployment = Deployment(broker, names, tmp_path, emulator.url)
        await deployment.prepare()
        workload = _workload()
        await produce_workload(deployment, workload.sends)
        yield broker, deployment, workload
        await deployment.stop_all()
    finally:
        broker.close()
