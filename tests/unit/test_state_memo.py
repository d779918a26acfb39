"""The decoded-state memo (app.core.state.StateMemo) changes nothing the ingest step writes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from app.core.pipeline import (
    IngestResult,
    process_audience_record,
    process_batch_record,
    process_erasure_record,
)
from app.core.state import StateMemo, UserState, decode_state, encode_state
from app.records import SourcePosition
from app.settings import Settings
from app.wiring import core_options
from bench.e2e.workload import Shape, generate

T0 = 1_764_400_000_000


def _inputs(seed: int) -> list[tuple[str, bytes, bytes, int]]:
    """(topic, key, value, offset) of a varied workload: batches of users with and without
    email, opting out, switching devices and changing attributes; audience joins and leaves;
    redeliveries (same offset), older batches read late (new offset); erasures."""
    shape = Shape(users=60, batches_per_user=6, attributes_per_user=12, no_email_share=0.2,
                  opted_out_share=0.3, seed=seed)  # fmt: skip
    batches = [(r.key, r.encode(T0, "memo")) for r in generate(shape, t0_ms=T0 - 3_600_000)]
    rng = random.Random(seed)
    inputs: list[tuple[str, bytes, bytes, int]] = []
    offsets = iter(range(10**6))
    for key, value in batches:
        offset = next(offsets)
        inputs.append(("batches", key, value, offset))
        roll = rng.random()
        if roll < 0.1:
            inputs.append(("batches", key, value, offset))  # redelivery
        elif roll < 0.2:
            inputs.append(("batches", *rng.choice(batches), next(offsets)))  # read late
        elif roll < 0.4:
            change = {"audience_id": rng.randint(1, 4), "audience_name": "VIP",
                      "action": rng.choice(["add", "delete"])}  # fmt: skip
            update = {"mpid": int(key), "audiences": [change]}
            inputs.append(("audiences", key, orjson.dumps(update), next(offsets)))
        elif roll < 0.42:
            erasure = {"subject_request_type": "erasure", "mpid": key.decode(),
                       "subject_identities": {}}  # fmt: skip
            inputs.append(("erasure", key, orjson.dumps(erasure), next(offsets)))
    return inputs


def _run(
    inputs: list[tuple[str, bytes, bytes, int]], memo: StateMemo | None
) -> Iterator[tuple[IngestResult, dict[str, bytes]]]:
    """Each input's result and the store after it (one worker, one partition)."""
    options = core_options(Settings(forwarding_enabled=False, send_created_at=True))
    store: dict[str, bytes] = {}
    for topic, key, value, offset in inputs:
        source = SourcePosition(f"mparticle-{topic}", 0, offset)
        common: dict[str, Any] = {"clock": lambda: 1, "memo": memo}
        if topic == "erasure":
            result = process_erasure_record(key, value, source, store.get, record_ms=T0, **common)
        else:
            process = process_batch_record if topic == "batches" else process_audience_record
            result = process(key, value, source, store.get, options, record_ms=T0, **common)
        store.update(result.states)
        for mpid in result.purged:
            store.pop(mpid, None)
        yield result, dict(store)


@pytest.mark.parametrize("seed", [7, 11, 23])
def test_every_output_is_byte_for_byte_the_same_with_and_without_the_memo(seed: int) -> None:
    """Would fail if any step changed a remembered state (or its dicts) in place: the next
    record of that user would start from the changed state instead of the stored bytes."""
    inputs = _inputs(seed)
    memo = StateMemo(entries=32)  # fewer than the users: evictions and misses happen too
    hits = 0
    for (plain, plain_store), (memoised, memo_store) in zip(
        _run(inputs, None), _run(inputs, memo), strict=True
    ):
        assert memoised.states == plain.states
        assert memoised.operations == plain.operations
        assert memoised.dead_letters == plain.dead_letters
        assert memoised.counts == plain.counts
        assert (memoised.purged, memoised.erased) == (plain.purged, plain.erased)
        assert memo_store == plain_store
        for mpid, (encoded, state) in memo._states.items():  # the memo itself
            _assert_same(state, decode_state(encoded))
            hits += memo_store.get(mpid) == encoded
    assert len(memo) == 32
    assert hits > 0


def _assert_same(state: UserState, decoded: UserState) -> None:
    """Equal, and the same in dict order (the person cap keeps attributes in that order)."""
    assert state == decoded
    for name in ("attributes", "first_seen", "audiences", "audiences_left", "applied_offsets"):
        assert list(getattr(state, name).items()) == list(getattr(decoded, name).items())


def test_a_remembered_state_is_used_only_for_the_same_bytes() -> None:
    memo = StateMemo(entries=2)
    ada, bob = UserState(email="ada@x.io"), UserState(email="bob@x.io")
    memo.remember("1", encode_state(ada), ada)
    assert memo.decode("1", encode_state(ada)) is ada
    newer = memo.decode("1", encode_state(bob))  # the store holds other bytes: decoded
    assert newer == bob
    assert newer is not ada
    assert memo.decode("1", encode_state(bob)) is newer  # and remembered


def test_the_least_recently_used_user_goes_first_and_an_erased_one_at_once() -> None:
    memo = StateMemo(entries=2)
    states = {mpid: UserState(email=f"{mpid}@x.io") for mpid in "123"}
    for mpid in "12":
        memo.remember(mpid, encode_state(states[mpid]), states[mpid])
    memo.decode("1", encode_state(states["1"]))  # 1 used last: 2 is the oldest
    memo.remember("3", encode_state(states["3"]), states["3"])
    assert memo.decode("1", encode_state(states["1"])) is states["1"]
    assert memo.decode("2", encode_state(states["2"])) is not states["2"]
    memo.forget("1")
    assert memo.decode("1", encode_state(states["1"])) is not states["1"]


def test_an_erasure_drops_the_user_from_the_memo() -> None:
    memo = StateMemo()
    state = UserState(email="ada@x.io")
    memo.remember("7", encode_state(state), state)
    erasure = b'{"subject_request_type": "erasure", "mpid": "7", "subject_identities": {}}'
    result = process_erasure_record(
        b"7",
        erasure,
        SourcePosition("mparticle-erasure", 0, 1),
        {"7": encode_state(state)}.get,
        record_ms=T0,
        memo=memo,
    )
    assert result.purged == ["7"]
    assert len(memo) == 0
