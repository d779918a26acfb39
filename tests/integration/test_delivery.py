"""End to end on the real broker and the emulator: batches in → people and events out.

The emulator is pessimistic here (``docs/emulator.md``): stale identifies are applied, event ids
are remembered for a finite window, a person holds at most 300 attributes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from app.core.avro import codec
from app.dev.emulator.faults import RateLimit, parse_faults
from app.dev.emulator.server import running_emulator
from app.dev.localkafka import free_port
from tests.integration import workload
from tests.integration.conftest import Deployment, pessimistic_config
from tests.integration.support import (
    REPO,
    WorkerProcess,
    consume_until,
    inspect_emulator,
    message_count,
    produce,
    wait_for,
    worker_metrics,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from app.dev.emulator.server import RunningEmulator
    from app.dev.localkafka import LocalKafka
    from tests.integration.conftest import Names

pytestmark = pytest.mark.integration


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """The pessimistic emulator for every test here (and the ``deployment`` it feeds)."""
    async with running_emulator(pessimistic_config()) as running:
        yield running


async def _wait_for_events(
    emulator: RunningEmulator, count: int, workers: list[WorkerProcess], timeout: float = 240
) -> None:
    def enough() -> bool:
        for worker in workers:
            worker.assert_running()
        return len(emulator.state.store.events) >= count

    await wait_for(enough, timeout, f"{count} events at the emulator")


async def _gauge(worker: WorkerProcess, name: str) -> float:
    """The value of an unlabelled gauge on the worker's /metrics."""
    return (await worker_metrics(worker.env["MPCIO_WEB_PORT"]))[name, frozenset()]


def _event_ids(items: list[dict[str, Any]]) -> Counter[str]:
    return Counter(item["id"] for item in items if item["action"] in ("event", "screen"))


