"""The Customer.io Track API emulator: an aiohttp application, in-process or in the foreground.

Track API routes (HTTP Basic auth, username = site id, password = API key; 401 otherwise):
``GET /auth``, ``GET /api/v1/accounts/region``, ``POST /api/v2/batch``, ``POST /api/v2/entity``,
``PUT`` and ``DELETE /api/v1/customers/{identifier}``,
``POST /api/v1/customers/{identifier}/events``, ``POST /api/v1/customers/{identifier}/suppress``
and ``/unsuppress``. Answers follow Customer.io's OpenAPI description:

- success: ``200 {}``;
- v2 batch with invalid items: ``207 {"errors": [{batch_index, reason, field, message}]}``, the
  valid items applied in order;
- malformed v2 request (not JSON, no ``batch`` array, a batch over 500,000 bytes, an entity
  over 32,000 bytes or invalid): ``400 {"errors": [{reason, field, message}]}``, nothing
  applied. The OpenAPI description lists no 413, so an oversized body is a 400; only a body
  over 8 MiB, which aiohttp refuses before reading, answers 413;
- invalid v1 request: ``400 {"meta": {"error": message, "errors": [message]}}`` (the first is
  what the service sends, the second what its OpenAPI description documents).

Region hosts: :func:`running_emulator` also listens on a second port that plays the other
region's host (:attr:`RunningEmulator.other_region_url`; a request whose ``Host`` is the other
region's real host name is treated the same). There, an EU workspace's authenticated requests
are redirected (``307``, ``Location`` on the EU host), as Customer.io's OpenAPI says its US host
does, and a US workspace's get ``401`` (the EU region does not know it); the region lookup
``GET /api/v1/accounts/region`` answers on both.

Pessimistic mode (``EmulatorConfig(pessimistic=True)``, ``mpcio emulator --pessimistic``) makes
the workspace as unforgiving as Customer.io may be where its behaviour is unpublished or looser
than ours (:class:`app.dev.emulator.store.WorkspaceRules`): stale identifies are applied, event
ids are remembered for a finite window only, and a person holds at most 300 attributes.

Every Track API request first passes the fault injector (:mod:`app.dev.emulator.faults`, before
authentication, as a load balancer would), then authentication, then validation
(:mod:`app.dev.emulator.validation`, then every v2 item against Customer.io's OpenAPI schema of its
action, formats included: :mod:`app.dev.emulator.openapi`) and the workspace
(:mod:`app.dev.emulator.store`). Requests are recorded in :mod:`app.dev.emulator.recording`. The
``/_emulator/*`` routes (no auth) inspect and steer it; ``docs/emulator.md`` describes them.

Failure semantics: a faulted request applies nothing, except ``delay``, which answers normally
once the delay is over, even when the client has given up by then (Customer.io, too, may
apply a request whose answer never arrived; event ids make the retry harmless). When the
emulator shuts down, requests still waiting out a delay are dropped without applying anything.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from aiohttp import encode_basic_auth, hdrs, web
from aiohttp.typedefs import Handler, LooseHeaders

from app.customerio.limits import MAX_ITEM_BYTES, MAX_REQUEST_BYTES
from app.dev.emulator.faults import Fault, FaultInjector, FaultRule, RateLimit, parse_faults
from app.dev.emulator.openapi import schema_error
from app.dev.emulator.recording import DEFAULT_LOG_LIMIT, RequestLog, RequestRecord
from app.dev.emulator.store import Store, WorkspaceRules
from app.dev.emulator.validation import (
    REASON_INVALID,
    REASON_TOO_LARGE,
    Identifier,
    ItemError,
    identifier_value_error,
    item_error,
    path_identifier,
    v1_event_error,
    v1_identify_error,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8089
# aiohttp refuses larger bodies with 413 before a handler sees them.
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
REGION_URLS: Final = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
REGION_HOSTS: Final = {"us": "track.customer.io", "eu": "track-eu.customer.io"}
OTHER_REGION: Final = {"us": "eu", "eu": "us"}
_REGION_PATH: Final = "/api/v1/accounts/region"
# Pessimistic mode: Customer.io publishes no de-duplication window; this one is finite (so a
# redelivery far behind its original shows) yet larger than any test's redelivery distance.
PESSIMISTIC_DEDUP_WINDOW: Final = 10_000
# Customer.io: "Unique attributes | 300 | Max number of attributes allowed per person or
# Identify call" (Track API limits, in the OpenAPI document's description).
MAX_ATTRIBUTES_PER_PERSON: Final = 300
# How long a stopping emulator waits for requests in flight (delayed ones are dropped at once).
SHUTDOWN_TIMEOUT_SECONDS: Final = 5.0

_INSPECTION_PREFIX: Final = "/_emulator/"
_ITEMS_KEY: Final = web.RequestKey("emulator_items", int)
_BYTES_KEY: Final = web.RequestKey("emulator_bytes", int)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How an emulator starts: its credentials, region, rate limit and initial faults.

    ``environment_id`` is what ``GET /api/v1/accounts/region`` reports; ``seed`` makes
    probabilistic faults repeatable; ``request_log_limit`` bounds ``GET /_emulator/requests``.
    ``pessimistic`` switches on the pessimistic workspace rules (module docstring), with
    ``dedup_window`` event ids remembered; ``apply_stale_identifies`` (pessimistic mode only,
    default on) can be turned off for a scenario whose faults themselves make identifies arrive
    late, to keep Customer.io's documented ``timestamp`` ordering there.
    """

    site_id: str
    api_key: str
    region: Literal["us", "eu"] = "us"
    rate_limit: RateLimit | None = None
    faults: tuple[FaultRule, ...] = ()
    seed: int | None = None
    environment_id: int = 1
    request_log_limit: int = DEFAULT_LOG_LIMIT
    pessimistic: bool = False
    dedup_window: int = PESSIMISTIC_DEDUP_WINDOW
    apply_stale_identifies: bool = True

    @property
    def workspace_rules(self) -> WorkspaceRules:
        """The workspace rules this configuration asks for (lenient unless pessimistic)."""
        if not self.pessimistic:
            return WorkspaceRules()
        return WorkspaceRules(
            apply_stale_identifies=self.apply_stale_identifies,
            dedup_window=self.dedup_window,
            max_attributes_per_person=MAX_ATTRIBUTES_PER_PERSON,
        )


