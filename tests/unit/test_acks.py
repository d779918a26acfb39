"""Every producer of the product waits for all in-sync replicas (``acks=all``).

With replication factor 3 and ``min.insync.replicas`` 2, only ``acks=all`` makes an
acknowledged write survive the loss of its leader (tests/integration/test_cluster_failover.py);
``acks=1`` would lose what the leader had not yet replicated when it died.
"""

from __future__ import annotations

import ast
from pathlib import Path

from app.faust_app import create_app
from app.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def test_faust_producer_waits_for_all_replicas() -> None:
    app = create_app(load_settings(forwarding_enabled=False))
    assert app.conf.producer_acks == -1  # faust's spelling of "all"


def _producer_calls() -> list[tuple[str, ast.Call]]:
    """``(file:line, call)`` of every ``AIOKafkaProducer(...)`` in app/ and agents/."""
    paths = sorted([*(REPO / "app").rglob("*.py"), *(REPO / "agents").rglob("*.py")])
    return [
        (f"{path.relative_to(REPO)}:{node.lineno}", node)
        for path in paths
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "AIOKafkaProducer"
    ]


def test_every_aiokafka_producer_is_created_with_acks_all() -> None:
    calls = _producer_calls()
    assert len(calls) >= 3  # the sink's dead letters, replay, redrive (and the demo)
    for where, call in calls:
        acks = [k.value for k in call.keywords if k.arg == "acks"]
        assert [a.value for a in acks if isinstance(a, ast.Constant)] == ["all"], where
