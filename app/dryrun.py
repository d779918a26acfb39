"""``mpcio dry-run``: what would be sent to Customer.io for a file of mParticle batches.

Reads JSON Lines (one batch, or one bulk array, per line) in order with one fresh in-memory
state for the whole file, and writes each Customer.io v2 batch item that would be sent, one
JSON object per line, exactly as the sink would send it.

A line that is a Firehose request message (a JSON object whose ``type`` is one that
``mpcio ingress`` accepts) is validated like the ingress does and its records go through the
worker's own audience / erasure steps (:mod:`app.pipeline`) against the same in-memory state,
so a file can mix batches, membership changes and DSRs in the order they would arrive.

Failure semantics: a line that cannot be used is reported on ``errors`` as
``line N: <reason>: <detail>`` and skipped; processing continues. Only an unreadable file is
an error for the caller (``OSError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import orjson

from app.avro import codec
from app.errors import InvalidRecordError
from app.ingress.messages import plan_message
from app.ingress.schemas import REQUEST_SCHEMAS, FirehoseSchemaError, validate
from app.mparticle import parse_record
from app.pipeline import SourcePosition, process_audience_record, process_erasure_record
from app.state import decode_state, encode_state
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
        message = _firehose_message(line)
        if message is not None:
            try:
                summary.operations += _firehose(message, states, settings, out)
            except (FirehoseSchemaError, InvalidRecordError) as exc:
                summary.invalid_lines += 1
                errors.write(f"line {number}: firehose: {exc}\n")
            continue
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


def _firehose_message(line: bytes) -> dict[str, Any] | None:
    """The line as a Firehose request message, or None when it is not one."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    is_firehose = type(document) is dict and document.get("type") in REQUEST_SCHEMAS
    return document if is_firehose else None


def _firehose(
    message: dict[str, Any], states: dict[str, UserState], settings: Settings, out: IO[bytes]
) -> int:
    """Apply one Firehose message to ``states``; write its items; return how many."""
    plan = plan_message(validate(message), message, now_ms=0, new_id=lambda: "dry-run")
    position = SourcePosition("dry-run", 0, -1)

    def load(mpid: str) -> bytes | None:
        state = states.get(mpid)
        return None if state is None else encode_state(state)

    written = 0
    for record in plan.records:
        if record.topic == "audiences":
            result = process_audience_record(record.key, record.value, position, load, settings)
        else:
            result = process_erasure_record(
                None,
                record.value,
                position,
                load,
                record_ms=0,
                scan_states=lambda: [(m, encode_state(st)) for m, st in states.items()],
            )
        for mpid, encoded in result.states.items():
            states[mpid] = decode_state(encoded)
        for mpid in result.purged:
            states.pop(mpid, None)
        if result.operations is not None:
            for operation in codec("operation_batch").decode(result.operations[1])["operations"]:
                out.write(operation["item"] + b"\n")
                written += 1
    return written
