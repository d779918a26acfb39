"""Rewrite the golden files from the product's dry-run: ``python -m tests.golden.regenerate``.

Only after a deliberate mapping change: the new files must then be re-reviewed by hand, item by
item against SPEC §3 (``git diff tests/golden``; README.md beside this file says how), before
they are committed. The golden files are the suite's expectations; this script is merely a
typist.

Each golden file is a JSON object: ``source`` (what was run), ``items`` (``{"line", "item"}``:
the 1-based input line or record and the Customer.io v2 item it must produce, in order),
``rejected`` (``{"line", "reason"}``: lines dead-lettered at ingest) and ``skipped``
(``{"line", "reason"}``: users not forwarded on that line).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import orjson

from app.ops.dryrun import dry_run
from app.settings import load_settings
from tests.integration import workload

GOLDEN = Path(__file__).resolve().parent
SAMPLE = GOLDEN.parents[1] / "samples" / "mparticle-batches.jsonl"
WORKLOAD_SIZE = (10, 3, 2)  # users, batches per user, events per batch
NOTE = re.compile(r"^line (\d+): (?:note: mpid \S+: not forwarded: )?([a-z_]+)\b")


def golden(source: str, lines: list[bytes]) -> dict[str, Any]:
    """The golden document for ``lines`` under the default settings (module docstring)."""
    settings = load_settings(forwarding_enabled="false")
    items: list[dict[str, Any]] = []
    for count in range(1, len(lines) + 1):  # a prefix at a time: which line made which items
        out = io.BytesIO()
        dry_run(lines[:count], settings, out, io.StringIO())
        made = [orjson.loads(line) for line in out.getvalue().splitlines()]
        items += [{"line": count, "item": item} for item in made[len(items) :]]
    errors = io.StringIO()
    dry_run(lines, settings, io.BytesIO(), errors)
    rejected, skipped = [], []
    for line in errors.getvalue().splitlines():
        match = NOTE.match(line)
        if match is not None:
            entry = {"line": int(match[1]), "reason": match[2]}
            (skipped if "not forwarded" in line else rejected).append(entry)
    return {"source": source, "items": items, "rejected": rejected, "skipped": skipped}


def dumps(document: dict[str, Any]) -> bytes:
    """JSON with one item per line, so a review (and ``git diff``) reads item by item."""
    head = {key: value for key, value in document.items() if key != "items"}
    lines = [b"  " + orjson.dumps(entry) for entry in document["items"]]
    body = b",\n".join(lines)
    rest = orjson.dumps(head)[1:-1]
    return b'{\n "items": [\n' + body + b"\n ],\n " + rest + b"\n}\n"


def main() -> None:
    sample_lines = [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]
    (GOLDEN / "sample.json").write_bytes(
        dumps(golden("samples/mparticle-batches.jsonl", sample_lines))
    )
    users, rounds, events = WORKLOAD_SIZE
    values = [value for _, value in workload.batches(users, rounds, events)]
    name = f"workload-{users}x{rounds}x{events}"
    (GOLDEN / f"{name}.json").write_bytes(
        dumps(golden(f"tests.integration.workload.batches{WORKLOAD_SIZE}", values))
    )


if __name__ == "__main__":
    main()
