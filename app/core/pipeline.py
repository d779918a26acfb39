"""One input record → state updates, operations and dead letters, for each input topic.

:func:`process_batch_record`, :func:`process_audience_record` and
:func:`process_erasure_record` are the whole ingest step of ``mparticle-batches``,
``mparticle-audiences`` and ``mparticle-erasure`` as plain functions: the agent gives one the
record, a way to read a user's stored state and the core options, and writes what it returns
(table updates and deletions, one operations record, dead letters, re-keyed records). They do
no I/O.

Failure semantics: nothing raises for bad input. A record that cannot be parsed becomes one
dead letter (stage ``ingest``, the parser's reason, the raw bytes and source position). Nothing
is consumed silently: a tombstone (a record without a value, which mParticle never writes) is
dead-lettered too, reason ``tombstone`` with an empty payload and the record's key, so an
operator sees where it came from; an empty JSON array or ``user_profiles`` list is
``empty_record``. A record whose new state or operations record the producer would refuse
(:func:`app.core.sizes.fits`, e.g. ten thousand events in one batch) is ``too_large`` and
nothing of it is applied; a re-keyed part too large to send (:func:`bound_rekeyed`) is a
``too_large`` dead letter too. All count as ``rejected`` in the topic's
counter. A
stored state that cannot be decoded is dead-lettered too (reason ``state_corrupt``) and the user
starts afresh, so one corrupt value never blocks a partition. Batches whose mpid is not the
record key (keyless or bulk records) are not processed here: they are returned in ``rekeyed``
for the agent to send to the deployment's re-key topic keyed by their own mpid, so every
user's state lives on the partition its key maps to; read from there (:func:`from_rekey_topic`)
they are processed like a record of the topic they came from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from app.core.audiences import parse_audience_record, transform_membership
from app.core.erasure import (
    erasure_time,
    identity_marker_keys,
    matches,
    parse_erasure_record,
    plan_erasure,
    request_marker_keys,
)
from app.core.mparticle import parse_record
from app.core.sizes import PRODUCER_MAX_REQUEST_BYTES, fits, record_bytes
from app.core.state import UserState, decode_state, encode_state, evolve
from app.core.transform import Operation, Transformed, transform
from app.errors import InvalidRecordError, Reason
from app.records import (
    DeadLetterRecord,
    Headers,
    SourcePosition,
    Stage,
    dead_letter,
    now_ms,
    operation_batch,
)

if TYPE_CHECKING:
    from app.core.audiences import MembershipUpdate
    from app.core.mparticle import Batch
    from app.core.options import CoreOptions


@dataclass(slots=True)
class IngestResult:
    """What the agent must write for one input record, in this order.

    ``states``: encoded :class:`UserState` per mpid (changed ones only); ``purged``: mpids
    whose state must be deleted (tombstone); ``erased``: erasure markers (mpid, or an identity
    marker's key :func:`~app.core.erasure.identity_marker_key` → Kafka time of the request, at
    most the worker's clock: :func:`~app.core.erasure.erasure_time`) to keep;
    ``operations``: at most one encoded ``OperationBatch`` (key = mpid); ``rekeyed``: (mpid,
    raw JSON of that user's part) to send to the re-key topic; ``dead_letters``: encoded
    ``DeadLetter`` records. ``counts`` holds metric increments keyed by (metric, label values).
    """

    states: dict[str, bytes] = field(default_factory=dict)
    purged: list[str] = field(default_factory=list)
    erased: dict[str, int] = field(default_factory=dict)
    operations: tuple[str, bytes] | None = None
    rekeyed: list[tuple[str, bytes]] = field(default_factory=list)
    dead_letters: list[bytes] = field(default_factory=list)
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)


def unknown_rekey_kind(
    key: bytes | None,
    value: bytes | None,
    source: SourcePosition,
    *,
    clock: Callable[[], int] = now_ms,
) -> IngestResult:
    """A record of the re-key topic whose :data:`~app.topics.REKEY_KIND_HEADER` is missing or
    unknown: the worker writes one on every record it re-keys, so someone else wrote this one.
    It is dead-lettered (reason ``rekey_kind_unknown``) and nothing else is done."""
    result = IngestResult()
    detail = "a record of the re-key topic needs the header mpcio.rekey.kind = batches, "
    exc = InvalidRecordError(Reason.REKEY_KIND_UNKNOWN, detail + "audiences or erasure")
    _reject(result, exc, source, key, value, clock, counter=None)  # its topic is unknown
    return result


def from_rekey_topic(
    result: IngestResult, source: SourcePosition, *, clock: Callable[[], int] = now_ms
) -> IngestResult:
    """``result`` of the record at ``source`` on the re-key topic, with nothing to re-key again.

    Such a record is one user's part keyed by that user's mpid, so the pure step re-keys
    nothing. Should it (a parser that disagreed with itself), each part becomes a dead letter
    ``rekey_loop`` (key = the part's mpid, payload = the part)
    instead of circling through the re-key topic for ever."""
    for mpid, raw in result.rekeyed:
        result.dead_letters.append(
            dead_letter(
                Reason.REKEY_LOOP,
                "a record read from the re-key topic would be re-keyed again",
                stage=Stage.INGEST,
                source=source,
                key=mpid.encode(),
                payload=raw,
                failed_at_ms=clock(),
            )
        )
        result.counts["dead_letters", Stage.INGEST, Reason.REKEY_LOOP] += 1
    result.rekeyed = []
    return result


def bound_rekeyed(
    result: IngestResult,
    headers: Headers,
    source: SourcePosition,
    *,
    clock: Callable[[], int] = now_ms,
) -> IngestResult:
    """``result`` of the record at ``source`` without the re-keyed parts the producer would
    refuse: a part whose re-key record (key = its mpid, value = the part, ``headers``: the
    re-key headers, :func:`app.topics.rekey_headers`) does not fit
    (:func:`app.core.sizes.fits`, a length sum: nothing is encoded to measure it) becomes a
    ``too_large`` dead letter of the part instead (key = its mpid; its payload is cut to fit
    when written, :func:`app.records.dead_letter_record`), counted ``rejected`` instead of
    ``rekeyed``. Sending it would fail and stop the worker on every restart."""
    kept: list[tuple[str, bytes]] = []
    counter = next((key[0] for key in result.counts if key[1:2] == ("rekeyed",)), None)
    for mpid, raw in result.rekeyed:
        if fits(mpid.encode(), raw, headers):
            kept.append((mpid, raw))
            continue
        size = record_bytes(mpid.encode(), raw, headers)
        detail = f"its re-key record would be {size} bytes, over {PRODUCER_MAX_REQUEST_BYTES}"
        exc = InvalidRecordError(Reason.TOO_LARGE, detail)
        _reject(result, exc, source, mpid.encode(), raw, clock, counter=counter)
        if counter is not None:
            result.counts[counter, "rekeyed"] -= 1
    result.rekeyed = kept
    return result


def count_cut_letters(
    counts: Counter[tuple[str, ...]], records: Iterable[DeadLetterRecord]
) -> None:
    """Move the count of each ingest dead letter cut to fit (``cut_from`` set,
    :func:`app.records.dead_letter_record`) from its first reason to ``too_large``, the reason
    it was written with."""
    for record in records:
        if record.cut_from is not None:
            counts["dead_letters", Stage.INGEST, record.cut_from] -= 1
            counts["dead_letters", Stage.INGEST, Reason.TOO_LARGE] += 1


def process_batch_record(
    key: bytes | None,
    value: bytes | None,
    source: SourcePosition,
    load_state: Callable[[str], bytes | None],
    options: CoreOptions,
    *,
    erased_at_ms: int | None = None,
    record_ms: int | None = None,
    identity_erased_at: Callable[[str], int | None] | None = None,
    clock: Callable[[], int] = now_ms,
) -> IngestResult:
    """Parse, fold and transform one record of the batches topic (see module docstring).

    ``erased_at_ms`` is when the key's user was erased (if ever) and ``record_ms`` the record's
    Kafka timestamp: a batch that reached Kafka before the erasure is dropped (counted as
    ``erased``), so an erasure is never undone by a batch still in flight; it is also the
    identify's time for a batch without a valid time (:func:`~app.core.transform.identify_time`).
    ``identity_erased_at`` reads an identity marker (:func:`_erased_by_identity`): a batch
    whose email or customer id was erased after it reached Kafka is dropped the same way.
    """

    def admit(result: IngestResult, mine: list[Batch]) -> bool:
        if reached_kafka_before_erasure(record_ms, erased_at_ms) or _erased_by_identity(
            result, mine, record_ms, identity_erased_at, load_state
        ):
            result.counts["batches", "erased"] += len(mine)
            return False
        for batch in mine:
            _count_input(batch, result.counts)
        return True

    return _process_user_record(
        _UserRecord(key, value, source, kind="batches", counter="batches", record_ms=record_ms),
        parse_record,
        lambda batch, state: transform(batch, state, options, record_ms=record_ms),
        load_state,
        clock,
        admit=admit,
    )


def reached_kafka_before_erasure(record_ms: int | None, erased_at_ms: int | None) -> bool:
    """True when a user's record (Kafka time ``record_ms``; None: unknown) must be dropped
    because its user was erased at ``erased_at_ms`` (None: never) no earlier than the record
    reached Kafka: it was sent before the erasure and read after it, and would bring the
    erased person back (README "Audiences and erasure")."""
    return erased_at_ms is not None and (record_ms is None or record_ms <= erased_at_ms)


def _erased_by_identity(
    result: IngestResult,
    mine: list[Item],
    record_ms: int | None,
    identity_erased_at: Callable[[str], int | None] | None,
    load_state: Callable[[str], bytes | None],
) -> bool:
    """True when an email or customer id of ``mine`` (one user's items) has an identity marker
    (``identity_erased_at``: marker key → erasure time, or None) at or after ``record_ms``
    (:func:`reached_kafka_before_erasure`): an erasure by identity (a Firehose DSR names no
    mpid) read before this record, which reached Kafka before it. One store read per identity
    of each item; the rest only when the record is dropped.

    The record is the erased person's, so their mpid is then erased as of that marker's time
    (the latest one, if several identities are marked): the mpid marker is put
    (``result.erased``), so the user's later-read records from before the erasure that carry
    no identity are dropped too, and their stored state is purged (``result.purged``) unless
    every record folded into it reached Kafka after the erasure (``first_record_ms``; None,
    unknown, counts as before). That state was folded from the user's records read after the
    DSR (it matched nothing then) or before it without the identity the DSR names; kept, it
    would go out with the first identify of the person the user becomes after the erasure.
    A state only of records after the erasure (one read before this record from another topic
    or the re-key topic: Kafka orders a partition, not two topics) is that new person's and is
    kept; one mixing both cannot be split and is purged whole (its records' operations were
    sent; the next record starts the user afresh)."""
    if identity_erased_at is None:
        return False
    erased_at_ms: int | None = None
    for item in mine:
        for key in _identity_marker_keys(item.email, item.customer_id):
            marked_ms = identity_erased_at(key)
            if (
                marked_ms is not None
                and reached_kafka_before_erasure(record_ms, marked_ms)
                and (erased_at_ms is None or marked_ms > erased_at_ms)
            ):
                erased_at_ms = marked_ms
    if erased_at_ms is None:
        return False
    mpid = mine[0].mpid
    result.erased[mpid] = erased_at_ms
    stored = load_state(mpid)
    if stored is not None:
        state = _decoded_or_none(stored)  # undecodable: it cannot show it is after the erasure
        first_ms = None if state is None else state.first_record_ms
        if first_ms is None or first_ms <= erased_at_ms:
            result.purged.append(mpid)
    return True


#: How many users' identity-marker keys :func:`_identity_marker_keys` remembers (~0.5 KB each).
MARKER_KEYS_REMEMBERED = 8192


@lru_cache(maxsize=MARKER_KEYS_REMEMBERED)
def _identity_marker_keys(email: str | None, customer_id: str | None) -> tuple[str, ...]:
    """:func:`~app.core.erasure.identity_marker_keys`, remembered for the identities of the
    last :data:`MARKER_KEYS_REMEMBERED` users looked up: a SHA-256 and a BLAKE2b per identity
    on every batch otherwise (~1.9 % of the worker's CPU in the bench.e2e profile), though a
    user's identities rarely change between their records. Pure, so the keys are the same;
    the remembered identities stay in this process's memory only (never written or logged),
    like the states the worker reads."""
    return tuple(identity_marker_keys(email, customer_id))


def process_audience_record(
    key: bytes | None,
    value: bytes | None,
    source: SourcePosition,
    load_state: Callable[[str], bytes | None],
    options: CoreOptions,
    *,
    erased_at_ms: int | None = None,
    record_ms: int | None = None,
    identity_erased_at: Callable[[str], int | None] | None = None,
    clock: Callable[[], int] = now_ms,
) -> IngestResult:
    """Fold membership changes into the state and identify the new membership (SPEC §4).

    A user without an email keeps the membership in state; it is sent with the first identify
    once an email is known. Records for another mpid than the key are returned in
    ``rekeyed`` (for the re-key topic). Like a batch, an update that reached Kafka before its
    user's erasure (``erased_at_ms``, ``record_ms``: :func:`reached_kafka_before_erasure`), or
    its email's or customer id's (``identity_erased_at``: :func:`_erased_by_identity`), is
    dropped and counted as ``erased``: it carries the user's email and attributes, and would
    recreate the erased person."""

    def admit(result: IngestResult, mine: list[MembershipUpdate]) -> bool:
        if reached_kafka_before_erasure(record_ms, erased_at_ms) or _erased_by_identity(
            result, mine, record_ms, identity_erased_at, load_state
        ):
            result.counts["audience_updates", "erased"] += len(mine)
            return False
        return True

    return _process_user_record(
        _UserRecord(
            key,
            value,
            source,
            kind="audiences",
            counter="audience_updates",
            list_key="user_profiles",
            record_ms=record_ms,
        ),
        parse_audience_record,
        lambda update, state: transform_membership(update, state, options),
        load_state,
        clock,
        admit=admit,
    )


@dataclass(frozen=True, slots=True)
class _UserRecord:
    """One input record of a per-user topic: where it came from and how it is counted.

    ``kind``: the topic's role in the redelivery guard's applied offsets; ``counter``: its
    metric (``batches`` / ``audience_updates``); ``list_key``: the document key holding a
    bulk record's parts (None: a JSON array or one object); ``record_ms``: its Kafka time
    (None: unknown), kept in the state's ``first_record_ms``."""

    key: bytes | None
    value: bytes | None
    source: SourcePosition
    kind: str
    counter: str
    list_key: str | None = None
    record_ms: int | None = None


def _process_user_record(
    record: _UserRecord,
    parse: Callable[[bytes], list[Item]],
    step: Callable[[Item, UserState | None], Transformed],
    load_state: Callable[[str], bytes | None],
    clock: Callable[[], int],
    *,
    admit: Callable[[IngestResult, list[Item]], bool] | None = None,
) -> IngestResult:
    """The shared shape of the batches and audiences steps: ``parse`` the value (a tombstone or
    an :class:`InvalidRecordError` is dead-lettered), re-key the other users' parts, let
    ``admit`` drop (and count) the record key's items, then fold them with ``step``."""
    result = IngestResult()
    try:
        value = _present(record.value)  # narrowed to bytes from here on
        items = parse(value)
    except InvalidRecordError as exc:
        _reject(result, exc, record.source, record.key, record.value, clock,
                counter=record.counter)  # fmt: skip
        return result
    mine = _own(result, items, value, record.key, record.counter, list_key=record.list_key)
    if not mine or (admit is not None and not admit(result, mine)):
        return result
    _apply_to_user(result, record, value, mine, step, load_state=load_state, clock=clock)
    return result


def process_erasure_record(
    key: bytes | None,
    value: bytes | None,
    source: SourcePosition,
    load_state: Callable[[str], bytes | None],
    *,
    record_ms: int | None,
    scan_states: Callable[[], Iterable[tuple[str, bytes]]] = tuple,
    clock: Callable[[], int] = now_ms,
) -> IngestResult:
    """Plan one erasure request (SPEC §5): Customer.io deletes, state purge, erasure marker.

    A request that names an mpid erases that user. A request without one (a Firehose DSR,
    which ``mpcio ingress`` writes once to every partition) erases every user of
    ``scan_states()`` — ``(mpid, stored state)`` of the users of this record's partition —
    that :func:`~app.core.erasure.matches` it: a scan of the partition, so its cost grows with the
    users held (DSRs are rare). The operations record is keyed by the (first) erased mpid so
    its deletes follow that user's earlier operations in order.

    The marker (``erased``: mpid → :func:`~app.core.erasure.erasure_time`, the request's Kafka
    timestamp but never far ahead of ``clock()``, set for every erasure that
    names an mpid, also one that finds nothing to delete yet) lets batches that reached Kafka
    before the erasure but are read after it be dropped; it holds no personal data. An
    erasure also leaves one identity marker per identity it names
    (:func:`~app.core.erasure.request_marker_keys` → the same time), whether or not it
    matched anyone: a user none of whose records was read yet is then known by the identities
    their lagging records carry (:func:`_erased_by_identity`). The time is taken once per
    request, so all its markers hold the same millisecond.

    Counted in ``erasures``: ``erased`` when a stored user state was erased, ``no_match`` when
    none was (its deletes by the raw identities it names still go out), ``not_erasure`` for
    access and portability requests (:func:`~app.core.erasure.plan_erasure`)."""
    result = IngestResult()
    try:
        value = _present(value)  # narrowed to bytes from here on
        request = parse_erasure_record(value)
    except InvalidRecordError as exc:
        _reject(result, exc, source, key, value, clock, counter="erasures")
        return result
    record_mpid = _key_text(key)
    if request.mpid is not None and request.mpid != record_mpid:
        result.rekeyed = [(request.mpid, value)]
        result.counts["erasures", "rekeyed"] += 1
        return result
    targets: list[tuple[str | None, UserState | None]]
    if request.mpid is not None:
        stored = load_state(request.mpid)
        targets = [(request.mpid, None if stored is None else _decoded_or_none(stored))]
    else:
        targets = [
            (mpid, state)
            for mpid, stored in scan_states()
            if (state := _decoded_or_none(stored)) is not None and matches(request, state)
        ] or [(None, None)]
    items: list[dict[str, Any]] = []
    outcome = "no_match"
    # one time per request: its markers (users' and identities') all hold the same millisecond
    erased_ms = erasure_time(record_ms, clock())
    for mpid, state in targets:
        plan = plan_erasure(request, state)
        outcome = plan.outcome if outcome == "no_match" else outcome
        items.extend(item for item in plan.deletes if item not in items)
        if mpid is not None and plan.outcome == "erased":
            result.purged.append(mpid)
        if mpid is not None and plan.outcome != "not_erasure":
            # Also when nothing of the user is known yet (no_match): batches that reached
            # Kafka before the erasure may still be on their way on the batches topic, and
            # must not bring the user back.
            result.erased[mpid] = erased_ms
    if request.request_type == "erasure":
        for marker in request_marker_keys(request):
            result.erased[marker] = erased_ms
    result.counts["erasures", outcome] += 1
    operations = [
        Operation("delete", next(iter(item["identifiers"].values())), item, orjson.dumps(item))
        for item in items
    ]
    for operation in operations:
        result.counts["operations", operation.action] += 1
    if operations:
        owner = request.mpid or (result.purged[0] if result.purged else "")
        result.operations = _operations_record(owner, operations, source, clock)
    return result


def _decoded_or_none(stored: bytes) -> UserState | None:
    """A stored state, or None when it cannot be decoded (it is purged all the same)."""
    try:
        return decode_state(stored)
    except InvalidRecordError:
        return None


Item = TypeVar("Item", "Batch", "MembershipUpdate")


def _own(
    result: IngestResult,
    items: list[Item],
    value: bytes,
    key: bytes | None,
    counter: str,
    *,
    list_key: str | None = None,
) -> list[Item]:
    """The items of the record key's user; the others go to ``result.rekeyed``."""
    record_mpid = _key_text(key)
    mine = [item for item in items if item.mpid == record_mpid]
    if len(mine) != len(items):
        result.rekeyed = _rekey(value, [i.mpid for i in items], record_mpid, list_key)
        result.counts[counter, "rekeyed"] += len(result.rekeyed)
    return mine


def _apply_to_user(
    result: IngestResult,
    record: _UserRecord,
    value: bytes,
    items: list[Item],
    step: Callable[[Item, UserState | None], Transformed],
    *,
    load_state: Callable[[str], bytes | None],
    clock: Callable[[], int],
) -> None:
    """Fold one user's items of ``record`` (its ``value``, parsed) into their state with
    ``step``; store it and the operations.

    A record already in the stored state (a redelivery) is skipped: ``_already_applied``. A
    record whose new state or operations record the producer would refuse
    (:func:`app.core.sizes.fits`, key = mpid, no headers: a length sum, no extra encode) is
    dead-lettered as ``too_large`` instead, and nothing of it is applied."""
    mpid = items[0].mpid
    kind, counter, source, key = record.kind, record.counter, record.source, record.key
    state = _load(mpid, load_state, result, source, key, clock)
    if _already_applied(state, kind, source):
        result.counts[counter, "redelivered"] += len(items)
        return
    stored = state
    operations: list[Operation] = []
    counts: Counter[tuple[str, ...]] = Counter()  # applied only if the record is used
    for item in items:
        transformed = step(item, state)
        state = transformed.state
        _count_transformed(transformed, counts, counter)
        operations.extend(transformed.operations)
    state = _mark_applied(state, stored, kind, source, record.record_ms)
    encoded = None if state is None or state == stored else encode_state(state)
    ops_record = _operations_record(mpid, operations, source, clock) if operations else None
    key_bytes = mpid.encode()
    too_large = [
        (what, written)
        for what, written in (("state", encoded), ("operations", ops_record and ops_record[1]))
        if written is not None and not fits(key_bytes, written)
    ]
    if too_large:
        # the producer would refuse the write (and stop the agent): reject it, apply nothing
        what, written = too_large[0]
        size = record_bytes(key_bytes, written)
        detail = f"its {what} record would be {size} bytes, over {PRODUCER_MAX_REQUEST_BYTES}"
        _reject(result, InvalidRecordError(Reason.TOO_LARGE, detail), source, key, value, clock,
                counter=counter)  # fmt: skip
        return
    result.counts.update(counts)
    if encoded is not None:
        result.states[mpid] = encoded
    result.operations = ops_record


def _already_applied(state: UserState | None, kind: str, source: SourcePosition) -> bool:
    """True when ``state`` already holds this record (a redelivery after a crash).

    A Kafka transaction can commit a record's state before faust acks its offset; replaying
    such a record against the newer state would, e.g., forward events of a user whose email
    only arrived later. Skipping is safe because the state the worker reads is committed and
    was sent after the record's operations through the same transactional producer
    (agents/ingest.py ``RecordWriter``, ARCHITECTURE.md §4): they are in Kafka."""
    if state is None or source.offset < 0:
        return False
    return state.applied_offsets.get(_applied_key(kind, source), -1) >= source.offset


def _mark_applied(
    state: UserState | None,
    stored: UserState | None,
    kind: str,
    source: SourcePosition,
    record_ms: int | None,
) -> UserState | None:
    """``state`` (``stored`` with the record at ``source`` folded in) with the record's offset
    (the redelivery guard, :func:`_already_applied`) and the earliest Kafka time folded into
    it (``first_record_ms``: ``record_ms`` for a new state, the earlier of the two otherwise;
    None once either is unknown), which :func:`_erased_by_identity` compares with an erasure.
    """
    if state is None:
        return None
    if stored is None:
        first_ms = record_ms
    elif stored.first_record_ms is None or record_ms is None:
        first_ms = None
    else:
        first_ms = min(stored.first_record_ms, record_ms)
    if source.offset < 0:
        return evolve(state, {"first_record_ms": first_ms})
    return evolve(
        state,
        {
            "applied_offsets": {**state.applied_offsets, _applied_key(kind, source): source.offset},
            "first_record_ms": first_ms,
        },
    )


def _applied_key(kind: str, source: SourcePosition) -> str:
    """``<kind>@<partition>``; ``rekey@<partition>`` for a record of the re-key topic, whose
    offsets must never be compared with the input topic's (a re-keyed batch at offset 5 is
    not older than batch 7 of the batches topic)."""
    return f"{'rekey' if source.rekeyed else kind}@{source.partition}"


def _present(value: bytes | None) -> bytes:
    """The record's value; a tombstone (``None``) is rejected with reason ``tombstone``."""
    if value is None:
        raise InvalidRecordError(Reason.TOMBSTONE, "the record has no value (a Kafka tombstone)")
    return value


def _reject(  # noqa: PLR0917 - private helper, every argument is needed
    result: IngestResult,
    exc: InvalidRecordError,
    source: SourcePosition,
    key: bytes | None,
    value: bytes | None,
    clock: Callable[[], int],
    *,
    counter: str | None,
) -> None:
    """Dead-letter the record for ``exc``; count it ``rejected`` in ``counter`` (if any)."""
    result.dead_letters.append(
        dead_letter(
            exc.reason,
            exc.detail,
            stage=Stage.INGEST,
            source=source,
            key=key,
            payload=b"" if value is None else value,
            failed_at_ms=clock(),
        )
    )
    result.counts["dead_letters", Stage.INGEST, exc.reason] += 1
    if counter is not None:
        result.counts[counter, "rejected"] += 1


def _count_transformed(
    transformed: Transformed, counts: Counter[tuple[str, ...]], counter: str
) -> None:
    counts[counter, transformed.outcome] += 1
    for outcome, count in transformed.events.items():
        counts["events", "all", outcome] += count
    for kind, count in transformed.limits.items():
        counts["limits", kind] += count
    for operation in transformed.operations:
        counts["operations", operation.action] += 1


def _operations_record(
    mpid: str, operations: list[Operation], source: SourcePosition, clock: Callable[[], int]
) -> tuple[str, bytes]:
    return mpid, operation_batch(
        mpid, ((op.action, op.person_id, op.payload) for op in operations), source, clock()
    )


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("ascii")
    except UnicodeDecodeError:
        return None


def _rekey(
    value: bytes, mpids: list[str], record_mpid: str | None, list_key: str | None = None
) -> list[tuple[str, bytes]]:
    # Rare path (keyless or mixed bulk records): decode again to forward each raw part as is.
    document = orjson.loads(value)
    if list_key is not None and isinstance(document, dict) and list_key in document:
        document = document[list_key]
    raws = document if isinstance(document, list) else [document]
    return [
        (mpid, orjson.dumps(raw))
        for mpid, raw in zip(mpids, raws, strict=True)
        if mpid != record_mpid
    ]


def _load(  # noqa: PLR0917 - private helper, every argument is needed
    mpid: str,
    load_state: Callable[[str], bytes | None],
    result: IngestResult,
    source: SourcePosition,
    key: bytes | None,
    clock: Callable[[], int],
) -> UserState | None:
    stored = load_state(mpid)
    if stored is None:
        return None
    try:
        return decode_state(stored)
    except InvalidRecordError as exc:
        result.dead_letters.append(
            dead_letter(
                Reason.STATE_CORRUPT,
                exc.detail,
                stage=Stage.INGEST,
                source=source,
                key=key,
                payload=stored,
                failed_at_ms=clock(),
            )
        )
        result.counts["dead_letters", Stage.INGEST, Reason.STATE_CORRUPT] += 1
        return None


def _count_input(batch: Batch, counts: Counter[tuple[str, ...]]) -> None:
    for reason, count in batch.invalid_events.items():
        counts["events", "invalid", reason] += count
    for event_type, count in batch.ignored_events.items():
        counts["events", event_type, "ignored"] += count
    for kind, count in batch.ignored.items():
        counts["ignored", kind] += count
