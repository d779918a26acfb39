"""The server properties of a local cluster's nodes (no Java started here).

tests/integration/test_cluster_failover.py runs the cluster for real; these check the settings
that make it a cluster which survives losing one node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from app.dev.localkafka import LocalKafka, LocalKafkaCluster
from app.errors import LocalKafkaError

if TYPE_CHECKING:
    from pathlib import Path


def _properties(node: LocalKafka) -> dict[str, str]:
    lines = node._write_config().read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_every_node_votes_and_internal_topics_are_replicated(tmp_path: Path) -> None:
    cluster = LocalKafkaCluster(3, data_dir=tmp_path, ports=[19092, 19093, 19094])
    nodes = [_properties(node) for node in cluster.nodes]
    assert [p["node.id"] for p in nodes] == ["1", "2", "3"]
    voters = {p["controller.quorum.voters"] for p in nodes}
    assert voters == {
        ",".join(
            f"{i + 1}@127.0.0.1:{node.controller_port}" for i, node in enumerate(cluster.nodes)
        )
    }
    for properties in nodes:
        assert "controller.quorum.bootstrap.servers" not in properties
        assert properties["process.roles"] == "broker,controller"
        assert properties["min.insync.replicas"] == "2"
        for name in (
            "default.replication.factor",
            "offsets.topic.replication.factor",
            "transaction.state.log.replication.factor",
        ):
            assert properties[name] == "3", name
        assert properties["transaction.state.log.min.isr"] == "2"
    assert [p["advertised.listeners"] for p in nodes] == [
        f"PLAINTEXT://127.0.0.1:{port}" for port in (19092, 19093, 19094)
    ]
    assert cluster.url == "kafka://127.0.0.1:19092;127.0.0.1:19093;127.0.0.1:19094"
    assert cluster.node(2) is cluster.nodes[1]


def test_cluster_id_is_kept_for_a_restart_on_the_same_folder(tmp_path: Path) -> None:
    first = LocalKafkaCluster(3, data_dir=tmp_path)
    again = LocalKafkaCluster(3, data_dir=tmp_path)
    assert first.nodes[0].cluster is not None
    assert again.nodes[0].cluster is not None
    assert first.nodes[0].cluster.cluster_id == again.nodes[0].cluster.cluster_id


def test_single_node_keeps_its_standalone_quorum(tmp_path: Path) -> None:
    properties = _properties(LocalKafka(data_dir=tmp_path))
    assert properties["node.id"] == "1"
    assert "controller.quorum.voters" not in properties
    assert properties["offsets.topic.replication.factor"] == "1"


def test_ports_must_match_the_node_count(tmp_path: Path) -> None:
    with pytest.raises(LocalKafkaError):
        LocalKafkaCluster(3, data_dir=tmp_path, ports=[1, 2])
