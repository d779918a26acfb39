"""The worker's own web views and the sampler of its gauges, on faust's web server.

Views (beside faust's ``/metrics``, which serves ``faust_*`` and our ``mpcio_*``):

- ``GET /health/live``  — 200 while the process runs and its web server answers;
- ``GET /health/ready`` — "running and able to work": 200 once this worker is in its consumer
  group, every agent is running and (when forwarding) the sink runs in its group and is not
  stopped by a configuration error; else 503 with ``{"ready": false, "reason": ...,
  "reasons": [...]}``. Both carry ``status`` (``starting``, ``active``, ``standby`` — in the
  group without partitions, a surplus replica — or ``rebalancing``) and the partition counts;
- ``GET /users/{mpid}`` — support view of one user's state from the ``users`` table, every
  personal value masked (``?unmasked=true`` shows them); 404 when this worker does not hold the
  user (a table only holds the partitions assigned to this worker).

Access (:func:`decide_access`, enforced by a middleware on every request): ``/metrics`` and
``/health/*`` are open (what Prometheus and probes need); every other route — ``/users`` and,
when ``MPCIO_WEB_FAUST_VIEWS`` enables them, faust's own views — needs ``Authorization: Bearer
<MPCIO_SUPPORT_TOKEN>`` (401 without it or with a wrong one) and answers 404 while no token is
set. A URL no route serves is judged like a guarded route (401 without the token, 404 with it),
so an unauthenticated scan cannot tell the guarded routes from URLs that do not exist. faust's
placeholder index ``/`` (``{"status": "OK"}``, which faust serves even with its views off) does
not exist while the views are off (:data:`FAUST_PLACEHOLDER_ROUTES`). Once listening, the worker
logs its address and every route with its access.

A timer (every :data:`SAMPLE_INTERVAL_SECONDS`) samples the gauges that no event increments:
``mpcio_consumer_lag{topic,partition}`` (ingest inputs and the sink's operations topic),
``mpcio_table_keys{table}`` and ``mpcio_ready``. A sample reads only local state (offsets the
consumers already know, service states): no broker round trip; the table keys are counted
exactly, a bounded slice per sample (:class:`KeyCounter`). The recovery gauges
(``mpcio_table_recovery_in_progress``, ``mpcio_table_recovery_remaining_records``) are read
from faust's recovery at every scrape (faust runs no timer while it recovers). While faust
recovers tables, ``/health/ready`` is 503 with status ``recovering`` and the records left.

The decisions (:func:`decide_readiness`, :func:`decide_access`, :func:`user_answer`) are pure,
for unit tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web as aiohttp_web
from aiokafka.partitioner import murmur2

from app import masking, metrics
from app.core.mparticle import int64_text
from app.core.state import UserState, decode_state
from app.errors import InvalidRecordError
from app.faust_app import COORDINATOR_WARNING_SECONDS
from app.serving import authorized, quiet_client_errors
from app.topics import ERASURES_TABLE, USERS_TABLE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import faust
    from faust import web

    from app.settings import Settings
    from app.topics import Topics

log = logging.getLogger(__name__)

#: How often the lag, table-size and readiness gauges are sampled (not a setting: a sample is
#: a few dictionary reads, and Prometheus scrapes are rarely more frequent than this).
SAMPLE_INTERVAL_SECONDS = 2.0
#: Keys the table-size count reads per sample (~10 µs each: bounded time on the loop).
KEY_COUNT_BUDGET = 20_000
#: Longest wait for a consumer position the timer falls back to (never blocks the loop long).
POSITION_TIMEOUT_SECONDS = 1.0

#: How long the worker waits for its web server to listen before logging the routes anyway.
LISTEN_WAIT_SECONDS = 60.0

#: Routes faust serves even with its views off (its production index answers ``{"status":
#: "OK"}``): with ``MPCIO_WEB_FAUST_VIEWS`` off they are treated as routes that do not exist.
FAUST_PLACEHOLDER_ROUTES = frozenset({"/"})


class SinkLike(Protocol):
    """What the views need from :class:`app.sink.service.OperationsSink`."""

    @property
    def state(self) -> str: ...

    @property
    def joined(self) -> bool: ...

    @property
    def partitions(self) -> int: ...

    stopped_reason: str | None

    async def lag(self) -> Mapping[Any, int]: ...


class SinkHandleLike(Protocol):
    instance: Any


# --- readiness --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether this worker is running and able to work, what it is doing, and why not.

    ``status``: ``starting`` (not in its consumer group yet), ``recovering`` (reading the
    changelogs into its tables), ``active`` (has input partitions), ``standby`` (in the group
    with no input partition: more workers than partitions; it takes partitions over on the
    next rebalance) or ``rebalancing``.
    """

    reasons: tuple[str, ...]
    status: str = "active"
    input_partitions: int = 0
    operations_partitions: int | None = None

    @property
    def ready(self) -> bool:
        return not self.reasons

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ready": self.ready,
            "status": self.status,
            "input_partitions": self.input_partitions,
        }
        if self.operations_partitions is not None:
            body["operations_partitions"] = self.operations_partitions
        if self.status == "standby":
            body["detail"] = (
                "no input partitions assigned: more workers than partitions; "
                "this worker takes partitions over when the group rebalances"
            )
        if self.reasons:
            body["reason"] = self.reasons[0]
            body["reasons"] = list(self.reasons)
        return body


