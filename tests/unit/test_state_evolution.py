"""Stored user states survive schema changes: read from their writer schema, resolved to now.

The ``users`` table holds states written by whichever release wrote them last; after an upgrade
they must read back whole (opt-out, first-seen times, sent digest), or opted-out users would be
forwarded again. Values not written by any kept schema stay a ``state_corrupt`` dead letter.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import fields
from typing import TYPE_CHECKING

import orjson
import pytest

import app.core.state
from app.core.avro import HISTORY_DIR_NAME, SCHEMA_DIR, AvroCodec, codec
from app.core.pipeline import process_batch_record
from app.core.state import FirstSeen, UserState, decode_state, encode_state
from app.errors import InvalidRecordError
from app.records import SourcePosition
from app.settings import load_settings
from app.wiring import core_options

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_764_400_000_000
# The first released user_state (before audiences_left and applied_offsets existed).
FIRST_RELEASE = "fdad362492c487be"

STATE = UserState(
    email="a@example.com",
    customer_id="c1",
    person_id="c1",
    first_name="Ann",
    last_name="Lee",
    attributes={"plan": "pro", "n": None, "l": ["a", 1]},
    profile_at_ms=T0,
    sent_digest=bytes(range(16)),
    opted_out=True,
    opt_out_at_ms=T0 - 1,
    unsubscribed_sent=True,
    first_seen={"IOS": FirstSeen(T0, install=True)},
    last_device_type="IOS",
    last_seen_ms=T0 + 2,
    audiences={"123": "VIPs"},
    audiences_left={"9": "Old"},
    applied_offsets={"batches@3": 41},
)


def _schema_dir(tmp_path: Path, current: dict, *, keep_history: bool = True) -> Path:  # type: ignore[type-arg]
    """A copy of ``schemas/`` whose ``user_state.avsc`` is ``current``."""
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, target)
    if not keep_history:
        shutil.rmtree(target / HISTORY_DIR_NAME / "user_state")
    (target / "user_state.avsc").write_text(json.dumps(current), encoding="utf-8")
    return target


def _current_schema() -> dict:  # type: ignore[type-arg]
    loaded: dict = json.loads((SCHEMA_DIR / "user_state.avsc").read_text(encoding="utf-8"))  # type: ignore[type-arg]
    return loaded


def _with_new_field() -> dict:  # type: ignore[type-arg]
    """Today's schema plus a field with a default: the usual evolution step."""
    changed = _current_schema()
    changed["fields"].append({"name": "loyalty_tier", "type": "string", "default": "bronze"})
    return changed


def test_state_written_today_reads_back_after_a_schema_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_today = encode_state(STATE)
    upgraded = AvroCodec("user_state", _schema_dir(tmp_path, _with_new_field()))
    assert upgraded.header != written_today[:10]  # the schema really changed
    monkeypatch.setattr(app.core.state, "codec", lambda name: upgraded)

    assert decode_state(written_today) == STATE
    assert upgraded.decode(written_today)["loyalty_tier"] == "bronze"  # the reader's default
    rewritten = encode_state(STATE)  # written again by the upgraded release
    assert rewritten[:10] == upgraded.header
    assert decode_state(rewritten) == STATE


def test_without_the_kept_version_the_change_would_lose_every_state(tmp_path: Path) -> None:
    upgraded = AvroCodec("user_state", _schema_dir(tmp_path, _with_new_field(), keep_history=False))
    with pytest.raises(InvalidRecordError) as caught:
        upgraded.decode(encode_state(STATE))
    assert caught.value.reason == "avro_decode"
    assert "unknown schema fingerprint" in caught.value.detail


def test_state_written_by_the_first_release_reads_with_todays_defaults(tmp_path: Path) -> None:
    first = json.loads(
        (SCHEMA_DIR / HISTORY_DIR_NAME / "user_state" / f"{FIRST_RELEASE}.avsc").read_text()
    )
    assert {f["name"] for f in first["fields"]}.isdisjoint({"audiences_left", "applied_offsets"})
    old_writer = AvroCodec("user_state", _schema_dir(tmp_path, first, keep_history=False))
    record = codec("user_state").decode(encode_state(STATE))
    for dropped in ("audiences_left", "applied_offsets"):
        del record[dropped]
    written_then = old_writer.encode(record)

    assert written_then[2:10] == struct.pack("<Q", int(FIRST_RELEASE, 16))
    state = decode_state(written_then)
    assert state.opted_out is True
    assert state.unsubscribed_sent is True
    assert state.first_seen == STATE.first_seen
    assert state.sent_digest == STATE.sent_digest
    assert state.audiences_left == {}
    assert state.applied_offsets == {}
    assert state == UserState(
        **{
            **{f.name: getattr(STATE, f.name) for f in fields(UserState)},
            "audiences_left": {},
            "applied_offsets": {},
        }
    )


def test_unknown_fingerprint_is_a_state_corrupt_dead_letter_with_its_reason() -> None:
    stored = b"\xc3\x01" + struct.pack("<Q", 0x0123456789ABCDEF) + encode_state(STATE)[10:]
    batch = {
        "mpid": 42,
        "user_identities": {"email": "ada@example.com"},
        "events": [{"event_type": "custom_event", "data": {"event_name": "e"}}],
    }
    result = process_batch_record(
        b"42",
        orjson.dumps(batch),
        SourcePosition("mparticle-batches", 0, 5),
        {"42": stored}.get,
        core_options(load_settings(forwarding_enabled=False)),
        clock=lambda: 7,
    )
    (letter,) = [codec("dead_letter").decode(d) for d in result.dead_letters]
    assert letter["reason"] == "state_corrupt"
    assert "unknown schema fingerprint 0123456789abcdef" in letter["detail"]
    assert letter["payload"] == stored  # kept for inspection
    assert result.counts["dead_letters", "ingest", "state_corrupt"] == 1
    assert result.operations is not None  # the user starts afresh; the stream goes on