class EmulatorState:
    """The workspace (:attr:`store`), the request log (:attr:`requests`) and item counters."""

    def __init__(
        self, request_log_limit: int = DEFAULT_LOG_LIMIT, rules: WorkspaceRules | None = None
    ) -> None:
        self._request_log_limit = request_log_limit
        self._rules = WorkspaceRules() if rules is None else rules
        self.store = Store(self._rules)
        self.requests = RequestLog(request_log_limit)
        self.items_accepted = 0
        self.items_rejected = 0

    def reset(self) -> None:
        """Forget every person, event, request and counter (faults and rules are kept)."""
        self.store = Store(self._rules)
        self.requests = RequestLog(self._request_log_limit)
        self.items_accepted = 0
        self.items_rejected = 0

    def stats(self) -> dict[str, Any]:
        """The counters ``GET /_emulator/stats`` shows."""
        store, requests = self.store, self.requests
        return {
            "requests": requests.requests,
            "requests_by_status": dict(requests.by_status),
            "bytes_received": requests.bytes_received,
            "items_received": requests.items_received,
            "items_accepted": self.items_accepted,
            "items_rejected": self.items_rejected,
            "identifies": store.identifies,
            "stale_identifies": store.stale_identifies,
            "events_stored": len(store.events),
            "duplicates_suppressed": store.duplicates_suppressed,
            "people": store.people_count,
            "people_deleted": len(store.deleted),
            "unresolved_operations": store.unresolved_operations,
            "attribute_update_failures": store.attribute_update_failures,
            "attributes_over_limit": store.attributes_over_limit,
            "faults_injected": dict(requests.faults),
            "max_requests_per_second": requests.max_requests_per_second,
        }


