"""``mpcio dry-run``: what would be sent to Customer.io for a file of mParticle input lines.

Reads JSON Lines in order with one fresh in-memory state for the whole file and writes each
Customer.io v2 batch item that would be sent, one JSON object per line, exactly as the sink
would send it. Each line is one input record of any of the worker's input topics, told apart
by :func:`line_kind`:

- ``erasure``: an object with ``subject_request_type`` (a data-subject request, SPEC §5): the
  ``delete`` items, and the user's state is forgotten;
- ``audience``: an object with a top-level ``audiences`` list, or the audience feed's
  ``user_profiles`` (membership changes, SPEC §4), or an array of such objects: the identify
  carrying the new membership;
- ``batch``: anything else (one mParticle batch, or a bulk array of batches).

Each kind has one handler in ``_HANDLERS``; a new input kind is one more entry there and one
more test in :func:`line_kind`.

A user not forwarded, and whatever the parser or the transform counted (placeholder emails,
renamed names, cut values, ...), is noted on ``errors`` as ``line N: note: mpid M: ...``.

Failure semantics: a line that cannot be used is reported on ``errors`` as
``line N: <reason>: <detail>``, counted in ``DryRunSummary.invalid_lines`` and skipped;
processing continues (the CLI exits 1 when any line was invalid). Only an unreadable file is
an error for the caller (``OSError``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

from app.audiences import parse_audience_record, transform_membership
from app.erasure import parse_erasure_record, plan_erasure
from app.errors import InvalidRecordError
from app.mparticle import load_json, parse_record
from app.transform import transform

if TYPE_CHECKING:
    from collections.abc import Iterable

    from app.settings import Settings
    from app.state import UserState
    from app.transform import Transformed


@dataclass(slots=True)
class DryRunSummary:
    """Counts of one run: input lines, invalid ones, records of each kind, items printed."""

    lines: int = 0
    invalid_lines: int = 0
    batches: int = 0
    audience_updates: int = 0
    erasures: int = 0
    operations: int = 0


@dataclass(slots=True)
class _Run:
    """One dry run: its settings, counts, where notes go, the line being handled (1-based)
    and every user's state so far (by mpid)."""

    settings: Settings
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


def line_kind(document: Any) -> str:
    """``erasure``, ``audience`` or ``batch`` for one decoded line (module docstring)."""
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
        result = transform(batch, run.states.get(batch.mpid), run.settings)
        payloads.extend(run.fold(batch.mpid, result, batch.ignored))
    return payloads


def _audience_line(line: bytes, run: _Run) -> list[bytes]:
    payloads = []
    for update in parse_audience_record(line):
        run.summary.audience_updates += 1
        result = transform_membership(update, run.states.get(update.mpid), run.settings)
        payloads.extend(run.fold(update.mpid, result))
    return payloads


def _erasure_line(line: bytes, run: _Run) -> list[bytes]:
    request = parse_erasure_record(line)
    run.summary.erasures += 1
    plan = plan_erasure(request, None if request.mpid is None else run.states.get(request.mpid))
    if plan.purge_state and request.mpid is not None:
        del run.states[request.mpid]
    return [orjson.dumps(item) for item in plan.deletes]


_HANDLERS: Final[dict[str, Callable[[bytes, _Run], list[bytes]]]] = {
    "batch": _batch_line,
    "audience": _audience_line,
    "erasure": _erasure_line,
}


def dry_run(
    lines: Iterable[bytes], settings: Settings, out: IO[bytes], errors: IO[str]
) -> DryRunSummary:
    """Handle every line; write items to ``out`` and bad lines to ``errors``."""
    run = _Run(settings, DryRunSummary(), errors)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        run.summary.lines += 1
        run.line = number
        try:
            payloads = _HANDLERS[line_kind(load_json(line))](line, run)
        except InvalidRecordError as exc:
            run.summary.invalid_lines += 1
            errors.write(f"line {number}: {exc.reason}: {exc.detail}\n")
            continue
        for payload in payloads:
            out.write(payload + b"\n")
        run.summary.operations += len(payloads)
    return run.summary