def decide_readiness(
    *,
    joined: bool,
    rebalancing: bool,
    input_partitions: int,
    agents: Mapping[str, str],
    forwarding_enabled: bool,
    sink_state: str | None,
    sink_joined: bool,
    sink_partitions: int,
    sink_stopped_reason: str | None,
    recovery_remaining: int | None = None,
    coordinator_wait_seconds: float | None = None,
) -> Readiness:
    """Ready = in the consumer group (with or without partitions), every agent running, and
    (when forwarding) the sink running in its group and not stopped by a configuration error.

    ``joined``: the worker's first partition assignment has happened (an empty one counts);
    ``agents`` maps agent name → service state (``running``, ``crashed``, ...); the sink
    fields are ignored when forwarding is disabled. A worker without partitions is ready: a
    surplus replica is a healthy standby, not a failure (``kubectl rollout status`` waits for
    every replica to be ready). ``recovery_remaining``: changelog records still to read while
    faust recovers the tables of assigned partitions (``None`` when not recovering): not
    ready, status ``recovering``. ``coordinator_wait_seconds``: how long a transactional
    producer has waited for its producer id (``None``: none waits); from
    ``COORDINATOR_WARNING_SECONDS`` on, not ready (the transaction coordinator does not
    answer: without it no partition can be processed).
    """
    reasons: list[str] = []
    if not joined:
        reasons.append("joining the consumer group: no partition assignment yet")
    if recovery_remaining is not None:
        reasons.append(
            f"recovering table state from the changelogs: {recovery_remaining} records left"
        )
    reasons.extend(_coordinator_reasons(coordinator_wait_seconds))
    if not agents:
        reasons.append("no agents registered")
    reasons.extend(
        f"agent {name} is {state}" for name, state in sorted(agents.items()) if state != "running"
    )
    if forwarding_enabled:
        if sink_stopped_reason is not None:
            reasons.append(f"delivery stopped: {sink_stopped_reason}")
        elif sink_state is None:
            reasons.append("sink not started")
        elif sink_state != "running":
            reasons.append(f"sink is {sink_state}")
        elif not sink_joined:
            reasons.append("sink joining its consumer group: no partition assignment yet")
    operations_partitions = sink_partitions if forwarding_enabled else None
    if not joined:
        status = "starting"
    elif recovery_remaining is not None:
        status = "recovering"
    elif rebalancing:
        status = "rebalancing"
    else:
        status = "active" if input_partitions or operations_partitions else "standby"
    return Readiness(tuple(reasons), status, input_partitions, operations_partitions)


def _coordinator_reasons(wait_seconds: float | None) -> list[str]:
    """The not-ready reason of a transactional producer that has waited ``wait_seconds`` for
    its producer id, once that is ``COORDINATOR_WARNING_SECONDS`` or more."""
    if wait_seconds is None or wait_seconds < COORDINATOR_WARNING_SECONDS:
        return []
    reason = (
        f"waiting {wait_seconds:.0f} s for Kafka's transaction coordinator (InitProducerId): "
        "is __transaction_state creatable and in sync?"
    )
    return [reason]


# --- access -----------------------------------------------------------------------------------


