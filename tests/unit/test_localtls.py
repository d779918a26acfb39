"""The local broker's TLS material and listener settings, without starting Kafka."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

import pytest

from app.dev.localkafka import LocalKafka
from app.dev.localtls import TlsFiles, generate_tls
from app.errors import LocalKafkaError

if TYPE_CHECKING:
    from pathlib import Path


async def _handshake(files: TlsFiles, cafile: Path, host: str) -> None:
    """A TLS handshake on loopback: a server serving ``files.keystore``, a client trusting
    ``cafile`` and expecting ``host``; raises what the client's verification raises."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.keystore)  # key and certificate in one PEM, as Kafka
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=cafile)
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname=host
        )
        writer.close()
    finally:
        server.close()


async def test_the_broker_certificate_verifies_for_loopback_names(tmp_path: Path) -> None:
    files = generate_tls(tmp_path)
    assert files.keystore.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert files.keystore.stat().st_mode & 0o077 == 0
    for host in ("127.0.0.1", "localhost"):
        await _handshake(files, files.ca, host)


async def test_another_ca_or_another_name_is_refused(tmp_path: Path) -> None:
    files = generate_tls(tmp_path / "a")
    other_ca = generate_tls(tmp_path / "b").ca
    with pytest.raises(ssl.SSLCertVerificationError) as untrusted:
        await _handshake(files, other_ca, "127.0.0.1")
    assert untrusted.value.verify_code == 20  # unable to get local issuer certificate
    named = generate_tls(tmp_path / "c", names=("other.example",))
    with pytest.raises(ssl.SSLCertVerificationError) as mismatch:
        await _handshake(named, named.ca, "127.0.0.1")
    assert mismatch.value.verify_code == 64  # IP address mismatch
    await _handshake(named, named.ca, "other.example")


def _config(broker: LocalKafka) -> dict[str, str]:
    text = broker._write_config().read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_sasl_ssl_scram_listener(tmp_path: Path) -> None:
    files = generate_tls(tmp_path / "tls")
    broker = LocalKafka(
        data_dir=tmp_path / "data",
        tls=files,
        sasl_users={"alice": "a-secret", "bob": "b-secret"},
        sasl_mechanism="SCRAM-SHA-512",
    )
    assert broker.security_protocol == "SASL_SSL"
    config = _config(broker)
    assert config["listener.security.protocol.map"] == (
        "CLIENT:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT"
    )
    assert config["advertised.listeners"].startswith(f"CLIENT://127.0.0.1:{broker.port},")
    assert config["inter.broker.listener.name"] == "INTERNAL"
    assert config["listener.name.client.ssl.keystore.type"] == "PEM"
    assert config["listener.name.client.ssl.keystore.location"] == str(files.keystore)
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["listener.name.client.scram-sha-512.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    )
    assert broker._scram_arguments() == [
        "--add-scram", "SCRAM-SHA-512=[name=alice,password=a-secret]",
        "--add-scram", "SCRAM-SHA-512=[name=bob,password=b-secret]",
    ]  # fmt: skip
    kwargs = broker.client_kwargs
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["ssl_context"].check_hostname


def test_plain_listeners_keep_their_shape(tmp_path: Path) -> None:
    plain = LocalKafka(data_dir=tmp_path / "p")
    assert plain.client_kwargs == {}
    assert _config(plain)["listener.security.protocol.map"] == (
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    )
    sasl = LocalKafka(data_dir=tmp_path / "s", sasl_users={"u": "p"})
    assert sasl.security_protocol == "SASL_PLAINTEXT"
    assert sasl._scram_arguments() == []
    assert _config(sasl)["listener.name.client.plain.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required user_u="p";'
    )
    ssl_only = LocalKafka(data_dir=tmp_path / "t", tls=generate_tls(tmp_path / "tls"))
    assert ssl_only.security_protocol == "SSL"
    assert "sasl.enabled.mechanisms" not in _config(ssl_only)


def test_sasl_users_that_kafka_tools_cannot_parse_are_refused() -> None:
    with pytest.raises(LocalKafkaError, match="must not contain"):
        LocalKafka(sasl_users={"alice": "pass,word"})
