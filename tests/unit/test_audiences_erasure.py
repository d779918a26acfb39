"""Audiences (SPEC §4) and erasure (SPEC §5) as pure functions and pipeline steps."""

from __future__ import annotations

import hashlib
import itertools

import orjson
import pytest

from app.core.audiences import AudienceChange, apply_membership, parse_audience_record
from app.core.avro import codec
from app.core.erasure import (
    CLOCK_AHEAD_TOLERANCE_MS,
    ErasureRequest,
    erasure_time,
    matches,
    parse_erasure_record,
    plan_erasure,
)
from app.core.options import CoreOptions
from app.core.pipeline import (
    process_audience_record,
    process_batch_record,
    process_erasure_record,
)
from app.core.state import UserState, decode_state, encode_state
from app.core.transform import LIMIT_MEMBERSHIP_CUT, membership_attributes
from app.customerio.limits import MAX_ATTRIBUTE_VALUE_BYTES
from app.errors import InvalidRecordError
from app.records import SourcePosition
from app.settings import load_settings
from app.wiring import core_options

SOURCE = SourcePosition("mparticle-audiences", 0, 5)
OFFSETS = itertools.count(100)
T = 1_764_400_000_000


def _settings(**overrides: object) -> CoreOptions:
    return core_options(load_settings(forwarding_enabled=False, **overrides))


def _membership(mpid: int, *changes: tuple[int, str, str], email: str | None = "a@x.io") -> bytes:
    return orjson.dumps(
        {
            "mpid": mpid,
            "user_identities": [{"type": "email", "value": email}] if email else [],
            "audiences": [
                {"audience_id": i, "audience_name": n, "action": a} for i, n, a in changes
            ],
        }
    )


def _items(result) -> list[dict]:  # type: ignore[no-untyped-def]
    if result.operations is None:
        return []
    record = codec("operation_batch").decode(result.operations[1])
    return [orjson.loads(op["item"]) for op in record["operations"]]