class Access(StrEnum):
    """What the guard does with a request."""

    OPEN = "open"  # served to anyone: /metrics, /health/*
    ALLOWED = "allowed"  # a guarded route with the right bearer token
    UNAUTHORIZED = "unauthorized"  # a guarded route without the token, or a wrong one: 401
    OFF = "off"  # a guarded route while MPCIO_SUPPORT_TOKEN is unset: 404
    NOT_FOUND = "not_found"  # no route, with the right bearer token: 404


def is_open(path: str) -> bool:
    """Whether a route (its pattern, e.g. ``/users/{mpid}``) is served without a token."""
    return path == "/metrics" or path.startswith("/health/")


def decide_access(path: str | None, authorizations: Sequence[str], token: str | None) -> Access:
    """The guard's decision for a request to the route ``path`` (``None``: no route serves
    the URL) with these ``Authorization`` headers (every one the request carries);
    ``token`` is ``MPCIO_SUPPORT_TOKEN`` (``None`` when unset). Exactly one header,
    ``Bearer <token>``, is allowed, as at the ingress (:func:`~app.serving.authorized`:
    a second header, even after the right one, is refused); compared in constant time.

    A URL without a route needs the token like a guarded route and only then is 404
    (``NOT_FOUND``): 401 or 404 must not tell an unauthenticated client which routes exist."""
    if path is not None and is_open(path):
        return Access.OPEN
    if token is None:
        return Access.OFF
    if not authorized(authorizations, token.encode()):
        return Access.UNAUTHORIZED
    return Access.ALLOWED if path is not None else Access.NOT_FOUND


def access_middleware(token: str | None, hidden: frozenset[str] = frozenset()) -> Any:
    """The aiohttp middleware that applies :func:`decide_access` to the matched route (its
    pattern, so no spelling of the URL reaches a guarded view unguarded). Routes in ``hidden``
    are answered as if they did not exist; a URL under an open prefix that no route serves
    (``/health/nope``) gets aiohttp's own 404/405."""

    @aiohttp_web.middleware
    async def guard(
        request: aiohttp_web.Request,
        handler: Callable[[aiohttp_web.Request], Awaitable[aiohttp_web.StreamResponse]],
    ) -> aiohttp_web.StreamResponse:
        resource = request.match_info.route.resource
        path = None if resource is None else resource.canonical
        if path in hidden:
            path = None
        if path is None and is_open(request.path):
            return await handler(request)
        access = decide_access(path, request.headers.getall("Authorization", []), token)
        if access is Access.NOT_FOUND and resource is None:  # aiohttp's own 404/405
            return await handler(request)
        if access in {Access.OFF, Access.NOT_FOUND}:
            raise aiohttp_web.HTTPNotFound
        if access is Access.UNAUTHORIZED:
            raise aiohttp_web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Bearer realm="mpcio"'},
                text="this view needs Authorization: Bearer <MPCIO_SUPPORT_TOKEN>\n",
            )
        return await handler(request)

    return guard


def served_routes(
    web_app: aiohttp_web.Application, token: str | None, hidden: frozenset[str] = frozenset()
) -> list[dict[str, str]]:
    """Every route of the web server as ``{"method", "path", "access"}``, where access is
    ``open``, ``token`` or ``off`` (guarded while no token is set); ``hidden`` ones left out."""
    routes = []
    for route in web_app.router.routes():
        path = route.resource.canonical if route.resource is not None else "?"
        if path in hidden:
            continue
        guarded = "off" if token is None else "token"
        access = "open" if is_open(path) else guarded
        routes.append({"method": route.method, "path": path, "access": access})
    return sorted(routes, key=lambda r: (r["path"], r["method"]))


