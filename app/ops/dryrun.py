"""``mpcio dry-run``: what would be sent to Customer.io for a file of mParticle input lines.

Reads JSON Lines in order with one fresh in-memory store for the whole file (users' states and
erasure markers, as the worker's tables hold them) and writes each Customer.io v2 batch item
that would be sent, one JSON object per line, exactly as the sink would send it. Each line is
one input record of any of the worker's input topics, told apart by :func:`line_kind`:

- ``firehose``: an object with a ``type`` (mParticle batches, DSRs and audience feeds have
  none): validated like the ingress does (an unknown ``type`` is invalid with the ingress's
  detail, ``firehose: type: must be one of ...``), and the records the ingress would write are
  stepped as below;
- ``erasure``: an object with ``subject_request_type`` (a data-subject request, SPEC §5): the
  ``delete`` items; the user's state is forgotten and the erasure's markers kept;
- ``audience``: an object with a top-level ``audiences`` list, or the audience feed's
  ``user_profiles`` (membership changes, SPEC §4), or an array of such objects: the identify
  carrying the new membership;
- ``batch``: anything else (one mParticle batch, or a bulk array of batches).

Every record goes through the worker's own pure step of its topic (:mod:`app.core.pipeline`:
parsing, mpid checks, re-keying of other users' parts, erasure-marker and identity-marker
drops, the redelivery guard, opt-outs, limits), keyed by its first user's mpid (a record
without one, such as an erasure by identities, is keyless, as the ingress writes it), and its
items are read from its operations record as the sink reads them. So a file can mix batches,
membership changes and DSRs in the order they would arrive. Each kind has one handler in
``_HANDLERS``; a new input kind is one more entry there and one more test in
:func:`line_kind`.

Kafka time: every record reaches Kafka in file order, when it is handled (the wall clock) and
always later than the record before it, as ``mpcio replay`` and mParticle's own Kafka output
send records; the worker applies an erasure at its Kafka time. So an erasure acts on the lines
before it (their person is deleted) and never on the lines after it, whatever their batches'
``timestamp_unixtime_ms``: a later line of the erased user starts a new person.

Where ``mpcio replay`` differs: replay validates every line as a batch, so it refuses a line
without an mpid (an erasure by identities, an audience feed's ``user_profiles``), and a
record over the producer's 1,000,000 bytes stops it (a bulk line of thousands of batches),
while dry-run steps both. Dry-run tells the inputs apart by content,
the worker by topic: a batch that also carries ``subject_request_type`` or a top-level
``audiences`` list is stepped here as that kind, there as a batch.

A user not forwarded, and whatever the parser or the transform counted (placeholder emails,
renamed names, cut values, ...), is noted on ``errors`` as ``line N: note: mpid M: ...``.

Failure semantics: a line that cannot be used, and each dead letter the worker would write for
it, is reported on ``errors`` as ``line N: <reason>: <detail>`` (emails masked, as ``replay``
does); such a line is counted in ``DryRunSummary.invalid_lines`` (the CLI exits 1 when any
line was invalid) and processing continues. Only an unreadable file is an error for the caller
(``OSError``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

import orjson

from app import masking
from app.core.audiences import parse_audience_record
from app.core.erasure import parse_erasure_record
from app.core.mparticle import load_json, parse_record
from app.core.pipeline import (
    IngestResult,
    bound_rekeyed,
    from_rekey_topic,
    process_audience_record,
    process_batch_record,
    process_erasure_record,
)
from app.errors import FirehoseSchemaError, InvalidRecordError, Reason
from app.ingress.messages import plan_message
from app.ingress.schemas import validate
from app.records import SourcePosition, decode_dead_letter, decode_operation_batch, now_ms
from app.topics import rekey_headers
from app.wiring import core_options

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from app.core.options import CoreOptions
    from app.settings import Settings
    from app.topics import RekeyKind


@dataclass(slots=True)
class DryRunSummary:
    """Counts of one run: input lines, invalid ones, records of each kind, items printed."""

    lines: int = 0
    invalid_lines: int = 0
    batches: int = 0
    audience_updates: int = 0
    erasures: int = 0
    firehose_messages: int = 0
    operations: int = 0


#: The topic of the records the steps are told they come from (one partition; no dead letters
#: are kept, only reported).
_TOPIC: Final = "dry-run"
_REKEY: Final = "rekey"
#: The metric of each per-user step whose outcomes are noted (``IngestResult.counts``).
_COUNTERS: Final[dict[str, str]] = {"batches": "batches", "audiences": "audience_updates"}
#: Outcomes not noted: sent, reported as a dead letter, or noted where the part is stepped.
_QUIET: Final = frozenset({"forwarded", "rejected", "rekeyed"})


@dataclass(slots=True)
class _Run:
    """One dry run: its core options, counts, where notes go, the line being handled (1-based),
    whether it wrote a dead letter, the Kafka time of the last record (module docstring), and
    the store: every user's encoded state and every erasure marker (key → time), as the
    worker's tables hold them; ``offsets``: the last offset given per topic."""

    options: CoreOptions
    summary: DryRunSummary
    notes: IO[str]
    line: int = 0
    rejected: bool = False
    kafka_ms: int = 0
    states: dict[str, bytes] = field(default_factory=dict)
    markers: dict[str, int] = field(default_factory=dict)
    offsets: Counter[str] = field(default_factory=Counter)

    def record(self, kind: RekeyKind, key: bytes | None, value: bytes) -> list[bytes]:
        """Step one input record of ``kind``, sent now and after the record before it (its
        Kafka time: module docstring), and its re-keyed parts, as the worker would; the
        payloads of their items, in order."""
        self.kafka_ms = record_ms = max(now_ms(), self.kafka_ms + 1)
        position = self._position(kind, record_ms)
        result = _STEPS[kind](self, key, value, position)
        if result.rekeyed:
            bound_rekeyed(result, rekey_headers([], kind, _TOPIC), position)
        payloads = self._apply(kind, key, result)
        for mpid, part in result.rekeyed:  # read back from the re-key topic, keyed by mpid
            part_key, part_position = mpid.encode(), self._position(_REKEY, record_ms)
            stepped = _STEPS[kind](self, part_key, part, part_position)
            payloads += self._apply(kind, part_key, from_rekey_topic(stepped, part_position))
        return payloads

    def _position(self, topic: str, record_ms: int) -> SourcePosition:
        """The next record of ``topic``: each line is a new record, never a redelivery."""
        self.offsets[topic] += 1
        return SourcePosition(
            _TOPIC, 0, self.offsets[topic], rekeyed=topic == _REKEY, timestamp_ms=record_ms
        )

    def _apply(self, kind: RekeyKind, key: bytes | None, result: IngestResult) -> list[bytes]:
        """Keep what one step wrote (states, purges, markers), report its dead letters and
        note its user; its items' payloads."""
        self.states.update(result.states)
        for mpid in result.purged:
            self.states.pop(mpid, None)
        for marker, erased_ms in result.erased.items():
            # a marker never moves back (agents/ingest.py erasure_step)
            self.markers[marker] = max(erased_ms, self.markers.get(marker, erased_ms))
        for letter in result.dead_letters:
            self.rejected = True
            decoded = decode_dead_letter(letter)
            detail = masking.active().text(decoded["detail"])
            self.notes.write(f"line {self.line}: {decoded['reason']}: {detail}\n")
        counter = _COUNTERS.get(kind)
        if counter is not None and key is not None:
            self._note(key.decode(), counter, result.counts)
        if result.operations is None:
            return []
        operations = decode_operation_batch(result.operations[1])["operations"]
        return [operation["item"] for operation in operations]

    def _note(self, mpid: str, counter: str, counts: Counter[tuple[str, ...]]) -> None:
        """Note what of the user was not forwarded, and what the parser and the transform
        counted (``ignored`` / ``limits``)."""
        parts = [
            f"not forwarded: {key[1]}"
            for key in counts
            if key[0] == counter and key[1] not in _QUIET and counts[key]
        ]
        counted: Counter[str] = Counter()
        for key, count in counts.items():
            if key[0] in {"ignored", "limits"}:
                counted[key[1]] += count
        parts += [f"{kind}={count}" for kind, count in sorted(counted.items()) if count]
        if parts:
            self.notes.write(f"line {self.line}: note: mpid {mpid}: {'; '.join(parts)}\n")

    def erased_at(self, key: bytes | None) -> int | None:
        """When the key's user was last erased, or None."""
        return None if key is None else self.markers.get(key.decode())


