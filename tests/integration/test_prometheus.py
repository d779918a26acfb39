"""A real Prometheus scrapes a real worker: metrics, the dashboard and the alert rules.

Prometheus is Debian's ``prometheus`` package (``make prometheus``, a dependency of
``make test``, installs it). The fixture starts it on a free loopback port, scraping the worker
every second and loading ``deploy/alerts.yml``; a worker runs on the real broker, forwarding to
the in-process emulator while the workload flows. Then, through Prometheus's HTTP API only:

- the counters equal what was produced and delivered;
- every query of ``deploy/grafana/dashboards/mpcio.json`` parses and returns a series;
- every rule of ``deploy/alerts.yml`` was loaded and evaluated without error, each expression
  parses and every metric it names is in the scrape.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest

from app.core.avro import codec
from app.dev.localkafka import free_port
from app.masking import Masker
from app.ops.metrics_check import dashboard_queries, substitute
from tests.integration import workload
from tests.integration.cli import mpcio
from tests.integration.support import REPO, poll, produce

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mpcio.json"
ALERTS = DEPLOY / "alerts.yml"

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "inf", "nan"}


class Prometheus:
    """A Prometheus server on loopback and a small client of its HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    async def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a success, else an AssertionError."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            body = await response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def scalar(self, expr: str) -> float | None:
        """The value of a one-series query (``None`` while it has no series)."""
        result = await self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    async def metric_names(self) -> set[str]:
        return set(await self.api("label/__name__/values"))

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def prometheus(deployment: Deployment, tmp_path: Path) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Prometheus is not installed: run `make prometheus` (part of `make test`)")
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "mpcio",
                "static_configs": [{"targets": [f"127.0.0.1:{deployment.settings.web_port}"]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    process = _launch(
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        log=log,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        began = time.monotonic()

        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{server.output()[-3000:]}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{server.url}/-/ready") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await poll(ready, 30, "Prometheus to be ready")
        print(f"\nprometheus ready {time.monotonic() - began:.1f}s after launch")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _launch(*argv: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def dashboard_variables() -> list[str]:
    document = orjson.loads(DASHBOARD.read_bytes())
    return [variable["definition"] for variable in document["templating"]["list"]]


def metric_names_in(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers outside labels, not functions)."""
    bare = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
        name = match.group(0)
        following = bare[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", ALERTS.read_text(), flags=re.MULTILINE)


TOKEN, MASK_KEY = "prometheus-test-token-0123", "prometheus-test-mask-key-0123"


async def http_get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_prometheus_scrapes_the_worker_and_every_dashboard_and_alert_query_works(
    deployment: Deployment, emulator: RunningEmulator, prometheus: Prometheus
) -> None:
    records, expected = workload.scenario(
        deployment.settings, users=40, batches_per_user=3, events_per_batch=4
    )
    bad = [(b"77", b"{not json"), (b"78", b"[1, 2")]  # dead-lettered by ingest
    users_with_email = sum(1 for user in range(40) if user % 10 != 9)

    worker = deployment.start_worker(support_token=TOKEN, mask_key=MASK_KEY)
    worker_url = f"http://127.0.0.1:{deployment.settings.web_port}"
    # Scraped and ready before anything flows, so the counters are seen moving from zero.
    await poll(
        lambda: _equals(prometheus, 'mpcio_ready{job="mpcio"}', 1), 60, "mpcio_ready 1", worker
    )
    status, body = await http_get(f"{worker_url}/health/ready")
    assert (status, body["ready"], body["status"]) == (200, True, "active")
    assert await http_get(f"{worker_url}/health/live") == (200, {"live": True})
    assert await prometheus.scalar("sum(mpcio_sink_items_delivered_total)") == 0

    began = time.monotonic()
    await produce(deployment.kafka.bootstrap, deployment.topics.batches.name, [*records, *bad])
    await poll(
        lambda: _equals(prometheus, "sum(mpcio_sink_items_delivered_total)", len(expected)),
        120,
        f"{len(expected)} delivered items in Prometheus",
        worker,
    )
    took = time.monotonic() - began
    print(f"\n{len(expected)} items delivered and scraped {took:.1f}s after produce")

    # Counters: exactly what went in and what Customer.io accepted.
    assert len(emulator.state.store.events) == sum(1 for i in expected if i["action"] == "event")
    batches = {
        r["metric"]["outcome"]: float(r["value"][1])
        for r in await prometheus.query("sum by (outcome) (mpcio_batches_total)")
    }
    assert batches == {
        "forwarded": users_with_email * 3,
        "skipped_no_email": (40 - users_with_email) * 3,
        "rejected": 2,
    }
    actions = Counter(item["action"] for item in expected)
    operations = {
        r["metric"]["action"]: float(r["value"][1])
        for r in await prometheus.query("sum by (action) (mpcio_operations_total)")
    }
    assert operations == {action: float(n) for action, n in actions.items()}
    assert await prometheus.scalar('sum(mpcio_events_total{outcome="forwarded"})') == actions.get(
        "event", 0
    )
    assert await prometheus.scalar('sum(mpcio_dead_letters_total{stage="ingest"})') == 2
    requests = await prometheus.scalar('sum(mpcio_sink_requests_total{status_class="2xx"})')
    assert requests is not None
    assert requests >= 1
    assert await prometheus.scalar("sum(mpcio_sink_items_per_request_count)") == requests
    assert await prometheus.scalar("sum(mpcio_sink_items_per_request_sum)") == len(expected)
    assert await prometheus.scalar("sum(mpcio_sink_request_duration_seconds_count)") == requests
    assert await prometheus.scalar("sum(mpcio_sink_throttled_total)") == 0
    assert await prometheus.scalar("max(mpcio_sink_stopped)") == 0
    assert (
        await prometheus.scalar(
            'count(mpcio_build_info{region="us",partitions="4",forwarding_enabled="true"})'
        )
        == 1
    )

    # Sampled gauges: every partition of the inputs and the operations topic shows its lag,
    # which drains to zero; the users table holds every user (this worker has all partitions).
    topics = [spec.name for spec in (*deployment.topics.inputs(), deployment.topics.operations)]

    async def drained() -> bool:
        return await _equals(prometheus, "sum(mpcio_consumer_lag)", 0) and await _equals(
            prometheus, 'mpcio_table_keys{table="users"}', 40
        )

    await poll(
        drained,
        60,
        "lag 0 and 40 users in the table",
        worker,
    )
    lag_series = await prometheus.query("mpcio_consumer_lag")
    assert Counter(r["metric"]["topic"] for r in lag_series) == dict.fromkeys(topics, 4)

    # The support view reads the same table.
    status, user = await http_get(f"{worker_url}/users/10001", TOKEN)
    assert status == 200
    assert user["email"] == Masker(MASK_KEY).email("user1@example.com")
    assert user["customer_id"] == Masker(MASK_KEY).value("c-1")
    assert "@" not in orjson.dumps(user).decode()
    status, missing = await http_get(f"{worker_url}/users/999999", TOKEN)
    assert status == 404
    assert "only holds the partitions assigned to it" in missing["detail"]

    # faust's own metrics are served beside ours.
    names = await prometheus.metric_names()
    assert any(name.startswith("faust_") for name in names)

    # Every dashboard query parses and returns at least one series.
    queries = dashboard_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        query = substitute(expr)
        assert "$" not in query, f"unsubstituted Grafana variable in {query!r}"

        async def has_series(query: str = query) -> bool:
            return bool(await prometheus.query(query))

        await poll(has_series, 15, f"a series for {title!r}: {query}")
        assert metric_names_in(query) <= names, (title, metric_names_in(query) - names)
    # The operator's screenshot-free check prints every panel's query and value.
    checked = await mpcio("metrics-check", "--prometheus", prometheus.url, env={})
    assert checked.code == 0, checked.both
    assert f"{len(queries)} queries, 0 failed" in checked.out
    for definition in dashboard_variables():
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", definition).groups()  # type: ignore[union-attr]
        values = await prometheus.api(f"label/{label}/values", **{"match[]": metric})
        assert values, definition

    # Every alert rule was loaded, evaluates cleanly and names only scraped metrics.
    async def evaluated() -> bool:
        rules = [
            rule for group in (await prometheus.api("rules"))["groups"] for rule in group["rules"]
        ]
        return bool(rules) and all(rule["lastEvaluation"] > "2000" for rule in rules)

    await poll(evaluated, 15, "one evaluation of every alert rule")
    rules = [rule for group in (await prometheus.api("rules"))["groups"] for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(alert_names())
    assert len(rules) >= 8
    for rule in rules:
        assert rule["health"] == "ok", rule
        await prometheus.query(rule["query"])  # parses as an instant query on its own
        referenced = metric_names_in(rule["query"])
        assert referenced, rule["query"]
        assert referenced <= names, (rule["name"], referenced - names)
    states = {rule["name"]: rule["state"] for rule in rules}
    for healthy in ("MpcioWorkerDown", "MpcioNotReady", "MpcioDeliveryStopped"):
        assert states[healthy] == "inactive", states


async def _equals(prometheus: Prometheus, expr: str, value: float) -> bool:
    return await prometheus.scalar(expr) == value


async def test_stopped_delivery_shows_in_readiness_lag_and_alerts(
    deployment: Deployment, emulator: RunningEmulator, prometheus: Prometheus
) -> None:
    operations = [
        (
            str(mpid).encode(),
            codec("operation_batch").encode(
                {
                    "mpid": str(mpid),
                    "source_topic": "test",
                    "source_partition": 0,
                    "source_offset": mpid,
                    "ingested_at_ms": int(time.time() * 1000),
                    "operations": [
                        {
                            "action": "event",
                            "person_id": f"p{mpid}",
                            "item": orjson.dumps(
                                {
                                    "type": "person",
                                    "identifiers": {"id": f"p{mpid}"},
                                    "action": "event",
                                    "name": "stuck",
                                    "id": f"01KB76YVZ81KCWPR9P11ZZAW{mpid:02d}",
                                }
                            ),
                        }
                    ],
                }
            ),
        )
        for mpid in range(1, 21)
    ]
    await produce(deployment.kafka.bootstrap, deployment.topics.operations.name, operations)
    worker = deployment.start_worker(customerio_api_key="wrong-key")
    await poll(
        lambda: _equals(prometheus, "max(mpcio_sink_stopped)", 1), 60, "delivery stopped", worker
    )
    assert await prometheus.scalar("sum(mpcio_sink_fatal_stops_total)") == 1
    # Nothing was delivered or committed: every operation is still lag of the operations topic.
    await poll(
        lambda: _equals(
            prometheus,
            f'sum(mpcio_consumer_lag{{topic="{deployment.topics.operations.name}"}})',
            len(operations),
        ),
        30,
        f"lag {len(operations)} on the operations topic",
        worker,
    )
    await poll(lambda: _equals(prometheus, "mpcio_ready", 0), 30, "mpcio_ready 0", worker)
    status, body = await http_get(f"http://127.0.0.1:{deployment.settings.web_port}/health/ready")
    assert status == 503
    assert body["ready"] is False
    assert body["reason"].startswith("delivery stopped: Customer.io answered")
    assert "wrong-key" not in orjson.dumps(body).decode()
    assert emulator.state.store.events == []

    async def stopped_alert_pending() -> bool:
        groups = (await prometheus.api("rules"))["groups"]
        states = {rule["name"]: rule["state"] for group in groups for rule in group["rules"]}
        return states["MpcioDeliveryStopped"] == "pending"  # `for: 1m` before it fires

    await poll(stopped_alert_pending, 15, "MpcioDeliveryStopped pending", worker)
