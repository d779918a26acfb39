"""Erasure request correctness (breaker findings on identity markers, branch fixdsr2).

1. every identity a request names is matched, marked and deleted (not the last of a kind);
2. a request matching no stored user deletes by each raw identity (customer id AND email);
3. a user state folded from pre-erasure records is purged when an identity marker drops the
   user's identified pre-erasure record (app.core.pipeline._erased_by_identity);
4. a state the request matches and a record its marker drops agree on the email's form;
5. one erasure time per request;
6. ``erased`` counts a request that erased a stored user, ``no_match`` one that found none.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from app.core.avro import codec
from app.core.erasure import (
    identity_marker_keys,
    matches,
    parse_erasure_record,
    request_marker_keys,
)
from app.core.pipeline import (
    IngestResult,
    process_audience_record,
    process_batch_record,
    process_erasure_record,
)
from app.core.state import UserState, decode_state, encode_state
from app.records import SourcePosition
from app.settings import load_settings
from app.wiring import core_options

ERASED_MS = 50_000
OPTIONS = core_options(load_settings(forwarding_enabled=False))


def _dsr(identities: object, **fields: object) -> bytes:
    return orjson.dumps(
        {"subject_request_type": "erasure", "subject_identities": identities, **fields}
    )


def _deletes(result: IngestResult) -> list[dict[str, str]]:
    assert result.operations is not None
    record = codec("operation_batch").decode(result.operations[1])
    items = [orjson.loads(op["item"]) for op in record["operations"]]
    assert all(item["action"] == "delete" for item in items)
    return [item["identifiers"] for item in items]


@dataclass
class _Partition:
    """One partition's tables, written as the agents write an ``IngestResult`` (states, purges,
    markers), with the erasure step's scan and the batch step's marker reads."""

    users: dict[str, bytes] = field(default_factory=dict)
    erasures: dict[str, int] = field(default_factory=dict)
    offsets: Any = field(default_factory=lambda: itertools.count(1))

    def apply(self, result: IngestResult) -> IngestResult:
        self.users.update(result.states)
        for mpid in result.purged:
            self.users.pop(mpid, None)
        self.erasures.update(result.erased)
        return result

    def erasure(self, value: bytes, record_ms: int) -> IngestResult:
        source = SourcePosition("mparticle-erasure", 0, next(self.offsets))
        return self.apply(
            process_erasure_record(
                None,
                value,
                source,
                self.users.get,
                record_ms=record_ms,
                scan_states=lambda: list(self.users.items()),
            )
        )

    def batch(self, document: dict[str, Any], record_ms: int) -> IngestResult:
        source = SourcePosition("mparticle-batches", 0, next(self.offsets))
        key = str(document["mpid"]).encode()
        return self.apply(
            process_batch_record(
                key,
                orjson.dumps({"events": [], **document}),
                source,
                self.users.get,
                OPTIONS,
                erased_at_ms=self.erasures.get(key.decode()),
                record_ms=record_ms,
                identity_erased_at=self.erasures.get,
            )
        )


# --- 1. every named identity --------------------------------------------------------------


@pytest.mark.parametrize(
    ("identities", "stored"),
    [
        (
            [
                {"identity_type": "email", "identity_value": "one@example.com"},
                {"identity_type": "email", "identity_value": "two@example.com"},
            ],
            {"1": UserState(email="one@example.com"), "2": UserState(email="two@example.com")},
        ),
        (
            [
                {"identity_type": "customer_id", "identity_value": "C-1"},
                {"identity_type": "customer_id", "identity_value": "C-2"},
            ],
            {"1": UserState(customer_id="C-1"), "2": UserState(customer_id="C-2")},
        ),
        (
            {"customer_id": {"value": "C-1"}, "controller_customer_id": {"value": "C-2"}},
            {"1": UserState(customer_id="C-1"), "2": UserState(customer_id="C-2")},
        ),
    ],
    ids=["list-two-emails", "list-two-customer-ids", "map-both-customer-id-kinds"],
)
def test_every_identity_of_a_kind_is_matched_marked_and_deleted(
    identities: object, stored: dict[str, UserState]
) -> None:
    partition = _Partition(users={mpid: encode_state(s) for mpid, s in stored.items()})
    request = parse_erasure_record(_dsr(identities))
    assert all(matches(request, state) for state in stored.values())
    result = partition.erasure(_dsr(identities), ERASED_MS)
    assert sorted(result.purged) == ["1", "2"]
    assert partition.users == {}
    for state in stored.values():  # each identity left its own marker
        for key in identity_marker_keys(state.email, state.customer_id):
            assert result.erased[key] == ERASED_MS
    expected = [{"email": s.email} if s.email else {"id": s.customer_id} for s in stored.values()]
    assert sorted(map(str, _deletes(result))) == sorted(map(str, expected))


def test_a_batch_of_either_named_email_is_dropped_when_read_after_the_request() -> None:
    """Neither person was on the partition yet: both addresses' lagging batches drop."""
    partition = _Partition()
    partition.erasure(
        _dsr(
            [
                {"identity_type": "email", "identity_value": "one@example.com"},
                {"identity_type": "email", "identity_value": "two@example.com"},
            ]
        ),
        ERASED_MS,
    )
    for mpid, email in ((1, "one@example.com"), (2, "two@example.com")):
        result = partition.batch({"mpid": mpid, "user_identities": {"email": email}}, ERASED_MS - 1)
        assert result.counts["batches", "erased"] == 1
    assert partition.users == {}


