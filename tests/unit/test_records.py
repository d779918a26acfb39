"""The wire records (app.records) and the closed catalogue of dead-letter reasons."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from app.errors import InvalidRecordError, Reason, http_reason, is_reason
from app.records import (
    SourcePosition,
    Stage,
    dead_letter,
    decode_dead_letter,
    decode_operation_batch,
    operation_batch,
)

ROOT = Path(__file__).resolve().parents[2]
#: Calls that write a dead-letter reason, and the position of the reason among their arguments.
REASON_ARGUMENT = {"InvalidRecordError": 0, "dead_letter": 0, "Rejected": 2, "Decision": 1}
#: The outcomes whose decision reason becomes the dead letters' reason.
LETTER_OUTCOMES = {"Outcome.DEAD_LETTER", "Outcome.PARTIAL"}


def test_operation_batch_round_trip() -> None:
    encoded = operation_batch(
        "42",
        [("identify", "7", b'{"a":1}'), ("event", "7", b"{}")],
        SourcePosition("b", 3, 9, timestamp_ms=4),
        5,
    )
    assert decode_operation_batch(encoded) == {
        "mpid": "42",
        "source_topic": "b",
        "source_partition": 3,
        "source_offset": 9,
        "ingested_at_ms": 5,
        "operations": [
            {"action": "identify", "person_id": "7", "item": b'{"a":1}'},
            {"action": "event", "person_id": "7", "item": b"{}"},
        ],
        "source_ms": 4,
    }


def test_dead_letter_round_trip_writes_plain_strings() -> None:
    encoded = dead_letter(
        Reason.TOO_LARGE,
        "big",
        stage=Stage.INGEST,
        source=SourcePosition("b", 1, 2),
        key=b"42",
        payload=b"{}",
        failed_at_ms=7,
    )
    letter = decode_dead_letter(encoded)
    assert (letter["reason"], letter["stage"]) == ("too_large", "ingest")
    assert type(letter["reason"]) is str


def test_a_value_that_is_not_the_record_raises_avro_decode() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        decode_operation_batch(b"nope")
    assert caught.value.reason == Reason.AVRO_DECODE


def test_http_reasons_are_the_one_open_family() -> None:
    assert http_reason(404) == "http_404"
    assert is_reason("http_404")
    assert is_reason("retries_exhausted")
    assert not is_reason("retries_exhausted_")
    assert not is_reason("http_4044")


def _reason_arguments() -> list[tuple[str, ast.expr]]:
    """(file:line, reason argument) of every call that writes a reason in app/ and agents/."""
    found = []
    for path in sorted([*ROOT.glob("app/**/*.py"), *ROOT.glob("agents/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = node.func.id if isinstance(node.func, ast.Name) else name
            position = REASON_ARGUMENT.get(name or "")
            if name == "Decision" and ast.unparse(node.args[0]) not in LETTER_OUTCOMES:
                continue  # the reason of a retry, a fatal stop or a success is no dead letter's
            if position is not None and len(node.args) > position:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.append((where, node.args[position]))
    return found


def test_every_reason_the_code_writes_is_in_the_catalogue() -> None:
    """A reason is a :class:`Reason` member, ``http_reason(...)``, or passed through from one
    of those (``exc.reason``, ``decision.reason``): never a string written on the spot."""
    arguments = _reason_arguments()
    assert len(arguments) > 30  # the walk found the writers (parsers, pipeline, sink, delivery)
    for where, argument in arguments:
        assert not isinstance(argument, (ast.Constant, ast.JoinedStr)), where
        if isinstance(argument, ast.Attribute) and ast.unparse(argument.value) == "Reason":
            assert argument.attr in Reason.__members__, where
        if isinstance(argument, ast.Call):
            assert ast.unparse(argument.func) == "http_reason", where


def test_every_reason_is_documented_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| reason | stage | meaning |") :]
    table = table[: table.index("\n\n")]
    documented = set(re.findall(r"^\| `([a-z0-9_<>]+)` \|", table, flags=re.MULTILINE))
    assert documented == {*Reason, "http_<status>"}
