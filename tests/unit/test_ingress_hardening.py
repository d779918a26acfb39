"""The ingress under load and hostile input: validation off the event loop, admission limit,
authentication edge cases, read timeouts, content encodings, port in use, DSR types, dry-run
of unknown message types (issue 17 findings)."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import os
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import fastjsonschema
import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from app.errors import ConfigError
from app.ingress.schemas import _fast_check, _validator, validate
from app.ingress.server import ADMISSION, REGISTRY, RUNNER_OPTIONS, build_app
from app.ops.dryrun import dry_run
from app.serving import ClientErrorFilter, listen
from tests.integration.support import wait_for
from tests.unit.test_firehose import AUTH, SECRET, FakeWriter, _settings, example

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from app.ingress.messages import Record

MEMBERSHIP = orjson.dumps(example("AudienceMembershipChangeRequest"))


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _client(writer: Any, **options: Any) -> TestClient:  # type: ignore[type-arg]
    runner_options = {**RUNNER_OPTIONS, **options.pop("runner", {})}
    app = build_app(_settings(ingress_max_body_bytes=1 << 20), writer, **options)
    test_server = TestServer(app)
    await test_server.start_server(**runner_options)  # served as `mpcio ingress` serves it
    client: TestClient = TestClient(test_server)  # type: ignore[type-arg]
    await client.start_server()
    return client


async def _raw(client: TestClient, data: bytes, *, timeout: float = 60) -> bytes:  # type: ignore[type-arg]
    """Send ``data`` on a fresh connection; what the server sends until it closes."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def _request(headers: bytes, body: bytes = b"", *, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % size
        + body
    )


# --- 1. validation off the event loop, admission limit --------------------------------------


async def test_validation_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation blocks until /healthz has been answered: possible only off the loop."""
    healthz_answered = threading.Event()
    threads: list[threading.Thread] = []
    validating = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_validate(message: dict[str, Any]) -> str:
        threads.append(threading.current_thread())
        loop.call_soon_threadsafe(validating.set)
        healthz_answered.wait(60)
        return validate(message)

    monkeypatch.setattr("app.ingress.server.validate", slow_validate)
    writer = FakeWriter()
    client = await _client(writer)
    try:
        post = asyncio.create_task(client.post("/", data=MEMBERSHIP, headers=AUTH))
        await validating.wait()
        health = await client.get("/healthz")
        assert health.status == 200
        healthz_answered.set()
        assert (await post).status == 200
        assert threads[0] is not threading.main_thread()
        assert len(writer.written) == 1
    finally:
        healthz_answered.set()
        await client.close()


class GatedWriter:
    """Holds every write until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.written: list[Record] = []

    async def write(self, records: Sequence[Record]) -> None:
        self.started.set()
        await self.release.wait()
        self.written.extend(records)


async def test_requests_beyond_capacity_wait_then_get_503_before_anything_is_written() -> None:
    """One slot, one waiting place: the second request waits, the third is refused."""
    writer = GatedWriter()
    client = await _client(writer, max_in_flight=1, max_waiting=1)
    try:
        first = asyncio.create_task(client.post("/", data=MEMBERSHIP, headers=AUTH))
        await writer.started.wait()
        second = asyncio.create_task(client.post("/", data=MEMBERSHIP, headers=AUTH))
        admission = client.app[ADMISSION]
        await wait_for(lambda: admission.waiting == 1, 60, "the second request waiting")
        before = _count("mpcio_ingress_rejected_total", reason="overloaded")
        third = await client.post("/", data=MEMBERSHIP, headers=AUTH)
        assert third.status == 503
        retry_after = str(_settings().ingress_retry_after_seconds)
        assert third.headers["Retry-After"] == retry_after
        assert (await third.json())["error"] == "overloaded"
        assert _count("mpcio_ingress_rejected_total", reason="overloaded") == before + 1
        assert writer.written == []
        writer.release.set()
        assert (await first).status == 200
        assert (await second).status == 200
        assert len(writer.written) == 2  # the two admitted messages only
    finally:
        writer.release.set()
        await client.close()


# --- 2, 3. authentication -------------------------------------------------------------------


async def test_non_utf8_authorization_is_401_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await _client(FakeWriter())
    try:
        before = _count("mpcio_ingress_rejected_total", reason="unauthorized")
        answer = await _raw(client, _request(b"Authorization: Bearer \xff\xfe\r\n", b"{}"))
        assert answer.startswith(b"HTTP/1.1 401")
        assert _count("mpcio_ingress_rejected_total", reason="unauthorized") == before + 1
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        await client.close()


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_auth_scheme_is_case_insensitive(scheme: str) -> None:
    client = await _client(FakeWriter())
    try:
        headers = {"Authorization": f"{scheme} {SECRET}"}
        assert (await client.post("/", data=MEMBERSHIP, headers=headers)).status == 200
    finally:
        await client.close()