def test_duplicates_are_named_once() -> None:
    request = parse_erasure_record(
        _dsr(
            [
                {"identity_type": "email", "identity_value": "one@example.com"},
                {"identity_type": "email", "identity_value": " one@example.com "},
                {"identity_type": "email", "identity_value": "N/A"},
            ]
        )
    )
    assert request.emails == ("one@example.com",)
    assert len(request_marker_keys(request)) == 1


# --- 2. an unmatched request deletes by each raw identity ---------------------------------


def test_an_unmatched_request_deletes_by_customer_id_and_by_email() -> None:
    result = _Partition().erasure(
        _dsr({"email": {"value": "jane@example.com"}, "customer_id": {"value": "C-9"}}),
        ERASED_MS,
    )
    assert _deletes(result) == [{"id": "C-9"}, {"email": "jane@example.com"}]


def test_an_unmatched_request_leaves_out_an_identifier_over_150_bytes() -> None:
    result = _Partition().erasure(
        _dsr({"email": {"value": "jane@example.com"}, "customer_id": {"value": "c" * 151}}),
        ERASED_MS,
    )
    assert _deletes(result) == [{"email": "jane@example.com"}]


# --- 3. the state folded from pre-erasure records goes with the identity drop --------------

DSR_BY_EMAIL = _dsr({"email": {"encoding": "raw", "value": "victim@example.com"}})
ANONYMOUS = {"mpid": 7, "user_identities": {}, "user_attributes": {"secret": "pre-erasure"}}
IDENTIFIED = {"mpid": 7, "user_identities": {"email": "victim@example.com"}}
AFTER = {"mpid": 7, "user_identities": {"email": "new@example.com"}}


def _identify_attributes(result: IngestResult) -> dict[str, Any]:
    assert result.operations is not None
    record = codec("operation_batch").decode(result.operations[1])
    (identify,) = [
        item
        for item in (orjson.loads(op["item"]) for op in record["operations"])
        if item["action"] == "identify"
    ]
    attributes: dict[str, Any] = identify["attributes"]
    return attributes


