"""The hand-reviewed golden files (tests/golden/) against the product and the workload model.

A failure here means the mapping changed: either a bug (fix the product) or a deliberate change
(regenerate with ``python -m tests.golden.regenerate`` and re-review, tests/golden/README.md).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.ops.dryrun import dry_run
from app.settings import load_settings
from tests.golden import regenerate
from tests.integration import workload

GOLDEN = Path(regenerate.__file__).parent
SETTINGS = load_settings(forwarding_enabled="false")


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads((GOLDEN / name).read_bytes())
    return document


def _sample_lines() -> list[bytes]:
    return [line for line in regenerate.SAMPLE.read_bytes().splitlines() if line.strip()]


def test_the_product_maps_the_sample_as_the_golden_file_says() -> None:
    assert regenerate.golden("samples/mparticle-batches.jsonl", _sample_lines()) == _load(
        "sample.json"
    )


def test_the_product_maps_the_workload_as_the_golden_file_says() -> None:
    values = [value for _, value in workload.batches(*regenerate.WORKLOAD_SIZE)]
    source = f"tests.integration.workload.batches{regenerate.WORKLOAD_SIZE}"
    assert regenerate.golden(source, values) == _load("workload-10x3x2.json")


def test_golden_files_are_written_as_regenerate_writes_them() -> None:
    # A hand edit that changes only the layout would make every later regeneration a noisy diff.
    for name in ("sample.json", "workload-10x3x2.json"):
        assert regenerate.dumps(_load(name)) == (GOLDEN / name).read_bytes()


def test_the_workload_model_agrees_with_its_hand_reviewed_golden_file() -> None:
    values = [value for _, value in workload.batches(*regenerate.WORKLOAD_SIZE)]
    golden = [entry["item"] for entry in _load("workload-10x3x2.json")["items"]]
    assert workload.expected_items(values, SETTINGS) == golden


# Every workload size the integration suite runs: the model must hold at each.
@pytest.mark.parametrize(
    "size", [(60, 4, 5), (20, 2, 3), (200, 5, 10), (120, 3, 3), (40, 3, 4), (30, 2, 2), (24, 3, 3)]
)
def test_the_product_agrees_with_the_workload_model(size: tuple[int, int, int]) -> None:
    values = [value for _, value in workload.batches(*size)]
    out = io.BytesIO()
    dry_run(values, SETTINGS, out, io.StringIO())
    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == (
        workload.expected_items(values, SETTINGS)
    )


def test_the_workload_model_refuses_settings_it_does_not_model() -> None:
    with pytest.raises(ValueError, match="default mapping settings"):
        workload.expected_items([], load_settings(forwarding_enabled="false", send_created_at="1"))


def test_every_golden_event_id_is_rule_7_of_its_own_input_event() -> None:
    """Event ids are hashes no one can review by eye: recompute each from the input line with
    the workload's independent ULID (time = event ms, randomness = BLAKE2b of the message id)."""
    lines = _sample_lines()
    for entry in _load("sample.json")["items"]:
        item = entry["item"]
        if item["action"] == "identify":
            continue
        document = orjson.loads(lines[entry["line"] - 1])
        batches = document if isinstance(document, list) else [document]
        ids = {
            workload.event_ulid(
                data["timestamp_unixtime_ms"], batch["mpid"], data["source_message_id"]
            ): data
            for batch in batches
            for data in (event["data"] for event in batch["events"])
            if "source_message_id" in data
        }
        assert item["id"] in ids, item
        assert item["timestamp"] == ids[item["id"]]["timestamp_unixtime_ms"] // 1000


def test_person_sequences_keep_each_persons_order() -> None:
    items = [entry["item"] for entry in _load("sample.json")["items"]]
    sequences = workload.person_sequences(items)
    assert [action for action, _ in sequences["cust-ada"]] == [
        "identify",
        "screen",
        "event",
        "event",
    ]
    assert sequences["bob@example.org"][1] == ("screen", "01KB770NK0G58QFKZQMK4X947W")
