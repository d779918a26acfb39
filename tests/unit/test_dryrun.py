"""``mpcio dry-run``: items on stdout in order, bad lines on stderr with their line numbers."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.core.pipeline import process_audience_record, process_batch_record, process_erasure_record
from app.ops.dryrun import dry_run, line_kind
from app.records import SourcePosition, decode_dead_letter
from app.settings import load_settings
from app.sink.planning import plan_chunk
from app.wiring import core_options
from tests.unit.operations_records import Fetched

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "mparticle-batches.jsonl"


def _dry_run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "app", "dry-run", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_dry_run_prints_items_and_reports_bad_lines() -> None:
    result = _dry_run(str(SAMPLE))
    assert result.returncode == 1  # the sample holds invalid lines on purpose
    items = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert items, "expected operations for the valid lines"
    assert all(item["type"] == "person" for item in items)
    assert items[0]["action"] == "identify"
    errors = result.stderr.decode().splitlines()
    assert "line 5: events_not_a_list: events is an object" in errors
    assert any(line.startswith("line 10: invalid_json:") for line in errors)


def test_dry_run_flags_override_settings() -> None:
    line = orjson.dumps({
        "mpid": 1, "user_identities": {"email": "a@example.com"},
        "user_attributes": {"$FirstName": "A", "plan": "pro"},
        "application_info": {"os": "IOS"}, "timestamp_unixtime_ms": 1_764_400_000_000,
    })  # fmt: skip
    default = orjson.loads(_dry_run("-", stdin=line).stdout)
    assert default["attributes"]["plan"] == "pro"
    assert "created_at" not in default["attributes"]
    flipped = orjson.loads(
        _dry_run("-", "--no-include-user-attributes", "--send-created-at", stdin=line).stdout
    )
    assert "plan" not in flipped["attributes"]
    assert flipped["attributes"]["created_at"] == 1_764_400_000


def test_dry_run_unreadable_file_fails() -> None:
    result = _dry_run("/nonexistent/file.jsonl")
    assert result.returncode == 1
    assert b"cannot read" in result.stderr


ANN = {"mpid": 5, "timestamp_unixtime_ms": 1_764_400_000_000,
       "user_identities": {"email": "ann@example.com", "customer_id": "c-5"}}  # fmt: skip
AUDIENCE = {"mpid": 5, "audiences": [{"audience_id": 12, "audience_name": "VIPs",
                                      "action": "add"}]}  # fmt: skip
ERASURE = {"subject_request_type": "erasure", "mpid": 5, "subject_request_id": "r-1"}


def _lines(*documents: Any) -> bytes:
    return b"".join(orjson.dumps(document) + b"\n" for document in documents)


def _items(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        (ANN, "batch"),
        ([ANN, ANN], "batch"),
        ({"mpid": 5, "events": []}, "batch"),
        (AUDIENCE, "audience"),
        ([AUDIENCE], "audience"),
        ({"user_profiles": [AUDIENCE]}, "audience"),
        (ERASURE, "erasure"),
        ({"type": "dsr_processing_request", "subject_request_type": "erasure"}, "firehose"),
        ({"type": "audience_membership_change_request", "user_profiles": []}, "firehose"),
        ({"type": "something_else", "mpid": 5}, "firehose"),  # refused as an unknown type
        ({"subject_request_type": "access", "mpid": 5}, "erasure"),
        ("text", "batch"),
        ([], "batch"),
    ],
)
def test_line_kind_tells_the_three_inputs_apart(document: Any, kind: str) -> None:
    assert line_kind(document) == kind


def test_dry_run_audience_and_erasure_lines() -> None:
    result = _dry_run("-", stdin=_lines(ANN, AUDIENCE, ERASURE, ANN))
    assert result.returncode == 0
    assert [(item["action"], item["identifiers"]) for item in _items(result)] == [
        ("identify", {"id": "c-5"}),
        ("identify", {"id": "c-5"}),
        ("delete", {"id": "c-5"}),
        ("delete", {"email": "ann@example.com"}),
        ("identify", {"id": "c-5"}),  # after the erasure, whatever its time: a new person
    ]
    assert _items(result)[1]["attributes"]["SegmentMembership"] == "'12'"
    assert "In VIPs" not in _items(result)[1]["attributes"]
    assert result.stderr.decode().splitlines() == [
        (
            "dry-run: 4 lines, 0 invalid, 2 batches, 1 audience updates, 1 erasures, "
            "0 Firehose messages, 5 operations"
        ),
    ]


def test_dry_run_one_attribute_per_audience_flag() -> None:
    result = _dry_run("-", "--one-attribute-per-audience", stdin=_lines(ANN, AUDIENCE))
    assert _items(result)[1]["attributes"]["In VIPs"] is True


def test_dry_run_exit_code_gates_on_invalid_lines() -> None:
    valid = _dry_run("-", stdin=_lines(ANN, AUDIENCE))
    invalid = _dry_run("-", stdin=_lines(ANN, {"subject_request_type": "erasure"}))
    assert (valid.returncode, invalid.returncode) == (0, 1)
    assert b"line 2: erasure_invalid:" in invalid.stderr


@pytest.mark.parametrize(
    ("limit", "code"), [(None, 0), ("1", 0), ("0", 1)], ids=["unlimited", "within", "over"]
)
def test_replay_max_invalid_exit_code(limit: str | None, code: int) -> None:
    flags = [] if limit is None else ["--max-invalid", limit]
    result = subprocess.run(
        [sys.executable, "-m", "app", "replay", "-", "--dry-run", *flags],
        input=b'{"mpid": 1}\nnot json\n{"mpid": 2}\n',
        capture_output=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == code, result.stderr
    assert (b"--max-invalid" in result.stderr) == (code == 1)


# The three cases of issue 16: the line, what `mpcio dry-run` prints on stdout (event ids are
# checked for shape: their value is a hash) and the note it prints on stderr.
GIFT = {"type": "person", "identifiers": {"email": "gift@example.com"}}
CASES = {
    "user-tag": (
        {"mpid": 108, "environment": "production", "timestamp_unixtime_ms": 1764400000000,
         "user_identities": [{"identity_type": "email", "identity": "vip@example.com"}],
         "user_attributes": {"$FirstName": "Val", "platinum_member": None}, "events": []},
        [{"type": "person", "identifiers": {"email": "vip@example.com"}, "action": "identify",
          "attributes": {"email": "vip@example.com", "first_name": "Val",
                         "platinum_member": True},
          "timestamp": 1764400000}],
        None,
    ),
    "event-data-routing-keys": (
        {"mpid": 109, "environment": "production", "timestamp_unixtime_ms": 1764400000000,
         "user_identities": [{"identity_type": "email", "identity": "gift@example.com"}],
         "events": [{"event_type": "custom_event", "data": {
             "event_name": "Gift", "source_message_id": "m-1",
             "custom_attributes": {"recipient": "Mom", "reply_to": "n/a", "sku": "G-1"}}}]},
        [{**GIFT, "action": "identify", "attributes": {"email": "gift@example.com"},
          "timestamp": 1764400000},
         {**GIFT, "action": "event", "name": "Gift", "id": "<ulid>", "timestamp": 1764400000,
          "attributes": {"mp_recipient": "Mom", "mp_reply_to": "n/a", "sku": "G-1"}}],
        "line 1: note: mpid 109: event_data_name_renamed=2",
    ),
    "placeholder-email": (
        {"mpid": 110, "environment": "production", "timestamp_unixtime_ms": 1764400000000,
         "user_identities": [{"identity_type": "email", "identity": "N/A"}],
         "events": [{"event_type": "custom_event", "data": {"event_name": "Viewed"}}]},
        [],
        "line 1: note: mpid 110: not forwarded: skipped_no_email; email_invalid=1",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_dry_run_prints_the_right_items_for_the_three_real_world_cases(case: str) -> None:
    document, expected, note = CASES[case]
    result = _dry_run("-", stdin=_lines(document))
    assert result.returncode == 0
    printed = _items(result)
    for item in printed:
        if "id" in item:
            assert re.fullmatch(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", item["id"])
            item["id"] = "<ulid>"
    assert printed == expected
    notes = result.stderr.decode().splitlines()[:-1]  # the last line is the summary
    assert notes == ([] if note is None else [note])


def test_dry_run_masks_addresses_in_bad_line_reports() -> None:
    # an address where the mpid belongs is not quoted in the reason (only its length)
    line = orjson.dumps({"mpid": "john.doe@example.com", "events": []})
    result = _dry_run("-", stdin=line)
    errors = result.stderr.decode()
    assert result.returncode == 1
    assert "line 1: mpid_invalid: mpid is not a signed 64-bit integer: a string of 20" in errors
    assert "john.doe" not in errors


# What the worker sends for the same records: its pure steps (app.core.pipeline) against
# in-memory tables, and the sink's planning of the operations records they write. Each line
# of a case is (input topic, document); a user's records are keyed by their mpid and a DSR
# without one is keyless, as the ingress keys them. Each line reaches Kafka after the line
# before it, as `mpcio replay` sends them (dry-run's module docstring).
T0 = 1_764_400_000_000
_AFTER = T0 + 60_000
_LONG_ID = "c" * 151  # over Customer.io's 150 bytes


def _batch(mpid: int, at: int, *events: dict[str, Any], **identities: str) -> dict[str, Any]:
    return {"mpid": mpid, "environment": "production", "timestamp_unixtime_ms": at,
            "user_identities": identities, "user_attributes": {"plan": "pro"},
            "events": list(events)}  # fmt: skip


def _event(name: str, at: int) -> dict[str, Any]:
    return {"event_type": "custom_event",
            "data": {"event_name": name, "timestamp_unixtime_ms": at}}  # fmt: skip


_OPT_OUT = {"event_type": "opt_out", "data": {"is_opted_out": True, "timestamp_unixtime_ms": T0}}
_MEMBERSHIP = {"mpid": 31, "audiences": [{"audience_id": 4, "audience_name": "Churn risk",
                                          "action": "add"}]}  # fmt: skip
_REDELIVERED = _batch(41, T0, _event("Paid", T0), email="rae@example.com")

Line = tuple[str, Any]
PIPELINE_CASES: dict[str, tuple[list[Line], list[str]]] = {
    "normal batches": (
        [("batches", _batch(11, T0, _event("Viewed", T0), email="ida@example.com")),
         ("batches", _batch(11, _AFTER, _event("Bought", _AFTER), email="ida@example.com",
                            customer_id="c-11"))],
        [],
    ),
    "mpid 0": (
        [("batches", _batch(0, T0, _event("Viewed", T0), email="nobody@example.com")),
         ("batches", _batch(12, T0, email="jo@example.com"))],
        ["line 1: mpid_missing"],
    ),
    "customer id over 150 bytes": (
        [("batches", _batch(13, T0, _event("Viewed", T0), email="kim@example.com",
                            customer_id=_LONG_ID))],
        ["line 1: person_id_invalid"],
    ),
    "opted-out user": (
        [("batches", _batch(21, T0, _OPT_OUT, _event("Viewed", T0), email="lu@example.com")),
         ("batches", _batch(21, _AFTER, _event("Bought", _AFTER), email="lu@example.com"))],
        [],
    ),
    "redelivered batch (mParticle sends it again: a new record)": (
        [("batches", _REDELIVERED), ("batches", _REDELIVERED)],
        [],
    ),
    "erasure, then the erased user's older and newer batches": (
        [("batches", _batch(51, _AFTER, _event("Viewed", _AFTER), email="max@example.com")),
         ("erasure", {"subject_request_type": "erasure", "mpid": 51}),
         ("batches", _batch(51, T0, _event("Late", T0), email="max@example.com")),
         ("batches", _batch(51, _AFTER + 1, email="max@example.com"))],
        [],
    ),
    "erasure by identity, then an older batch of that identity": (
        [("batches", _batch(52, _AFTER, email="other@example.com")),
         ("erasure", {"subject_request_type": "erasure", "subject_identities": [
             {"identity_type": "email", "identity_value": "ned@example.com"}]}),
         ("batches", _batch(53, T0, _event("Late", T0), email="ned@example.com"))],
        [],
    ),
    "audience change": (
        [("batches", _batch(31, T0, email="ola@example.com")),
         ("audiences", _MEMBERSHIP),
         ("audiences", {**_MEMBERSHIP, "audiences": [
             {**_MEMBERSHIP["audiences"][0], "action": "delete"}]})],
        [],
    ),
}  # fmt: skip


def _worker_sends(lines: list[Line]) -> tuple[list[bytes], list[str]]:
    """The items the sink would send for ``lines`` (in order), and ``line N: <reason>`` of
    each dead letter the worker would write."""
    options = core_options(load_settings(forwarding_enabled="false"))
    states: dict[str, bytes] = {}
    markers: dict[str, int] = {}
    operations: list[Fetched] = []
    letters: list[str] = []
    for offset, (topic, document) in enumerate(lines):
        at = T0 + offset  # sent in file order
        value = orjson.dumps(document)
        mpid = document.get("mpid")
        key = None if mpid is None else str(mpid).encode()
        position = SourcePosition(topic, 0, offset, timestamp_ms=at)
        if topic == "erasure":
            result = process_erasure_record(key, value, position, states.get, record_ms=at,
                                            scan_states=lambda: list(states.items()))  # fmt: skip
        else:
            process = process_batch_record if topic == "batches" else process_audience_record
            result = process(key, value, position, states.get, options,
                             erased_at_ms=None if key is None else markers.get(key.decode()),
                             record_ms=at, identity_erased_at=markers.get)  # fmt: skip
        assert not result.rekeyed  # every record is keyed by its own user
        states.update(result.states)
        for purged in result.purged:
            del states[purged]
        markers.update(result.erased)  # no case moves a marker back
        letters += [f"line {offset + 1}: {decode_dead_letter(d)['reason']}"
                    for d in result.dead_letters]  # fmt: skip
        if result.operations is not None:
            operations.append(Fetched("operations", 0, len(operations), None,
                                      result.operations[1]))  # fmt: skip
    plan = plan_chunk({0: operations}, 1, lambda: T0, request_items=1000)
    return [item for lane in plan.lanes for item, _ in lane], letters


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_dry_run_sends_what_the_worker_sends(case: str) -> None:
    lines, dead_letters = PIPELINE_CASES[case]
    out, errors = io.BytesIO(), io.StringIO()
    summary = dry_run(
        [orjson.dumps(document) for _, document in lines],
        load_settings(forwarding_enabled="false"),
        out,
        errors,
    )
    items, letters = _worker_sends(lines)
    assert letters == dead_letters  # the reference itself
    assert out.getvalue().splitlines() == items
    reported = [line for line in errors.getvalue().splitlines() if ": note: " not in line]
    assert [re.sub(r"^(line \d+: \w+): .*", r"\1", line) for line in reported] == letters
    assert summary.invalid_lines == len({letter.split(":")[0] for letter in letters})


def _person(mpid: int, name: str, at: int | None) -> dict[str, Any]:
    event = {"event_type": "custom_event", "data": {"event_name": name}}
    timed = {} if at is None else {"timestamp_unixtime_ms": at}
    return {"mpid": mpid, "environment": "production", **timed,
            "user_identities": {"email": f"a{mpid}@example.com"}, "events": [event]}  # fmt: skip


_YEAR_2100 = 4_102_444_800_000
# The tester's repros (breaker9 F2): an erasure acts on the lines before it, never on a line
# after it, whatever that line's batch time: the worker creates the person again.
ERASURE_ORDER_CASES: dict[str, list[Any]] = {
    "A: no times": [_person(8821, "Before", None),
                    {"subject_request_type": "erasure", "mpid": 8821},
                    _person(8821, "After", None)],
    "B: a late batch after the erasure": [_person(888001, "Before", T0),
                                          {"subject_request_type": "erasure", "mpid": 888001},
                                          _person(888001, "After", T0 - 60_000)],
    "C: a batch dated 2100, then the erasure": [_person(7, "Before", _YEAR_2100),
                                                {"subject_request_type": "erasure", "mpid": 7},
                                                _person(7, "After", T0)],
}  # fmt: skip


@pytest.mark.parametrize("case", list(ERASURE_ORDER_CASES))
def test_dry_run_erasure_never_acts_on_later_lines(case: str) -> None:
    out, errors = io.BytesIO(), io.StringIO()
    dry_run(
        [orjson.dumps(document) for document in ERASURE_ORDER_CASES[case]],
        load_settings(forwarding_enabled="false"),
        out,
        errors,
    )
    items = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(item["action"], item.get("name")) for item in items] == [
        ("identify", None), ("event", "Before"), ("delete", None),
        ("identify", None), ("event", "After"),
    ]  # fmt: skip
    assert errors.getvalue() == ""


@pytest.mark.parametrize(
    "first",
    [
        b'{"type":"dsr_processing_request","n":' + b"9" * 400 + b"}",
        b'{"type":"audience_membership_change_request","x":1e400}',
    ],
    ids=["400-digit integer", "1e400"],
)
def test_dry_run_reports_a_firehose_number_beyond_a_double(first: bytes) -> None:
    # load_json keeps such a number; the ingress's orjson.loads refuses it (a 400)
    out, errors = io.BytesIO(), io.StringIO()
    summary = dry_run([first, _lines(ANN)], load_settings(forwarding_enabled="false"), out, errors)
    assert errors.getvalue().startswith(
        "line 1: firehose: number is infinity when parsed as double"
    )
    assert (summary.lines, summary.invalid_lines, summary.batches) == (2, 1, 1)
    assert [item["action"] for item in map(orjson.loads, out.getvalue().splitlines())] == [
        "identify"
    ]