def _run(value: bytes, key: bytes, store: dict[str, bytes], settings: CoreOptions):  # type: ignore[no-untyped-def]
    source = SourcePosition(SOURCE.topic, SOURCE.partition, next(OFFSETS))
    result = process_audience_record(key, value, source, store.get, settings, clock=lambda: 1)
    store.update(result.states)
    return result


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        _membership(7, (1, "VIP", "add")),
        orjson.dumps({"user_profiles": [orjson.loads(_membership(7, (1, "VIP", "add")))]}),
        orjson.dumps([orjson.loads(_membership(7, (1, "VIP", "add")))]),
    ],
    ids=["profile", "feed-request", "array"],
)
def test_accepts_membership_shapes(value: bytes) -> None:
    (update,) = parse_audience_record(value)
    assert (update.mpid, update.email) == ("7", "a@x.io")
    assert update.changes == (AudienceChange("1", "VIP", "add"),)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{", "invalid_json"),
        (b'{"audiences": []}', "mpid_missing"),
        (b'{"mpid": 1, "audiences": {}}', "audiences_invalid"),
        (b'{"mpid": 1, "audiences": [{"audience_id": 1, "action": "join"}]}', "audiences_invalid"),
        (b'{"mpid": 1, "audiences": [{"action": "add"}]}', "audiences_invalid"),
        (
            b'{"mpid": 1, "audiences": [{"audience_id": "x\'y", "action": "add"}]}',
            "audiences_invalid",
        ),
        (
            b'{"mpid": 1, "audiences": [{"audience_id": "x,y", "action": "add"}]}',
            "audiences_invalid",
        ),
        (b"[1]", "not_an_object"),
    ],
    ids=["json", "mpid", "not-list", "action", "no-id", "quote-in-id", "comma-in-id", "not-object"],
)
def test_rejects_bad_membership(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        parse_audience_record(value)
    assert caught.value.reason == reason


def test_membership_fold_is_idempotent() -> None:
    changes = (
        AudienceChange("1", "VIP", "add"),
        AudienceChange("2", "New", "add"),
        AudienceChange("2", "New", "delete"),
    )
    once = apply_membership(None, changes)
    assert apply_membership(once, changes) == once
    assert once.audiences == {"1": "VIP"}
    assert once.audiences_left == {"2": "New"}


# --- membership → identify -------------------------------------------------------------------


def test_segment_membership_lists_quoted_ids() -> None:
    store: dict[str, bytes] = {}
    result = _run(_membership(7, (456, "B", "add"), (123, "A", "add")), b"7", store, _settings())
    (identify,) = _items(result)
    assert identify["action"] == "identify"
    assert identify["identifiers"] == {"email": "a@x.io"}
    assert identify["attributes"]["SegmentMembership"] == "'123','456'"
    assert "In A" not in identify["attributes"]


@pytest.mark.parametrize("audiences", [200, 5_000, 20_000])
def test_segment_membership_too_long_is_cut_to_the_longest_whole_ids_that_fit(
    audiences: int,
) -> None:
    state = UserState(audiences={str(n): f"A{n}" for n in range(audiences)})
    limits: dict[str, int] = {}
    membership = membership_attributes(state, _settings(), limits)["SegmentMembership"]
    assert isinstance(membership, str)
    every = ",".join(f"'{n}'" for n in range(audiences))  # ids in their numeric order
    if len(every) <= MAX_ATTRIBUTE_VALUE_BYTES:
        assert (membership, limits) == (every, {})
        return
    assert limits == {LIMIT_MEMBERSHIP_CUT: 1}
    kept = membership.count(",") + 1
    assert every.startswith(membership + ",")  # whole ids, in order, from the first
    assert len(membership.encode()) <= MAX_ATTRIBUTE_VALUE_BYTES
    assert (
        len(f"{membership},'{kept}'".encode()) > MAX_ATTRIBUTE_VALUE_BYTES
    )  # the next one would not fit


def test_one_attribute_per_audience_true_then_false() -> None:
    store: dict[str, bytes] = {}
    settings = _settings(one_attribute_per_audience=True)
    joined = _items(_run(_membership(7, (1, "VIPs", "add")), b"7", store, settings))
    assert joined[0]["attributes"]["In VIPs"] is True
    left = _items(_run(_membership(7, (1, "VIPs", "delete")), b"7", store, settings))
    assert left[0]["attributes"]["In VIPs"] is False
    assert left[0]["attributes"]["SegmentMembership"] == ""  # leaving the last: empty


def test_redelivered_membership_sends_nothing_new() -> None:
    store: dict[str, bytes] = {}
    value = _membership(7, (1, "VIP", "add"))
    assert _items(_run(value, b"7", store, _settings()))
    assert _items(_run(value, b"7", store, _settings())) == []


def test_membership_without_email_waits_for_the_email() -> None:
    store: dict[str, bytes] = {}
    held = _run(_membership(7, (1, "VIP", "add"), email=None), b"7", store, _settings())
    assert _items(held) == []
    assert decode_state(store["7"]).audiences == {"1": "VIP"}
    batch = orjson.dumps(
        {"mpid": 7, "user_identities": {"email": "late@x.io"}, "timestamp_unixtime_ms": T}
    )
    result = process_batch_record(b"7", batch, SOURCE, store.get, _settings())
    (identify,) = _items(result)
    assert identify["attributes"]["SegmentMembership"] == "'1'"
    assert identify["attributes"]["email"] == "late@x.io"


def test_membership_for_another_mpid_is_rekeyed() -> None:
    result = _run(_membership(8, (1, "VIP", "add")), b"7", {}, _settings())
    assert [mpid for mpid, _ in result.rekeyed] == ["8"]
    assert result.operations is None


# --- erasure ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identities",
    [
        [{"identity_type": "email", "identity_value": "a@x.io"}],
        {"email": {"value": "a@x.io", "encoding": "raw"}},
    ],
    ids=["opendsr-list", "mparticle-map"],
)
def test_accepts_erasure_shapes(identities: object) -> None:
    request = parse_erasure_record(
        orjson.dumps(
            {
                "subject_request_type": "erasure",
                "subject_identities": identities,
                "mpid": "7",
            }
        )
    )
    assert (request.mpid, request.emails, request.request_type) == ("7", ("a@x.io",), "erasure")