@dataclass(frozen=True, slots=True)
class RunningEmulator:
    """An emulator serving in this process: its base URL, the URL where it plays the other
    region's host, and live handles."""

    url: str
    state: EmulatorState
    faults: FaultInjector
    other_region_url: str


class _Emulator:
    """Everything the handlers share."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = EmulatorState(config.request_log_limit, config.workspace_rules)
        # Local ports where the emulator plays the other region's host (set once bound).
        self.other_region_ports: set[int] = set()
        self.faults = FaultInjector(list(config.faults), config.rate_limit, seed=config.seed)
        self.credentials = f"{config.site_id}:{config.api_key}"
        self.authorization = encode_basic_auth(config.site_id, config.api_key)
        self.closing = asyncio.Event()

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the site id and API key (HTTP Basic)."""
        if header is None:
            return False
        if header == self.authorization:
            return True
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return False
        return credentials == self.credentials

    def at_other_region(self, request: web.Request) -> bool:
        """Whether ``request`` reached the other region's host: by its ``Host`` name, or by
        arriving on a port that plays that host."""
        other = REGION_HOSTS[OTHER_REGION[self.config.region]]
        if request.host.partition(":")[0].lower() == other:
            return True
        transport = request.transport
        sockname = None if transport is None else transport.get_extra_info("sockname")
        return sockname is not None and sockname[1] in self.other_region_ports

    async def waited(self, seconds: float) -> bool:
        """Sleep ``seconds``; ``False`` when the emulator started shutting down meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await self.closing.wait()
        except TimeoutError:
            return True
        return False


_EMULATOR: Final = web.AppKey("emulator", _Emulator)


def build_app(config: EmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application (serve it with any aiohttp runner)."""
    app = web.Application(middlewares=[_track_api_middleware], client_max_size=MAX_BODY_BYTES)
    app[_EMULATOR] = _Emulator(config)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/auth", _auth)
    app.router.add_get("/api/v1/accounts/region", _region)
    app.router.add_post("/api/v2/batch", _v2_batch)
    app.router.add_post("/api/v2/entity", _v2_entity)
    app.router.add_put("/api/v1/customers/{identifier}", _v1_identify)
    app.router.add_delete("/api/v1/customers/{identifier}", _v1_delete)
    app.router.add_post("/api/v1/customers/{identifier}/events", _v1_event)
    app.router.add_post("/api/v1/customers/{identifier}/suppress", _v1_suppress)
    app.router.add_post("/api/v1/customers/{identifier}/unsuppress", _v1_unsuppress)
    app.router.add_get("/_emulator/people", _inspect_people)
    app.router.add_get("/_emulator/events", _inspect_events)
    app.router.add_get("/_emulator/identifies", _inspect_identifies)
    app.router.add_get("/_emulator/requests", _inspect_requests)
    app.router.add_get("/_emulator/stats", _inspect_stats)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_get("/_emulator/faults", _get_faults)
    app.router.add_post("/_emulator/faults", _add_faults)
    app.router.add_delete("/_emulator/faults", _clear_faults)
    return app


@asynccontextmanager
async def running_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningEmulator]:
    """Serve an emulator on ``host``:``port`` (0 = a free port) for the ``async with`` block,
    and play the other region's host on another free port of ``host``."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await web.TCPSite(runner, host, 0).start()
        (own_host, own_port), (other_host, other_port) = (a[:2] for a in runner.addresses)
        emulator = app[_EMULATOR]
        emulator.other_region_ports.add(other_port)
        yield RunningEmulator(
            _url(own_host, own_port),
            emulator.state,
            emulator.faults,
            other_region_url=_url(other_host, other_port),
        )
    finally:
        await runner.cleanup()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    other_region_port: int | None = None,
) -> None:
    """Serve an emulator in the foreground until SIGINT (Ctrl-C) or SIGTERM; with
    ``other_region_port``, also play the other region's host there."""
    logger.info(
        "Customer.io emulator on http://%s:%d (site id %s, region %s%s)",
        host,
        port,
        config.site_id,
        config.region,
        ", pessimistic" if config.pessimistic else "",
    )
    app = build_app(config)
    where: dict[str, Any] = {"host": host, "port": port}
    if other_region_port is not None:  # two ports: aiohttp serves a list of bound sockets
        where = {"sock": [_listening(host, port), _listening(host, other_region_port)]}
        app[_EMULATOR].other_region_ports.add(other_region_port)
    web.run_app(
        app,
        **where,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        print=None,
    )


