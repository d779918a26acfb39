"""The public reference documents live in the package, unedited, and a missing one fails."""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files

import pytest

from app.reference import (
    CUSTOMERIO_OPENAPI_FILE,
    MPARTICLE_SAMPLE_FILE,
    MPARTICLE_SCHEMA_FILE,
    load_json,
    read_bytes,
)

SOURCES = files("app.reference").joinpath("SOURCES.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "name", [CUSTOMERIO_OPENAPI_FILE, MPARTICLE_SCHEMA_FILE, MPARTICLE_SAMPLE_FILE]
)
def test_each_reference_file_is_listed_with_its_source_and_checksum(name: str) -> None:
    (row,) = [line for line in SOURCES.splitlines() if line.startswith(f"| `{name}` |")]
    assert re.search(r"https://", row), "the row names where the file comes from"
    assert hashlib.sha256(read_bytes(name)).hexdigest() in row, "edited or replaced silently"


def test_reference_documents_are_what_the_tests_expect() -> None:
    assert load_json(CUSTOMERIO_OPENAPI_FILE)["openapi"].startswith("3.1")
    assert "user_identities" in load_json(MPARTICLE_SCHEMA_FILE)["properties"]
    assert load_json(MPARTICLE_SAMPLE_FILE)["events"]


def test_a_missing_reference_file_raises_instead_of_skipping() -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes("no-such-reference.json")