# --- the support view -------------------------------------------------------------------------


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def user_json(mpid: str, state: UserState, masker: masking.Masker | None) -> dict[str, Any]:
    """The support view of one user. With a ``masker`` every personal value is masked: email
    (and a ``person_id`` that is an email) as ``<email:…>``, customer id, person id, names and
    each attribute value as ``<value:…>``; with ``None`` they are shown as stored."""

    def personal(value: Any) -> Any:
        if masker is None or value is None:
            return value
        if isinstance(value, str) and "@" in value:
            return masker.email(value)
        return masker.value(value)

    return {
        "mpid": mpid,
        "email": personal(state.email),
        "customer_id": personal(state.customer_id),
        "person_id": personal(state.person_id),
        "first_name": personal(state.first_name),
        "last_name": personal(state.last_name),
        "attributes": {name: personal(value) for name, value in state.attributes.items()},
        "masked": masker is not None,
        "profile_at": _iso(state.profile_at_ms),
        "audiences": state.audiences,
        "audiences_left": state.audiences_left,
        "opted_out": state.opted_out,
        "opt_out_at": _iso(state.opt_out_at_ms),
        "unsubscribed_sent": state.unsubscribed_sent,
        "identify_sent": state.sent_digest is not None,
        "first_seen": {
            device: {"at": _iso(seen.ms), "install": seen.install}
            for device, seen in sorted(state.first_seen.items())
        },
        "last_device_type": state.last_device_type,
        "last_seen": _iso(state.last_seen_ms),
        "created_at": _iso(state.created_at_ms),
    }


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for ``key``."""
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def not_found_json(mpid: str, partitions: int, held: Iterable[int]) -> dict[str, Any]:
    held_sorted = sorted(held)
    return {
        "error": "unknown mpid on this worker",
        "mpid": mpid,
        "detail": "the users table on a worker only holds the partitions assigned to it; "
        "the user may be unknown, or held by another worker",
        "partition": kafka_partition(mpid.encode(), partitions),
        "partitions_held": held_sorted,
    }


def user_answer(
    mpid: str,
    stored: Callable[[bytes], bytes | None],
    held: Callable[[], Iterable[int]],
    partitions: int,
    masker: masking.Masker | None,
) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, JSON body)`` of ``GET /users/{mpid}``.

    400 when ``mpid`` is not a signed 64-bit decimal integer (the table can hold no such key);
    404 (:func:`not_found_json`, ``held()`` = this worker's input partitions) when ``stored``
    (the users table's ``get``, keyed by the canonical mpid: ``007`` is user 7) has nothing;
    500 with the masked detail when the stored state cannot be decoded; else 200 with
    :func:`user_json`."""
    canonical = int64_text(mpid)
    if canonical is None:
        error = "mpid must be a signed 64-bit decimal integer"
        return 400, {"error": error, "mpid": mpid[:40]}
    raw = stored(canonical.encode())
    if raw is None:
        return 404, not_found_json(canonical, partitions, held())
    try:
        state = decode_state(raw)
    except InvalidRecordError as exc:
        detail = masking.active().text(exc.detail)
        return 500, {"error": "stored state is corrupt", "mpid": canonical, "detail": detail}
    return 200, user_json(canonical, state, masker)


# --- sampling the app -------------------------------------------------------------------------


def _assigned_actives(app: faust.App) -> set[Any]:
    """The topic partitions (changelogs included) this worker is active for."""
    try:
        return set(app.assignor.assigned_actives())
    except Exception:  # no assignment yet  # noqa: BLE001
        return set()


def _recovery_remaining(app: faust.App) -> int | None:
    """Changelog records faust's recovery still has to read for active partitions; ``None``
    when it is not recovering."""
    # faust makes its Recovery service on first use: before the app starts there is none
    recovery = getattr(app.tables, "_recovery", None)
    if recovery is None or not getattr(recovery, "in_recovery", False):
        return None
    try:
        return int(recovery.active_remaining_total())
    except Exception:  # read on every scrape: a rebalance midway must not break /metrics  # noqa: BLE001
        return 0


def _coordinator_wait_seconds(app: faust.App) -> float | None:
    """How long a transactional producer of ``app`` has waited for its producer id
    (:meth:`app.faust_app._Producer.coordinator_wait_seconds`), or None."""
    producer = getattr(app, "_producer", None)  # not app.producer: that would make one
    wait = getattr(producer, "coordinator_wait_seconds", None)
    return None if wait is None else wait()


def _assignment(app: faust.App) -> set[Any]:
    try:
        return set(app.consumer.assignment())
    except Exception:  # consumer not started yet (faust raises ConsumerNotStarted)  # noqa: BLE001
        return set()


