"""Run ``mpcio`` in a subprocess without blocking the loop (in-process servers keep serving)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from tests.integration.support import REPO


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


async def mpcio(
    *args: str, env: Mapping[str, str], stdin: bytes | None = None, timeout: float = 120
) -> CliResult:
    """``python -m app <args>`` with exactly these ``MPCIO_*`` variables (none inherited)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MPCIO_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *args,
        env={**clean, **env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"mpcio {' '.join(args)} did not finish within {timeout}s") from None
    assert process.returncode is not None
    return CliResult(process.returncode, out.decode(), err.decode())
