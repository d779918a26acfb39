"""Identity markers (breaker6 finding 1): an erasure by identity (a Firehose DSR names no mpid)
read before the user's earlier batches, with nothing of the user on the partition yet, still
drops those batches when they come (app.core.erasure.request_marker_keys,
app.core.pipeline._erased_by_identity)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import orjson
import pytest

from app.core.erasure import identity_marker_key, identity_marker_keys, parse_erasure_record
from app.core.erasure import request_marker_keys as marker_keys
from app.core.pipeline import (
    IngestResult,
    process_audience_record,
    process_batch_record,
    process_erasure_record,
)
from app.core.state import UserState, encode_state
from app.records import SourcePosition
from app.settings import load_settings
from app.wiring import core_options

SOURCE = SourcePosition("mparticle-batches", 0, 5)
ERASED_MS = 5_000
EMAIL = "Victim.A@Example.com"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _request(**identities: object) -> bytes:
    return orjson.dumps({"subject_request_type": "erasure", "subject_identities": identities})


EMAIL_KEY = identity_marker_key("email", _sha256("victim.a@example.com"))
CUSTOMER_KEY = identity_marker_key("customer_id", _sha256("C-1"))


@pytest.mark.parametrize(
    ("identities", "expected"),
    [
        ({"email": {"encoding": "raw", "value": EMAIL}}, [EMAIL_KEY]),
        ({"email": {"encoding": "raw", "value": " victim.a@EXAMPLE.com "}}, [EMAIL_KEY]),
        ({"controller_customer_id": {"encoding": "raw", "value": "C-1"}}, [CUSTOMER_KEY]),
        (
            {"email": {"value": EMAIL}, "customer_id": {"value": "C-1"}},
            [EMAIL_KEY, CUSTOMER_KEY],
        ),
        (  # mParticle hashes the trimmed lower-case email: the same key as the raw one
            {"email": {"encoding": "sha256", "value": _sha256("victim.a@example.com").upper()}},
            [EMAIL_KEY],
        ),
        ({"email": {"encoding": "md5", "value": "0" * 32}}, []),  # not brought to the key
        (
            {"email": {"encoding": "raw", "value": "N/A"}, "customer_id": {"value": "C-1"}},
            [CUSTOMER_KEY],
        ),
    ],
    ids=["raw", "case-and-space", "customer-id", "both", "sha256", "md5", "placeholder"],
)
def test_marker_keys_of_a_request(identities: dict[str, object], expected: list[str]) -> None:
    keys = marker_keys(parse_erasure_record(_request(**identities)))
    assert keys == expected
    assert all(re.fullmatch(r"id:[0-9a-f]{32}", key) for key in keys)


def test_marker_keys_of_a_record_hold_no_identity() -> None:
    """The keys of a batch's own identities are the request's, and name nobody in clear."""
    keys = identity_marker_keys(EMAIL, "C-1")
    assert keys == [EMAIL_KEY, CUSTOMER_KEY]
    assert identity_marker_keys(None, "") == []
    assert identity_marker_key("email", "ab") != identity_marker_key("customer_id", "ab")
    assert not any("victim" in key.lower() or "C-1" in key for key in keys)


@pytest.mark.parametrize(
    "request_value",
    [
        _request(email={"encoding": "raw", "value": EMAIL}),
        orjson.dumps(
            {
                "subject_request_type": "erasure",
                "mpid": 9,
                "subject_identities": [{"identity_type": "email", "identity_value": EMAIL}],
            }
        ),
    ],
    ids=["firehose-no-match", "mpid-and-email"],
)
def test_an_erasure_leaves_a_marker_per_identity_whether_or_not_it_matched(
    request_value: bytes,
) -> None:
    key = b"9" if b'"mpid"' in request_value else None
    result = process_erasure_record(key, request_value, SOURCE, {}.get, record_ms=ERASED_MS)
    assert result.erased[EMAIL_KEY] == ERASED_MS
    assert result.counts["erasures", "no_match"] + result.counts["erasures", "erased"] == 1


def test_an_access_request_leaves_no_marker() -> None:
    access = orjson.dumps(
        {"subject_request_type": "access", "subject_identities": {"email": {"value": EMAIL}}}
    )
    assert process_erasure_record(None, access, SOURCE, {}.get, record_ms=ERASED_MS).erased == {}


def test_a_matched_user_is_erased_and_the_identity_marked() -> None:
    store = {"7": encode_state(UserState(email="victim.a@example.com"))}
    result = process_erasure_record(
        None,
        _request(email={"value": EMAIL}),
        SOURCE,
        store.get,
        record_ms=ERASED_MS,
        scan_states=lambda: list(store.items()),
    )
    assert result.purged == ["7"]
    assert result.erased == {"7": ERASED_MS, EMAIL_KEY: ERASED_MS}


BATCH = orjson.dumps({"mpid": 7, "user_identities": {"email": EMAIL}, "events": []})
NO_EMAIL_BATCH = orjson.dumps({"mpid": 7, "user_identities": {}, "events": []})
CUSTOMER_BATCH = orjson.dumps({"mpid": 7, "user_identities": {"customer_id": "C-1"}, "events": []})
MEMBERSHIP = orjson.dumps(
    {
        "mpid": 7,
        "user_identities": [{"type": "email", "value": EMAIL}],
        "audiences": [{"audience_id": 1, "audience_name": "Gold", "action": "add"}],
    }
)


def _batch(value: bytes, markers: dict[str, int], record_ms: int | None) -> IngestResult:
    options = core_options(load_settings(forwarding_enabled=False))
    return process_batch_record(
        b"7", value, SOURCE, {}.get, options, record_ms=record_ms, identity_erased_at=markers.get
    )


def _audience(value: bytes, markers: dict[str, int], record_ms: int | None) -> IngestResult:
    options = core_options(load_settings(forwarding_enabled=False))
    return process_audience_record(
        b"7", value, SOURCE, {}.get, options, record_ms=record_ms, identity_erased_at=markers.get
    )


Process = Callable[[bytes, dict[str, int], int | None], IngestResult]


@pytest.mark.parametrize(
    ("process", "counter", "value", "markers", "record_ms", "dropped"),
    [
        (_batch, "batches", BATCH, {EMAIL_KEY: ERASED_MS}, ERASED_MS - 1, True),
        (_batch, "batches", BATCH, {EMAIL_KEY: ERASED_MS}, ERASED_MS, True),
        (_batch, "batches", BATCH, {EMAIL_KEY: ERASED_MS}, None, True),  # no time: not after
        (_batch, "batches", BATCH, {EMAIL_KEY: ERASED_MS}, ERASED_MS + 1, False),
        (_batch, "batches", BATCH, {}, ERASED_MS - 1, False),
        (_batch, "batches", BATCH, {CUSTOMER_KEY: ERASED_MS}, ERASED_MS - 1, False),
        (_batch, "batches", CUSTOMER_BATCH, {CUSTOMER_KEY: ERASED_MS}, ERASED_MS - 1, True),
        (_batch, "batches", NO_EMAIL_BATCH, {EMAIL_KEY: ERASED_MS}, ERASED_MS - 1, False),
        (_audience, "audience_updates", MEMBERSHIP, {EMAIL_KEY: ERASED_MS}, ERASED_MS, True),
        (_audience, "audience_updates", MEMBERSHIP, {EMAIL_KEY: ERASED_MS}, ERASED_MS + 1, False),
        (_audience, "audience_updates", MEMBERSHIP, {}, ERASED_MS, False),
    ],
    ids=[
        "batch-before",
        "batch-same-ms",
        "batch-no-time",
        "batch-after",
        "batch-no-marker",
        "batch-other-identity-marked",
        "batch-customer-id",
        "batch-without-identity",
        "audience-before",
        "audience-after",
        "audience-no-marker",
    ],
)
def test_admit_with_identity_markers(
    process: Process,
    counter: str,
    value: bytes,
    markers: dict[str, int],
    record_ms: int | None,
    dropped: bool,
) -> None:
    """Dropped: counted ``erased``, nothing written but the user's mpid marker at the
    identity's erasure time (so their identity-less earlier records drop too); admitted: a
    user as without markers (after the erasure: a new person)."""
    result = process(value, markers, record_ms)
    assert result.counts[counter, "erased"] == dropped
    if dropped:
        assert (result.operations, result.states, result.erased) == (None, {}, {"7": ERASED_MS})
    else:
        assert result.erased == {}
        assert result.states  # the user is (re)created from this record


def test_the_users_later_identity_less_batch_drops_by_the_mpid_marker() -> None:
    """After the identity drop, the mpid marker it put drops the user's pre-erasure batch
    that names no identity (as an mpid erasure would)."""
    first = _batch(BATCH, {EMAIL_KEY: ERASED_MS}, ERASED_MS - 2)
    options = core_options(load_settings(forwarding_enabled=False))
    later = process_batch_record(
        b"7",
        NO_EMAIL_BATCH,
        SOURCE,
        {}.get,
        options,
        erased_at_ms=first.erased["7"],
        record_ms=ERASED_MS - 1,
        identity_erased_at={EMAIL_KEY: ERASED_MS}.get,
    )
    assert later.counts["batches", "erased"] == 1
    assert later.states == {}