@pytest.mark.parametrize("order", ["right-first", "wrong-first"])
async def test_two_authorization_headers_are_refused(order: str) -> None:
    writer = FakeWriter()
    client = await _client(writer)
    try:
        values = [f"Bearer {SECRET}", "Bearer wrong"]
        if order == "wrong-first":
            values.reverse()
        headers = CIMultiDict([("Authorization", value) for value in values])
        response = await client.post("/", data=MEMBERSHIP, headers=headers)
        assert response.status == 401
        assert writer.written == []
    finally:
        await client.close()


# --- 6. read timeouts -----------------------------------------------------------------------


async def test_body_that_never_completes_is_408_counted() -> None:
    writer = FakeWriter()
    client = await _client(writer, body_timeout_seconds=0.5)
    try:
        before = _count("mpcio_ingress_rejected_total", reason="timeout")
        auth = f"Authorization: Bearer {SECRET}\r\n".encode()
        answer = await _raw(client, _request(auth, b"{", length=100))
        assert answer.startswith(b"HTTP/1.1 408")
        assert _count("mpcio_ingress_rejected_total", reason="timeout") == before + 1
        assert writer.written == []
    finally:
        await client.close()


async def test_caller_leaving_mid_body_is_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await _client(FakeWriter())
    try:
        before = _count("mpcio_ingress_rejected_total", reason="disconnected")
        _, writer = await asyncio.open_connection(client.host, client.port)
        auth = f"Authorization: Bearer {SECRET}\r\n".encode()
        writer.write(_request(auth, b"{", length=100))
        await writer.drain()
        writer.close()
        counted = lambda: _count("mpcio_ingress_rejected_total", reason="disconnected")  # noqa: E731
        await wait_for(lambda: counted() == before + 1, 60, "the disconnect counted")
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        await client.close()


async def test_half_sent_headers_are_closed() -> None:
    client = await _client(FakeWriter(), runner={"keepalive_timeout": 0.5})
    try:
        # generous bound: the server, not this timeout, must end the connection
        answer = await _raw(client, b"POST / HTTP/1.1\r\nHost: x\r\nAuthor", timeout=60)
        assert answer == b""
    finally:
        await client.close()


# --- 7. content encodings -------------------------------------------------------------------


async def test_unsupported_encoding_is_authenticated_first_then_415_counted() -> None:
    client = await _client(FakeWriter())
    try:
        brotli = {"Content-Encoding": "br"}
        unauthenticated = await client.post("/", data=b"\x8b\x00", headers=brotli)
        assert unauthenticated.status == 401
        before = _count("mpcio_ingress_rejected_total", reason="unsupported_encoding")
        response = await client.post("/", data=b"\x8b\x00", headers={**AUTH, **brotli})
        assert response.status == 415
        assert (await response.json())["error"] == "unsupported_encoding"
        assert _count("mpcio_ingress_rejected_total", reason="unsupported_encoding") == before + 1
    finally:
        await client.close()


async def test_gzip_body_is_decoded_within_the_size_limit() -> None:
    writer = FakeWriter()
    client = await _client(writer)
    try:
        headers = {**AUTH, "Content-Encoding": "gzip"}
        ok = await client.post("/", data=gzip.compress(MEMBERSHIP), headers=headers)
        assert ok.status == 200
        assert len(writer.written) == 1
        bomb = gzip.compress(b" " * (2 << 20))  # decodes past the 1 MiB limit
        too_large = await client.post("/", data=bomb, headers=headers)
        assert too_large.status == 413
    finally:
        await client.close()


# --- 4. port in use -------------------------------------------------------------------------


def test_listen_on_a_port_in_use_is_a_config_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen("127.0.0.1", port)


