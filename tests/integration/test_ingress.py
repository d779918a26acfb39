"""``mpcio ingress`` on the real broker, with the worker and the emulator (issue 17).

mParticle's published Firehose example messages (made-up values) are POSTed to the ingress
process; the worker turns them into Customer.io people in the emulator. Refused requests must
leave the audience and erasure topics exactly as they were.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from app.dev.localkafka import free_port
from tests.integration.support import (
    WorkerProcess,
    inspect_emulator,
    message_count,
    produce,
    wait_for,
)

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "firehose"
SECRET = "ingress-test-secret"
AUTH = {"Authorization": f"Bearer {SECRET}"}
T = 1_764_400_000_000


def _example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    return loaded


def _batch(mpid: str, email: str, customer_id: str) -> tuple[bytes, bytes]:
    return mpid.encode(), orjson.dumps(
        {
            "mpid": mpid,
            "timestamp_unixtime_ms": T,
            "user_identities": {"email": email, "customer_id": customer_id},
            "user_attributes": {"$FirstName": "Jane", "Churned": True},
        }
    )


async def _start_ingress(deployment: Deployment, tmp_path: Path) -> tuple[WorkerProcess, str]:
    port = free_port()
    env = {**deployment.env, "MPCIO_INGRESS_SECRET": SECRET, "MPCIO_INGRESS_PORT": str(port)}
    ingress = WorkerProcess(["-m", "app", "ingress"], env, tmp_path / "ingress.log").start()
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    deadline = time.monotonic() + 60
    while not await healthy():
        ingress.assert_running()
        assert time.monotonic() < deadline, "ingress did not answer /healthz within 60 s"
        await _pause()
    return ingress, url


async def _pause() -> None:
    import asyncio  # noqa: PLC0415

    await asyncio.sleep(0.1)


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers={"Content-Type": "application/json", **headers}
        ) as response,
    ):
        return response.status, await response.json()


async def _ends(deployment: Deployment) -> tuple[int, int]:
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    return (
        await message_count(kafka, topics.audiences.name),
        await message_count(kafka, topics.erasure.name),
    )


async def test_firehose_messages_reach_customerio_and_refusals_change_nothing(
    deployment: Deployment, emulator: RunningEmulator, tmp_path: Path
) -> None:
    worker = deployment.start_worker(one_attribute_per_audience="true")
    ingress, url = await _start_ingress(deployment, tmp_path)
    try:
        await _scenario(deployment, emulator, url)
        worker.assert_running()
        ingress.assert_running()
    finally:
        if ingress.process is not None and ingress.process.poll() is None:
            await ingress.stop()


async def _scenario(deployment: Deployment, emulator: RunningEmulator, url: str) -> None:
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    store = emulator.state.store

    # The example's mpid 12345 (known by batches, email in state) and a second user.
    await produce(
        kafka,
        topics.batches.name,
        [
            _batch("12345", "jane.doe@example.com", "c-jane"),
            _batch("777", "Bob@Example.com", "c-bob"),
        ],
    )
    await wait_for(lambda: store.people_count == 2, 90, "the two people")

    def attributes(person_id: str) -> dict[str, Any]:
        person = store.find(("id", person_id))
        return {} if person is None else dict(person.attributes)

    # 1. The published membership change: join 456, attribute_update on 789, leave 654.
    status, body = await _post(url, orjson.dumps(_example("AudienceMembershipChangeRequest")), AUTH)
    assert (status, body["type"]) == (200, "audience_membership_change_response")
    await wait_for(
        lambda: attributes("c-jane").get("SegmentMembership") == "'456'", 90, "joined 456"
    )
    jane = attributes("c-jane")
    assert jane["In Example Audience Name"] is True
    assert jane["Some Key"] == "9999999"
    assert "Churned" not in jane  # deleted by the attribute_update

    # 2. Leaving the audience (action delete).
    leave = _example("AudienceMembershipChangeRequest")
    leave["user_profiles"][0]["audiences"] = [
        {"audience_id": 456, "audience_name": "Example Audience Name", "action": "delete"}
    ]
    status, _ = await _post(url, orjson.dumps(leave), AUTH)
    assert status == 200
    await wait_for(
        lambda: attributes("c-jane").get("In Example Audience Name") is False, 90, "left 456"
    )
    assert "SegmentMembership" not in attributes("c-jane")  # sent empty: Customer.io removes it

    # 3. Refusals: each gets its status and leaves both topics unchanged.
    before = await _ends(deployment)
    invalid = copy.deepcopy(_example("AudienceMembershipChangeRequest"))
    invalid["user_profiles"][0]["audiences"][0]["action"] = "join"
    refusals = [
        (orjson.dumps(_example("DsrProcessingRequest")), {"Authorization": "Bearer nope"}, 401),
        (b'{"type": "dsr_processing_request", ', AUTH, 400),
        (orjson.dumps(invalid), AUTH, 400),
    ]
    for body_bytes, headers, expected in refusals:
        status, answer = await _post(url, body_bytes, headers)
        assert status == expected, answer
    assert await _ends(deployment) == before

    # 4. The published DSR (raw email) erases Jane; a hashed one (md5 of the trimmed,
    #    lower-case email, as mParticle hashes) erases Bob. Every identifier is deleted.
    status, body = await _post(url, orjson.dumps(_example("DsrProcessingRequest")), AUTH)
    assert (status, body["type"]) == (200, "dsr_processing_response")
    hashed = _example("DsrProcessingRequest")
    hashed["subject_identities"] = {
        "email": {"encoding": "md5", "value": hashlib.md5(b"bob@example.com").hexdigest()}
    }
    status, _ = await _post(url, orjson.dumps(hashed), AUTH)
    assert status == 200
    try:
        await wait_for(lambda: store.people_count == 0, 120, "both people deleted")
    except AssertionError as exc:  # say what did happen
        people = await inspect_emulator(emulator.url, "people")
        dead = await message_count(kafka, topics.deadletter.name)
        raise AssertionError(f"{exc}; people: {people}; dead letters: {dead}") from None
    deleted = {person.id for person in store.deleted}
    assert {"c-jane", "c-bob"} <= deleted
    assert await message_count(kafka, topics.deadletter.name) == 0

    metrics = await _metrics(url)
    assert 'mpcio_ingress_rejected_total{reason="unauthorized"} 1.0' in metrics
    assert 'mpcio_ingress_rejected_total{reason="schema_invalid"} 1.0' in metrics
    assert 'mpcio_ingress_rejected_total{reason="malformed_json"} 1.0' in metrics
    assert "mpcio_ingress_profiles_total 2.0" in metrics
    people = (await inspect_emulator(emulator.url, "people"))["people"]
    assert all(p["deleted"] for p in people)


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        return await response.text()


def _membership(index: int, profiles: int) -> bytes:
    """A membership change of ``profiles`` distinct users joining one audience."""
    return orjson.dumps(
        {
            "type": "audience_membership_change_request",
            "id": f"load-{index}",
            "timestamp_ms": T + index,
            "firehose_version": "2.8.1",
            "account": {"account_id": 1},
            "user_profiles": [
                {
                    "mpid": str(index * profiles + n + 1),
                    "user_identities": [{"type": "email", "encoding": "md5", "value": "0" * 32}],
                    "audiences": [{"audience_id": 1, "audience_name": "Load", "action": "add"}],
                }
                for n in range(profiles)
            ],
        }
    )


async def test_concurrent_posts_are_all_durable_once_and_a_taken_port_starts_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    """50 concurrent POSTs of 100 profiles against a healthy broker: every one 200, each
    profile on the topic exactly once, /healthz answering meanwhile. Then a second ingress on
    the same port: exit 2 with one line, and its topics were never created."""
    import asyncio  # noqa: PLC0415

    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415

    ingress, url = await _start_ingress(deployment, tmp_path)
    try:
        async with aiohttp.ClientSession() as session:

            async def post(index: int) -> int:
                headers = {"Content-Type": "application/json", **AUTH}
                async with session.post(
                    url, data=_membership(index, 100), headers=headers
                ) as response:
                    return response.status

            posts = asyncio.gather(*(post(i) for i in range(50)))
            async with session.get(f"{url}/healthz") as health:
                assert health.status == 200
            assert await posts == [200] * 50
        audiences = deployment.topics.audiences.name
        assert await message_count(deployment.kafka.bootstrap, audiences) == 5000

        port = url.rsplit(":", 1)[1]
        env = {
            **deployment.env,
            "MPCIO_INGRESS_SECRET": SECRET,
            "MPCIO_INGRESS_PORT": port,
            "MPCIO_TOPIC_AUDIENCES": "never-created-audiences",
            "MPCIO_TOPIC_ERASURE": "never-created-erasure",
        }
        second = WorkerProcess(["-m", "app", "ingress"], env, tmp_path / "second.log").start()
        assert second.process is not None
        assert await asyncio.to_thread(second.process.wait, 120) == 2
        lines = (tmp_path / "second.log").read_text().strip().splitlines()
        assert len(lines) == 1, lines
        assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
        admin = AIOKafkaAdminClient(bootstrap_servers=deployment.kafka.bootstrap)
        await admin.start()
        try:
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        assert not {"never-created-audiences", "never-created-erasure"} & topics
    finally:
        if ingress.process is not None and ingress.process.poll() is None:
            await ingress.stop()