SHA256_OF_A = hashlib.sha256(b"a@x.io").hexdigest()


@pytest.mark.parametrize(
    ("identity", "emails", "hashed"),
    [
        ({"value": "a@x.io"}, ("a@x.io",), ()),
        ({"value": "a@x.io", "encoding": "raw"}, ("a@x.io",), ()),
        ({"value": "a@x.io", "encoding": "RAW"}, ("a@x.io",), ()),
        ({"value": "a@x.io", "encoding": " Raw\t"}, ("a@x.io",), ()),
        ({"value": SHA256_OF_A, "encoding": "sha256"}, (), (("email", "sha256", SHA256_OF_A),)),
        ({"value": SHA256_OF_A, "encoding": "SHA256"}, (), (("email", "sha256", SHA256_OF_A),)),
        ({"value": "AB12", "encoding": " Sha1 "}, (), (("email", "sha1", "ab12"),)),
        ({"value": "ab12", "encoding": "MD5"}, (), (("email", "md5", "ab12"),)),
    ],
)  # fmt: skip
def test_identity_encodings_are_read_in_any_case(
    identity: dict[str, str], emails: tuple[str, ...], hashed: tuple[tuple[str, ...], ...]
) -> None:
    request = parse_erasure_record(
        orjson.dumps({"subject_request_type": "erasure", "subject_identities": {"email": identity}})
    )
    assert (request.emails, request.hashed) == (emails, hashed)


@pytest.mark.parametrize(
    ("encoding", "shown"),
    [
        ("sha512", "encoding 'sha512'"),
        ("SHA-512", "encoding 'SHA-512'"),
        ("base64", "encoding 'base64'"),
        ("", "an encoding of 0 characters"),
        ("jane.doe@example.com", "an encoding of 20 characters"),
        # a number put in the field (a card, a phone) is never echoed, even after a letter
        ("4111111111111111", "an encoding of 16 characters"),
        ("x4111111111111111", "an encoding of 17 characters"),
        ("t4111111", "an encoding of 8 characters"),
        ("15551234567", "an encoding of 11 characters"),
        (None, "an encoding that is not a string"),
        (256, "an encoding that is not a string"),
    ],
)
def test_an_identity_of_unknown_encoding_rejects_the_request(encoding: object, shown: str) -> None:
    """Never dropped silently, even beside an mpid: the erasure would miss that person."""
    value = orjson.dumps(
        {
            "subject_request_type": "erasure",
            "mpid": 7,
            "subject_identities": {"email": {"value": "a@x.io", "encoding": encoding}},
        }
    )
    with pytest.raises(InvalidRecordError) as caught:
        parse_erasure_record(value)
    assert (caught.value.reason, caught.value.detail) == (
        "erasure_invalid",
        f"subject identity email has {shown}, not raw, md5, sha1 or sha256",
    )


MD5_OF_CZ = hashlib.md5(b"cz").hexdigest()


def _listed(kind: str, value: str, **encoding: str) -> dict[str, str]:
    """One identity of the OpenDSR list form."""
    return {"identity_type": kind, "identity_value": value, **encoding}


