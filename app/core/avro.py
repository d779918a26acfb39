"""Avro encoding with fastavro, in Avro's single-object encoding, with schema evolution.

Each value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema
+ the Avro binary body, so any Avro reader (with the ``.avsc`` from ``schemas/``) can decode it
and a schema change is detected instead of misread. fastavro writes the same bytes as the
``avro`` package at a tenth of the cost (SPEC §9); ``tests/unit/test_avro.py`` checks that the
``avro`` package reads what we write.

Schema evolution: values are always written with the current ``schemas/<name>.avsc``. Every
version ever released is kept in ``schemas/history/<name>/<fingerprint>.avsc`` (the fingerprint
as 16 hex digits, CRC-64-AVRO of the parsing canonical form), so a value written by an older
release is found by its fingerprint and resolved from that writer schema to the current one by
Avro's resolution rules (fastavro: fields the reader added take their defaults, fields it
dropped are skipped). ``tests/unit/test_schema_history.py`` fails when a schema changes without
its versions kept there or when a kept version cannot be read by the current schema.

Failure semantics: :meth:`AvroCodec.decode` raises :class:`~app.errors.InvalidRecordError`
(reason ``avro_decode``) for bytes that are not one of our records, including a fingerprint that
no kept version has (the detail names it); encoding a record that does not match its schema
raises ``ValueError`` (a bug, not bad input).
"""

from __future__ import annotations

import io
import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from app.errors import InvalidRecordError, Reason

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
HISTORY_DIR_NAME = "history"
_MAGIC = b"\xc3\x01"


def load_schema(path: Path) -> Any:
    """The parsed (fastavro) schema of one ``.avsc`` file."""
    return parse_schema(json.loads(path.read_text(encoding="utf-8")))


def schema_fingerprint(schema: Any) -> int:
    """The CRC-64-AVRO fingerprint of a parsed schema (what single-object encoding carries)."""
    return int(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), 16)


def history_file(schema_dir: Path, schema_name: str, fp: int) -> Path:
    """Where the kept version with fingerprint ``fp`` of ``schema_name`` lives."""
    return schema_dir / HISTORY_DIR_NAME / schema_name / f"{fp:016x}.avsc"


def _header(fp: int) -> bytes:
    return _MAGIC + struct.pack("<Q", fp)


class AvroCodec:
    """Encoder/decoder for one schema of ``schema_dir`` (default ``schemas/``).

    Writes with ``<schema_dir>/<name>.avsc``; reads values written with it or with any version
    kept in ``<schema_dir>/history/<name>/``.
    """

    def __init__(self, schema_name: str, schema_dir: Path = SCHEMA_DIR) -> None:
        self.name = schema_name
        self.schema = load_schema(schema_dir / f"{schema_name}.avsc")
        self.header = _header(schema_fingerprint(self.schema))
        # header -> writer schema of every older kept version (the current one reads itself)
        self.writers: dict[bytes, Any] = {}
        for path in sorted((schema_dir / HISTORY_DIR_NAME / schema_name).glob("*.avsc")):
            writer = load_schema(path)
            header = _header(schema_fingerprint(writer))
            if header != self.header:
                self.writers[header] = writer

    def encode(self, record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(self.header)
        schemaless_writer(buffer, self.schema, record)
        return buffer.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        header = data[:10]
        if header == self.header:
            writer, reader = self.schema, None  # the common case: no resolution needed
        elif header in self.writers:
            writer, reader = self.writers[header], self.schema
        elif header[:2] == _MAGIC and len(header) == 10:
            fp = struct.unpack("<Q", header[2:])[0]
            raise InvalidRecordError(
                Reason.AVRO_DECODE,
                f"{self.name} written with unknown schema fingerprint {fp:016x} "
                f"(not in schemas/{HISTORY_DIR_NAME}/{self.name}/)",
            )
        else:
            raise InvalidRecordError(Reason.AVRO_DECODE, _not_avro(self.name, data))
        try:
            record = schemaless_reader(io.BytesIO(data[10:]), writer, reader)
        except EOFError as exc:
            raise InvalidRecordError(
                Reason.AVRO_DECODE, f"corrupt {self.name} record: it ends before its last field"
            ) from exc
        except (ValueError, UnicodeDecodeError, IndexError) as exc:
            raise InvalidRecordError(
                Reason.AVRO_DECODE,
                f"corrupt {self.name} record: its bytes do not follow the schema "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        if not isinstance(record, dict):
            raise InvalidRecordError(Reason.AVRO_DECODE, f"{self.name} did not decode to a record")
        return record


def _not_avro(name: str, data: bytes) -> str:
    """Why ``data`` is no Avro single-object record (only its first two bytes are shown: the
    rest may be anyone's data)."""
    if not data:
        return f"not a {name} record: the value is empty"
    if data[:2] == _MAGIC:
        return f"{name} record cut short: {len(data)} bytes, less than its 10-byte header"
    return (
        f"not a {name} record: Avro single-object data starts with {_MAGIC.hex()}, "
        f"this starts with {data[:2].hex()}"
    )


@cache
def codec(schema_name: str) -> AvroCodec:
    """The shared codec for ``schemas/<schema_name>.avsc`` and its kept versions."""
    return AvroCodec(schema_name)
