"""Conformance with Customer.io's OpenAPI (app/reference), from both sides.

- The emulator refuses, one rule at a time, what the OpenAPI schema (formats included) and the
  reserved-attributes doc refuse, answering 207 as the Track API does (SPEC §6).
- Every item the transform emits validates against the OpenAPI ``/api/v2/batch`` item schema
  and its action's component schema, for generated batches (hypothesis), including hostile
  names (reserved person attributes, routing keys in event data) and placeholder emails.
- The transform's output for ``samples/`` and for a hypothesis corpus goes through the
  emulator over HTTP, validation on: nothing is rejected.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.core.mparticle import parse_record
from app.core.transform import RESERVED_EVENT_DATA_NAMES, is_reserved_person_name, transform
from app.dev.emulator import RunningEmulator
from app.dev.emulator.openapi import FORMATS, PERSON_SCHEMAS, schema_error
from app.dev.emulator.validation import item_error
from app.ops.dryrun import dry_run
from app.reference import CUSTOMERIO_OPENAPI_FILE, load_json
from bench.e2e import workload as e2e_workload
from tests.integration import reliability_model
from tests.integration import workload as delivery_workload
from tests.unit.conftest import API_KEY, SITE_ID
from tests.unit.test_emulator_server import ANN, C1, ULIDS, batch, event, identify
from tests.unit.test_properties import OPTIONS, PROFILE, SETTINGS, batches

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mparticle-batches.jsonl"
URI = "urn:customerio-track-api"
BATCH_ITEMS = (
    "/paths/~1api~1v2~1batch/post/requestBody/content/application~1json/schema"
    "/properties/batch/items"
)


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    for name, check in FORMATS.items():
        checker.checks(name)(check)
    return checker


def _validator(pointer: str) -> Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        URI,
        Resource.from_contents(
            load_json(CUSTOMERIO_OPENAPI_FILE), default_specification=DRAFT202012
        ),
    )
    return Draft202012Validator(
        {"$ref": f"{URI}#{pointer}"}, registry=registry, format_checker=_format_checker()
    )


ITEM_SCHEMA = _validator(BATCH_ITEMS)
ACTION_SCHEMAS = {
    action: _validator(f"/components/schemas/{component}")
    for action, component in PERSON_SCHEMAS.items()
}


def openapi_errors(item: dict[str, Any]) -> list[str]:
    """Every complaint of the OpenAPI about ``item``: the batch item schema and its action's."""
    found = [error.message for error in ITEM_SCHEMA.iter_errors(item)]
    found += [error.message for error in ACTION_SCHEMAS[item["action"]].iter_errors(item)]
    return found


# --- the emulator refuses what the OpenAPI refuses ----------------------------------------------

