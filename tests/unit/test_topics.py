"""Topics: one place, co-partitioned inputs, Avro where the spec says."""

from __future__ import annotations

from app.settings import load_settings
from app.topics import (
    REKEY_KIND_HEADER,
    REKEYED_FROM_HEADER,
    ValueFormat,
    rekey_headers,
    rekey_kind,
    topics_for,
)


def test_inputs_share_the_partition_count_and_outputs_are_avro() -> None:
    topics = topics_for(load_settings(forwarding_enabled=False, topic_partitions=6))
    assert {spec.partitions for spec in topics.all()} == {6}
    assert [spec.name for spec in topics.inputs()] == [
        "mparticle-batches",
        "mparticle-audiences",
        "mparticle-erasure",
        "mpcio-rekey",
    ]
    assert topics.operations.value_format is ValueFormat.AVRO
    assert topics.operations.schema == "operation_batch"
    assert topics.deadletter.schema == "dead_letter"


def test_topic_names_are_configurable() -> None:
    topics = topics_for(load_settings(forwarding_enabled=False, topic_batches="in"))
    assert topics.batches.name == "in"


def test_the_rekey_topic_is_owned_named_under_the_app_id_and_read_by_ingest() -> None:
    topics = topics_for(load_settings(forwarding_enabled=False, app_id="staging"))
    assert topics.rekey.name == "staging-rekey"
    assert topics.rekey in topics.all()
    assert topics.rekey.value_format is ValueFormat.JSON


def test_rekey_headers_keep_the_source_headers_and_name_kind_and_origin() -> None:
    source = [("trace", b"t1"), (REKEY_KIND_HEADER, b"erasure")]
    headers = rekey_headers(source, "audiences", "mparticle-audiences/3@17")
    assert headers == [
        ("trace", b"t1"),
        (REKEY_KIND_HEADER, b"audiences"),
        (REKEYED_FROM_HEADER, b"mparticle-audiences/3@17"),
    ]
    assert rekey_kind(headers) == "audiences"
    assert rekey_kind(rekey_headers([], None, "t/0@1")) is None
    assert rekey_kind([(REKEY_KIND_HEADER, b"\xffnope")]) is None
