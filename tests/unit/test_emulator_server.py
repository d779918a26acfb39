"""Emulator over HTTP, in-process: auth, answers, workspace effects, faults, inspection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.customerio.limits import MAX_ITEM_BYTES, MAX_REQUEST_BYTES
from app.dev.emulator import (
    EmulatorConfig,
    Fault,
    RateLimit,
    RunningEmulator,
    parse_faults,
    running_emulator,
)
from app.dev.emulator.recording import RequestRecord
from app.dev.emulator.server import SHUTDOWN_TIMEOUT_SECONDS
from app.reference import CUSTOMERIO_OPENAPI_FILE, load_json
from tests.unit.conftest import API_KEY, SITE_ID

AUTH = {"Authorization": aiohttp.encode_basic_auth(SITE_ID, API_KEY)}
ULIDS = [f"01HZX3B9Q5K8M2N4P6R7S8T9{suffix}" for suffix in ("V0", "V1", "V2", "V3", "V4", "V5")]
TS = 1_700_000_000

TRACK_ROUTES = [
    ("GET", "/auth"),
    ("GET", "/api/v1/accounts/region"),
    ("POST", "/api/v2/batch"),
    ("POST", "/api/v2/entity"),
    ("PUT", "/api/v1/customers/42"),
    ("DELETE", "/api/v1/customers/42"),
    ("POST", "/api/v1/customers/42/events"),
    ("POST", "/api/v1/customers/42/suppress"),
    ("POST", "/api/v1/customers/42/unsuppress"),
    ("GET", "/api/v2/no-such-route"),
]


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any, Any]:
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    async with http.request(
        method,
        url,
        data=data,
        headers=AUTH if headers is None else headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        text = await response.read()
        return response.status, (orjson.loads(text) if text else None), response.headers


async def batch(
    http: aiohttp.ClientSession, emulator: RunningEmulator, items: list[Any]
) -> tuple[int, Any]:
    status, body, _ = await call(http, "POST", emulator.url + "/api/v2/batch", {"batch": items})
    return status, body


async def inspect(http: aiohttp.ClientSession, emulator: RunningEmulator, what: str) -> Any:
    async with http.get(f"{emulator.url}/_emulator/{what}") as response:
        assert response.status == 200
        return await response.json()


def identify(who: dict[str, str], **attributes: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": who, "action": "identify", "attributes": attributes}


def event(
    who: dict[str, str], event_id: str, name: str = "Add_To_Cart", **data: Any
) -> dict[str, Any]:
    item = {
        "type": "person",
        "identifiers": who,
        "action": "event",
        "name": name,
        "id": event_id,
        "timestamp": TS,
    }
    if data:
        item["attributes"] = data
    return item


ANN = {"email": "ann@example.com"}
C1 = {"id": "c-1"}

# What app.core.transform emits, built by hand: identify (email person, then id person with the same
# email, unsubscribed, created_at, a removed attribute, a list), events and screens with ULIDs.
TRANSFORM_ITEMS = [
    identify(ANN, email="ann@example.com", first_name="Ann", last_name="Lee", city="Oslo"),
    event(ANN, ULIDS[0], attributes_sku="A1", price=3.5),
    {"type": "person", "identifiers": ANN, "action": "screen", "name": "Home", "id": ULIDS[1],
     "timestamp": TS},
    identify(C1, email="ann@example.com", first_name="Ann", created_at=TS, unsubscribed=True,
             plan="", tags=["a", "b"], score=None, ratio=1.5),
    event(C1, ULIDS[2]),
    identify(C1, email="ann@example.com", unsubscribed=False),
]  # fmt: skip


# --- authentication -------------------------------------------------------------------------------


async def test_auth_answers_200_empty_object(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    assert (await call(http, "GET", emulator.url + "/auth"))[:2] == (200, {})


BAD_CREDENTIALS = {
    "missing": {},
    "wrong key": {"Authorization": aiohttp.encode_basic_auth(SITE_ID, "nope")},
    "wrong site": {"Authorization": aiohttp.encode_basic_auth("site-2", API_KEY)},
    "not base64": {"Authorization": "Basic %%%"},
    "bearer": {"Authorization": "Bearer " + API_KEY},
}


@pytest.mark.parametrize(("method", "path"), TRACK_ROUTES)
@pytest.mark.parametrize("headers", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
async def test_every_track_route_answers_401_on_bad_credentials(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    body = {"batch": [identify(C1)]} if path == "/api/v2/batch" else identify(C1)
    status, answer, response_headers = await call(
        http, method, emulator.url + path, body, headers=headers
    )
    assert status == 401
    assert answer == {"meta": {"error": "Unauthorized request"}}
    assert response_headers["WWW-Authenticate"].startswith("Basic")
    assert emulator.state.stats()["people"] == 0


async def test_basic_scheme_is_case_insensitive(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    token = AUTH["Authorization"].removeprefix("Basic ")
    status, _, _ = await call(
        http, "GET", emulator.url + "/auth", headers={"Authorization": "basic " + token}
    )
    assert status == 200


async def test_unknown_route_with_credentials_is_404_and_logged(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await call(http, "GET", emulator.url + "/api/v2/nothing")
    assert status == 404
    assert emulator.state.stats()["requests_by_status"] == {"404": 1}


async def test_region_reports_the_configured_workspace(http: aiohttp.ClientSession) -> None:
    async with running_emulator(
        EmulatorConfig(SITE_ID, API_KEY, region="eu", environment_id=7)
    ) as eu:
        status, body, _ = await call(http, "GET", eu.url + "/api/v1/accounts/region")
    assert (status, body) == (
        200,
        {"url": "https://track-eu.customer.io", "region": "eu", "environment_id": 7},
    )


# --- v2 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi_item_validator() -> Draft202012Validator:
    uri = "urn:customerio-track-api"
    document = load_json(CUSTOMERIO_OPENAPI_FILE)
    registry: Registry[Any] = Registry().with_resource(
        uri, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    pointer = (
        "/paths/~1api~1v2~1batch/post/requestBody/content/application~1json/schema"
        "/properties/batch/items"
    )
    return Draft202012Validator({"$ref": f"{uri}#{pointer}"}, registry=registry)


def openapi_person_examples() -> list[dict[str, Any]]:
    schemas = load_json(CUSTOMERIO_OPENAPI_FILE)["components"]["schemas"]
    names = ["identify_person", "person_event", "person_screen", "person_page", "person_delete",
             "person_suppress", "person_unsuppress", "person_add_device",
             "person_delete_device"]  # fmt: skip
    return [schemas[name]["example"] for name in names]


async def test_transform_shaped_items_are_schema_valid_and_accepted(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    openapi_item_validator: Draft202012Validator,
) -> None:
    for item in TRANSFORM_ITEMS:
        assert list(openapi_item_validator.iter_errors(item)) == [], item
    assert await batch(http, emulator, TRANSFORM_ITEMS) == (200, {})
    people = (await inspect(http, emulator, "people"))["people"]
    assert len(people) == 1
    (ann,) = people
    assert (ann["id"], ann["email"], ann["unsubscribed"]) == ("c-1", "ann@example.com", False)
    assert "plan" not in ann["attributes"]
    assert ann["attributes"]["tags"] == ["a", "b"]
    events = (await inspect(http, emulator, "events"))["events"]
    assert [(e["action"], e["id"], e["person_email"]) for e in events] == [
        ("event", ULIDS[0], "ann@example.com"),
        ("screen", ULIDS[1], "ann@example.com"),
        ("event", ULIDS[2], "ann@example.com"),
    ]
    assert events[2]["person_id"] == "c-1"


async def test_openapi_examples_are_accepted(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    examples = openapi_person_examples()
    assert await batch(http, emulator, examples) == (200, {})
    assert emulator.state.stats()["items_accepted"] == len(examples)


LIMIT_VIOLATIONS = [
    ("empty id", identify({"id": ""}), "identifiers.id"),
    ("151-byte id", identify({"id": "x" * 151}), "identifiers.id"),
    ("two identifiers", identify({"id": "1", "email": "a@b.c"}), "identifiers"),
    ("151-byte attribute name", identify(C1, **{"n" * 151: 1}), "attributes." + "n" * 151),
    ("1001-byte attribute value", identify(C1, bio="x" * 1001), "attributes.bio"),
    ("301 attributes", identify(C1, **{f"a{n}": n for n in range(301)}), "attributes"),
    ("blank event name", event(C1, ULIDS[3], name=" "), "name"),
    ("101-byte event name", event(C1, ULIDS[3], name="n" * 101), "name"),
    ("millisecond timestamp", {**event(C1, ULIDS[3]), "timestamp": TS * 1000}, "timestamp"),
    ("float timestamp", {**event(C1, ULIDS[3]), "timestamp": TS + 0.5}, "timestamp"),
    ("event id not a ULID", event(C1, "evt-1"), "id"),
    ("item over 32,000 bytes", event(C1, ULIDS[3], blob="x" * MAX_ITEM_BYTES), ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("item", "field"), [c[1:] for c in LIMIT_VIOLATIONS], ids=[c[0] for c in LIMIT_VIOLATIONS]
)
async def test_item_over_a_limit_gets_207_naming_its_index_and_the_rest_applies(
    emulator: RunningEmulator, http: aiohttp.ClientSession, item: dict[str, Any], field: str
) -> None:
    status, body = await batch(
        http, emulator, [identify({"id": "before"}), item, event({"id": "after"}, ULIDS[4])]
    )
    assert status == 207
    (error,) = body["errors"]
    assert (error["batch_index"], error["field"]) == (1, field)
    assert error["reason"]
    assert error["message"]
    stats = emulator.state.stats()
    assert (
        stats["items_accepted"],
        stats["items_rejected"],
        stats["people"],
        stats["events_stored"],
    ) == (2, 1, 2, 1)


async def test_several_invalid_items_are_each_named(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, body = await batch(http, emulator, [5, identify(C1), {"type": "object"}, identify({})])
    assert status == 207
    assert [(e["batch_index"], e["reason"]) for e in body["errors"]] == [
        (0, "invalid"), (2, "unsupported"), (3, "invalid"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", ""),
        (b"{}", "batch"),
        (b'{"batch": {}}', "batch"),
        (b"[]", "batch"),
        (
            orjson.dumps({"batch": [identify({"id": str(n)}, pad="x" * 900) for n in range(600)]}),
            "",
        ),
    ],
    ids=["malformed JSON", "no batch", "batch not an array", "not an object", "over 500,000 bytes"],
)
async def test_malformed_batch_is_400_and_applies_nothing(
    emulator: RunningEmulator, http: aiohttp.ClientSession, raw: bytes, field: str
) -> None:
    status, body, _ = await call(http, "POST", emulator.url + "/api/v2/batch", raw=raw)
    assert status == 400
    (error,) = body["errors"]
    assert error["field"] == field
    assert "batch_index" not in error
    assert emulator.state.stats()["people"] == 0
    if len(raw) > MAX_REQUEST_BYTES:
        assert error["reason"] == "too_large"


async def test_empty_batch_is_200(emulator: RunningEmulator, http: aiohttp.ClientSession) -> None:
    assert await batch(http, emulator, []) == (200, {})


async def test_entity_applies_one_item_or_answers_400(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    url = emulator.url + "/api/v2/entity"
    assert (await call(http, "POST", url, identify(C1, plan="pro")))[:2] == (200, {})
    status, body, _ = await call(http, "POST", url, event(C1, "bad-id"))
    assert (status, body["errors"][0]["field"]) == (400, "id")
    status, body, _ = await call(http, "POST", url, event(C1, ULIDS[0], blob="x" * MAX_ITEM_BYTES))
    assert (status, body["errors"][0]["reason"]) == (400, "too_large")
    status, body, _ = await call(http, "POST", url, raw=b"nope")
    assert (status, body["errors"][0]["message"]) == (400, "the body is not valid JSON")
    stats = emulator.state.stats()
    assert (
        stats["people"],
        stats["events_stored"],
        stats["items_accepted"],
        stats["items_rejected"],
    ) == (1, 0, 1, 3)


async def test_repeated_event_id_is_200_and_stored_once(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    first = event(C1, ULIDS[0], price=1)
    assert await batch(http, emulator, [first, first]) == (200, {})
    assert await batch(http, emulator, [first, event(C1, ULIDS[1])]) == (200, {})
    stats = emulator.state.stats()
    assert (stats["events_stored"], stats["duplicates_suppressed"]) == (2, 2)
    events = (await inspect(http, emulator, "events"))["events"]
    assert [e["id"] for e in events] == ULIDS[:2]


async def test_identify_by_id_with_known_email_updates_that_person(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await batch(http, emulator, [identify(ANN, email="ann@example.com", first_name="Ann")])
    await batch(http, emulator, [identify(C1, email="ANN@example.com", last_name="Lee")])
    (person,) = (await inspect(http, emulator, "people"))["people"]
    assert (person["id"], person["email"]) == ("c-1", "ANN@example.com")
    assert person["attributes"] == {"first_name": "Ann", "last_name": "Lee"}


async def test_empty_string_removes_an_attribute(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await batch(http, emulator, [identify(C1, plan="pro", city="Oslo")])
    await batch(http, emulator, [identify(C1, plan="")])
    (person,) = (await inspect(http, emulator, "people"))["people"]
    assert person["attributes"] == {"city": "Oslo"}


async def test_delete_item_removes_the_person_and_lists_them_as_deleted(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await batch(http, emulator, [identify(C1), identify({"id": "c-2"})])
    await batch(http, emulator, [{"type": "person", "identifiers": C1, "action": "delete"}])
    people = (await inspect(http, emulator, "people"))["people"]
    assert [(p["id"], p["deleted"]) for p in people] == [("c-2", False), ("c-1", True)]
    assert emulator.state.stats()["people_deleted"] == 1


# --- v1 -------------------------------------------------------------------------------------------


async def test_v1_identify_event_suppress_delete(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    base = emulator.url + "/api/v1/customers/"
    assert (await call(http, "PUT", base + "c-1", {"email": "ann@example.com", "plan": "pro"}))[
        :2
    ] == (200, {})
    event_body = {"name": " purchase ", "data": {"price": 1}, "timestamp": TS, "id": ULIDS[0]}
    assert (await call(http, "POST", base + "c-1/events", event_body))[:2] == (200, {})
    assert (
        await call(
            http, "POST", base + "ann@example.com/events", {"name": "Home", "type": "screen"}
        )
    )[0] == 200
    assert (await call(http, "POST", base + "c-1/suppress"))[0] == 200
    (person,) = (await inspect(http, emulator, "people"))["people"]
    assert (person["id"], person["email"], person["attributes"], person["suppressed"]) == (
        "c-1", "ann@example.com", {"plan": "pro"}, True,
    )  # fmt: skip
    events = (await inspect(http, emulator, "events"))["events"]
    assert [(e["action"], e["name"], e["attributes"]) for e in events] == [
        ("event", "purchase", {"price": 1}), ("screen", "Home", {}),
    ]  # fmt: skip
    assert (await call(http, "POST", base + f"cio_{person['cio_id']}/unsuppress"))[0] == 200
    assert (await call(http, "DELETE", base + "ann%40example.com"))[:2] == (200, {})
    assert emulator.state.stats()["people"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("PUT", "c-1", {"bio": "x" * 1001}, "1000 bytes"),
        ("PUT", "c-1", [1], "JSON object"),
        ("PUT", "x" * 151, {}, "150 bytes"),
        ("POST", "c-1/events", {"name": "  "}, "non-blank"),
        ("POST", "c-1/events", {"name": "x", "timestamp": TS * 1000}, "milliseconds"),
        ("POST", "c-1/events", {"name": "x", "data": {"blob": "y" * 100_001}}, "100000 bytes"),
        ("DELETE", "x" * 151, None, "150 bytes"),
    ],
)
async def test_v1_errors_are_400_with_meta_error(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    fragment: str,
) -> None:
    status, answer, _ = await call(http, method, emulator.url + "/api/v1/customers/" + path, body)
    assert status == 400
    assert fragment in answer["meta"]["error"]
    assert answer["meta"]["errors"] == [answer["meta"]["error"]]
    assert emulator.state.stats()["people"] == 0


async def test_v1_malformed_json_is_400(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, answer, _ = await call(http, "PUT", emulator.url + "/api/v1/customers/c-1", raw=b"{")
    assert status == 400
    assert answer["meta"]["error"]


# --- faults ---------------------------------------------------------------------------------------


async def add_faults(http: aiohttp.ClientSession, emulator: RunningEmulator, spec: Any) -> Any:
    async with http.post(emulator.url + "/_emulator/faults", data=orjson.dumps(spec)) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_status_burst_fails_the_next_n_requests_without_applying_them(
    emulator: RunningEmulator, http: aiohttp.ClientSession, status: int
) -> None:
    assert (await add_faults(http, emulator, {"kind": "status", "status": status, "count": 2}))[
        0
    ] == 200
    answers = [(await batch(http, emulator, [identify({"id": str(n)})]))[0] for n in range(3)]
    assert answers == [status, status, 200]
    people = (await inspect(http, emulator, "people"))["people"]
    assert [p["id"] for p in people] == ["2"]
    assert emulator.state.stats()["faults_injected"] == {"status": 2}


async def test_throttle_with_and_without_retry_after(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await add_faults(http, emulator, [{"kind": "throttle", "retry_after": 7}, {"kind": "throttle"}])
    url = emulator.url + "/api/v2/batch"
    status, _, headers = await call(http, "POST", url, {"batch": [identify(C1)]})
    assert (status, headers.get("Retry-After")) == (429, "7")
    status, _, headers = await call(http, "POST", url, {"batch": [identify(C1)]})
    assert (status, "Retry-After" in headers) == (429, False)
    assert emulator.state.stats()["people"] == 0


async def test_delay_longer_than_the_client_timeout_times_out(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await add_faults(http, emulator, {"kind": "delay", "delay_seconds": 5})
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await call(
            http, "POST", emulator.url + "/api/v2/batch", {"batch": [identify(C1)]}, timeout=0.2
        )
    assert 0.15 < time.monotonic() - started < 2.0


async def test_a_timed_out_request_is_still_applied_when_its_delay_ends(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    finished = asyncio.Event()
    log = emulator.state.requests
    record_finished = log.finished

    def noting_finish(record: RequestRecord) -> None:
        record_finished(record)
        finished.set()

    log.finished = noting_finish  # type: ignore[method-assign]
    await add_faults(http, emulator, {"kind": "delay", "delay_seconds": 0.3})
    with pytest.raises(asyncio.TimeoutError):
        await batch_with_timeout(http, emulator, [identify(C1)], timeout=0.05)
    assert emulator.state.stats()["people"] == 0
    await asyncio.wait_for(finished.wait(), timeout=5)
    assert emulator.state.stats()["people"] == 1
    assert [r.status for r in log.records] == [200]


async def batch_with_timeout(
    http: aiohttp.ClientSession, emulator: RunningEmulator, items: list[Any], timeout: float
) -> Any:
    return await call(
        http, "POST", emulator.url + "/api/v2/batch", {"batch": items}, timeout=timeout
    )


async def test_short_delay_answers_normally_and_applies(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await add_faults(http, emulator, {"kind": "delay", "delay_seconds": 0.3})
    started = time.monotonic()
    assert await batch(http, emulator, [identify(C1)]) == (200, {})
    assert time.monotonic() - started >= 0.29
    assert emulator.state.stats()["people"] == 1
    (record,) = (await inspect(http, emulator, "requests"))["requests"]
    assert (record["fault"], record["status"]) == ("delay", 200)
    assert record["duration_seconds"] >= 0.29


async def test_drop_closes_the_connection_and_applies_nothing(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await add_faults(http, emulator, {"kind": "drop"})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await batch(http, emulator, [identify(C1)])
    assert await batch(http, emulator, [identify({"id": "c-2"})]) == (200, {})
    stats = emulator.state.stats()
    assert (stats["people"], stats["requests_by_status"]) == (1, {"dropped": 1, "200": 1})
    first = (await inspect(http, emulator, "requests"))["requests"][0]
    assert (first["status"], first["fault"]) == (None, "drop")


async def test_rate_limit_from_config_answers_429_beyond_the_burst(
    http: aiohttp.ClientSession,
) -> None:
    config = EmulatorConfig(SITE_ID, API_KEY, rate_limit=RateLimit(per_second=0.5, burst=5))
    async with running_emulator(config) as limited:
        url = limited.url + "/api/v2/batch"
        answers = await asyncio.gather(
            *(call(http, "POST", url, {"batch": [identify({"id": str(n)})]}) for n in range(20))
        )
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200] * 5 + [429] * 15
        stats = limited.state.stats()
        assert (stats["people"], stats["faults_injected"], stats["max_requests_per_second"]) == (
            5,
            {"rate_limit": 15},
            20,
        )


async def test_rate_limit_set_at_run_time_and_cleared(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, shown = await add_faults(
        http, emulator, {"kind": "rate_limit", "per_second": 0.5, "burst": 1}
    )
    assert (status, shown["rate_limit"]) == (
        200,
        {"kind": "rate_limit", "per_second": 0.5, "burst": 1},
    )
    assert [(await batch(http, emulator, []))[0] for _ in range(2)] == [200, 429]
    async with http.delete(emulator.url + "/_emulator/faults") as response:
        assert await response.json() == {"rules": [], "rate_limit": None}
    assert (await batch(http, emulator, []))[0] == 200


async def test_faults_come_before_authentication(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await add_faults(http, emulator, {"kind": "status", "status": 502})
    status, _, _ = await call(http, "GET", emulator.url + "/auth", headers={})
    assert status == 502


async def test_fault_path_narrows_what_fails(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await add_faults(
        http, emulator, {"kind": "status", "status": 500, "path": "/api/v2/entity", "count": None}
    )
    assert (await batch(http, emulator, [identify(C1)]))[0] == 200
    assert (await call(http, "POST", emulator.url + "/api/v2/entity", identify(C1)))[0] == 500
    shown = await inspect(http, emulator, "faults")
    assert shown["rules"] == [
        {"kind": "status", "status": 500, "count": None, "path": "/api/v2/entity"}
    ]


async def test_initial_faults_from_config_and_clearing(http: aiohttp.ClientSession) -> None:
    rules, _ = parse_faults({"kind": "status", "status": 503, "count": 3})
    async with running_emulator(EmulatorConfig(SITE_ID, API_KEY, faults=tuple(rules))) as faulty:
        assert (await batch(http, faulty, []))[0] == 503
        assert faulty.faults.rules[0].count == 2
        async with http.delete(faulty.url + "/_emulator/faults") as response:
            assert response.status == 200
        assert (await batch(http, faulty, []))[0] == 200


async def test_bad_fault_spec_is_400_and_changes_nothing(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, body = await add_faults(
        http, emulator, [{"kind": "drop"}, {"kind": "status", "status": 200}]
    )
    assert status == 400
    assert "fault 1: status must be" in body["meta"]["error"]
    assert emulator.faults.rules == []


async def test_stopping_drops_delayed_requests_at_once_without_applying(
    http: aiohttp.ClientSession,
) -> None:
    async with running_emulator(EmulatorConfig(SITE_ID, API_KEY)) as stopping:
        rules, _ = parse_faults({"kind": "delay", "delay_seconds": 60})
        stopping.faults.add(rules)
        arrived = asyncio.Event()
        decide = stopping.faults.decide

        def noting_arrival(method: str, path: str) -> Fault | None:
            arrived.set()
            return decide(method, path)

        stopping.faults.decide = noting_arrival  # type: ignore[method-assign]
        pending = asyncio.ensure_future(batch(http, stopping, [identify(C1)]))
        await asyncio.wait_for(arrived.wait(), timeout=5)
        started = time.monotonic()
    assert time.monotonic() - started < SHUTDOWN_TIMEOUT_SECONDS
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert stopping.state.stats()["people"] == 0


# --- inspection -----------------------------------------------------------------------------------


async def test_requests_and_stats_describe_the_traffic(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    before = time.time()
    await batch(http, emulator, [identify(C1), event(C1, ULIDS[0]), event(C1, ULIDS[0])])
    await batch(http, emulator, [identify({"id": ""})])
    await call(http, "GET", emulator.url + "/auth", headers={})
    records = (await inspect(http, emulator, "requests"))["requests"]
    assert [(r["method"], r["path"], r["status"], r["items"]) for r in records] == [
        ("POST", "/api/v2/batch", 200, 3),
        ("POST", "/api/v2/batch", 207, 1),
        ("GET", "/auth", 401, 0),
    ]  # fmt: skip
    assert records[0]["bytes"] == len(
        orjson.dumps({"batch": [identify(C1), event(C1, ULIDS[0]), event(C1, ULIDS[0])]})
    )
    assert all(
        before <= r["received_at"] <= time.time() and r["duration_seconds"] >= 0 for r in records
    )
    assert records[0]["host"].startswith("127.0.0.1:")
    stats = await inspect(http, emulator, "stats")
    assert stats == {
        "requests": 3,
        "requests_by_status": {"200": 1, "207": 1, "401": 1},
        "bytes_received": stats["bytes_received"],
        "items_received": 4,
        "items_accepted": 3,
        "items_rejected": 1,
        "identifies": 1,
        "stale_identifies": 0,
        "events_stored": 1,
        "duplicates_suppressed": 1,
        "people": 1,
        "people_deleted": 0,
        "unresolved_operations": 0,
        "attribute_update_failures": 0,
        "attributes_over_limit": 0,
        "faults_injected": {},
        "max_requests_per_second": 3,
    }
    assert stats["bytes_received"] == sum(r["bytes"] for r in records)


async def test_people_and_events_can_be_filtered(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await batch(http, emulator, [
        identify(C1, email="ann@example.com"), identify({"id": "c-2"}),
        event(C1, ULIDS[0], name="buy"), event({"id": "c-2"}, ULIDS[1], name="buy"),
        event(C1, ULIDS[2], name="view"),
    ])  # fmt: skip
    by_email = (await inspect(http, emulator, "people?email=ANN@example.com"))["people"]
    assert [p["id"] for p in by_email] == ["c-1"]
    assert [p["id"] for p in (await inspect(http, emulator, "people?id=c-2"))["people"]] == ["c-2"]
    events = (await inspect(http, emulator, "events?person_id=c-1&name=buy"))["events"]
    assert [e["id"] for e in events] == [ULIDS[0]]
    assert len((await inspect(http, emulator, "events?action=event"))["events"]) == 3


async def test_reset_forgets_everything_but_faults(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    await batch(http, emulator, [identify(C1), event(C1, ULIDS[0])])
    await add_faults(
        http, emulator, {"kind": "status", "status": 500, "count": None, "path": "/auth"}
    )
    async with http.post(emulator.url + "/_emulator/reset") as response:
        assert (response.status, await response.json()) == (200, {})
    stats = emulator.state.stats()
    assert (stats["requests"], stats["people"], stats["events_stored"]) == (0, 0, 0)
    assert (await inspect(http, emulator, "requests"))["requests"] == []
    assert await batch(http, emulator, [event(C1, ULIDS[0])]) == (200, {})
    assert emulator.state.stats()["events_stored"] == 1  # the event id is new again
    assert (await call(http, "GET", emulator.url + "/auth"))[0] == 500


# --- region hosts and pessimistic mode ------------------------------------------------------------


async def test_a_us_workspace_is_unknown_on_the_eu_host(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, "POST", emulator.other_region_url + "/api/v2/batch",
                                 {"batch": [identify(C1)]})  # fmt: skip
    assert (status, body) == (401, {"meta": {"error": "Unauthorized request"}})
    eu_host = {**AUTH, "Host": "track-eu.customer.io"}  # the real host name, on the own port
    status, _, _ = await call(http, "GET", emulator.url + "/auth", headers=eu_host)
    assert status == 401
    status, body, _ = await call(http, "GET", emulator.other_region_url + "/api/v1/accounts/region")
    assert (status, body["region"]) == (200, "us")  # the region lookup answers on both hosts
    assert emulator.state.store.people_count == 0


async def test_an_eu_workspace_is_redirected_from_the_us_host(http: aiohttp.ClientSession) -> None:
    async with running_emulator(EmulatorConfig(SITE_ID, API_KEY, region="eu")) as eu:
        async with http.post(
            eu.other_region_url + "/api/v2/batch?x=1",
            data=orjson.dumps({"batch": [identify(C1)]}),
            headers=AUTH,
            allow_redirects=False,  # as the forwarder's client: never follow
        ) as response:
            assert response.status == 307
            assert response.headers["Location"] == "https://track-eu.customer.io/api/v2/batch?x=1"
            assert await response.json() == {"meta": {"error": "wrong region"}}
        status, _, _ = await call(http, "GET", eu.other_region_url + "/auth", headers={})
        assert status == 401  # no redirect without credentials
        status, _, _ = await call(http, "GET", eu.url + "/auth")
        assert status == 200  # its own host answers
        assert eu.state.store.people_count == 0


async def test_pessimistic_mode_caps_attributes_and_applies_stale_identifies(
    http: aiohttp.ClientSession,
) -> None:
    config = EmulatorConfig(SITE_ID, API_KEY, pessimistic=True, dedup_window=1)
    async with running_emulator(config) as emulator:
        wide = [identify(C1, **{f"a{i}": i for i in range(start, start + 200)})
                for start in (0, 200)]  # fmt: skip
        late = {**identify(C1, a0="late"), "timestamp": TS - 10}
        items = [{**wide[0], "timestamp": TS}, {**wide[1], "timestamp": TS}, late]
        assert await batch(http, emulator, items) == (200, {})
        (person,) = emulator.state.store.people
        assert len(person.attributes) == 300
        assert person.attributes["a0"] == "late"
        replay = [event(C1, ULIDS[0]), event(C1, ULIDS[1]), event(C1, ULIDS[0])]
        assert await batch(http, emulator, replay) == (200, {})
        stats = await inspect(http, emulator, "stats")
        assert (stats["attributes_over_limit"], stats["stale_identifies"]) == (100, 1)
        assert (stats["events_stored"], stats["duplicates_suppressed"]) == (3, 0)  # window 1
        identifies = (await inspect(http, emulator, "identifies"))["identifies"]
        assert [(i["stale"], i["sequence"]) for i in identifies] == [
            (False, 1), (False, 2), (True, 3)
        ]  # fmt: skip
        await call(http, "POST", emulator.url + "/_emulator/reset", headers={})
        assert emulator.state.store.rules == config.workspace_rules  # kept across a reset


async def test_lenient_mode_keeps_every_attribute_and_event_id(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    items = [identify(C1, **{f"a{i}": i for i in range(start, start + 200)}) for start in (0, 200)]
    assert await batch(http, emulator, items) == (200, {})
    (person,) = emulator.state.store.people
    assert len(person.attributes) == 400