ONE_INVALID_ITEM_PER_RULE = [
    ("email identifier not an address", identify({"email": "N/A"}), "identifiers.email"),
    ("identify email attribute not an address", identify(C1, email="none"), "attributes.email"),
    ("event recipient not an address", event(C1, ULIDS[3], recipient="Mom"),
     "attributes.recipient"),
    ("event from_address not an address", event(C1, ULIDS[3], from_address="shop"),
     "attributes.from_address"),
    ("event reply_to not an address", event(C1, ULIDS[3], reply_to="n/a"), "attributes.reply_to"),
    ("_update not a boolean", identify(C1, _update="yes"), "attributes._update"),
    ("cio_subscription_preferences not an object",
     identify(C1, cio_subscription_preferences="all"), "attributes.cio_subscription_preferences"),
    ("subscription topic not a boolean",
     identify(C1, cio_subscription_preferences={"topics": {"topic_1": "yes"}}),
     "attributes.cio_subscription_preferences.topics.topic_1"),
    ("identifier not a string", identify({"id": 42}), "identifiers.id"),
    ("device platform outside the enum",
     {"type": "person", "identifiers": C1, "action": "add_device",
      "device": {"token": "t-1", "platform": "web"}}, "device.platform"),
    ("device without a platform",
     {"type": "person", "identifiers": C1, "action": "add_device", "device": {"token": "t-1"}},
     "device"),
    ("page keywords not a list of strings",
     {"type": "person", "identifiers": C1, "action": "page", "name": "/", "id": ULIDS[3],
      "attributes": {"keywords": "a,b"}}, "attributes.keywords"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("item", "field"),
    [case[1:] for case in ONE_INVALID_ITEM_PER_RULE],
    ids=[case[0] for case in ONE_INVALID_ITEM_PER_RULE],
)
async def test_emulator_answers_207_for_an_item_the_openapi_refuses(
    emulator: RunningEmulator, http: aiohttp.ClientSession, item: dict[str, Any], field: str
) -> None:
    assert openapi_errors(item) or field.endswith("email"), "the case must break a rule"
    status, body = await batch(http, emulator, [identify(ANN), item, event(ANN, ULIDS[4])])
    assert status == 207
    (error,) = body["errors"]
    assert (error["batch_index"], error["reason"], error["field"]) == (1, "invalid", field)
    assert error["message"]
    stats = emulator.state.stats()
    assert (stats["items_accepted"], stats["items_rejected"]) == (2, 1)


def openapi_examples() -> list[tuple[str, dict[str, Any]]]:
    schemas = load_json(CUSTOMERIO_OPENAPI_FILE)["components"]["schemas"]
    return [
        (f"example-{action}", schemas[component]["example"])
        for action, component in PERSON_SCHEMAS.items()
    ]


SCHEMA_CHECKED = [
    pytest.param(item, id=name)
    for name, item in [(case[0], case[1]) for case in ONE_INVALID_ITEM_PER_RULE]
    + openapi_examples()
    # merge and relationship items are refused before the schema check (unsupported)
    if item_error(item, check_size=True) is None
]


@pytest.mark.parametrize("item", SCHEMA_CHECKED)
def test_compiled_schemas_agree_with_the_reference_validator(item: dict[str, Any]) -> None:
    """Differential: the emulator's compiled check (fastjsonschema) and jsonschema on the raw
    OpenAPI give one verdict for every item the hand-written checks let through."""
    schema_verdict = ACTION_SCHEMAS[item["action"]].is_valid(item)
    compiled = schema_error(item)
    assert (compiled is None) == schema_verdict or (
        compiled is not None and compiled.field.endswith("email")  # reserved-attributes doc
    ), (item, compiled)


async def test_emulator_entity_endpoint_refuses_an_item_the_openapi_refuses(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        emulator.url + "/api/v2/entity",
        data=orjson.dumps(event(C1, ULIDS[3], recipient="Mom")),
        headers={"Authorization": aiohttp.encode_basic_auth(SITE_ID, API_KEY)},
    ) as response:
        assert response.status == 400
        (error,) = (await response.json())["errors"]
    assert error["field"] == "attributes.recipient"


def test_transform_emits_nothing_the_openapi_refuses_for_the_three_cases() -> None:
    """Issue 16's three cases pass the schema once mapped (each of them failed it before)."""
    lines = [
        {"mpid": 108, "environment": "production", "timestamp_unixtime_ms": 1764400000000,
         "user_identities": [{"identity_type": "email", "identity": "vip@example.com"}],
         "user_attributes": {"$FirstName": "Val", "platinum_member": None}, "events": []},
        {"mpid": 109, "user_identities": {"email": "gift@example.com"},
         "events": [{"event_type": "custom_event", "data": {
             "event_name": "Gift", "custom_attributes": {
                 "recipient": "Mom", "reply_to": "n/a", "sku": "G-1"}}}]},
        {"mpid": 110, "user_identities": [{"identity_type": "email", "identity": "N/A"}],
         "events": [{"event_type": "custom_event", "data": {"event_name": "Viewed"}}]},
    ]  # fmt: skip
    items = [
        operation.item
        for line in lines
        for parsed in parse_record(orjson.dumps(line))
        for operation in transform(parsed, None, OPTIONS).operations
    ]
    assert [item["action"] for item in items] == ["identify", "identify", "event"]
    for item in items:
        assert openapi_errors(item) == [], item


@pytest.mark.parametrize(
    ("component", "is_handled"),
    [
        ("identify_person", is_reserved_person_name),
        ("person_event", RESERVED_EVENT_DATA_NAMES.__contains__),
        ("person_screen", RESERVED_EVENT_DATA_NAMES.__contains__),
    ],
)
def test_every_name_the_openapi_gives_a_meaning_is_handled(component: str, is_handled: Any) -> None:
    """The audit of docs/mapping.md §2, kept true: each ``attributes`` property the OpenAPI
    defines for what the transform emits (identify, event, screen) is renamed by it."""
    schema = load_json(CUSTOMERIO_OPENAPI_FILE)["components"]["schemas"][component]
    (own,) = [part for part in schema["allOf"] if "properties" in part]
    defined = set(own["properties"].get("attributes", {}).get("properties", {}))
    assert {name for name in defined if not is_handled(name)} == set()
    if component == "identify_person":
        assert defined == {"cio_subscription_preferences", "_update"}
    if component == "person_event":
        assert defined == set(RESERVED_EVENT_DATA_NAMES)


# --- the transform emits only what the OpenAPI accepts ------------------------------------------

hostile_names = st.sampled_from(
    ["email", "id", "cio_id", "phone", "anonymous_id", "created_at", "unsubscribed",
     "_update", "_timestamp", "cio_subscription_preferences",
     "cio_subscription_preferences.topics.topic_1", "cio_relationships", "SegmentMembership",
     "first_name"]
)  # fmt: skip
routing_keys = st.sampled_from(["recipient", "from_address", "reply_to"])
placeholder_emails = st.sampled_from(["N/A", "none", "-", "null", "jane.example.com", ""])


@st.composite
def hostile_batches(draw: st.DrawFn) -> dict[str, Any]:
    """:func:`batches` with valid or placeholder emails, reserved attribute names and routing
    keys in event data (the values those names get are arbitrary)."""
    raw = draw(batches())
    raw["user_identities"]["email"] = draw(st.one_of(st.emails(), placeholder_emails))
    for name in draw(st.lists(hostile_names, max_size=4)):
        raw["user_attributes"][name] = draw(st.one_of(st.none(), st.text(max_size=20)))
    for event_ in raw["events"]:
        for key in draw(st.lists(routing_keys, max_size=3)):
            event_["data"]["custom_attributes"][key] = draw(st.text(max_size=20))
    return raw


@PROFILE
@given(hostile_batches())
def test_every_emitted_item_validates_against_the_openapi(raw: dict[str, Any]) -> None:
    (parsed,) = parse_record(orjson.dumps(raw))
    state = None
    for _ in range(2):  # the second pass: identify on change, opted-out state
        result = transform(parsed, state, OPTIONS)
        for operation in result.operations:
            assert openapi_errors(operation.item) == [], operation.item
        state = result.state


# --- end to end through the emulator ------------------------------------------------------------


def hypothesis_corpus() -> list[bytes]:
    """A fixed corpus of hostile batches (derandomised: the same corpus every run)."""
    corpus: list[bytes] = []

    @settings(max_examples=150, derandomize=True, database=None, deadline=None)
    @given(hostile_batches())
    def collect(raw: dict[str, Any]) -> None:
        corpus.append(orjson.dumps(raw))

    collect()
    return corpus


def dry_run_items(lines: list[bytes]) -> list[bytes]:
    out = io.BytesIO()
    dry_run(lines, SETTINGS, out, io.StringIO())
    return out.getvalue().splitlines()


@pytest.mark.parametrize("source", ["samples", "hypothesis"])
async def test_transform_output_passes_the_emulator_with_nothing_rejected(
    emulator: RunningEmulator, http: aiohttp.ClientSession, source: str
) -> None:
    lines = SAMPLE.read_bytes().splitlines() if source == "samples" else hypothesis_corpus()
    items = [orjson.loads(payload) for payload in dry_run_items(lines)]
    assert len(items) >= 15
    for start in range(0, len(items), 100):
        status, body = await batch(http, emulator, items[start : start + 100])
        assert (status, body) == (200, {})
    stats = emulator.state.stats()
    assert (stats["items_accepted"], stats["items_rejected"]) == (len(items), 0)


def _workload_lines(name: str) -> list[bytes]:
    """The records of the integration tests' and the benchmark's workloads (small sizes)."""
    if name == "integration-delivery":
        return [value for _, value in delivery_workload.batches(30, 3, 4)]
    if name == "integration-reliability":
        return [value for _, value in reliability_model.generate(40, 4, 3).records]
    shape = e2e_workload.Shape(users=60, batches_per_user=3)
    return [record.encode(1_764_400_000_000, "bench") for record in e2e_workload.generate(shape)]


@pytest.mark.parametrize(
    "workload", ["integration-delivery", "integration-reliability", "bench-e2e"]
)
def test_end_to_end_workloads_emit_only_items_the_emulator_accepts(workload: str) -> None:
    """The end-to-end tests and benchmarks run against the validating emulator: every item
    their workloads make passes its checks (hand-written limits, then the OpenAPI schema)."""
    items = [orjson.loads(payload) for payload in dry_run_items(_workload_lines(workload))]
    assert len(items) >= 100
    refused = [
        (item, error)
        for item in items
        if (error := item_error(item, check_size=True) or schema_error(item)) is not None
    ]
    assert refused == []