@pytest.mark.parametrize(
    ("command", "prefix", "extra"),
    [
        ("ingress", "MPCIO_INGRESS", {"MPCIO_INGRESS_SECRET": "x" * 24}),
        # faust binds the web port late and with a traceback: the worker checks it first
        ("worker", "MPCIO_WEB", {"MPCIO_FORWARDING_ENABLED": "false"}),
    ],
)
def test_a_port_in_use_exits_2_with_one_line_before_kafka(
    command: str, prefix: str, extra: dict[str, str], tmp_path: Path
) -> None:
    """Kafka at an address where nothing listens: binding is refused before any connection."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            **extra,
            f"{prefix}_HOST": "127.0.0.1",
            f"{prefix}_PORT": str(port),
            "MPCIO_BROKER": "127.0.0.1:9",
            "MPCIO_DATA_DIR": str(tmp_path),
        }
        done = subprocess.run(
            [sys.executable, "-m", "app", command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"{prefix}_HOST/{prefix}_PORT: cannot listen on 127.0.0.1:{port}" in lines[0]


# --- 5. DSR types ---------------------------------------------------------------------------


async def test_dsr_without_request_type_is_400_naming_it() -> None:
    writer = FakeWriter()
    client = await _client(writer)
    try:
        message = example("DsrProcessingRequest")
        del message["subject_request_type"]
        response = await client.post("/", json=message, headers=AUTH)
        assert response.status == 400
        assert "subject_request_type" in (await response.json())["detail"]
        assert writer.written == []
    finally:
        await client.close()


@pytest.mark.parametrize("request_type", ["access", "portability"])
async def test_other_dsr_types_are_answered_counted_and_write_nothing(request_type: str) -> None:
    writer = FakeWriter()
    client = await _client(writer)
    try:
        before = _count("mpcio_ingress_ignored_total", reason=f"dsr_{request_type}")
        message = {**example("DsrProcessingRequest"), "subject_request_type": request_type}
        response = await client.post("/", json=message, headers=AUTH)
        assert response.status == 200
        assert (await response.json())["type"] == "dsr_processing_response"
        assert writer.written == []
        assert _count("mpcio_ingress_ignored_total", reason=f"dsr_{request_type}") == before + 1
    finally:
        await client.close()


# --- 8. dry-run -----------------------------------------------------------------------------


def test_dry_run_reports_an_unknown_message_type_as_the_ingress_does() -> None:
    out, errors = io.BytesIO(), io.StringIO()
    summary = dry_run([b'{"type": "bogus"}'], _settings(), out, errors)
    assert summary.invalid_lines == 1
    assert errors.getvalue().startswith("line 1: firehose: type: must be one of")
    assert out.getvalue() == b""


# --- 1. the fast validator is a faithful conversion of the draft-3 schemas -----------------

FIXTURE_NAMES = [
    "AudienceMembershipChangeRequest",
    "AudienceSubscriptionRequest",
    "DsrProcessingRequest",
    "ModuleRegistrationRequest",
]
WRONG_VALUES: list[Any] = [None, "x", 1, 1.5, True, [], {}, [{}], {"k": 1}]


def _variants(document: Any) -> Iterator[Any]:
    """``document`` with each value, at every depth, replaced by each wrong value or removed
    (and each list emptied or its item doubled)."""
    if type(document) is dict:
        for key, value in document.items():
            yield {k: v for k, v in document.items() if k != key}
            for replacement in [*WRONG_VALUES, *_variants(value)]:
                yield {**document, key: replacement}
    elif type(document) is list:
        yield []
        for index, value in enumerate(document):
            yield [*document, value]
            for replacement in [*WRONG_VALUES, *_variants(value)]:
                yield [*document[:index], replacement, *document[index + 1 :]]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fast_check_accepts_and_rejects_as_the_draft3_reference(name: str) -> None:
    message = example(name)
    kind = message["type"]
    reference, fast = _validator(kind), _fast_check(kind)
    fast(message)  # the published example passes both
    assert reference.is_valid(message)
    compared = rejected = 0
    for variant in _variants({k: v for k, v in message.items() if k != "type"}):
        candidate = {**variant, "type": kind}
        expected = reference.is_valid(candidate)
        try:
            fast(candidate)
        except fastjsonschema.JsonSchemaValueException:
            accepted = False
        else:
            accepted = True
        assert accepted == expected, orjson.dumps(candidate).decode()
        compared += 1
        rejected += not expected
    assert compared > 20
    assert rejected > 5  # the variants exercise rejections, not only acceptances


@pytest.mark.parametrize(
    ("level", "exc", "expected"),
    [
        pytest.param(logging.ERROR, LineTooLong("x-secret-value", 8190),
                     (logging.WARNING, "refused a malformed HTTP request: LineTooLong (400)", None),
                     id="header-too-long"),
        pytest.param(logging.ERROR, BadHttpMessage("bad header x-secret-value"),
                     (logging.WARNING, "refused a malformed HTTP request: BadHttpMessage (400)",
                      None), id="bad-message"),
        # aiohttp's own DEBUG for non-HTTP traffic stays DEBUG, without the bytes either
        pytest.param(logging.DEBUG, BadHttpMethod("x-secret-value"),
                     (logging.DEBUG, "refused a malformed HTTP request: BadHttpMethod (400)",
                      None), id="first-line-garbage"),
        # the server's own failure keeps its ERROR and traceback
        pytest.param(logging.ERROR, RuntimeError("bug"),
                     (logging.ERROR, "Error handling request from 127.0.0.1", RuntimeError),
                     id="server-error"),
    ],
)  # fmt: skip
def test_client_errors_are_one_warning_line(
    level: int, exc: Exception, expected: tuple[int, str, type[Exception] | None]
) -> None:
    record = logging.LogRecord(
        "aiohttp.server", level, __file__, 1, "Error handling request from %s", ("127.0.0.1",),
        (type(exc), exc, None),
    )  # fmt: skip
    assert ClientErrorFilter().filter(record)
    exc_type = record.exc_info[0] if record.exc_info else None
    assert (record.levelno, record.getMessage(), exc_type) == expected
    assert record.levelname == logging.getLevelName(record.levelno)
