"""``mpcio metrics-check``: every dashboard query against a running Prometheus, with its value.

A screenshot-free check of ``deploy/grafana/dashboards/mpcio.json``: each panel's query, with
Grafana's variables replaced as Grafana would, is sent to Prometheus's HTTP API and printed
with the current value of each series it returns.

Failure semantics: a query Prometheus rejects, or that returns no series, is reported as
``FAILED`` on its line; :func:`check_dashboard` never raises for those. An unreachable
Prometheus raises ``OSError`` (the CLI prints one line and exits 1).
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "mpcio.json"

# What Grafana would put in place of its variables.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "5m",
    "$instance": ".+",
}


@dataclass(frozen=True, slots=True)
class PanelQuery:
    panel: str
    expr: str
    values: tuple[tuple[str, float], ...]  # (series labels, value)
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.values)


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query in the dashboard, rows' nested panels included."""
    document = orjson.loads(path.read_bytes())
    found: list[tuple[str, str]] = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend((panel["title"], target["expr"]) for target in panel.get("targets", []))
            visit(panel.get("panels", []))

    visit(document["panels"])
    return found


def substitute(expr: str) -> str:
    """``expr`` with Grafana's variables replaced."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def check_dashboard(prometheus_url: str, path: Path = DASHBOARD) -> list[PanelQuery]:
    """Run every dashboard query once against ``prometheus_url``."""
    return [
        _run(prometheus_url, panel, substitute(expr)) for panel, expr in dashboard_queries(path)
    ]


def _run(prometheus_url: str, panel: str, expr: str) -> PanelQuery:
    query = urllib.parse.urlencode({"query": expr})
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - operator's URL
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400: Prometheus rejected the expression
        body = orjson.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        return PanelQuery(panel, expr, (), str(body.get("error", "query failed")))
    values = tuple(
        (_labels(series.get("metric", {})), float(series["value"][1]))
        for series in body["data"].get("result", [])
    )
    return PanelQuery(panel, expr, values, None)


def _labels(metric: dict[str, str]) -> str:
    shown = {k: v for k, v in metric.items() if k not in ("instance", "job")}
    return ",".join(f"{k}={v}" for k, v in sorted(shown.items())) or "-"


def report(results: list[PanelQuery]) -> str:
    """One block per query: the panel, the query, and each series' value (or FAILED)."""
    lines = []
    for result in results:
        lines.append(f"{result.panel}\n  {result.expr}")
        if result.error is not None:
            lines.append(f"  FAILED: {result.error}")
        elif not result.values:
            lines.append("  FAILED: no series")
        for labels, value in result.values[:8]:
            lines.append(f"  {value:>14.4g}  {labels}")
        if len(result.values) > 8:
            lines.append(f"  ... {len(result.values) - 8} more series")
    failed = sum(1 for r in results if not r.ok)
    lines.append(f"{len(results)} queries, {failed} failed")
    return "\n".join(lines)
