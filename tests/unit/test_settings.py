"""Settings: typed, validated once, one clear line per bad variable, secrets never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.settings import (
    LONGEST_TOPIC_SUFFIX,
    MAX_TOPIC_NAME,
    SECRET_FIELDS,
    Environment,
    load_settings,
    unknown_variable_warnings,
)
from app.topics import changelog_topics, topics_for

CREDENTIALS = {"customerio_site_id": "site", "customerio_api_key": "k3y-s3cr3t"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("MPCIO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_defaults_follow_the_seed() -> None:
    settings = load_settings(**CREDENTIALS)
    assert settings.include_user_attributes is True
    assert settings.send_created_at is False
    assert settings.resubscribe_on_opt_in is False
    assert settings.environments == {Environment.PRODUCTION, Environment.DEVELOPMENT}
    assert settings.rate_limit_per_second == 100
    assert settings.customerio_base_url == "https://track.customer.io"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MPCIO_CUSTOMERIO_REGION": "mars"}, "MPCIO_CUSTOMERIO_REGION"),
        ({"MPCIO_TOPIC_PARTITIONS": "0"}, "MPCIO_TOPIC_PARTITIONS"),
        ({"MPCIO_ENVIRONMENTS": "prod"}, "MPCIO_ENVIRONMENTS"),
        ({"MPCIO_BROKER": "localhost"}, "MPCIO_BROKER"),
        ({"MPCIO_RATE_LIMIT_PER_SECOND": "-1"}, "MPCIO_RATE_LIMIT_PER_SECOND"),
        ({"MPCIO_BATCH_MAX_BYTES": "900000"}, "MPCIO_BATCH_MAX_BYTES"),
        ({"MPCIO_CUSTOMERIO_URL": "not a url"}, "MPCIO_CUSTOMERIO_URL"),
    ],
    ids=["region", "partitions", "environment", "broker", "rate", "batch-bytes", "url"],
)
def test_invalid_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_settings(**CREDENTIALS)


def test_credentials_in_the_customerio_url_are_refused_without_echoing_them() -> None:
    # aiohttp would refuse every request of such a URL (it sends its own Authorization)
    with pytest.raises(ConfigError) as refused:
        load_settings(**CREDENTIALS, customerio_url="http://user:pa55word@127.0.0.1:8089")
    message = str(refused.value)
    assert message.startswith("invalid setting MPCIO_CUSTOMERIO_URL: must not carry credentials")
    assert "MPCIO_CUSTOMERIO_API_KEY" in message
    assert "\n" not in message
    assert "pa55word" not in message


def test_missing_credentials_when_forwarding_names_both_variables() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "MPCIO_CUSTOMERIO_SITE_ID" in str(caught.value)
    assert "MPCIO_CUSTOMERIO_API_KEY" in str(caught.value)


def test_credentials_not_needed_when_forwarding_is_off() -> None:
    assert load_settings(forwarding_enabled=False).customerio_api_key is None


def test_environments_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCIO_ENVIRONMENTS", "production")
    assert load_settings(**CREDENTIALS).environments == {Environment.PRODUCTION}


def test_eu_region_uses_eu_host_never_a_redirect() -> None:
    settings = load_settings(**CREDENTIALS, customerio_region="eu")
    assert settings.customerio_base_url == "https://track-eu.customer.io"


def test_url_override_wins_over_region() -> None:
    settings = load_settings(**CREDENTIALS, customerio_url="http://127.0.0.1:8080/")
    assert settings.customerio_base_url == "http://127.0.0.1:8080"


def test_api_key_is_redacted_and_never_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(**CREDENTIALS)
    assert "k3y-s3cr3t" not in repr(settings)
    assert "k3y-s3cr3t" not in str(settings.redacted())
    monkeypatch.setenv("MPCIO_CUSTOMERIO_REGION", "mars")
    with pytest.raises(ConfigError) as caught:
        load_settings(**CREDENTIALS)
    assert "k3y-s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    ("broker", "servers"),
    [
        ("kafka://a:1;b:2", ["a:1", "b:2"]),  # faust's own form
        ("a:9092,b:9093", ["a:9092", "b:9093"]),  # mParticle's "comma-separated list"
        ("kafka://a:9092,b:9093", ["a:9092", "b:9093"]),
        ("localhost:9092", ["localhost:9092"]),
        (" a:1 , b:2 ,", ["a:1", "b:2"]),
        ("[::1]:9092", ["[::1]:9092"]),
        ("KAFKA://a:1", ["a:1"]),
        ("broker-0.kafka.svc.cluster.local:9093", ["broker-0.kafka.svc.cluster.local:9093"]),
    ],
)
def test_broker_accepts_mparticle_and_kafka_forms(broker: str, servers: list[str]) -> None:
    settings = load_settings(forwarding_enabled=False, broker=broker)
    assert settings.bootstrap_servers == servers
    assert settings.broker == "kafka://" + ";".join(servers)  # what faust is given


@pytest.mark.parametrize(
    "broker",
    ["", "kafka://", "a", "a:b", "a:0", "a:99999", ":9092", "a:1,b", "a:1 b:2", "no such:9092",
     "user@a:9092", "a/b:9092", "a:\uff19\uff10\uff19\uff12"],
)  # fmt: skip
def test_broker_rejects_what_is_not_host_port(broker: str) -> None:
    with pytest.raises(ConfigError, match="MPCIO_BROKER"):
        load_settings(forwarding_enabled=False, broker=broker)


@pytest.mark.parametrize(
    ("command", "env", "named"),
    [
        (
            "worker",
            {
                "MPCIO_CUSTOMERIO_REGION": "mars",
                **{f"MPCIO_{k.upper()}": v for k, v in CREDENTIALS.items()},
            },
            "MPCIO_CUSTOMERIO_REGION",
        ),
        ("worker", {}, "MPCIO_CUSTOMERIO_API_KEY"),
        ("ingress", {}, "MPCIO_INGRESS_SECRET"),
        ("ingress", {"MPCIO_INGRESS_SECRET": " "}, "MPCIO_INGRESS_SECRET"),
    ],
    ids=["bad-region", "missing-api-key", "ingress-no-secret", "ingress-blank-secret"],
)
def test_cli_stops_with_one_line_and_nonzero_exit(
    command: str, env: dict[str, str], named: str, tmp_path: Path
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MPCIO_")}
    result = subprocess.run(
        [sys.executable, "-m", "app", command],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr


def test_secrets_can_be_read_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key, password = tmp_path / "api_key", tmp_path / "sasl_password"
    key.write_text("k3y-from-file\n")  # what `echo x > file` and most secret stores write
    password.write_text("pw-from-file")
    monkeypatch.setenv("MPCIO_CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("MPCIO_CUSTOMERIO_API_KEY_FILE", str(key))
    monkeypatch.setenv("MPCIO_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("MPCIO_KAFKA_SASL_USERNAME", "user")
    monkeypatch.setenv("MPCIO_KAFKA_SASL_PASSWORD_FILE", str(password))
    settings = load_settings()
    assert settings.customerio_api_key is not None
    assert settings.customerio_api_key.get_secret_value() == "k3y-from-file"
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "pw-from-file"
    assert {"customerio_api_key", "kafka_sasl_password"} <= SECRET_FIELDS  # every one has _FILE


@pytest.mark.parametrize(
    ("content", "also_plain", "expected"),
    [
        (None, False, "invalid setting MPCIO_CUSTOMERIO_API_KEY_FILE: cannot read {path}: "),
        ("\n", False, "invalid setting MPCIO_CUSTOMERIO_API_KEY_FILE: {path} is empty"),
        ("k", True, "set MPCIO_CUSTOMERIO_API_KEY or MPCIO_CUSTOMERIO_API_KEY_FILE, not both"),
    ],
    ids=["missing-file", "empty-file", "both-set"],
)
def test_secret_file_problems_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    content: str | None,
    also_plain: bool,
    expected: str,
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("MPCIO_CUSTOMERIO_SITE_ID", "site")
    monkeypatch.setenv("MPCIO_CUSTOMERIO_API_KEY_FILE", str(path))
    if also_plain:
        monkeypatch.setenv("MPCIO_CUSTOMERIO_API_KEY", "plain-k3y")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(expected.format(path=path))
    assert "plain-k3y" not in str(caught.value)


def test_unknown_variables_are_named_with_the_nearest_valid_one() -> None:
    environ = {
        "MPCIO_CUSTOMERIO_APIKEY": "x",
        "MPCIO_BROKER": "kafka://a:1",
        "MPCIO_KAFKA_SASL_PASSWORD_FILE": "/run/secrets/pw",
        "MPCIO_KAFKA_CACHE": "/tmp/kafka",
        "MPCIO_ZZZ": "1",
        "PATH": "/bin",
    }
    assert unknown_variable_warnings(environ) == [
        (
            "MPCIO_CUSTOMERIO_APIKEY is not an mpcio setting and is ignored; "
            "did you mean MPCIO_CUSTOMERIO_API_KEY?"
        ),
        "MPCIO_ZZZ is not an mpcio setting and is ignored",
    ]


def test_cli_warns_once_about_an_unknown_variable(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MPCIO_")}
    result = subprocess.run(
        [sys.executable, "-m", "app", "check-config"],
        env={**clean, "MPCIO_FORWARDING_ENABLE": "false", "MPCIO_BROKER": "kafka://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    warning = "MPCIO_FORWARDING_ENABLE is not an mpcio setting and is ignored; did you mean "
    assert result.stderr.count(warning + "MPCIO_FORWARDING_ENABLED?") == 1, result.stderr
    # the misspelt variable had no effect: forwarding stayed on and needs credentials
    assert result.returncode == 2
    assert "MPCIO_CUSTOMERIO_API_KEY" in result.stderr


def test_owned_topics_are_named_under_the_app_id() -> None:
    staging = load_settings(forwarding_enabled=False, app_id="staging")
    assert (staging.topic_operations, staging.topic_deadletter, staging.topic_rekey) == (
        "staging-operations",
        "staging-deadletter",
        "staging-rekey",
    )
    production = load_settings(forwarding_enabled=False, app_id="production")
    assert production.topic_operations != staging.topic_operations
    # the documented migration: an existing deployment keeps its old names
    kept = load_settings(
        forwarding_enabled=False,
        app_id="staging",
        topic_operations="customerio-operations",
        topic_deadletter="customerio-deadletter",
        topic_rekey="my-rekey",
    )
    assert (kept.topic_operations, kept.topic_deadletter, kept.topic_rekey) == (
        "customerio-operations",
        "customerio-deadletter",
        "my-rekey",
    )


@pytest.mark.parametrize(("name", "value"), [("MPCIO_BROKER", "garbage"), ("MPCIO_APP_ID", "")])
def test_a_bad_setting_is_the_only_one_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # topic names derive from the app id: they must not be reported as bad as well
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(forwarding_enabled=False)
    assert str(caught.value).count("invalid setting") == 1
    assert name in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MPCIO_WEB_HOST", "256.1.1.1", "must be an IP address or a host name"),
        ("MPCIO_INGRESS_HOST", "10.0.0", "must be an IP address or a host name"),
        ("MPCIO_WEB_HOST", "bad host", "must be an IP address or a host name"),
        ("MPCIO_STORE", "redis://", "must be rocksdb:// or memory://"),
        ("MPCIO_APP_ID", "a" * 230, "at most 229 characters"),
    ],
    ids=["ipv4-octet", "short-ipv4", "space", "store", "app-id-too-long"],
)
def test_what_would_fail_at_worker_start_is_refused_by_the_settings(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    # each was accepted by check-config and then failed in the worker with a traceback
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"invalid setting {name}: {message}"):
        load_settings(forwarding_enabled=False)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "127.0.0.1", "localhost", "mpcio-0.mpcio", "web_1"]
)
def test_listen_hosts_accept_addresses_and_names(host: str) -> None:
    assert load_settings(forwarding_enabled=False, web_host=host).web_host == host


def test_the_longest_app_id_keeps_every_topic_name_within_kafkas_limit() -> None:
    settings = load_settings(forwarding_enabled=False, app_id="a" * 229)
    names = [
        *(spec.name for spec in topics_for(settings).all()),
        *changelog_topics(settings.app_id),
        f"{settings.app_id}{LONGEST_TOPIC_SUFFIX}",
    ]
    assert max(len(name) for name in names) == MAX_TOPIC_NAME


@pytest.mark.parametrize(
    ("topics", "expected"),
    [
        (
            {"topic_deadletter": "mparticle-batches"},
            "MPCIO_TOPIC_DEADLETTER and MPCIO_TOPIC_BATCHES name the same topic",
        ),
        ({"topic_audiences": "mparticle-erasure"}, "name the same topic 'mparticle-erasure'"),
        ({"app_id": "x", "topic_rekey": "x-operations"}, "MPCIO_TOPIC_REKEY and MPCIO_TOPIC_OP"),
        ({"topic_batches": "b8d bad"}, "MPCIO_TOPIC_BATCHES is not a Kafka topic name"),
        ({"topic_operations": "ops/1"}, "MPCIO_TOPIC_OPERATIONS is not a Kafka topic name"),
        ({"topic_erasure": "e" * 250}, "MPCIO_TOPIC_ERASURE is not a Kafka topic name"),
        ({"topic_erasure": ".."}, "MPCIO_TOPIC_ERASURE is not a Kafka topic name"),
    ],
)
def test_topic_settings_must_be_distinct_kafka_topic_names(
    topics: dict[str, str], expected: str
) -> None:
    # a dead-letter topic equal to the batches topic fed every rejection back as input
    with pytest.raises(ConfigError) as refused:
        load_settings(**CREDENTIALS, **topics)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


def test_distinct_topic_settings_pass() -> None:
    settings = load_settings(**CREDENTIALS, topic_deadletter="dlq.v1", topic_rekey="rekey_v1")
    assert (settings.topic_deadletter, settings.topic_rekey) == ("dlq.v1", "rekey_v1")
