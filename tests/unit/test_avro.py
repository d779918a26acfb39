"""Avro codec: fastavro writes single-object encoding that the reference ``avro`` package reads."""

from __future__ import annotations

import io
import json

import avro.io
import avro.schema
import pytest

from app.core.avro import SCHEMA_DIR, codec
from app.errors import InvalidRecordError

OPERATION_BATCH = {
    "mpid": "-8833345432347",
    "source_topic": "mparticle-batches",
    "source_partition": 3,
    "source_offset": 42,
    "ingested_at_ms": 1_700_000_000_000,
    "operations": [
        {"action": "identify", "person_id": "c1", "item": b'{"type":"person"}'},
        {"action": "event", "person_id": "c1", "item": '{"name":"caf\u00e9"}'.encode()},
    ],
    "source_ms": 1_699_999_999_000,
}
DEAD_LETTER = {
    "reason": "invalid_json",
    "detail": "line 1",
    "stage": "ingest",
    "source_topic": "mparticle-batches",
    "source_partition": 0,
    "source_offset": 7,
    "key": b"123",
    "payload": b"\xff\xfe",
    "http_status": None,
    "response": None,
    "attempts": 0,
    "failed_at_ms": 1,
    "source_ms": None,
}


@pytest.mark.parametrize(
    ("schema", "record"),
    [("operation_batch", OPERATION_BATCH), ("dead_letter", DEAD_LETTER)],
    ids=["operation_batch", "dead_letter"],
)
def test_reference_avro_package_reads_what_fastavro_writes(schema: str, record: dict) -> None:
    encoded = codec(schema).encode(record)
    reference = avro.schema.parse((SCHEMA_DIR / f"{schema}.avsc").read_text())
    assert encoded[:2] == b"\xc3\x01"
    # single-object encoding: the fingerprint is the little-endian CRC-64-AVRO of the schema
    assert encoded[2:10] == reference.fingerprint("CRC-64-AVRO")[::-1]
    decoded = avro.io.DatumReader(reference).read(avro.io.BinaryDecoder(io.BytesIO(encoded[10:])))
    assert decoded == record
    assert codec(schema).decode(encoded) == record


def test_decode_rejects_foreign_bytes_with_reason() -> None:
    with pytest.raises(InvalidRecordError) as caught:
        codec("operation_batch").decode(b'{"not": "avro"}')
    assert caught.value.reason == "avro_decode"


HEADER = codec("user_state").header


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        pytest.param(b"", "not a user_state record: the value is empty", id="empty"),
        pytest.param(b'{"email": "a@example.com"}',
                     "not a user_state record: Avro single-object data starts with c301, "
                     "this starts with 7b22", id="json"),
        pytest.param(b"\xc3\x01\x00", "user_state record cut short: 3 bytes, less than its "
                     "10-byte header", id="short-header"),
        pytest.param(HEADER, "corrupt user_state record: it ends before its last field",
                     id="header-only"),
        pytest.param(HEADER + b"\xff" * 30, "corrupt user_state record: its bytes do not "
                     "follow the schema (IndexError: string index out of range)", id="garbage"),
    ],
)  # fmt: skip
def test_decode_says_what_is_wrong_without_showing_the_data(data: bytes, detail: str) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        codec("user_state").decode(data)
    assert (caught.value.reason, caught.value.detail) == ("avro_decode", detail)


def test_decode_rejects_truncated_record() -> None:
    encoded = codec("operation_batch").encode(OPERATION_BATCH)
    with pytest.raises(InvalidRecordError):
        codec("operation_batch").decode(encoded[:-5])


def test_every_schema_file_parses_with_the_reference_package() -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        avro.schema.parse(json.dumps(json.loads(path.read_text())))