async def ingest_lag(app: faust.App, input_topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """Highwater minus committed offset of every assigned input partition (local reads).

    Before the first commit of a partition faust's consumer position is used instead.
    """
    wanted = set(input_topics)
    consumer = app.consumer
    committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
    lags: dict[tuple[str, int], int] = {}
    for tp in _assignment(app):
        if tp.topic not in wanted:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - revoked between assignment() and here
            continue
        consumed = committed.get(tp)
        if consumed is None and highwater is not None:
            try:
                consumed = await asyncio.wait_for(
                    consumer.position(tp), timeout=POSITION_TIMEOUT_SECONDS
                )
            except Exception:  # noqa: BLE001, S112 - no position yet: left out of this sample
                continue
        lag = metrics.partition_lag(highwater, consumed)
        if lag is not None:
            lags[tp.topic, tp.partition] = lag
    return lags


class KeyCounter:
    """Exact count of the keys a faust table holds for this worker's active partitions.

    RocksDB's ``rocksdb.estimate-num-keys`` counts every write not yet compacted away, so a
    key written twice counts twice (the gauge showed 200,000 for 100,000 users). An exact
    count needs a scan, so it is made a slice at a time: each :meth:`step` reads at most
    ``budget`` keys (a new iterator each time, resumed after the last key seen, so no
    database stays pinned between steps) and the total is published once every active
    partition has a complete count; it then trails the truth by one full pass. The memory
    store is counted with ``len`` at once.
    """

    def __init__(self, budget: int = KEY_COUNT_BUDGET) -> None:
        self.budget = budget
        self._counted: dict[int, int] = {}  # partition -> keys at its last complete pass
        self._cursor: dict[int, tuple[bytes, int]] = {}  # partition -> (last key, so far)

    def step(self, table: Any, actives: Iterable[int]) -> int | None:
        """Count another slice; return the total when every partition of ``actives`` has one."""
        store = table.data
        dbs: Mapping[int, Any] | None = getattr(store, "_dbs", None)
        if dbs is None:
            return len(table)
        partitions = sorted(p for p in set(actives) if p in dbs)
        left = self.budget
        for partition in partitions:
            if left <= 0:
                break
            left -= self._scan(partition, dbs[partition], left, store.offset_key)
        for gone in set(self._counted) - set(partitions):
            del self._counted[gone]
        if all(p in self._counted for p in partitions):
            return sum(self._counted[p] for p in partitions)
        return None

    def _scan(self, partition: int, db: Any, budget: int, skip: bytes) -> int:
        last, counted = self._cursor.pop(partition, (b"", 0))
        iterator = db.iter()
        iterator.seek(last)
        if last and iterator.valid() and iterator.key() == last:
            iterator.next()
        read = 0
        while iterator.valid() and read < budget:
            last = iterator.key()
            counted += last != skip
            read += 1
            iterator.next()
        if iterator.valid():
            self._cursor[partition] = (last, counted)
        else:
            self._counted[partition] = counted
        return max(read, 1)


class Observer:
    """Reads the app's live state for the views and the gauges."""

    def __init__(
        self, app: faust.App, settings: Settings, topics: Topics, sink: SinkHandleLike | None
    ) -> None:
        self.app = app
        self.settings = settings
        self.input_topics = tuple(spec.name for spec in topics.inputs())
        self.operations_topic = topics.operations.name
        self.sink_handle = sink
        self._ingest_lag = metrics.LagGauge()
        self._key_counters = {name: KeyCounter() for name in (USERS_TABLE, ERASURES_TABLE)}
        self._sink_lag = metrics.LagGauge()

    @property
    def sink(self) -> SinkLike | None:
        return None if self.sink_handle is None else self.sink_handle.instance

    def readiness(self) -> Readiness:
        sink = self.sink
        input_partitions = sum(1 for tp in _assignment(self.app) if tp.topic in self.input_topics)
        return decide_readiness(
            # faust records every assignment, an empty one too, before it recovers tables
            joined=getattr(self.app, "_assignment", None) is not None,
            rebalancing=bool(getattr(self.app, "rebalancing", False)),
            input_partitions=input_partitions,
            agents={agent.name: agent.state for agent in self.app.agents.values()},
            forwarding_enabled=self.settings.forwarding_enabled,
            sink_state=None if sink is None else sink.state,
            sink_joined=sink is not None and sink.joined,
            sink_partitions=0 if sink is None else sink.partitions,
            sink_stopped_reason=None
            if sink is None or sink.stopped_reason is None
            else masking.active().text(sink.stopped_reason),
            recovery_remaining=_recovery_remaining(self.app),
            coordinator_wait_seconds=_coordinator_wait_seconds(self.app),
        )

    def table(self, name: str) -> Any:
        return self.app.tables.get(name)

    async def sample(self) -> None:
        """Update the sampled gauges (see the module docstring)."""
        self._ingest_lag.update(await ingest_lag(self.app, self.input_topics))
        sink = self.sink
        sink_lag = {} if sink is None else await sink.lag()
        self._sink_lag.update({(tp.topic, tp.partition): lag for tp, lag in sink_lag.items()})
        for name, counter in self._key_counters.items():
            table = self.table(name)
            if table is not None:
                topic = table.changelog_topic.get_topic_name()
                actives = {tp.partition for tp in _assigned_actives(self.app) if tp.topic == topic}
                keys = counter.step(table, actives)
                if keys is not None:
                    metrics.TABLE_KEYS.labels(name).set(keys)
        metrics.READY.set(1 if self.readiness().ready else 0)


def attach_web(
    app: faust.App, settings: Settings, topics: Topics, sink: SinkHandleLike | None
) -> Observer:
    """Register the views, the access guard, the build info and the gauge sampler on ``app``;
    a request aiohttp cannot parse is logged as one WARNING line
    (:func:`~app.serving.quiet_client_errors`)."""
    quiet_client_errors()
    observer = Observer(app, settings, topics, sink)
    metrics.track_recovery(lambda: _recovery_remaining(app))
    token = settings.support_token.get_secret_value() if settings.support_token else None
    hidden = frozenset() if settings.web_faust_views else FAUST_PLACEHOLDER_ROUTES
    aiohttp_app(app).middlewares.append(access_middleware(token, hidden))
    metrics.BUILD.info(metrics.build_labels(settings))
    metrics.READY.set(0)

    @app.page("/health/live")
    async def health_live(self: web.View, request: web.Request) -> web.Response:  # noqa: ARG001
        return self.json({"live": True})

    @app.page("/health/ready")
    async def health_ready(self: web.View, request: web.Request) -> web.Response:  # noqa: ARG001
        readiness = observer.readiness()
        return self.json(readiness.as_json(), status=200 if readiness.ready else 503)

    @app.page("/users/{mpid}")
    async def user_state(self: web.View, request: web.Request, mpid: str) -> web.Response:
        table = observer.table(USERS_TABLE)
        unmasked = request.query.get("unmasked", "").lower() in {"1", "true", "yes"}
        status, body = user_answer(
            mpid,
            lambda key: None if table is None else table.get(key),
            lambda: {tp.partition for tp in _assignment(app) if tp.topic in observer.input_topics},
            settings.topic_partitions,
            None if unmasked else masking.active(),
        )
        return self.json(body, status=status)

    @app.task  # type: ignore[untyped-decorator]
    async def announce_web_server() -> None:
        await _announce(app, token, hidden)

    @app.timer(interval=SAMPLE_INTERVAL_SECONDS, name="mpcio_sample_gauges")  # type: ignore[untyped-decorator]
    async def sample_gauges() -> None:
        try:
            await observer.sample()
        except Exception:  # a failed sample must never stop the worker
            log.exception("sampling the lag/table/readiness gauges failed")

    return observer


def aiohttp_app(app: faust.App) -> aiohttp_web.Application:
    """The aiohttp application behind faust's web server (its router and middlewares)."""
    from faust.web.drivers.aiohttp import Web  # noqa: PLC0415 - faust's import is slow

    driver = app.web
    if not isinstance(driver, Web):  # faust's default driver; app.faust_app never changes it
        raise TypeError(f"faust web driver {type(driver).__name__} is not aiohttp's")
    return driver.web_app


async def _announce(app: faust.App, token: str | None, hidden: frozenset[str]) -> None:
    """Log where the web server really listens and every route it serves, with its access."""
    # faust keeps the aiohttp runner private; its addresses are the sockets really bound
    runner = getattr(app.web, "_runner", None)
    deadline = asyncio.get_running_loop().time() + LISTEN_WAIT_SECONDS
    while not (runner is not None and runner.addresses):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    addresses = [] if runner is None else [f"{a[0]}:{a[1]}" for a in runner.addresses]
    log.info(
        "web server listening on %s; routes: %s",
        ", ".join(addresses) or "(not yet listening)",
        orjson.dumps(served_routes(aiohttp_app(app), token, hidden)).decode(),
    )
