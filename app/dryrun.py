"""``mpcio dry-run``: what would be sent to Customer.io for a file of mParticle batches.

Reads JSON Lines (one batch, or one bulk array, per line) in order with one fresh in-memory
state for the whole file, and writes each Customer.io v2 batch item that would be sent, one
JSON object per line, exactly as the sink would send it.

Failure semantics: a line that cannot be used is reported on ``errors`` as
``line N: <reason>: <detail>`` and skipped; processing continues. Only an unreadable file is
an error for the caller (``OSError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from app.errors import InvalidRecordError
from app.mparticle import parse_record
from app.transform import transform

if TYPE_CHECKING:
    from collections.abc import Iterable

    from app.settings import Settings
    from app.state import UserState


@dataclass(slots=True)
class DryRunSummary:
    lines: int = 0
    invalid_lines: int = 0
    batches: int = 0
    operations: int = 0


def dry_run(
    lines: Iterable[bytes], settings: Settings, out: IO[bytes], errors: IO[str]
) -> DryRunSummary:
    """Transform every line; write items to ``out`` and bad lines to ``errors``."""
    states: dict[str, UserState] = {}
    summary = DryRunSummary()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        summary.lines += 1
        try:
            batches = parse_record(line)
        except InvalidRecordError as exc:
            summary.invalid_lines += 1
            errors.write(f"line {number}: {exc.reason}: {exc.detail}\n")
            continue
        for batch in batches:
            summary.batches += 1
            result = transform(batch, states.get(batch.mpid), settings)
            if result.state is not None:
                states[batch.mpid] = result.state
            for operation in result.operations:
                out.write(operation.payload + b"\n")
                summary.operations += 1
    return summary