def test_an_identity_drop_purges_the_state_of_the_users_earlier_anonymous_batch() -> None:
    """DSR by email read first; the user's pre-DSR batch without identities creates a state;
    their identified pre-DSR batch is dropped by the marker: the state goes with it, so the
    person the user becomes after the DSR starts without the erased attributes."""
    partition = _Partition()
    partition.erasure(DSR_BY_EMAIL, ERASED_MS)
    assert partition.batch(ANONYMOUS, ERASED_MS - 20).states  # admitted: nothing marks it
    dropped = partition.batch(IDENTIFIED, ERASED_MS - 10)
    assert dropped.counts["batches", "erased"] == 1
    assert (dropped.purged, dropped.erased) == (["7"], {"7": ERASED_MS})
    assert "7" not in partition.users
    after = partition.batch(AFTER, ERASED_MS + 10)
    assert "secret" not in _identify_attributes(after)


def test_a_state_only_of_records_after_the_erasure_is_kept() -> None:
    """A post-DSR record of the user read before their pre-DSR one (another topic, or the
    re-key topic): its state is the new person's and stays."""
    partition = _Partition()
    partition.erasure(DSR_BY_EMAIL, ERASED_MS)
    partition.batch(AFTER, ERASED_MS + 10)
    kept = partition.users["7"]
    dropped = partition.batch(IDENTIFIED, ERASED_MS - 10)
    assert dropped.counts["batches", "erased"] == 1
    assert (dropped.purged, dropped.erased) == ([], {"7": ERASED_MS})
    assert partition.users["7"] == kept


@pytest.mark.parametrize(
    ("first_record_ms", "purged"),
    [(None, True), (ERASED_MS - 1, True), (ERASED_MS, True), (ERASED_MS + 1, False)],
    ids=["unknown", "before", "same-ms", "after"],
)
def test_which_states_an_identity_drop_purges(first_record_ms: int | None, purged: bool) -> None:
    """Purged unless every record folded in reached Kafka after the erasure (None: unknown,
    e.g. a state from before ``first_record_ms`` existed, or a mix of both: the earliest)."""
    partition = _Partition(users={"7": encode_state(UserState(first_record_ms=first_record_ms))})
    partition.erasure(DSR_BY_EMAIL, ERASED_MS)
    dropped = partition.batch(IDENTIFIED, ERASED_MS - 10)
    assert dropped.purged == (["7"] if purged else [])


def test_first_record_ms_is_the_earliest_kafka_time_folded_in() -> None:
    partition = _Partition()
    partition.batch(ANONYMOUS, 300)
    partition.batch({**ANONYMOUS, "user_attributes": {"b": 1}}, 100)
    partition.batch({**ANONYMOUS, "user_attributes": {"c": 1}}, 200)
    assert decode_state(partition.users["7"]).first_record_ms == 100


def test_first_record_ms_unknown_once_a_record_had_no_time() -> None:
    options = OPTIONS
    store: dict[str, bytes] = {}
    for offset, record_ms in enumerate((100, None, 50)):
        store.update(
            process_batch_record(
                b"7",
                orjson.dumps({**ANONYMOUS, "user_attributes": {"n": offset}, "events": []}),
                SourcePosition("mparticle-batches", 0, offset),
                store.get,
                options,
                record_ms=record_ms,
            ).states
        )
    assert decode_state(store["7"]).first_record_ms is None


# --- 4. one email form for matching and markers --------------------------------------------


@pytest.mark.parametrize(
    ("requested", "stored"),
    [
        ("Victim@Example.com", "victim@example.com"),
        (" victim@example.com", "VICTIM@EXAMPLE.COM "),
        ("STRASSE@example.com", "straße@example.com"),  # casefold says equal, lower does not
        ("straße@example.com", "STRAßE@example.com"),
        ("other@example.com", "victim@example.com"),
    ],
)
def test_a_matched_state_and_a_marked_record_agree(requested: str, stored: str) -> None:
    request = parse_erasure_record(_dsr({"email": {"value": requested}}))
    marked = set(request_marker_keys(request)) & set(identity_marker_keys(stored, None))
    assert matches(request, UserState(email=stored)) == bool(marked)


NFC = "jos\u00e9@example.com"  # é precomposed
NFD = "jose\u0301@example.com"  # e + combining acute accent: the same address