@pytest.mark.parametrize(
    ("identity", "emails", "customer_ids", "hashed"),
    [
        (_listed("email", "a@x.io"), ("a@x.io",), (), ()),
        (_listed("email", "a@x.io", identity_format=" RAW "), ("a@x.io",), (), ()),
        (_listed("customer_id", " cz ", encoding="raw"), (), ("cz",), ()),
        (
            _listed("customer_id", MD5_OF_CZ, identity_format="md5"),
            (),
            (),
            (("customer_id", "md5", MD5_OF_CZ),),
        ),
        (
            _listed("customer_id", MD5_OF_CZ, encoding="MD5"),
            (),
            (),
            (("customer_id", "md5", MD5_OF_CZ),),
        ),
        (
            _listed("email", SHA256_OF_A.upper(), identity_format="SHA256"),
            (),
            (),
            (("email", "sha256", SHA256_OF_A),),
        ),
        (
            _listed("email", SHA256_OF_A, encoding="sha256"),
            (),
            (),
            (("email", "sha256", SHA256_OF_A),),
        ),
        (
            _listed("controller_customer_id", "ab12", identity_format="Sha1"),
            (),
            (),
            (("customer_id", "sha1", "ab12"),),
        ),
        # OpenDSR's own field wins over the map's name
        (
            _listed("email", "ab12", identity_format="md5", encoding="raw"),
            (),
            (),
            (("email", "md5", "ab12"),),
        ),
    ],
)
def test_list_form_identity_format_is_read_as_the_map_encoding(
    identity: dict[str, str],
    emails: tuple[str, ...],
    customer_ids: tuple[str, ...],
    hashed: tuple[tuple[str, ...], ...],
) -> None:
    request = parse_erasure_record(
        orjson.dumps({"subject_request_type": "erasure", "subject_identities": [identity]})
    )
    assert (request.emails, request.customer_ids, request.hashed) == (emails, customer_ids, hashed)


@pytest.mark.parametrize(
    ("identity", "state"),
    [
        (
            _listed("customer_id", MD5_OF_CZ, identity_format="md5"),
            UserState(email="zed@example.com", customer_id="cz"),
        ),
        (
            _listed("email", SHA256_OF_A, encoding="sha256"),
            UserState(email=" A@x.io", customer_id="c1"),
        ),
    ],
)
def test_list_form_hashed_identity_erases_its_user_not_the_hash(
    identity: dict[str, str], state: UserState
) -> None:
    """A hashed customer id was once deleted as a person whose id is the hash itself, and the
    real user was left in Customer.io (tester finding F3)."""
    value = orjson.dumps({"subject_request_type": "erasure", "subject_identities": [identity]})
    assert matches(parse_erasure_record(value), state)
    stored = [("71", encode_state(state))]
    result = process_erasure_record(
        None, value, SOURCE, {}.get, record_ms=5000, scan_states=lambda: stored
    )
    assert result.purged == ["71"]
    assert [item["identifiers"] for item in _items(result)] == [
        {"id": state.customer_id},
        {"email": state.email},
    ]


@pytest.mark.parametrize(
    ("field", "encoding", "shown"),
    [
        ("identity_format", "rot13", "encoding 'rot13'"),
        ("encoding", "rot13", "encoding 'rot13'"),
        ("identity_format", "4111111111111111", "an encoding of 16 characters"),
        ("identity_format", None, "an encoding that is not a string"),
    ],
)
def test_list_form_identity_of_unknown_format_rejects_the_request(
    field: str, encoding: object, shown: str
) -> None:
    identity = {"identity_type": "customer_id", "identity_value": "cz", field: encoding}
    value = orjson.dumps(
        {"subject_request_type": "erasure", "mpid": 7, "subject_identities": [identity]}
    )
    with pytest.raises(InvalidRecordError) as caught:
        parse_erasure_record(value)
    assert (caught.value.reason, caught.value.detail) == (
        "erasure_invalid",
        f"subject identity customer_id has {shown}, not raw, md5, sha1 or sha256",
    )


def test_erasure_email_that_is_not_an_address_names_nobody() -> None:
    request = parse_erasure_record(
        b'{"subject_request_type": "erasure", "mpid": 7,'
        b' "subject_identities": {"email": {"value": "N/A"}}}'
    )
    assert (request.mpid, request.emails) == ("7", ())
    with pytest.raises(InvalidRecordError) as caught:
        parse_erasure_record(
            b'{"subject_request_type": "erasure", "subject_identities": {"email": "none"}}'
        )
    assert caught.value.reason == "erasure_invalid"


