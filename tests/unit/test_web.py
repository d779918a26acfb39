"""The pure parts of the worker's web views and gauges: readiness, the user view, lag."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web as aiohttp_web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Gauge

from app.core.state import FirstSeen, UserState, decode_state, encode_state
from app.masking import Masker
from app.metrics import LagGauge, build_labels, partition_lag
from app.settings import load_settings
from app.web import (
    FAUST_PLACEHOLDER_ROUTES,
    Access,
    Readiness,
    access_middleware,
    decide_access,
    decide_readiness,
    kafka_partition,
    not_found_json,
    user_answer,
    user_json,
)

RUNNING = {"ingest_batches": "running", "ingest_audiences": "running"}


def readiness_when(**changes: object) -> Readiness:
    inputs: dict[str, object] = {
        "joined": True,
        "rebalancing": False,
        "input_partitions": 4,
        "agents": RUNNING,
        "forwarding_enabled": True,
        "sink_state": "running",
        "sink_joined": True,
        "sink_partitions": 4,
        "sink_stopped_reason": None,
        **changes,
    }
    return decide_readiness(**inputs)  # type: ignore[arg-type]


def ready_when(**changes: object) -> tuple[bool, tuple[str, ...]]:
    readiness = readiness_when(**changes)
    return readiness.ready, readiness.reasons


def test_ready_when_everything_runs() -> None:
    assert ready_when() == (True, ())
    assert readiness_when().as_json() == {
        "ready": True,
        "status": "active",
        "input_partitions": 4,
        "operations_partitions": 4,
    }


def test_a_surplus_replica_without_partitions_is_ready_and_says_standby() -> None:
    readiness = readiness_when(input_partitions=0, sink_partitions=0)
    assert readiness.ready
    body = readiness.as_json()
    assert body["status"] == "standby"
    assert (body["input_partitions"], body["operations_partitions"]) == (0, 0)
    assert "more workers than partitions" in body["detail"]
    assert "reason" not in body


def test_a_worker_delivering_without_input_partitions_is_active() -> None:
    assert readiness_when(input_partitions=0, sink_partitions=2).status == "active"
    assert readiness_when(input_partitions=0, forwarding_enabled=False).status == "standby"


def test_not_ready_before_joining_the_group() -> None:
    ready, reasons = ready_when(joined=False, input_partitions=0)
    assert not ready
    assert reasons == ("joining the consumer group: no partition assignment yet",)
    assert readiness_when(joined=False).status == "starting"
    ready, reasons = ready_when(sink_joined=False, sink_partitions=0)
    assert not ready
    assert reasons == ("sink joining its consumer group: no partition assignment yet",)


def test_rebalancing_stays_ready_and_says_so() -> None:
    readiness = readiness_when(rebalancing=True, input_partitions=0)
    assert readiness.ready
    assert readiness.status == "rebalancing"


def test_not_ready_while_a_producer_waits_for_the_transaction_coordinator() -> None:
    # a rebalance whose transactional producers get no producer id never ends: not ready
    assert ready_when(rebalancing=True, coordinator_wait_seconds=29.0) == (True, ())
    ready, reasons = ready_when(rebalancing=True, coordinator_wait_seconds=31.0)
    assert not ready
    assert reasons == (
        (
            "waiting 31 s for Kafka's transaction coordinator (InitProducerId): is "
            "__transaction_state creatable and in sync?"
        ),
    )


def test_not_ready_when_an_agent_is_not_running() -> None:
    ready, reasons = ready_when(agents={**RUNNING, "ingest_erasure": "crashed"})
    assert not ready
    assert reasons == ("agent ingest_erasure is crashed",)
    assert not ready_when(agents={})[0]


def test_not_ready_when_delivery_is_stopped_and_says_why() -> None:
    ready, reasons = ready_when(sink_stopped_reason="Customer.io answered 401")
    assert not ready
    assert reasons == ("delivery stopped: Customer.io answered 401",)


def test_not_ready_when_the_sink_is_missing_or_stopping() -> None:
    assert ready_when(sink_state=None)[1] == ("sink not started",)
    assert ready_when(sink_state="stopping")[1] == ("sink is stopping",)


def test_sink_is_ignored_when_forwarding_is_disabled() -> None:
    readiness = readiness_when(
        forwarding_enabled=False, sink_state=None, sink_joined=False, sink_partitions=0
    )
    assert readiness.ready
    assert "operations_partitions" not in readiness.as_json()


def test_readiness_json_names_the_first_reason() -> None:
    body = readiness_when(
        joined=False, agents={"a": "init"}, forwarding_enabled=False, sink_state=None
    ).as_json()
    assert body["ready"] is False
    assert body["status"] == "starting"
    assert body["reason"] == body["reasons"][0]
    assert len(body["reasons"]) == 2


def test_user_view_masks_every_personal_value_by_default() -> None:
    state = UserState(
        email="Ada@Example.com",
        customer_id="cust-ada",
        person_id="ada@example.com",
        first_name="Ada",
        last_name="Lovelace",
        attributes={"plan": "pro", "age": 36},
        audiences={"123": "VIPs"},
        opted_out=True,
        opt_out_at_ms=1_764_400_000_000,
        first_seen={"ios": FirstSeen(1_764_000_000_000, install=True)},
        last_device_type="ios",
        last_seen_ms=1_764_400_000_500,
        sent_digest=b"x",
    )
    masker = Masker("k" * 32)
    view = user_json("42", decode_state(encode_state(state)), masker)
    assert view["email"] == masker.email("ada@example.com")
    assert view["person_id"] == masker.email("ada@example.com")
    assert view["customer_id"] == masker.value("cust-ada")
    assert view["first_name"] == masker.value("Ada")
    assert view["attributes"] == {"plan": masker.value("pro"), "age": masker.value(36)}
    text = orjson.dumps(view).decode()
    for raw in ("@", "Ada", "Lovelace", "cust-ada", '"pro"', "36"):
        assert raw not in text
    assert view["audiences"] == {"123": "VIPs"}
    assert view["masked"] is True
    unmasked = user_json("42", decode_state(encode_state(state)), None)
    assert unmasked["first_name"] == "Ada"
    assert unmasked["attributes"] == {"plan": "pro", "age": 36}


def test_metrics_and_health_are_open_everything_else_needs_the_token() -> None:
    token = "t" * 24
    assert decide_access("/metrics", [], None) is Access.OPEN
    assert decide_access("/health/ready", [], token) is Access.OPEN
    assert decide_access("/users/{mpid}", [], None) is Access.OFF
    assert decide_access("/table/{name}/", [f"Bearer {token}"], None) is Access.OFF
    assert decide_access("/users/{mpid}", [], token) is Access.UNAUTHORIZED
    assert decide_access("/users/{mpid}", ["Bearer wrong"], token) is Access.UNAUTHORIZED
    assert decide_access("/users/{mpid}", [f"Basic {token}"], token) is Access.UNAUTHORIZED
    assert decide_access("/", [f"bearer  {token} "], token) is Access.ALLOWED
    assert decide_access("/users/{mpid}", [f"Bearer {token}"], token) is Access.ALLOWED
    # no route: the token is needed first, then it is 404; off without a token
    assert decide_access(None, [], token) is Access.UNAUTHORIZED
    assert decide_access(None, [f"Bearer {token}"], token) is Access.NOT_FOUND
    assert decide_access(None, [], None) is Access.OFF
    # exactly one header, as at the ingress: a second one, even after the right one, is refused
    right, wrong = f"Bearer {token}", "Bearer wrong"
    assert decide_access("/users/{mpid}", [right, wrong], token) is Access.UNAUTHORIZED
    assert decide_access("/users/{mpid}", [right, right], token) is Access.UNAUTHORIZED


@pytest.mark.parametrize(
    ("mpid", "status", "shown"),
    [
        ("42", 200, "42"),
        ("0042", 200, "42"),  # the table's key is canonical
        ("-9223372036854775808", 404, "-9223372036854775808"),
        ("9223372036854775807", 404, "9223372036854775807"),
        ("9223372036854775808", 400, "9223372036854775808"),  # past int64: no such key
        ("-9223372036854775809", 400, "-9223372036854775809"),
        ("99999999999999999999", 400, "99999999999999999999"),
        ("1e3", 400, "1e3"),
        ("+42", 400, "+42"),
        ("-", 400, "-"),
    ],
)
def test_user_view_answers_by_mpid(mpid: str, status: int, shown: str) -> None:
    table = {b"42": encode_state(UserState(email="a@example.com"))}
    answer, body = user_answer(mpid, table.get, lambda: [1, 0], 4, Masker("k" * 32))
    assert (answer, body["mpid"]) == (status, shown)
    if status == 404:
        assert body["partitions_held"] == [0, 1]


def test_user_view_of_a_corrupt_state_is_500_without_the_bytes() -> None:
    answer, body = user_answer("7", {b"7": b"\xc3\x01garbage"}.get, list, 4, None)
    assert answer == 500
    assert body["error"] == "stored state is corrupt"


def test_user_view_masks_a_customer_id_person_id_and_keeps_empty_fields() -> None:
    masker = Masker("k" * 32)
    view = user_json("7", UserState(customer_id="c-7", person_id="c-7"), masker)
    assert view["person_id"] == view["customer_id"] == masker.value("c-7")
    assert view["email"] is None
    assert view["last_seen"] is None
    assert view["identify_sent"] is False


def test_not_found_says_the_table_is_partitioned() -> None:
    body = not_found_json("10001", 4, {3, 1})
    assert "only holds the partitions assigned to it" in body["detail"]
    assert body["partitions_held"] == [1, 3]
    assert body["partition"] == kafka_partition(b"10001", 4)


def test_kafka_partition_matches_the_java_default_partitioner() -> None:
    # Java compatibility vectors (kafka-python's test of the same partitioner, 1000 partitions).
    vectors = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}
    assert {key: kafka_partition(key, 1000) for key in vectors} == vectors


def test_partition_lag() -> None:
    assert partition_lag(100, 40) == 60
    assert partition_lag(100, 100) == 0
    assert partition_lag(100, 120) == 0  # highwater from an older fetch than the position
    assert partition_lag(None, 3) is None
    assert partition_lag(5, None) is None


def test_lag_gauge_removes_partitions_no_longer_assigned() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("lag", "test", ["topic", "partition"], registry=registry)
    lag = LagGauge(gauge)
    lag.update({("in", 0): 5, ("in", 1): 7})
    assert registry.get_sample_value("lag", {"topic": "in", "partition": "1"}) == 7
    lag.update({("in", 0): 0})
    assert registry.get_sample_value("lag", {"topic": "in", "partition": "0"}) == 0
    assert registry.get_sample_value("lag", {"topic": "in", "partition": "1"}) is None


def test_build_labels_carry_settings_but_no_secret() -> None:
    settings = load_settings(
        customerio_site_id="site-secretish",
        customerio_api_key="key-very-secret",
        customerio_url="http://127.0.0.1:9",
        customerio_region="eu",
        send_created_at=True,
        topic_partitions=6,
    )
    labels = build_labels(settings)
    assert labels["region"] == "eu"
    assert labels["send_created_at"] == "true"
    assert labels["include_user_attributes"] == "true"
    assert labels["partitions"] == "6"
    text = " ".join(labels.values())
    for secret in ("key-very-secret", "site-secretish"):
        assert secret not in text


TOKEN = "t" * 24
ROLES = {"none": {}, "token": {"Authorization": f"Bearer {TOKEN}"}}


async def _statuses(
    guard_token: str | None, paths: list[str], roles: dict[str, Any] = ROLES
) -> dict[tuple[str, str], int]:
    """The status of each path for each role (its request headers) on a server with
    ``/metrics``, ``/users/{mpid}`` and a placeholder ``/`` that the guard hides (faust's
    index while its views are off)."""

    async def ok(request: aiohttp_web.Request) -> aiohttp_web.Response:
        return aiohttp_web.Response(text="secret state")

    app = aiohttp_web.Application(
        middlewares=[access_middleware(guard_token, FAUST_PLACEHOLDER_ROUTES)]
    )
    app.router.add_get("/metrics", ok)
    app.router.add_get("/users/{mpid}", ok)
    app.router.add_get("/", ok)
    statuses = {}
    async with TestClient(TestServer(app)) as client:
        for path in paths:
            for role, headers in roles.items():
                async with client.get(path, headers=headers) as answer:
                    statuses[path, role] = answer.status
                    if answer.status != 200:
                        assert "secret state" not in await answer.text()
    return statuses


GUARD_CASES = [
    # path, status without a token, status with the token: (guard token set, no guard token)
    ("/metrics", (200, 200), (200, 200)),
    ("/users/1", (401, 200), (404, 404)),
    ("/health/../users/1", (401, 200), (404, 404)),
    ("/users/%31", (401, 200), (404, 404)),
    # a URL no route serves answers like a guarded route: a scan cannot tell them apart
    ("/nope", (401, 404), (404, 404)),
    ("/users", (401, 404), (404, 404)),
    # faust's placeholder index does not exist while its views are off
    ("/", (401, 404), (404, 404)),
    # under the open prefix, an unknown URL is aiohttp's own 404
    ("/health/nope", (404, 404), (404, 404)),
]


async def test_the_guard_wants_exactly_one_authorization_header() -> None:
    # as the ingress: a proxy or client that adds a second header must not be let through
    # because the first one happens to be right
    right, wrong = ("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer wrong")
    roles = {"right-then-wrong": [right, wrong], "twice-right": [right, right], "one": [right]}
    statuses = await _statuses(TOKEN, ["/users/1"], roles)
    assert statuses == {
        ("/users/1", "right-then-wrong"): 401,
        ("/users/1", "twice-right"): 401,
        ("/users/1", "one"): 200,
    }


async def test_the_guard_applies_to_the_matched_route_whatever_the_url_spelling() -> None:
    paths = [path for path, _, _ in GUARD_CASES]
    guarded, off = await _statuses(TOKEN, paths), await _statuses(None, paths)
    for path, with_guard, without_guard in GUARD_CASES:
        assert (guarded[path, "none"], guarded[path, "token"]) == with_guard, path
        assert (off[path, "none"], off[path, "token"]) == without_guard, path