@pytest.mark.parametrize(
    ("requested", "stored"),
    [
        (NFD, NFC),
        (NFC, NFD),
        (NFD.upper(), NFC),
        ("\u00c5ngstr\u00f6m@ex\u00e4mple.com", "A\u030angstro\u0308m@exa\u0308mple.com"),
    ],
)
def test_an_email_in_another_unicode_normal_form_is_the_same_subject(
    requested: str, stored: str
) -> None:
    request = parse_erasure_record(_dsr({"email": {"value": requested}}))
    assert matches(request, UserState(email=stored))
    assert set(request_marker_keys(request)) & set(identity_marker_keys(stored, None))


def test_a_sha256_request_of_the_nfc_form_matches_a_state_stored_in_nfd() -> None:
    digest = hashlib.sha256(NFC.encode()).hexdigest()
    request = parse_erasure_record(_dsr({"email": {"encoding": "sha256", "value": digest}}))
    assert matches(request, UserState(email=NFD))


# --- 5. one time per request ----------------------------------------------------------------


def test_every_marker_of_one_request_holds_the_same_time() -> None:
    ticks = itertools.count(1_000)
    store = {"7": encode_state(UserState(email="victim@example.com", customer_id="C-7"))}
    result = process_erasure_record(
        None,
        _dsr({"email": {"value": "victim@example.com"}, "customer_id": {"value": "C-7"}}),
        SourcePosition("mparticle-erasure", 0, 1),
        store.get,
        record_ms=None,  # no Kafka time: the worker's clock, read once
        scan_states=lambda: list(store.items()),
        clock=lambda: next(ticks),
    )
    assert len(result.erased) == 3  # the mpid and two identities
    assert set(result.erased.values()) == {1_000}


# --- 6. what erased / no_match count ------------------------------------------------------


def test_a_request_matching_no_stored_user_counts_no_match_and_still_deletes() -> None:
    result = _Partition().erasure(_dsr({"email": {"value": "jane@example.com"}}), ERASED_MS)
    assert (result.counts["erasures", "no_match"], result.counts["erasures", "erased"]) == (1, 0)
    assert _deletes(result) == [{"email": "jane@example.com"}]


def test_a_request_erasing_a_stored_user_counts_erased() -> None:
    partition = _Partition(users={"7": encode_state(UserState(email="jane@example.com"))})
    result = partition.erasure(_dsr({"email": {"value": "jane@example.com"}}), ERASED_MS)
    assert (result.counts["erasures", "no_match"], result.counts["erasures", "erased"]) == (0, 1)


def test_an_identity_drop_of_an_audience_update_purges_the_state_too() -> None:
    partition = _Partition()
    partition.erasure(DSR_BY_EMAIL, ERASED_MS)
    partition.batch(ANONYMOUS, ERASED_MS - 20)
    update = orjson.dumps(
        {
            "mpid": 7,
            "user_identities": [{"type": "email", "value": "victim@example.com"}],
            "audiences": [{"audience_id": 1, "audience_name": "Gold", "action": "add"}],
        }
    )
    result = process_audience_record(
        b"7",
        update,
        SourcePosition("mparticle-audiences", 0, 1),
        partition.users.get,
        OPTIONS,
        record_ms=ERASED_MS - 10,
        identity_erased_at=partition.erasures.get,
    )
    assert result.counts["audience_updates", "erased"] == 1
    assert (result.purged, result.erased) == (["7"], {"7": ERASED_MS})


def test_the_mpid_marker_takes_the_latest_of_the_records_identity_markers() -> None:
    partition = _Partition()
    partition.erasure(_dsr({"customer_id": {"value": "C-7"}}), ERASED_MS + 5)
    partition.erasure(DSR_BY_EMAIL, ERASED_MS)
    both = {"mpid": 7, "user_identities": {"email": "victim@example.com", "customer_id": "C-7"}}
    assert partition.batch(both, ERASED_MS - 10).erased == {"7": ERASED_MS + 5}
