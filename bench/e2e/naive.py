"""The per-event forwarder: how a naive integration (and the v1 peers) deliver.

``python -m bench.e2e.naive``, configured by the JSON in ``$BENCH_CONFIG``. A plain aiokafka
consumer (own group, no auto-commit) reads the mParticle batches; for each batch it sends, one
awaited request at a time, ``PUT /api/v1/customers/{id}`` the first time it sees a user (and
``{"unsubscribed": true}`` on an opt-out), then ``POST /api/v1/customers/{id}/events`` per
event, and commits the record's offset after the batch. Same forwarding rules as ours where
they decide *which* events go (users with an email, not opted out; custom events and screen
views), none of the batching. Retries: 429, 5xx and transport errors are retried with
exponential back-off (50 ms doubling to 2 s); other 4xx are skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

Request = tuple[str, str, bytes]


@dataclass
class NaiveState:
    seen: set[Any] = field(default_factory=set)
    opted_out: set[Any] = field(default_factory=set)


def _identities(batch: dict[str, Any]) -> tuple[str | None, str | None]:
    raw = batch.get("user_identities")
    email = customer_id = None
    if isinstance(raw, list):
        for entry in raw:
            if entry.get("identity_type") == "email":
                email = entry.get("identity")
            elif entry.get("identity_type") == "customer_id":
                customer_id = entry.get("identity")
    elif isinstance(raw, dict):
        email, customer_id = raw.get("email"), raw.get("customer_id")
    return email, customer_id


def plan(batch: dict[str, Any], state: NaiveState) -> list[Request]:
    """The requests one batch causes, in order (pure apart from ``state``)."""
    email, customer_id = _identities(batch)
    if not email:
        return []
    mpid = batch.get("mpid")
    person = quote(str(customer_id or email), safe="")
    requests: list[Request] = []
    if mpid not in state.seen:
        state.seen.add(mpid)
        attributes = {"email": email}
        for name, value in (batch.get("user_attributes") or {}).items():
            attributes[name.lstrip("$").lower() if name.startswith("$") else name] = value
        requests.append(("PUT", f"/api/v1/customers/{person}", orjson.dumps(attributes)))
    fallback = batch.get("timestamp_unixtime_ms") or 0
    for event in batch.get("events") or []:
        kind, data = event.get("event_type"), event.get("data") or {}
        if kind == "opt_out":
            if data.get("is_opted_out"):
                state.opted_out.add(mpid)
                unsubscribe = orjson.dumps({"unsubscribed": True})
                requests.append(("PUT", f"/api/v1/customers/{person}", unsubscribe))
            else:
                state.opted_out.discard(mpid)
            continue
        if mpid in state.opted_out or kind not in {"custom_event", "screen_view"}:
            continue
        name = data.get("event_name") if kind == "custom_event" else data.get("screen_name")
        if not name:
            continue
        body: dict[str, Any] = {
            "name": name,
            "data": data.get("custom_attributes") or {},
            "timestamp": (data.get("timestamp_unixtime_ms") or fallback) // 1000,
        }
        if kind == "screen_view":
            body["type"] = "screen"
        requests.append(("POST", f"/api/v1/customers/{person}/events", orjson.dumps(body)))
    return requests


async def send(session: aiohttp.ClientSession, base: str, request: Request) -> None:
    method, path, body = request
    backoff = 0.05
    while True:
        try:
            async with session.request(method, base + path, data=body) as response:
                await response.read()
                if response.status < 400 or (
                    response.status < 500 and response.status not in {408, 429}
                ):
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


async def run(config: dict[str, Any]) -> None:
    consumer = AIOKafkaConsumer(
        config["source"],
        bootstrap_servers=config["bootstrap"],
        group_id=config["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    state = NaiveState()
    await consumer.start()
    try:
        async with aiohttp.ClientSession(
            auth=aiohttp.BasicAuth(config["site_id"], config["api_key"]),
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(limit=1),
        ) as session:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=200)
                for tp, records in fetched.items():
                    for record in records:
                        if stop.is_set():
                            return
                        batch = orjson.loads(record.value or b"{}")
                        for request in plan(batch, state):
                            await send(session, config["url"], request)
                        await consumer.commit(
                            {TopicPartition(tp.topic, tp.partition): record.offset + 1}
                        )
    finally:
        await consumer.stop()


def main() -> None:
    asyncio.run(run(json.loads(os.environ["BENCH_CONFIG"])))


if __name__ == "__main__":
    main()
