"""Topics: one place, co-partitioned inputs, Avro where the spec says."""

from __future__ import annotations

from app.settings import load_settings
from app.topics import ValueFormat, topics_for


def test_inputs_share_the_partition_count_and_outputs_are_avro() -> None:
    topics = topics_for(load_settings(forwarding_enabled=False, topic_partitions=6))
    assert {spec.partitions for spec in topics.all()} == {6}
    assert [spec.name for spec in topics.inputs()] == [
        "mparticle-batches",
        "mparticle-audiences",
        "mparticle-erasure",
    ]
    assert topics.operations.value_format is ValueFormat.AVRO
    assert topics.operations.schema == "operation_batch"
    assert topics.deadletter.schema == "dead_letter"


def test_topic_names_are_configurable() -> None:
    topics = topics_for(load_settings(forwarding_enabled=False, topic_batches="in"))
    assert topics.batches.name == "in"