def test_rejects_erasure_naming_nobody() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        parse_erasure_record(b'{"subject_request_type": "erasure"}')
    assert caught.value.reason == "erasure_invalid"


def test_plan_deletes_every_identifier_current_and_previous() -> None:
    state = UserState(email="a@x.io", customer_id="c2", person_id="c1")
    plan = plan_erasure(ErasureRequest(None, "erasure", "7"), state)
    assert [d["identifiers"] for d in plan.deletes] == [
        {"id": "c2"},
        {"email": "a@x.io"},
        {"id": "c1"},
    ]
    assert plan.purge_state


def test_plan_leaves_out_an_identifier_customerio_cannot_hold() -> None:
    state = UserState(email="a@x.io", customer_id="c" * 151, person_id="a@x.io")
    plan = plan_erasure(ErasureRequest(None, "erasure", "7", emails=("b@x.io",)), state)
    assert [d["identifiers"] for d in plan.deletes] == [{"email": "a@x.io"}, {"email": "b@x.io"}]


def test_plan_for_unknown_user_without_identities_matches_nobody() -> None:
    plan = plan_erasure(ErasureRequest(None, "erasure", "7"), None)
    assert (plan.outcome, plan.deletes, plan.purge_state) == ("no_match", (), False)


def test_access_requests_are_not_acted_on() -> None:
    plan = plan_erasure(ErasureRequest(None, "access", "7", emails=("a@x.io",)), UserState())
    assert plan.outcome == "not_erasure"


def test_erasure_purges_state_and_blocks_older_batches() -> None:
    store: dict[str, bytes] = {}
    batch = orjson.dumps(
        {"mpid": 7, "user_identities": {"email": "a@x.io"}, "timestamp_unixtime_ms": T}
    )
    store.update(process_batch_record(b"7", batch, SOURCE, store.get, _settings()).states)
    erasure = orjson.dumps({"subject_request_type": "erasure", "mpid": 7})
    result = process_erasure_record(b"7", erasure, SOURCE, store.get, record_ms=5000)
    assert result.purged == ["7"]
    assert result.erased == {"7": 5000}
    assert _items(result) == [
        {"type": "person", "identifiers": {"email": "a@x.io"}, "action": "delete"}
    ]
    before = process_batch_record(
        b"7", batch, SOURCE, {}.get, _settings(), erased_at_ms=5000, record_ms=4999
    )
    assert before.operations is None
    assert before.counts["batches", "erased"] == 1
    after = process_batch_record(
        b"7", batch, SOURCE, {}.get, _settings(), erased_at_ms=5000, record_ms=5001
    )
    assert _items(after)[0]["action"] == "identify"  # a new user from scratch


def test_audience_update_sent_before_the_erasure_is_dropped() -> None:
    """An audience update carries the user's email: read after the erasure although it reached
    Kafka before it, it would recreate the erased person (as a batch would)."""
    update = _membership(7, (1, "Gold", "add"))
    before = process_audience_record(
        b"7", update, SOURCE, {}.get, _settings(), erased_at_ms=5000, record_ms=5000
    )
    assert (before.operations, before.states) == (None, {})
    assert before.counts["audience_updates", "erased"] == 1
    after = process_audience_record(
        b"7", update, SOURCE, {}.get, _settings(), erased_at_ms=5000, record_ms=5001
    )
    assert after.counts["audience_updates", "erased"] == 0
    assert _items(after)[0]["action"] == "identify"  # sent after the erasure: a new user
    unknown = process_audience_record(
        b"7", update, SOURCE, {}.get, _settings(), erased_at_ms=5000, record_ms=None
    )
    assert unknown.counts["audience_updates", "erased"] == 1  # no time: not after it


