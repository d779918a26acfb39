"""A request aiohttp cannot parse (a 20 KB header, no token) is one WARNING line in the log of
the worker's web server and of the ingress: no traceback, nothing of the header (app.serving)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from tests.integration.support import WorkerProcess, free_port, poll, wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

#: A header value nobody else writes: 20 KB, past aiohttp's 8,190-byte line limit.
MARKER = "hdrprobe"
OVERSIZED = f"X-Probe: {MARKER * 2500}\r\n".encode()
#: What the log says instead (the error's kind and status only).
WARNING = "WARNING aiohttp.server: refused a malformed HTTP request: LineTooLong (400)"


async def _status(port: int, path: str, extra_header: bytes = b"") -> int:
    """The status of ``GET path`` sent on a fresh connection (0 when the port is closed)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + extra_header)
        writer.write(b"Connection: close\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    return int(status_line.split()[1]) if status_line else 0


async def _check_refused_quietly(server: WorkerProcess, port: int, path: str) -> None:
    await poll(lambda: _answers(port, path), 120, f"{path} answering 200", server)
    assert await _status(port, path, OVERSIZED) == 400
    await wait_for(lambda: WARNING in server.log.read_text(), 30, "the refusal's WARNING line")
    log = server.log.read_text()
    assert log.count(WARNING) == 1
    assert "Traceback" not in log
    assert MARKER not in log
    assert " ERROR " not in log


async def _answers(port: int, path: str) -> bool:
    return await _status(port, path) == 200


async def test_the_worker_web_server_logs_a_malformed_request_as_one_line(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker()
    await _check_refused_quietly(worker, deployment.settings.web_port, "/health/live")


async def test_the_ingress_logs_a_malformed_request_as_one_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = free_port()
    env = {**deployment.env, "MPCIO_INGRESS_SECRET": "s" * 32, "MPCIO_INGRESS_PORT": str(port)}
    ingress = WorkerProcess(["-m", "app", "ingress"], env, tmp_path / "ingress.log").start()
    try:
        await _check_refused_quietly(ingress, port, "/healthz")
    finally:
        await ingress.stop()