_Step = Callable[[_Run, bytes | None, bytes, SourcePosition], IngestResult]


def _user_step(process: Callable[..., IngestResult]) -> _Step:
    """The step of a per-user topic (``process_batch_record`` or ``process_audience_record``)
    with the key's erasure marker and the identity markers, as the worker's."""

    def step(run: _Run, key: bytes | None, value: bytes, position: SourcePosition) -> IngestResult:
        return process(
            key,
            value,
            position,
            run.states.get,
            run.options,
            erased_at_ms=run.erased_at(key),
            record_ms=position.timestamp_ms,
            identity_erased_at=run.markers.get,
        )

    return step


def _erasure_step(
    run: _Run, key: bytes | None, value: bytes, position: SourcePosition
) -> IngestResult:
    """The erasure step: the request's user (by mpid), or every user whose state matches its
    identities (the dry run's one partition holds every user), applied as soon as it is sent
    (the worker's clock is the record's Kafka time)."""
    return process_erasure_record(
        key,
        value,
        position,
        run.states.get,
        record_ms=position.timestamp_ms,
        clock=lambda: run.kafka_ms,
        scan_states=lambda: list(run.states.items()),
    )


_STEPS: Final[dict[str, _Step]] = {
    "batches": _user_step(process_batch_record),
    "audiences": _user_step(process_audience_record),
    "erasure": _erasure_step,
}


