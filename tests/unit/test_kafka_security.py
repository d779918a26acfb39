"""Kafka security settings: validated with one clear line, turned into aiokafka and faust auth."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import faust
import pytest

from app.errors import ConfigError
from app.kafka_security import (
    ConnectionProblem,
    broker_credentials,
    client_kwargs,
    describe_connection_error,
)
from app.settings import load_settings
from app.wiring import settings_as_env

BASE = {"forwarding_enabled": False}
SASL = {
    "kafka_security_protocol": "SASL_PLAINTEXT",
    "kafka_sasl_username": "svc",
    "kafka_sasl_password": "p4ss-w0rd",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("MPCIO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = load_settings(**BASE)
    assert client_kwargs(settings) == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(settings) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_kwargs_and_faust_credentials(mechanism: str) -> None:
    settings = load_settings(**BASE, **SASL, kafka_sasl_mechanism=mechanism)
    assert client_kwargs(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc",
        "sasl_plain_password": "p4ss-w0rd",
    }
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == mechanism
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert (credentials.username, credentials.password) == ("svc", "p4ss-w0rd")


def test_sasl_ssl_and_ssl_carry_a_tls_context() -> None:
    sasl_ssl = load_settings(**BASE, **{**SASL, "kafka_security_protocol": "SASL_SSL"})
    kwargs = client_kwargs(sasl_ssl)
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].check_hostname is True
    credentials = broker_credentials(sasl_ssl)
    assert credentials.protocol.value == "SASL_SSL"
    tls = load_settings(**BASE, kafka_security_protocol="SSL")
    assert set(client_kwargs(tls)) == {"security_protocol", "ssl_context"}
    assert isinstance(broker_credentials(tls), faust.SSLCredentials)


def test_the_faust_app_gets_the_credentials() -> None:
    from app.faust_app import create_app  # noqa: PLC0415

    app = create_app(load_settings(**BASE, **SASL))
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MPCIO_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            (
                "required when MPCIO_KAFKA_SECURITY_PROTOCOL is SASL_SSL: "
                "MPCIO_KAFKA_SASL_USERNAME, MPCIO_KAFKA_SASL_PASSWORD"
            ),
        ),
        (
            {"MPCIO_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MPCIO_KAFKA_SASL_USERNAME": "u"},
            "MPCIO_KAFKA_SASL_PASSWORD",
        ),
        ({"MPCIO_KAFKA_SECURITY_PROTOCOL": "TLS"}, "MPCIO_KAFKA_SECURITY_PROTOCOL"),
        ({"MPCIO_KAFKA_SASL_MECHANISM": "GSSAPI"}, "MPCIO_KAFKA_SASL_MECHANISM"),
        (
            {"MPCIO_KAFKA_SECURITY_PROTOCOL": "SSL", "MPCIO_KAFKA_SSL_CAFILE": "/no/such.pem"},
            "invalid setting MPCIO_KAFKA_SSL_CAFILE: no such file",
        ),
        (
            {"MPCIO_KAFKA_SASL_USERNAME": "u", "MPCIO_KAFKA_SASL_PASSWORD": "p"},
            (
                "MPCIO_KAFKA_SASL_USERNAME, MPCIO_KAFKA_SASL_PASSWORD set but "
                "MPCIO_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"
            ),
        ),
    ],
    ids=["sasl-no-credentials", "sasl-no-password", "protocol", "mechanism", "cafile", "unused"],
)
def test_invalid_security_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(**BASE)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "p4ss" not in str(caught.value)


def test_keyfile_needs_certfile_and_empty_values_are_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = tmp_path / "client.key"
    key.write_text("not really a key")
    with pytest.raises(ConfigError, match="MPCIO_KAFKA_SSL_KEYFILE needs MPCIO_KAFKA_SSL_CERTFILE"):
        load_settings(**BASE, kafka_security_protocol="SSL", kafka_ssl_keyfile=str(key))
    monkeypatch.setenv("MPCIO_KAFKA_SASL_USERNAME", "")
    monkeypatch.setenv("MPCIO_KAFKA_SSL_CAFILE", "")
    assert load_settings(**BASE).kafka_sasl_username is None


def test_unloadable_tls_file_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    settings = load_settings(**BASE, kafka_security_protocol="SSL", kafka_ssl_cafile=str(bogus))
    with pytest.raises(ConfigError, match="MPCIO_KAFKA_SSL_CAFILE"):
        client_kwargs(settings)


def test_password_is_redacted_but_passed_to_child_processes() -> None:
    settings = load_settings(**BASE, **SASL)
    assert "p4ss-w0rd" not in str(settings.redacted())
    assert "p4ss-w0rd" not in repr(settings)
    env = settings_as_env(settings)
    assert env["MPCIO_KAFKA_SASL_PASSWORD"] == "p4ss-w0rd"
    assert env["MPCIO_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert load_settings(**{k.removeprefix("MPCIO_").lower(): v for k, v in env.items()}) == (
        settings
    )


def test_connection_errors_are_described_for_operators() -> None:
    refused = describe_connection_error(ConnectionRefusedError(111, "refused"))
    assert refused == ConnectionProblem("connection refused", settings_rejected=False)
    auth = describe_connection_error(Exception("SaslAuthenticationFailed: bad password"))
    assert auth.reason.startswith("authentication failed (check MPCIO_KAFKA_SASL_*)")
    assert auth.settings_rejected
    closed = describe_connection_error(Exception("Connection at 127.0.0.1:9 closed"))
    assert "MPCIO_KAFKA_SECURITY_PROTOCOL" in closed.reason
    assert not closed.settings_rejected


def _verification_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code, error.verify_message = code, message
    return error


def test_certificate_failures_name_the_setting_and_are_configuration_errors() -> None:
    untrusted = describe_connection_error(
        _verification_error(20, "unable to get local issuer certificate")
    )
    assert untrusted == ConnectionProblem(
        "the broker's certificate is not trusted: it is not signed by the CA in "
        "MPCIO_KAFKA_SSL_CAFILE (or the system's CAs when unset) "
        "(unable to get local issuer certificate)",
        settings_rejected=True,
    )
    # aiokafka may wrap the handshake error; the cause is what counts
    try:
        try:
            raise _verification_error(64, "IP address mismatch, certificate is not valid for x")
        except ssl.SSLError as exc:
            raise ConnectionError("Unable to connect") from exc
    except ConnectionError as wrapped:
        mismatch = describe_connection_error(wrapped)
    assert mismatch.reason.startswith("host-name verification failed: the broker's certificate")
    assert "IP address mismatch" in mismatch.reason
    assert mismatch.settings_rejected
    other_tls = describe_connection_error(ssl.SSLError(1, "WRONG_VERSION_NUMBER"))
    assert other_tls.reason.startswith("TLS handshake failed")
    assert not other_tls.settings_rejected
