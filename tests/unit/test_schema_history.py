"""The CI guard of schema evolution: every released schema is kept and still readable.

Stored and produced values (the ``users`` table, the operations and dead-letter topics) carry
their writer schema's fingerprint (app/core/avro.py). A reader can only resolve a value whose writer
schema it still has, so:

- the current ``schemas/<name>.avsc`` must be in ``schemas/history/<name>/`` (changing a schema
  fails here until the new version is added; old versions are never removed);
- every version of ``schemas/<name>.avsc`` ever committed to git must be kept there too
  (catches a change made without keeping the previous version, and a removed history file);
- each kept file is named by its own fingerprint;
- the current schema can read every kept version (Avro's reader/writer compatibility, checked
  by the reference ``avro`` package: a new field needs a default, a type may only widen).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro import parse_schema

from app.core.avro import HISTORY_DIR_NAME, SCHEMA_DIR, history_file, schema_fingerprint

REPO = SCHEMA_DIR.parent
SCHEMA_NAMES = sorted(path.stem for path in SCHEMA_DIR.glob("*.avsc"))


def _fingerprint(text: str) -> int:
    return schema_fingerprint(parse_schema(json.loads(text)))


def _kept(name: str) -> list[Path]:
    return sorted((SCHEMA_DIR / HISTORY_DIR_NAME / name).glob("*.avsc"))


def test_the_three_stored_schemas_are_guarded() -> None:
    assert SCHEMA_NAMES == ["dead_letter", "operation_batch", "user_state"]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_current_schema_is_kept_in_history(name: str) -> None:
    current = (SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8")
    kept = history_file(SCHEMA_DIR, name, _fingerprint(current))
    assert kept.exists(), (
        f"schemas/{name}.avsc changed: copy it to {kept.relative_to(REPO)} "
        "(and keep every older file there)"
    )


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_history_files_are_named_by_their_fingerprint(name: str) -> None:
    kept = _kept(name)
    assert kept
    for path in kept:
        assert path.stem == f"{_fingerprint(path.read_text(encoding='utf-8')):016x}", path


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_current_schema_reads_every_kept_version(name: str) -> None:
    reader = avro.schema.parse((SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8"))
    for path in _kept(name):
        writer = avro.schema.parse(path.read_text(encoding="utf-8"))
        result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
        assert result.compatibility is SchemaCompatibilityType.compatible, (
            f"schemas/{name}.avsc cannot read values written with {path.name}: "
            f"{sorted(result.messages)}"
        )


def _committed_versions(name: str) -> list[tuple[str, str]]:
    """``(commit, text)`` of every committed version of ``schemas/<name>.avsc``."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the committed versions cannot be listed")
    log = subprocess.run(
        [git, "log", "--format=%H", "--", f"schemas/{name}.avsc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        (
            commit,
            subprocess.run(
                [git, "show", f"{commit}:schemas/{name}.avsc"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout,
        )
        for commit in log.stdout.split()
    ]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_committed_version_is_kept(name: str) -> None:
    versions = _committed_versions(name)
    assert versions
    for commit, text in versions:
        kept = history_file(SCHEMA_DIR, name, _fingerprint(text))
        assert kept.exists(), (
            f"the version of schemas/{name}.avsc in commit {commit[:10]} is not kept as "
            f"{kept.relative_to(REPO)}: values written by that release could not be read"
        )