def line_kind(document: Any) -> str:
    """``firehose``, ``erasure``, ``audience`` or ``batch`` for one decoded line (module
    docstring). Firehose first: its DSR message carries ``subject_request_type`` too."""
    if type(document) is dict and "type" in document:
        return "firehose"  # an unknown type is refused as the ingress refuses it
    first = document[0] if type(document) is list and document else document
    if type(first) is dict:
        if "subject_request_type" in first:
            return "erasure"
        if type(first.get("audiences")) is list or "user_profiles" in first:
            return "audience"
    return "batch"


class _PerUser(Protocol):
    """A parsed part of a per-user record: a batch or an audience membership update."""

    @property
    def mpid(self) -> str: ...


def _first_user(
    parse: Callable[[bytes], Sequence[_PerUser]], line: bytes
) -> tuple[bytes | None, int]:
    """The key of a per-user record (its first user's mpid) and how many users' parts it holds;
    ``(None, 0)`` when it does not parse (the step then dead-letters it)."""
    try:
        parts = parse(line)
    except InvalidRecordError:
        return None, 0
    return parts[0].mpid.encode(), len(parts)


def _batch_line(line: bytes, run: _Run) -> list[bytes]:
    key, batches = _first_user(parse_record, line)
    run.summary.batches += batches
    return run.record("batches", key, line)


def _audience_line(line: bytes, run: _Run) -> list[bytes]:
    key, updates = _first_user(parse_audience_record, line)
    run.summary.audience_updates += updates
    return run.record("audiences", key, line)


def _erasure_line(line: bytes, run: _Run) -> list[bytes]:
    try:
        mpid = parse_erasure_record(line).mpid
    except InvalidRecordError:
        return run.record("erasure", None, line)
    run.summary.erasures += 1
    return run.record("erasure", None if mpid is None else mpid.encode(), line)


def _firehose_line(line: bytes, run: _Run) -> list[bytes]:
    """Apply one Firehose message as the ingress and the worker would; any rejection is
    reported as ``firehose: <detail>``, a body the ingress's plain ``orjson.loads`` refuses
    (a number beyond a double, which :func:`load_json` keeps) included."""
    run.summary.firehose_messages += 1
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecordError(Reason.FIREHOSE, str(exc)) from exc
    try:
        plan = plan_message(validate(message), message, now_ms=0, new_id=lambda: "dry-run")
    except (FirehoseSchemaError, InvalidRecordError) as exc:
        raise InvalidRecordError(Reason.FIREHOSE, str(exc)) from exc
    payloads: list[bytes] = []
    for record in plan.records:
        payloads.extend(run.record(record.topic, record.key, record.value))
    return payloads


_HANDLERS: Final[dict[str, Callable[[bytes, _Run], list[bytes]]]] = {
    "firehose": _firehose_line,
    "batch": _batch_line,
    "audience": _audience_line,
    "erasure": _erasure_line,
}


def dry_run(
    lines: Iterable[bytes], settings: Settings, out: IO[bytes], errors: IO[str]
) -> DryRunSummary:
    """Handle every line; write items to ``out`` and bad lines to ``errors``."""
    run = _Run(core_options(settings), DryRunSummary(), errors)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        run.summary.lines += 1
        run.line = number
        run.rejected = False
        try:
            payloads = _HANDLERS[line_kind(load_json(line))](line, run)
        except InvalidRecordError as exc:
            run.summary.invalid_lines += 1
            # the detail may quote the record (an address given as an mpid): masked as replay's
            errors.write(f"line {number}: {exc.reason}: {masking.active().text(exc.detail)}\n")
            continue
        run.summary.invalid_lines += run.rejected
        for payload in payloads:
            out.write(payload + b"\n")
        run.summary.operations += len(payloads)
    return run.summary