def _listening(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (aiohttp serves a list of them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


async def _on_shutdown(app: web.Application) -> None:
    app[_EMULATOR].closing.set()


# --- the Track API pipeline: faults, auth, handler, record ---------------------------------------


@web.middleware
async def _track_api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(_INSPECTION_PREFIX):
        return await handler(request)
    emulator = request.app[_EMULATOR]
    started = time.monotonic()
    received_at = time.time()
    emulator.state.requests.arrived(started)
    fault = emulator.faults.decide(request.method, request.path)
    status: int | None = None
    try:
        response = await _answer(request, handler, emulator, fault)
        status = None if response is None else response.status
    finally:
        emulator.state.requests.finished(
            RequestRecord(
                method=request.method,
                path=request.path,
                host=request.host,
                status=status,
                items=request.get(_ITEMS_KEY, 0),
                bytes=request.get(_BYTES_KEY, request.content_length or 0),
                received_at=received_at,
                duration_seconds=time.monotonic() - started,
                fault=None if fault is None else fault.kind,
            )
        )
    if response is None:
        _drop_connection(request)
        return web.Response(status=499)  # never sent: the transport is gone
    return response


async def _answer(
    request: web.Request, handler: Handler, emulator: _Emulator, fault: Fault | None
) -> web.StreamResponse | None:
    """The response to send, or ``None`` to drop the connection (also when the client went
    away before its body arrived)."""
    try:
        return await _answer_received(request, handler, emulator, fault)
    except ConnectionResetError:
        return None


async def _answer_received(
    request: web.Request, handler: Handler, emulator: _Emulator, fault: Fault | None
) -> web.StreamResponse | None:
    if fault is not None:
        if fault.delay_seconds:
            await _read(request)  # received in full before the wait, as a real server would
            if not await emulator.waited(fault.delay_seconds):
                return None
        if fault.kind == "drop":
            return None
        if fault.status is not None:
            headers = None
            if fault.retry_after is not None:
                headers = {hdrs.RETRY_AFTER: str(fault.retry_after)}
            message = f"emulated fault: {fault.kind} {fault.status}"
            return _json(fault.status, {"meta": {"error": message}}, headers)
    refusal = _refusal(request, emulator)
    if refusal is not None:
        return refusal
    try:
        return await handler(request)
    except web.HTTPException as exc:  # no such route (404) or method (405), as JSON
        allow = exc.headers.get(hdrs.ALLOW)
        return _json(
            exc.status,
            {"meta": {"error": exc.reason}},
            None if allow is None else {hdrs.ALLOW: allow},
        )


def _refusal(request: web.Request, emulator: _Emulator) -> web.Response | None:
    """The answer to a request that may not reach the workspace: 401 without the credentials,
    or on the other region's host 307 (an EU workspace, authenticated) or 401 (a US one)."""
    authorized = emulator.authorized(request.headers.get(hdrs.AUTHORIZATION))
    if request.path != _REGION_PATH and emulator.at_other_region(request):
        if authorized and emulator.config.region == "eu":
            location = REGION_URLS["eu"] + request.path_qs
            return _json(307, {"meta": {"error": "wrong region"}}, {hdrs.LOCATION: location})
        authorized = False  # the other region has no such workspace
    if authorized:
        return None
    return _json(
        401,
        {"meta": {"error": "Unauthorized request"}},
        {hdrs.WWW_AUTHENTICATE: 'Basic realm="Customer.io Track API"'},
    )


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


# --- Track API handlers --------------------------------------------------------------------------


async def _auth(_request: web.Request) -> web.Response:
    return _ok()


async def _region(request: web.Request) -> web.Response:
    config = request.app[_EMULATOR].config
    return _json(
        200,
        {
            "url": REGION_URLS[config.region],
            "region": config.region,
            "environment_id": config.environment_id,
        },
    )


async def _v2_batch(request: web.Request) -> web.Response:
    emulator = request.app[_EMULATOR]
    body = await _read(request)
    if len(body) > MAX_REQUEST_BYTES:
        return _v2_invalid(
            ItemError(
                REASON_TOO_LARGE, "", f"batch request is larger than {MAX_REQUEST_BYTES} bytes"
            )
        )
    payload = _loads(body)
    if payload is _MALFORMED:
        return _v2_invalid(_MALFORMED_ERROR)
    batch = payload.get("batch") if type(payload) is dict else None
    if type(batch) is not list:
        return _v2_invalid(
            ItemError(REASON_INVALID, "batch", "body must be a JSON object with a batch array")
        )
    request[_ITEMS_KEY] = len(batch)
    state = emulator.state
    store = state.store
    check_size = len(body) > MAX_ITEM_BYTES
    received_at = time.time()
    errors = []
    for index, item in enumerate(batch):
        error = item_error(item, check_size=check_size) or schema_error(item)
        if error is None:
            store.apply(item, received_at)
        else:
            errors.append(error.as_json(index))
    state.items_rejected += len(errors)
    state.items_accepted += len(batch) - len(errors)
    if errors:
        return _json(207, {"errors": errors})
    return _ok()


async def _v2_entity(request: web.Request) -> web.Response:
    emulator = request.app[_EMULATOR]
    body = await _read(request)
    request[_ITEMS_KEY] = 1
    item: Any = _loads(body) if len(body) <= MAX_ITEM_BYTES else _TOO_LARGE
    if item is _TOO_LARGE:
        error: ItemError | None = ItemError(
            REASON_TOO_LARGE, "", f"entity request is larger than {MAX_ITEM_BYTES} bytes"
        )
    elif item is _MALFORMED:
        error = _MALFORMED_ERROR
    else:
        error = item_error(item, check_size=False) or schema_error(item)
    if error is not None:
        emulator.state.items_rejected += 1
        return _v2_invalid(error)
    emulator.state.store.apply(item, time.time())
    emulator.state.items_accepted += 1
    return _ok()


async def _v1_identify(request: web.Request) -> web.Response:
    identifier = request.match_info["identifier"]
    body = await _read(request)
    attributes = _loads(body) if body else {}
    message = v1_identify_error(identifier, attributes)
    if message is not None:
        return _v1_rejected(request, message)
    store = _v1_accepted(request)
    store.identify(
        path_identifier(identifier),
        attributes,
        update_only=attributes.get("_update") is True,
        received_at=time.time(),
    )
    return _ok()


async def _v1_event(request: web.Request) -> web.Response:
    identifier = request.match_info["identifier"]
    body = await _read(request)
    event = _loads(body)
    message = v1_event_error(identifier, event, len(body))
    if message is not None:
        return _v1_rejected(request, message)
    store = _v1_accepted(request)
    store.track(
        path_identifier(identifier),
        event.get("type", "event"),
        event["name"],
        event_id=event.get("id"),
        timestamp=event.get("timestamp"),
        attributes=event.get("data") or {},
        received_at=time.time(),
    )
    return _ok()


async def _v1_delete(request: web.Request) -> web.Response:
    return await _v1_person_change(request, lambda store, who: store.delete(who))


async def _v1_suppress(request: web.Request) -> web.Response:
    return await _v1_person_change(
        request, lambda store, who: store.set_suppressed(who, suppressed=True)
    )


async def _v1_unsuppress(request: web.Request) -> web.Response:
    return await _v1_person_change(
        request, lambda store, who: store.set_suppressed(who, suppressed=False)
    )


async def _v1_person_change(
    request: web.Request, change: Callable[[Store, Identifier], None]
) -> web.Response:
    identifier = request.match_info["identifier"]
    await _read(request)
    message = identifier_value_error(identifier)
    if message is not None:
        return _v1_rejected(request, message)
    change(_v1_accepted(request), path_identifier(identifier))
    return _ok()


def _v1_accepted(request: web.Request) -> Store:
    state = request.app[_EMULATOR].state
    request[_ITEMS_KEY] = 1
    state.items_accepted += 1
    return state.store


def _v1_rejected(request: web.Request, message: str) -> web.Response:
    request[_ITEMS_KEY] = 1
    request.app[_EMULATOR].state.items_rejected += 1
    return _json(400, {"meta": {"error": message, "errors": [message]}})


# --- inspection and control (no auth) ------------------------------------------------------------


async def _inspect_people(request: web.Request) -> web.Response:
    store = request.app[_EMULATOR].state.store
    wanted_id = request.query.get("id")
    wanted_email = request.query.get("email")
    people = [
        person.as_json()
        for person in (*store.people, *store.deleted)
        if (wanted_id is None or person.id == wanted_id)
        and (
            wanted_email is None
            or (person.email is not None and person.email.lower() == wanted_email.lower())
        )
    ]
    return _json(200, {"people": people})


async def _inspect_events(request: web.Request) -> web.Response:
    store = request.app[_EMULATOR].state.store
    query = request.query
    filters = [
        (key, query[key]) for key in ("person_id", "person_email", "name", "action") if key in query
    ]
    events = [event.as_json() for event in store.events]
    if filters:
        events = [event for event in events if all(event[key] == value for key, value in filters)]
    return _json(200, {"events": events})


async def _inspect_identifies(request: web.Request) -> web.Response:
    log = request.app[_EMULATOR].state.store.identifies_log
    return _json(200, {"identifies": [applied.as_json() for applied in log]})


async def _inspect_requests(request: web.Request) -> web.Response:
    records = request.app[_EMULATOR].state.requests.records
    return _json(200, {"requests": [record.as_json() for record in records]})


async def _inspect_stats(request: web.Request) -> web.Response:
    return _json(200, request.app[_EMULATOR].state.stats())


async def _reset(request: web.Request) -> web.Response:
    request.app[_EMULATOR].state.reset()
    return _ok()


async def _get_faults(request: web.Request) -> web.Response:
    return _json(200, request.app[_EMULATOR].faults.as_json())


async def _add_faults(request: web.Request) -> web.Response:
    faults = request.app[_EMULATOR].faults
    spec = _loads(await request.read())
    try:
        rules, limit = parse_faults(spec)
    except ValueError as exc:
        return _json(400, {"meta": {"error": str(exc)}})
    faults.add(rules, limit)
    return _json(200, faults.as_json())


async def _clear_faults(request: web.Request) -> web.Response:
    faults = request.app[_EMULATOR].faults
    faults.clear()
    return _json(200, faults.as_json())


# --- helpers -------------------------------------------------------------------------------------

_MALFORMED: Final = object()
_TOO_LARGE: Final = object()
_MALFORMED_ERROR: Final = ItemError(REASON_INVALID, "", "the body is not valid JSON")
_EMPTY_OBJECT: Final = b"{}"


async def _read(request: web.Request) -> bytes:
    body = await request.read()
    request[_BYTES_KEY] = len(body)
    return body


def _loads(body: bytes) -> Any:
    """The parsed body, or :data:`_MALFORMED` (which every check refuses) when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _MALFORMED


def _v2_invalid(error: ItemError) -> web.Response:
    return _json(400, {"errors": [error.as_json()]})


def _ok() -> web.Response:
    return web.Response(body=_EMPTY_OBJECT, content_type="application/json")


def _json(status: int, body: Any, headers: LooseHeaders | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )
