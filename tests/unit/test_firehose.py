"""Firehose shapes (mParticle's published examples) through the parsers, pipeline and ingress."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaTimeoutError
from jsonschema import Draft3Validator

from app.core.audiences import parse_audience_record
from app.core.avro import codec
from app.core.erasure import matches, parse_erasure_record, request_marker_keys
from app.core.pipeline import process_audience_record, process_erasure_record
from app.core.state import UserState, decode_state, encode_state
from app.errors import BrokerUnavailableError, FirehoseSchemaError
from app.ingress.messages import Record, plan_message
from app.ingress.schemas import load_schema, validate
from app.ingress.server import REGISTRY, KafkaWriter, build_app
from app.records import SourcePosition
from app.settings import Settings, load_settings
from app.wiring import core_options

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "firehose"
SECRET = "s3cret-token"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    return loaded


def _settings(**overrides: object) -> Settings:
    return load_settings(forwarding_enabled=False, ingress_secret=SECRET, **overrides)


def _plan(name: str) -> tuple[str, Any]:
    message = example(name)
    kind = validate(message)
    return kind, plan_message(kind, message, now_ms=7, new_id=lambda: "new-id")


# --- schemas and plans ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "AudienceMembershipChangeRequest",
        "AudienceSubscriptionRequest",
        "DsrProcessingRequest",
        "ModuleRegistrationRequest",
    ],
)
def test_published_examples_validate(name: str) -> None:
    assert validate(example(name)) == example(name)["type"]


@pytest.mark.parametrize(
    ("change", "first_error"),
    [
        (lambda m: m.update(type="nope"), "type: must be one of"),
        (lambda m: m.pop("timestamp_ms"), "timestamp_ms: 'timestamp_ms' is a required property"),
        (
            lambda m: m["user_profiles"][0]["audiences"][0].update(action="join"),
            "user_profiles/0/audiences/0/action: 'join' is not one of",
        ),
        (lambda m: m["user_profiles"][0].pop("mpid"), "user_profiles/0/mpid: 'mpid' is a req"),
        (
            lambda m: m["user_profiles"][0]["audiences"][0].update(audience_id="x"),
            "user_profiles/0/audiences/0/audience_id: 'x' is not of type 'integer'",
        ),
    ],
)
def test_schema_failure_names_the_first_error(change: Any, first_error: str) -> None:
    message = example("AudienceMembershipChangeRequest")
    change(message)
    with pytest.raises(FirehoseSchemaError) as raised:
        validate(message)
    assert str(raised.value).startswith(first_error)


def test_hashed_dsr_identities_validate_but_unknown_encodings_do_not() -> None:
    message = example("DsrProcessingRequest")
    message["subject_identities"]["email"] = {"encoding": "md5", "value": "ab"}
    assert validate(message) == "dsr_processing_request"
    message["subject_identities"]["email"]["encoding"] = "rot13"
    with pytest.raises(FirehoseSchemaError, match="subject_identities/email/encoding"):
        validate(message)


def test_membership_plan_is_one_minimal_record_per_profile() -> None:
    message = example("AudienceMembershipChangeRequest")
    second = {**message["user_profiles"][0], "mpid": "-042"}
    message["user_profiles"].append(second)
    plan = plan_message(validate(message), message, now_ms=7, new_id=lambda: "new-id")
    assert [(r.topic, r.key, r.all_partitions) for r in plan.records] == [
        ("audiences", b"12345", False),
        ("audiences", b"-42", False),
    ]
    value = orjson.loads(plan.records[0].value)
    assert set(value) == {"type", "id", "timestamp_ms", "firehose_version", "user_profiles"}
    assert set(value["user_profiles"][0]) == {"mpid", "user_identities", "audiences"}
    assert b"account" not in plan.records[0].value
    assert plan.response == {
        "type": "audience_membership_change_response",
        "id": "new-id",
        "timestamp_ms": 7,
        "firehose_version": "2.8.1",
        "suspend_subscription": False,
    }
    assert plan.profiles == 2


def test_dsr_plan_goes_to_every_partition_without_account() -> None:
    _, plan = _plan("DsrProcessingRequest")
    (record,) = plan.records
    assert (record.topic, record.key, record.all_partitions) == ("erasure", None, True)
    assert orjson.loads(record.value)["subject_identities"]["email"]["value"] == (
        "jane.doe@example.com"
    )
    assert plan.response["type"] == "dsr_processing_response"


def test_registration_names_audience_and_dsr_capabilities_and_validates() -> None:
    _, plan = _plan("ModuleRegistrationRequest")
    response = plan.response
    schema = load_schema("ModuleRegistrationResponse_schema.json")
    assert list(Draft3Validator(schema).iter_errors(response)) == []
    assert response["dsr_processing_registration"]["supported_dsr_types"] == ["erasure"]
    assert response["permissions"]["allow_access_mpid"] is True
    settings = response["audience_processing_registration"]["account_settings"]
    assert [s["id"] for s in settings] == ["ingress_secret"]
    assert plan.records == ()


def test_subscription_writes_nothing() -> None:
    _, plan = _plan("AudienceSubscriptionRequest")
    assert plan.records == ()
    assert plan.response["type"] == "audience_subscription_response"


# --- the worker's parsers and steps on Firehose records ----------------------------------


def _profile_record() -> bytes:
    return (
        plan_message(
            "audience_membership_change_request",
            example("AudienceMembershipChangeRequest"),
            now_ms=0,
            new_id=lambda: "x",
        )
        .records[0]
        .value
    )


def test_membership_profile_parses_hashed_identities_and_attribute_update() -> None:
    (update,) = parse_audience_record(_profile_record())
    assert update.mpid == "12345"
    assert (update.email, update.customer_id) == (None, None)  # md5-hashed: no identity
    assert [(c.audience_id, c.name, c.action) for c in update.changes] == [
        ("456", "Example Audience Name", "add"),
        ("654", "Example Audience Name 4", "delete"),
    ]
    assert update.user_attributes == {"Some Key": "9999999"}
    assert update.deleted_attributes == ("Churned",)


def test_raw_firehose_identities_supply_email_and_customer_id() -> None:
    value = orjson.dumps(
        {
            "mpid": "1",
            "user_identities": [
                {"type": "email", "encoding": "raw", "value": "Ann@x.io"},
                {"type": "customer", "encoding": "raw", "value": "c-1"},
                {"type": "email", "encoding": "sha256", "value": "ff"},
            ],
            "audiences": [],
        }
    )
    (update,) = parse_audience_record(value)
    assert (update.email, update.customer_id) == ("Ann@x.io", "c-1")


def test_membership_of_known_user_identifies_with_segments_and_attributes() -> None:
    known = encode_state(UserState(email="jane@x.io", customer_id="c-9", attributes={"Churned": 1}))
    options = core_options(_settings(one_attribute_per_audience=True))
    result = process_audience_record(
        b"12345",
        _profile_record(),
        SourcePosition("mparticle-audiences", 0, 3),
        {"12345": known}.get,
        options,
        clock=lambda: 1,
    )
    items = [
        orjson.loads(op["item"])
        for op in codec("operation_batch").decode(result.operations[1])["operations"]  # type: ignore[index]
    ]
    (identify,) = items
    assert identify["identifiers"] == {"id": "c-9"}
    attributes = identify["attributes"]
    assert attributes["SegmentMembership"] == "'456'"
    assert attributes["In Example Audience Name"] is True
    assert attributes["Some Key"] == "9999999"
    assert attributes["Churned"] == ""  # deleted: sent empty, Customer.io removes it
    state = decode_state(result.states["12345"])
    assert "Churned" not in state.attributes


def test_membership_of_user_without_email_is_held() -> None:
    result = process_audience_record(
        b"12345",
        _profile_record(),
        SourcePosition("mparticle-audiences", 0, 3),
        {}.get,
        core_options(_settings()),
        clock=lambda: 1,
    )
    assert result.operations is None
    assert decode_state(result.states["12345"]).audiences == {"456": "Example Audience Name"}


def _dsr(identities: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"type": "dsr_processing_request", "subject_request_type": "erasure",
         "subject_identities": identities}
    )  # fmt: skip


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_hashed_identity_matches_the_stored_email_by_the_same_hash(algorithm: str) -> None:
    state = UserState(email=" Jane.Doe@Example.com", customer_id="c-7")
    digest = hashlib.new(algorithm, b"jane.doe@example.com").hexdigest()
    request = parse_erasure_record(_dsr({"email": {"encoding": algorithm, "value": digest}}))
    assert (request.emails, request.hashed) == ((), (("email", algorithm, digest),))
    assert matches(request, state)
    other = parse_erasure_record(_dsr({"email": {"encoding": algorithm, "value": "0" * 32}}))
    assert not matches(other, state)


def test_hashed_customer_id_matches() -> None:
    digest = hashlib.md5(b"c-7").hexdigest()
    request = parse_erasure_record(
        _dsr({"controller_customer_id": {"encoding": "md5", "value": digest.upper()}})
    )
    assert matches(request, UserState(customer_id="c-7"))


def test_dsr_without_mpid_erases_every_matching_user_of_the_partition() -> None:
    jane = UserState(email="jane.doe@example.com", customer_id="c-1", person_id="c-1")
    other = UserState(email="bob@example.com")
    stored = {"1": encode_state(jane), "2": encode_state(other), "3": b"corrupt"}
    _, plan = _plan("DsrProcessingRequest")
    result = process_erasure_record(
        None,
        plan.records[0].value,
        SourcePosition("mparticle-erasure", 2, 9),
        stored.get,
        record_ms=55,
        scan_states=lambda: list(stored.items()),
        clock=lambda: 60,
    )
    assert result.purged == ["1"]
    # the matched user's marker, and one per identity the DSR names (breaker6 finding 1)
    identities = request_marker_keys(parse_erasure_record(plan.records[0].value))
    assert identities
    assert result.erased == {"1": 55, **dict.fromkeys(identities, 55)}
    assert result.operations is not None
    key, value = result.operations
    assert key == "1"
    deletes = [
        orjson.loads(op["item"]) for op in codec("operation_batch").decode(value)["operations"]
    ]
    assert [d["identifiers"] for d in deletes] == [
        {"id": "c-1"},
        {"email": "jane.doe@example.com"},
    ]
    assert all(d["action"] == "delete" for d in deletes)
    assert result.counts["erasures", "erased"] == 1


def test_dsr_without_match_still_deletes_the_raw_identity() -> None:
    _, plan = _plan("DsrProcessingRequest")
    result = process_erasure_record(
        None,
        plan.records[0].value,
        SourcePosition("mparticle-erasure", 0, 1),
        {}.get,
        record_ms=1,
        scan_states=list,
    )
    assert result.purged == []
    assert result.operations is not None
    assert result.operations[0] == ""


# --- the HTTP service ----------------------------------------------------------------------


class FakeWriter:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.written: list[Record] = []

    async def write(self, records: Any) -> None:
        if self.fail:
            raise BrokerUnavailableError("KafkaTimeoutError")
        self.written.extend(records)


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _client(writer: FakeWriter, **overrides: object) -> TestClient:  # type: ignore[type-arg]
    client: TestClient = TestClient(TestServer(build_app(_settings(**overrides), writer)))  # type: ignore[type-arg]
    await client.start_server()
    return client


async def test_membership_post_answers_after_the_write() -> None:
    writer = FakeWriter()
    client = await _client(writer)
    try:
        before = _count("mpcio_ingress_profiles_total")
        response = await client.post(
            "/", json=example("AudienceMembershipChangeRequest"), headers=AUTH
        )
        assert response.status == 200
        body = await response.json()
        assert body["type"] == "audience_membership_change_response"
        assert [r.key for r in writer.written] == [b"12345"]
        assert _count("mpcio_ingress_profiles_total") == before + 1
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({}, b"{}", 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, b"{}", 401, "unauthorized"),
        ({"Authorization": SECRET}, b"{}", 401, "unauthorized"),
        (AUTH, b"{not json", 400, "malformed_json"),
        (AUTH, b"[1]", 400, "schema_invalid"),
        (AUTH, b'{"type": "module_registration_request"}', 400, "schema_invalid"),
        (AUTH, b"x" * 5000, 413, "too_large"),
    ],
)
async def test_refusals_write_nothing_and_are_counted(
    headers: dict[str, str], body: bytes, status: int, reason: str
) -> None:
    writer = FakeWriter()
    client = await _client(writer, ingress_max_body_bytes=4096)
    try:
        before = _count("mpcio_ingress_rejected_total", reason=reason)
        response = await client.post("/", data=body, headers=headers)
        assert response.status == status
        assert (await response.json())["error"] == reason
        assert writer.written == []
        assert _count("mpcio_ingress_rejected_total", reason=reason) == before + 1
    finally:
        await client.close()


async def test_schema_error_detail_is_the_first_error() -> None:
    client = await _client(FakeWriter())
    try:
        message = example("AudienceMembershipChangeRequest")
        message["user_profiles"][0]["audiences"][1]["action"] = "join"
        response = await client.post("/", json=message, headers=AUTH)
        detail = (await response.json())["detail"]
        assert detail.startswith("user_profiles/0/audiences/1/action: 'join' is not one of")
    finally:
        await client.close()


async def test_broker_unavailable_is_503_with_retry_after() -> None:
    client = await _client(FakeWriter(fail=True), ingress_retry_after_seconds=17)
    try:
        response = await client.post("/", json=example("DsrProcessingRequest"), headers=AUTH)
        assert response.status == 503
        assert response.headers["Retry-After"] == "17"
    finally:
        await client.close()


async def test_metrics_are_served_without_auth() -> None:
    client = await _client(FakeWriter())
    try:
        response = await client.get("/metrics")
        assert response.status == 200
        assert "mpcio_ingress_rejected_total" in await response.text()
    finally:
        await client.close()


# --- mpcio dry-run -------------------------------------------------------------------------


def test_dry_run_applies_firehose_lines_in_file_order() -> None:
    import io  # noqa: PLC0415

    from app.ops.dryrun import dry_run  # noqa: PLC0415

    batch = orjson.dumps({"mpid": "12345", "user_identities": {"email": "jane.doe@example.com"}})
    invalid = example("AudienceMembershipChangeRequest")
    invalid["user_profiles"][0]["audiences"][0]["action"] = "join"
    lines = [
        batch,
        orjson.dumps(example("AudienceMembershipChangeRequest")),
        orjson.dumps(invalid),
        orjson.dumps(example("DsrProcessingRequest")),
    ]
    out, errors = io.BytesIO(), io.StringIO()
    summary = dry_run(lines, _settings(), out, errors)
    items = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [item["action"] for item in items] == ["identify", "identify", "delete"]
    assert items[1]["attributes"]["SegmentMembership"] == "'456'"
    assert items[2]["identifiers"] == {"email": "jane.doe@example.com"}
    assert summary.invalid_lines == 1
    assert errors.getvalue().startswith("line 3: firehose: user_profiles/0/audiences/0/action")


# --- the Kafka writer ----------------------------------------------------------------------


class FakeProducer:
    """Records sends; each send's delivery future resolves unless ``hang`` or ``fail``."""

    def __init__(self, *, hang: bool = False, fail: Exception | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, int | None]] = []
        self.hang, self.fail = hang, fail

    async def partitions_for(self, topic: str) -> set[int]:
        return {2, 0, 1}

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, key, partition))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail is not None:
            future.set_exception(self.fail)
        elif not self.hang:
            future.set_result(None)
        return future


async def test_writer_sends_keyed_records_and_dsrs_to_every_partition() -> None:
    producer = FakeProducer()
    writer = KafkaWriter(producer, {"audiences": "aud", "erasure": "era"}, timeout_seconds=5)
    await writer.write([Record("audiences", b"7", b"m"), Record("erasure", None, b"d", True)])
    assert producer.sent == [
        ("aud", b"m", b"7", None),
        ("era", b"d", None, 0),
        ("era", b"d", None, 1),
        ("era", b"d", None, 2),
    ]


@pytest.mark.parametrize(
    "producer",
    [FakeProducer(hang=True), FakeProducer(fail=KafkaTimeoutError())],
    ids=["no-ack-in-time", "kafka-error"],
)
async def test_writer_reports_an_unacknowledged_write(producer: FakeProducer) -> None:
    writer = KafkaWriter(producer, {"audiences": "aud", "erasure": "era"}, timeout_seconds=0.2)
    with pytest.raises(BrokerUnavailableError):
        await writer.write([Record("audiences", b"7", b"m")])
