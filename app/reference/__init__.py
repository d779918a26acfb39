"""Public reference documents shipped with the package (see ``SOURCES.md`` beside this file).

:func:`load_json` reads one of them; the names are the ``*_FILE`` constants. Nothing here
catches errors: a missing or corrupt file raises (``FileNotFoundError``, ``ValueError``), so a
test or an emulator that needs one fails loudly instead of skipping its checks.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any, Final

import orjson

CUSTOMERIO_OPENAPI_FILE: Final = "customerio-track-api-openapi.json"
MPARTICLE_SCHEMA_FILE: Final = "mparticle-eventsapi-schema.json"
MPARTICLE_SAMPLE_FILE: Final = "mparticle-eventsapi-sample.json"


def read_bytes(name: str) -> bytes:
    """The exact bytes of the reference file ``name``."""
    return files(__name__).joinpath(name).read_bytes()


@cache
def load_json(name: str) -> Any:
    """The decoded reference file ``name``, read once per process (callers must not mutate it)."""
    return orjson.loads(read_bytes(name))
