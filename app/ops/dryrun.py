"""``mpcio dry-run``: what would be sent to Customer.io for a file of mParticle input lines.

Reads JSON Lines in order with one fresh in-memory state for the whole file and writes each
Customer.io v2 batch item that would be sent, one JSON object per line, exactly as the sink
would send it. Each line is one input record of any of the worker's input topics, told apart
by :func:`line_kind`:

- ``firehose``: an object with a ``type`` (mParticle batches, DSRs and audience feeds have
  none): validated like the ingress does (an unknown ``type`` is invalid with the ingress's
  detail, ``firehose: type: must be one of ...``), and its records go through the worker's own
  audience / erasure steps (:mod:`app.core.pipeline`) against the same in-memory state;
- ``erasure``: an object with ``subject_request_type`` (a data-subject request, SPEC §5): the
  ``delete`` items, and the user's state is forgotten;
- ``audience``: an object with a top-level ``audiences`` list, or the audience feed's
  ``user_profiles`` (membership changes, SPEC §4), or an array of such objects: the identify
  carrying the new membership;
- ``batch``: anything else (one mParticle batch, or a bulk array of batches).

So a file can mix batches, membership changes and DSRs in the order they would arrive. Each
kind has one handler in ``_HANDLERS``; a new input kind is one more entry there and one more
test in :func:`line_kind`.

A user not forwarded, and whatever the parser or the transform counted (placeholder emails,
renamed names, cut values, ...), is noted on ``errors`` as ``line N: note: mpid M: ...``.

Failure semantics: a line that cannot be used is reported on ``errors`` as
``line N: <reason>: <detail>`` (emails masked, as ``replay`` does), counted in
``DryRunSummary.invalid_lines`` and skipped; processing continues (the CLI exits 1 when any
line was invalid). Only an unreadable file is an error for the caller (``OSError``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

from app import masking
from app.core.audiences import parse_audience_record, transform_membership
from app.core.erasure import parse_erasure_record
from app.core.mparticle import load_json, parse_record
from app.core.pipeline import IngestResult, process_audience_record, process_erasure_record
from app.core.state import decode_state, encode_state
from app.core.transform import transform
from app.errors import FirehoseSchemaError, InvalidRecordError, Reason
from app.ingress.messages import plan_message
from app.ingress.schemas import validate
from app.records import SourcePosition, decode_operation_batch
from app.wiring import core_options

if TYPE_CHECKING:
    from collections.abc import Iterable

    from app.core.options import CoreOptions
    from app.core.state import UserState
    from app.core.transform import Transformed
    from app.settings import Settings


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


@dataclass(slots=True)
class _Run:
    """One dry run: its core options, counts, where notes go, the line being handled (1-based)
    and every user's state so far (by mpid)."""

    options: CoreOptions
    summary: DryRunSummary
    notes: IO[str]
    line: int = 0
    states: dict[str, UserState] = field(default_factory=dict)

    def fold(
        self, mpid: str, transformed: Transformed, counted: dict[str, int] | None = None
    ) -> list[bytes]:
        """Keep the user's new state; note what was not forwarded or was counted (``counted``:
        the parser's, then the transform's counters); the payloads of its operations."""
        if transformed.state is not None:
            self.states[mpid] = transformed.state
        counters = {**(counted or {}), **transformed.limits}
        parts = (
            [] if transformed.outcome == "forwarded" else [f"not forwarded: {transformed.outcome}"]
        )
        parts += [f"{kind}={count}" for kind, count in sorted(counters.items())]
        if parts:
            self.notes.write(f"line {self.line}: note: mpid {mpid}: {'; '.join(parts)}\n")
        return [operation.payload for operation in transformed.operations]

    def load(self, mpid: str) -> bytes | None:
        """A user's state as the worker's steps read it (encoded)."""
        state = self.states.get(mpid)
        return None if state is None else encode_state(state)

    def encoded_states(self) -> list[tuple[str, bytes]]:
        """Every user's encoded state, for a scan by identities (erasure without mpid)."""
        return [(mpid, encode_state(state)) for mpid, state in self.states.items()]

    def apply(self, result: IngestResult) -> list[bytes]:
        """Keep what one of the worker's steps wrote (states, purges); its items' payloads."""
        for mpid, encoded in result.states.items():
            self.states[mpid] = decode_state(encoded)
        for mpid in result.purged:
            self.states.pop(mpid, None)
        if result.operations is None:
            return []
        operations = decode_operation_batch(result.operations[1])["operations"]
        return [operation["item"] for operation in operations]


# Where the worker's steps are told their records come from: nowhere (no dead letters are kept).
_POSITION: Final = SourcePosition("dry-run", 0, -1)


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


def _batch_line(line: bytes, run: _Run) -> list[bytes]:
    payloads = []
    for batch in parse_record(line):
        run.summary.batches += 1
        result = transform(batch, run.states.get(batch.mpid), run.options)
        payloads.extend(run.fold(batch.mpid, result, batch.ignored))
    return payloads


def _audience_line(line: bytes, run: _Run) -> list[bytes]:
    payloads = []
    for update in parse_audience_record(line):
        run.summary.audience_updates += 1
        result = transform_membership(update, run.states.get(update.mpid), run.options)
        payloads.extend(run.fold(update.mpid, result))
    return payloads


def _erasure_line(line: bytes, run: _Run) -> list[bytes]:
    """The worker's own erasure step: the request's user (by mpid), or every user whose state
    matches its identities."""
    request = parse_erasure_record(line)  # an unusable request is an invalid line
    run.summary.erasures += 1
    key = None if request.mpid is None else request.mpid.encode()
    return run.apply(
        process_erasure_record(
            key, line, _POSITION, run.load, record_ms=0, scan_states=run.encoded_states
        )
    )


def _firehose_line(line: bytes, run: _Run) -> list[bytes]:
    """Apply one Firehose message as the ingress and the worker would; any rejection is
    reported as ``firehose: <detail>``."""
    message = orjson.loads(line)
    run.summary.firehose_messages += 1
    try:
        plan = plan_message(validate(message), message, now_ms=0, new_id=lambda: "dry-run")
    except (FirehoseSchemaError, InvalidRecordError) as exc:
        raise InvalidRecordError(Reason.FIREHOSE, str(exc)) from exc
    payloads: list[bytes] = []
    for record in plan.records:
        if record.topic == "audiences":
            result = process_audience_record(
                record.key, record.value, _POSITION, run.load, run.options
            )
        else:
            result = process_erasure_record(
                None, record.value, _POSITION, run.load, record_ms=0,
                scan_states=run.encoded_states,
            )  # fmt: skip
        payloads.extend(run.apply(result))
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
        try:
            payloads = _HANDLERS[line_kind(load_json(line))](line, run)
        except InvalidRecordError as exc:
            run.summary.invalid_lines += 1
            # the detail may quote the record (an address given as an mpid): masked as replay's
            errors.write(f"line {number}: {exc.reason}: {masking.active().text(exc.detail)}\n")
            continue
        for payload in payloads:
            out.write(payload + b"\n")
        run.summary.operations += len(payloads)
    return run.summary