async def test_sample_reaches_customerio_following_the_seed(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    lines = [
        line
        for line in (REPO / "samples" / "mparticle-batches.jsonl").read_bytes().splitlines()
        if line.strip()
    ]
    keys = []
    for line in lines:
        try:
            document = orjson.loads(line)
            first = document[0] if isinstance(document, list) else document
            keys.append(str(first["mpid"]).encode())
        except (orjson.JSONDecodeError, KeyError):
            keys.append(None)
    expected = workload.expected_items(lines, deployment.settings)
    await produce(
        deployment.kafka.bootstrap,
        deployment.topics.batches.name,
        list(zip(keys, lines, strict=True)),
    )
    worker = deployment.start_worker()
    await _wait_for_events(emulator, sum(_event_ids(expected).values()), [worker])

    people = {p["email"]: p for p in (await inspect_emulator(emulator.url, "people"))["people"]}
    assert set(people) == {
        "ada@example.com",
        "bob@example.org",
        "cy@example.net",
        "dee@example.com",
        "eve@example.com",
        "fay@example.com",
    }
    assert people["ada@example.com"]["id"] == "cust-ada"
    assert people["ada@example.com"]["attributes"]["first_name"] == "Ada"
    assert people["bob@example.org"]["id"] == "cust-bob"  # identity change updated the person
    assert "newsletter" not in people["bob@example.org"]["attributes"]  # deleted attribute
    assert people["dee@example.com"]["unsubscribed"] is True  # opt-in does not resubscribe
    events = (await inspect_emulator(emulator.url, "events"))["events"]
    assert Counter(e["id"] for e in events) == _event_ids(expected)
    names = {e["name"] for e in events}
    assert "Add_To_Cart" in names
    assert all(isinstance(e["timestamp"], int) for e in events)
    dead = await consume_until(
        deployment.kafka.bootstrap,
        deployment.topics.deadletter.name,
        lambda rs: len(rs) >= 3,
        workers=[worker],
    )
    assert len(dead) == 3
    assert emulator.state.stats()["requests_by_status"].keys() == {"200"}


async def test_5xx_burst_and_429_storm_lose_and_duplicate_nothing(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    records = workload.batches(users=60, batches_per_user=4, events_per_batch=5)
    expected = workload.expected_items([value for _, value in records], deployment.settings)
    rules, _ = parse_faults(
        [
            {"kind": "status", "status": 503, "count": 4},
            {"kind": "status", "status": 500, "count": 2},
            {"kind": "throttle", "retry_after": 1, "count": 2},
            {"kind": "throttle", "count": 4},
            {"kind": "drop", "count": 2},
        ]
    )
    emulator.faults.add(rules)
    await produce(deployment.kafka.bootstrap, deployment.topics.batches.name, records)
    worker = deployment.start_worker(batch_max_items="50")
    await _wait_for_events(emulator, sum(_event_ids(expected).values()), [worker])
    await asyncio.sleep(0)  # let the emulator finish bookkeeping of the last request

    events = (await inspect_emulator(emulator.url, "events"))["events"]
    assert Counter(e["id"] for e in events) == _event_ids(expected)  # nothing lost or doubled
    stats = emulator.state.stats()
    faults = stats["faults_injected"]
    assert sum(faults.values()) == 14, faults
    people = (await inspect_emulator(emulator.url, "people"))["people"]
    assert len(people) == 54  # 60 users, every 10th without email
    assert all(p["attributes"]["tier"] == 1 for p in people)  # latest attributes won
    assert await message_count(deployment.kafka.bootstrap, deployment.topics.deadletter.name) == 0


async def test_poison_item_is_dead_lettered_and_the_rest_delivered(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    good = [
        {
            "type": "person",
            "identifiers": {"id": f"p{i}"},
            "action": "event",
            "name": "ok",
            "id": f"01KB76YVZ81KCWPR9P11ZZAW{i:02d}",
            "timestamp": 1764400000,
        }
        for i in range(10)
    ]
    poison = {
        "type": "person",
        "identifiers": {"id": "p1", "email": "two@ids.example"},
        "action": "event",
        "name": "x",
        "id": "01KB76YVZ81KCWPR9P11ZZAWZZ",
    }
    items = [*good[:5], poison, *good[5:]]
    value = codec("operation_batch").encode(
        {
            "mpid": "1",
            "source_topic": "test",
            "source_partition": 0,
            "source_offset": 0,
            "ingested_at_ms": int(time.time() * 1000),
            "operations": [
                {"action": i["action"], "person_id": "p", "item": orjson.dumps(i)} for i in items
            ],
        }
    )
    await produce(deployment.kafka.bootstrap, deployment.topics.operations.name, [(b"1", value)])
    worker = deployment.start_worker()
    dead = await consume_until(
        deployment.kafka.bootstrap,
        deployment.topics.deadletter.name,
        lambda rs: len(rs) >= 1,
        workers=[worker],
    )
    letter = codec("dead_letter").decode(dead[0].value)
    assert letter["reason"] == "customerio_rejected_item"
    assert letter["http_status"] == 207
    assert orjson.loads(letter["payload"]) == poison
    assert letter["stage"] == "sink"
    await _wait_for_events(emulator, 10, [worker])
    assert sorted(
        e["id"] for e in (await inspect_emulator(emulator.url, "events"))["events"]
    ) == sorted(i["id"] for i in good)


async def test_bad_credentials_stop_delivery_then_fixed_key_delivers_backlog(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    records = workload.batches(users=20, batches_per_user=2, events_per_batch=3)
    expected = workload.expected_items([value for _, value in records], deployment.settings)
    await produce(deployment.kafka.bootstrap, deployment.topics.batches.name, records)
    bad = deployment.start_worker(customerio_api_key="wrong-key")
    await wait_for(
        lambda: emulator.state.stats()["requests_by_status"].get("401", 0) >= 1,
        60,
        "a 401 from the emulator",
    )
    await wait_for(lambda: "delivery stopped" in bad.output(), 30, "the fatal-stop log line")
    bad.assert_running()  # stopped delivering, not crashed
    assert emulator.state.store.events == []
    assert await bad.stop() < 30
    assert await message_count(deployment.kafka.bootstrap, deployment.topics.deadletter.name) == 0

    good = deployment.start_worker()
    await _wait_for_events(emulator, sum(_event_ids(expected).values()), [good])
    events = (await inspect_emulator(emulator.url, "events"))["events"]
    assert Counter(e["id"] for e in events) == _event_ids(expected)


async def test_steady_load_fills_requests_and_respects_the_rate_limit(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    records = workload.batches(users=200, batches_per_user=5, events_per_batch=10)
    expected = workload.expected_items([value for _, value in records], deployment.settings)
    await produce(deployment.kafka.bootstrap, deployment.topics.batches.name, records)
    began = time.monotonic()
    worker = deployment.start_worker(rate_limit_per_second="5", batch_max_items="500")
    await _wait_for_events(emulator, sum(_event_ids(expected).values()), [worker], timeout=300)
    took = time.monotonic() - began
    requests = [
        r
        for r in (await inspect_emulator(emulator.url, "requests"))["requests"]
        if r["path"] == "/api/v2/batch"
    ]
    items_per_request = sum(r["items"] for r in requests) / len(requests)
    print(
        f"\nsteady load: {len(requests)} requests, {items_per_request:.0f} items per request, "
        f"max {emulator.state.stats()['max_requests_per_second']} requests in any second"
    )
    assert items_per_request >= 100
    # An upper bound a busy machine cannot break: no request can be sent before the worker
    # started, and the limiter spaces them >= 1/5 s apart. (The emulator's busiest second is
    # measured at arrival, where a stalled event loop bunches requests: a figure, not a test.)
    assert len(requests) <= 5 * took + 1, (len(requests), took)


async def test_two_workers_share_the_workspace_rate_limit(
    kafka: LocalKafka, names: Names, tmp_path: Path
) -> None:
    # Customer.io's limit is per workspace: two workers together must stay inside it. The
    # emulator's token bucket answers 429 once more than 10 requests/s arrive on average.
    config = pessimistic_config(rate_limit=RateLimit(10))
    async with running_emulator(config) as emulator:
        deployment = Deployment(kafka, names, tmp_path, emulator.url)
        await deployment.prepare()
        records = workload.batches(users=120, batches_per_user=3, events_per_batch=3)
        expected = workload.expected_items([value for _, value in records], deployment.settings)
        await produce(kafka.bootstrap, deployment.topics.batches.name, records)
        began = time.monotonic()
        workers = [
            deployment.start_worker(
                rate_limit_per_second="10", batch_max_items="10", web_port=str(free_port())
            )
            for _ in range(2)
        ]
        try:
            await _wait_for_events(emulator, sum(_event_ids(expected).values()), workers)
            took = time.monotonic() - began
            shares = [
                await _gauge(worker, "mpcio_sink_rate_limit_per_second") for worker in workers
            ]
        finally:
            await deployment.stop_all()
        requests = [
            r
            for r in (await inspect_emulator(emulator.url, "requests"))["requests"]
            if r["path"] == "/api/v2/batch"
        ]
        arrivals = [r["received_at"] for r in requests]
        print(
            f"\ntwo workers: {len(requests)} requests in {took:.1f} s, shares {shares} "
            f"requests/s, {len(requests) / max(max(arrivals) - min(arrivals), 1e-9):.1f} "
            "requests/s at the emulator (limit 10)"
        )
        assert emulator.state.stats()["requests_by_status"].get("429", 0) == 0
        assert sum(shares) == pytest.approx(10)  # both hold partitions: 10 split between them
        assert all(0 < share < 10 for share in shares)
        assert len(requests) <= 10 * took + 2  # can't be broken by a busy machine
        assert Counter(e.id for e in emulator.state.store.events) == _event_ids(expected)