def test_erasure_read_before_the_users_batches_still_blocks_them() -> None:
    """An mpid-only erasure read before any of the user's batches (they are on another topic,
    read in no set order with it): nothing to delete yet, but the marker is set, so the
    batches that reached Kafka before it do not bring the user back (found by the reliability
    workload's erasures)."""
    erasure = orjson.dumps({"subject_request_type": "erasure", "mpid": 7})
    result = process_erasure_record(b"7", erasure, SOURCE, {}.get, record_ms=5000)
    assert (result.operations, result.purged) == (None, [])
    assert result.counts["erasures", "no_match"] == 1
    assert result.erased == {"7": 5000}
    access = orjson.dumps({"subject_request_type": "access", "mpid": 7})
    assert process_erasure_record(b"7", access, SOURCE, {}.get, record_ms=5000).erased == {}


@pytest.mark.parametrize("request_type", [None, "", 7], ids=["missing", "empty", "not-text"])
def test_erasure_request_type_is_never_defaulted(request_type: object) -> None:
    """An erasure is irreversible: a request that does not say ``erasure`` is not one."""
    document: dict[str, object] = {"mpid": 7}
    if request_type is not None:
        document["subject_request_type"] = request_type
    with pytest.raises(InvalidRecordError) as caught:
        parse_erasure_record(orjson.dumps(document))
    assert caught.value.reason == "erasure_invalid"
    assert "subject_request_type" in caught.value.detail


def test_erasure_request_of_another_type_plans_nothing() -> None:
    request = parse_erasure_record(b'{"subject_request_type": "Access", "mpid": 7}')
    assert plan_erasure(request, UserState(email="a@x.io")).outcome == "not_erasure"


def test_worker_dead_letters_an_erasure_without_request_type_and_deletes_nothing() -> None:
    store = {"7": encode_state(UserState(email="a@x.io"))}
    result = process_erasure_record(b"7", b'{"mpid": 7}', SOURCE, store.get, record_ms=5000)
    assert (result.operations, result.purged) == (None, [])
    (letter,) = [codec("dead_letter").decode(value) for value in result.dead_letters]
    assert letter["reason"] == "erasure_invalid"
    assert result.counts["erasures", "rejected"] == 1


HOUR_MS = 3_600_000
NOW_MS = 1_764_400_000_000


@pytest.mark.parametrize(
    ("record_ms", "recorded_ms"),
    [
        (NOW_MS - 5_000, NOW_MS - 5_000),  # stamped before it reached the worker: kept
        (NOW_MS, NOW_MS),
        # a little ahead (normal skew; its batches share the clock): kept, or a batch stamped
        # between the worker's clock and the erasure, sent before it, would pass
        (NOW_MS + 400, NOW_MS + 400),
        (NOW_MS + 5_000, NOW_MS + 5_000),
        (NOW_MS + 5_001, NOW_MS + 5_000),  # beyond the tolerance: clamped
        (NOW_MS + HOUR_MS, NOW_MS + 5_000),  # an hour ahead would have dropped an hour
        (None, NOW_MS),  # no timestamp: when the worker applied it
    ],
)
def test_erasure_time_is_at_most_the_tolerance_ahead_of_the_workers_clock(
    record_ms: int | None, recorded_ms: int
) -> None:
    assert erasure_time(record_ms, NOW_MS) == recorded_ms


def test_an_erasure_stamped_in_the_future_does_not_drop_the_users_next_batches() -> None:
    erasure = orjson.dumps({"subject_request_type": "erasure", "mpid": 7})
    result = process_erasure_record(
        b"7", erasure, SOURCE, {}.get, record_ms=NOW_MS + HOUR_MS, clock=lambda: NOW_MS
    )
    assert result.erased == {"7": NOW_MS + CLOCK_AHEAD_TOLERANCE_MS}
    batch = orjson.dumps({"mpid": 7, "user_identities": {"email": "a@b.co"}, "events": []})
    after = process_batch_record(
        b"7",
        batch,
        SOURCE,
        {}.get,
        _settings(),
        erased_at_ms=NOW_MS + CLOCK_AHEAD_TOLERANCE_MS,
        record_ms=NOW_MS + CLOCK_AHEAD_TOLERANCE_MS + 1,
    )
    assert after.counts["batches", "erased"] == 0
    assert "7" in after.states
