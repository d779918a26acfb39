"""The one typed settings object of the forwarder.

Every option comes from the environment with the prefix ``MPCIO_`` (or a ``.env`` file in the
working directory), is validated once at start-up, and is never logged with its secret: the
Customer.io API key and the Kafka SASL password are :class:`~pydantic.SecretStr` and
:meth:`Settings.redacted` is what logs show.

Secrets can also be mounted as files, the Docker/Kubernetes way: ``MPCIO_<SECRET>_FILE`` names
a file whose content (one trailing newline removed) is the secret, for every secret setting
(:data:`SECRET_FIELDS`). :func:`unknown_variable_warnings` names ``MPCIO_*`` variables that
are no setting (typos), with the nearest valid name.

Failure semantics: :func:`load_settings` raises :class:`~app.errors.ConfigError` with one line
per invalid variable, each naming the ``MPCIO_*`` variable; the CLI prints it and exits 2 before
anything connects to Kafka or Customer.io.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from app.errors import ConfigError

ENV_PREFIX = "MPCIO_"

CUSTOMERIO_HOSTS = {
    "us": "https://track.customer.io",
    "eu": "https://track-eu.customer.io",
}


class Environment(StrEnum):
    """mParticle's batch environments."""

    PRODUCTION = "production"
    DEVELOPMENT = "development"


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


_BROKER_FORM = "host:port[,host:port] (kafka:// and ';' accepted too)"
_BROKER_SCHEME = re.compile(r"kafka://", re.IGNORECASE)
# a DNS name, an IPv4 address or a bracketed IPv6 address: no spaces, no path, no user info
_BROKER_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # _: Compose names
#: Kafka's longest topic name.
MAX_TOPIC_NAME = 249
#: The topic settings, each a distinct topic (``_topics_distinct_and_valid``).
TOPIC_FIELDS: Final = (
    "topic_batches",
    "topic_audiences",
    "topic_erasure",
    "topic_operations",
    "topic_deadletter",
    "topic_rekey",
)
#: Kafka's legal topic name characters.
TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]+")
#: The longest name the worker derives from the app id: faust's leader topic
#: (``faust.assignor.leader_assignor``); ours (``-operations``, ``-erasures-changelog``, ...)
#: are shorter.
LONGEST_TOPIC_SUFFIX = "-__assignor-__leader"
#: Table stores the worker can open (faust store URLs of the installed extras).
STORES = ("rocksdb://", "memory://")


def check_listen_host(value: str) -> str:
    """``value`` if it is an IP address or a DNS host name a server can bind to.

    Raises ``ValueError`` otherwise: a name whose last label is all digits (``256.1.1.1``,
    ``10.0.0``) can only be a malformed address, never a name (RFC 3696 §2), so it is refused
    here rather than by the resolver when the server starts."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.removesuffix(".").split(".")
        if (
            len(value) <= 253
            and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit()
        ):
            return value
        raise ValueError("must be an IP address or a host name") from None
    return value


def canonical_broker(value: str) -> str:
    """``value`` as faust's broker URL ``kafka://host:port[;host:port]``.

    Accepts what mParticle's Kafka integration ("a comma-separated list of bootstrap servers")
    and Kafka's own tools take — ``a:9092,b:9092`` — with or without the ``kafka://`` scheme,
    and faust's ``;`` separator. Raises ``ValueError`` naming the first bad server (a missing
    or non-numeric port, an empty list).
    """
    listed = _BROKER_SCHEME.sub("", value.strip(), count=1)
    servers = [part.strip() for part in listed.replace(";", ",").split(",") if part.strip()]
    if not servers:
        raise ValueError(f"must look like {_BROKER_FORM}")
    for server in servers:
        host, _, port = server.rpartition(":")
        valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
        if not _BROKER_HOST.fullmatch(host) or not valid_port:
            raise ValueError(f"{server!r} is not host:port; expected {_BROKER_FORM}")
    return "kafka://" + ";".join(servers)


class Settings(BaseSettings):
    """Everything the worker, the CLI and the tests configure.

    Field names map to environment variables as ``MPCIO_<FIELD NAME IN UPPER CASE>``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    # --- Kafka -------------------------------------------------------------------------------
    broker: str = Field(
        "kafka://127.0.0.1:9092",
        description=(
            "Kafka bootstrap servers: host:port[,host:port] as mParticle and Kafka's tools take "
            "them, with or without kafka://, ',' or ';' between servers."
        ),
    )
    app_id: str = Field(
        "mpcio",
        description="Faust application id: consumer group, changelog and internal topic prefix; "
        f"at most {MAX_TOPIC_NAME - len(LONGEST_TOPIC_SUFFIX)} characters, so every topic "
        f"named after it fits Kafka's {MAX_TOPIC_NAME}.",
        pattern=r"^[A-Za-z0-9._-]+$",
    )
    topic_batches: str = Field("mparticle-batches", description="Input: mParticle JSON batches.")
    topic_audiences: str = Field(
        "mparticle-audiences", description="Input: audience membership changes."
    )
    topic_erasure: str = Field("mparticle-erasure", description="Input: erasure requests.")
    # Topics we own are named under the app id by default, so two deployments on one cluster
    # (production and staging, two workspaces) never share them (README "Upgrading").
    topic_operations: str = Field(
        default_factory=lambda data: f"{data['app_id']}-operations",
        description="Internal: Customer.io operations (Avro); default <app id>-operations.",
    )
    topic_deadletter: str = Field(
        default_factory=lambda data: f"{data['app_id']}-deadletter",
        description="Output: everything rejected, with its reason; default <app id>-deadletter.",
    )
    topic_rekey: str = Field(
        default_factory=lambda data: f"{data['app_id']}-rekey",
        description="Internal: records re-keyed by their mpid (mParticle's unkeyed ones); "
        "default <app id>-rekey.",
    )
    topic_partitions: PositiveInt = Field(
        8,
        description="Partitions of every topic the worker creates; the input topics must all "
        "have this count (co-partitioning).",
    )
    topic_replication_factor: PositiveInt = Field(
        1, description="Replication factor of the topics the worker creates."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects: PLAINTEXT, SSL, SASL_*."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (SASL_PLAINTEXT / SASL_SSL only)."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle (PEM) to verify the brokers; empty = the system's CAs."
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_keyfile: str | None = Field(
        None, description="Private key (PEM) of the client certificate, if not in certfile."
    )
    kafka_session_timeout_seconds: Annotated[float, Field(ge=6, le=300)] = Field(
        10.0,
        description="Consumer-group session timeout of the worker's consumers: how long a "
        "crashed worker's partitions wait before another worker (or its restart) takes them. "
        "6 s is the broker's default minimum.",
    )
    kafka_rebalance_timeout_seconds: Annotated[float, Field(ge=6, le=600)] = Field(
        20.0,
        description="How long a consumer-group rebalance waits for the members to rejoin "
        "(faust's broker_rebalance_timeout; its default is 60 s). A member that misses it is "
        "dropped from the group; partitions stall at most this long in a rebalance.",
    )
    standby_replicas: Annotated[int, Field(ge=0, le=8)] = Field(
        1,
        description="Standby copies of each table partition kept warm by other workers "
        "(faust's table_standby_replicas): a partition moving to a worker that holds its "
        "standby resumes at once instead of reading the changelog. 0 = none.",
    )
    changelog_segment_bytes: Annotated[int, Field(ge=1024 * 1024)] = Field(
        64 * 1024 * 1024,
        description="segment.bytes of the table changelog topics: Kafka compacts only closed "
        "segments, so a smaller segment lets superseded user states go sooner.",
    )
    changelog_segment_seconds: Annotated[int, Field(ge=1)] = Field(
        3600,
        description="segment.ms of the table changelog topics (in seconds): a segment closes "
        "after this long even when small, so compaction keeps up on quiet partitions too.",
    )
    changelog_min_cleanable_dirty_ratio: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.1,
        description="min.cleanable.dirty.ratio of the changelog topics: compact once this "
        "share of a partition's closed log is superseded (Kafka's default 0.5 lets a "
        "changelog, and so recovery, grow to twice the live state).",
    )
    changelog_delete_retention_seconds: Annotated[int, Field(ge=60)] = Field(
        7 * 24 * 3600,
        description="delete.retention.ms of the changelog topics (in seconds): how long an "
        "erased user's tombstone stays readable; a data dir older than this is never trusted "
        "(it could hold a user whose tombstone is gone).",
    )
    fast_restore: bool = Field(
        True,
        description="Rebuild a missing or untrusted table store by bulk-reading the committed "
        "changelogs into RocksDB before faust starts (README 'Sizing and state'); false = "
        "faust's own recovery only (30-60x slower, README).",
    )
    processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once",
        description="exactly_once: a record's state, operations and input offset commit in one "
        "Kafka transaction (ARCHITECTURE.md §4; needs transactions on the broker). "
        "at_least_once: no transactions, lower latency; a crash between a state's changelog "
        "write and its operations write can lose that record's operations; the local store is "
        'rebuilt from the changelog after a crash (README "Crash safety").',
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="The worker's event loop: Python's own asyncio loop, or uvloop (libuv), "
        "which bench.e2e's ours-uvloop contender compares: 9-15 % less CPU per event for the "
        "same events/s on a quiet 2-core machine, no better on a busy one (README 'Benchmarks "
        "and reliability').",
    )
    store: str = Field(
        "rocksdb://",
        description="Faust table store: rocksdb:// in production, memory:// for tests.",
    )
    data_dir: str = Field("./data", description="Where faust keeps RocksDB tables.")
    rocksdb_write_buffer_mb: Annotated[int, Field(ge=1, le=1024)] = Field(
        4,
        description="RocksDB memtable size per table partition (two are kept): with faust's "
        "64 MB x 3 default, memory grows by up to 192 MB per partition before flushing.",
    )
    rocksdb_block_cache_mb: Annotated[int, Field(ge=1, le=4096)] = Field(
        8, description="RocksDB block cache per table partition."
    )
    web_host: str = Field(
        "127.0.0.1",
        description="Address the worker's web server listens on (faust's web_bind and its "
        "advertised host): loopback by default, 0.0.0.0 in a container.",
    )
    web_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        6066, description="Port of the worker's web server (/metrics, health, /users)."
    )
    web_faust_views: bool = Field(
        False,
        description="Serve faust's built-in views (/router, /table, /, /assignment, /graph): "
        "they show partitions and raw table records, so they need the support token too.",
    )
    support_token: SecretStr | None = Field(
        None,
        description="Bearer token of /users/{mpid} (and of faust's views when enabled); "
        "unset = those views answer 404.",
    )
    mask_key: SecretStr | None = Field(
        None,
        description="Key of the HMAC that masks emails and personal values in logs, views and "
        "CLI output; unset = a random key per process (masks differ between processes).",
    )

    # --- Firehose ingress (mpcio ingress) -----------------------------------------------------
    ingress_host: str = Field("127.0.0.1", description="Bind address of mpcio ingress.")
    ingress_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        6070, description="Port of mpcio ingress (POST Firehose messages, /metrics)."
    )
    ingress_secret: SecretStr | None = Field(
        None,
        description="Shared secret (secret): callers send 'Authorization: Bearer <secret>'. "
        "Required by mpcio ingress.",
    )
    ingress_max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        10 * 1024 * 1024, description="Largest Firehose message accepted (bigger: 413)."
    )
    ingress_kafka_timeout_seconds: PositiveFloat = Field(
        10.0, description="How long one message's write may wait for Kafka before 503."
    )
    ingress_retry_after_seconds: PositiveInt = Field(
        10, description="Retry-After (seconds) sent with a 503."
    )

    # --- Customer.io -------------------------------------------------------------------------
    forwarding_enabled: bool = Field(
        True,
        description="Send to Customer.io. When false the worker only transforms (no credentials "
        "needed), e.g. to check a new mapping on production data.",
    )
    customerio_site_id: str | None = Field(None, description="Customer.io Site ID.")
    customerio_api_key: SecretStr | None = Field(None, description="Customer.io Track API key.")
    customerio_region: Literal["us", "eu"] = Field(
        "us", description="Workspace region: us or eu (picks the Track API host)."
    )
    customerio_url: str | None = Field(
        None,
        description="Override the Track API base URL (the local emulator); empty = by region.",
        pattern=r"^https?://[^\s/]+(:\d+)?/?$",
    )

    # --- The seed's connection settings -------------------------------------------------------
    include_user_attributes: bool = Field(
        True, description="Forward every user attribute, not only email and names."
    )
    send_created_at: bool = Field(
        False, description="Send created_at: first-seen time of the last seen device type."
    )
    resubscribe_on_opt_in: bool = Field(
        False, description="Send unsubscribed=false when a user opts back in."
    )
    one_attribute_per_audience: bool = Field(
        False, description="Also send 'In <Audience Name>' = true/false per audience."
    )
    environments: Annotated[frozenset[Environment], NoDecode] = Field(
        frozenset({Environment.PRODUCTION, Environment.DEVELOPMENT}),
        description="Environments to forward, comma-separated: production,development.",
    )

    # --- Delivery ------------------------------------------------------------------------------
    rate_limit_per_second: PositiveFloat = Field(
        100.0, description="Client-side cap on Customer.io requests per second."
    )
    batch_max_items: Annotated[int, Field(gt=0, le=10_000)] = Field(
        1000, description="Most items in one v2 batch request."
    )
    batch_max_bytes: Annotated[int, Field(ge=33_000, le=500_000)] = Field(
        500_000, description="Most bytes in one v2 batch request (Customer.io: 500 KB)."
    )
    batch_linger_ms: Annotated[int, Field(ge=0)] = Field(
        100, description="How long the sink waits to fill a request before sending it."
    )
    request_timeout_seconds: PositiveFloat = Field(10.0, description="Per-request timeout.")
    sink_lanes: Annotated[int, Field(gt=0, le=64)] = Field(
        4,
        description="Most requests in flight at once: a chunk uses as many lanes as it fills "
        "requests, and partition p goes through lane p % lanes used, so one user's operations "
        "stay in order.",
    )
    sink_unanswered_settle_seconds: PositiveFloat = Field(
        15.0,
        description="After a request attempt that got no answer (timeout, dropped connection), "
        "how long a delete of one of its users waits: Customer.io may still apply the "
        "abandoned attempt, which would recreate the erased person.",
    )
    credentials_probe_seconds: PositiveFloat = Field(
        30.0,
        description="After a 401/403, how often the stopped sink re-checks GET /auth before "
        "resuming on its own.",
    )
    retry_max_attempts: PositiveInt = Field(
        12,
        description="Failed attempts per request before its items are dead-lettered (429 "
        "answers are not counted: a throttle storm is bounded by retry_max_seconds alone).",
    )
    retry_max_seconds: PositiveFloat = Field(
        600.0, description="Time budget per request before its items are dead-lettered."
    )
    retry_backoff_initial_seconds: PositiveFloat = Field(
        0.5, description="First back-off (exponential, full jitter)."
    )
    retry_backoff_max_seconds: PositiveFloat = Field(30.0, description="Back-off cap.")

    # --- Logging -------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    log_format: Literal["text", "json"] = Field("text")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' order, with ``MPCIO_<SECRET>_FILE`` after the environment."""
        return (
            init_settings,
            env_settings,
            SecretFilesSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @field_validator("environments", mode="before")
    @classmethod
    def _split_environments(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        return canonical_broker(value)

    @field_validator(
        "kafka_sasl_username",
        "kafka_sasl_password",
        "support_token",
        "mask_key",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("app_id")
    @classmethod
    def _topic_names_fit(cls, value: str) -> str:
        longest = MAX_TOPIC_NAME - len(LONGEST_TOPIC_SUFFIX)
        if len(value) > longest:
            raise ValueError(
                f"at most {longest} characters ({len(value)} given): the topics named after "
                f"it (<app id>{LONGEST_TOPIC_SUFFIX}) must fit Kafka's {MAX_TOPIC_NAME}"
            )
        return value

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        # faust would only fail when the worker opens its tables, with an import traceback
        if value not in STORES:
            raise ValueError("must be " + " or ".join(STORES))
        return value

    @field_validator("web_host", "ingress_host")
    @classmethod
    def _listen_host(cls, value: str) -> str:
        return check_listen_host(value)

    @field_validator("customerio_url")
    @classmethod
    def _no_url_credentials(cls, value: str | None) -> str | None:
        # aiohttp refuses credentials in a URL next to the Authorization header the client
        # sends, so such a URL would fail every request; the Track API's credentials are
        # their own (secret) settings. The error echoes the value masked (URL credentials).
        if value is not None and "@" in urlsplit(value).netloc:
            raise ValueError(
                "must not carry credentials (user:password@): the Track API authenticates "
                f"with {ENV_PREFIX}CUSTOMERIO_SITE_ID and {ENV_PREFIX}CUSTOMERIO_API_KEY"
            )
        return value

    @field_validator("support_token", "mask_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError("no such file")
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        var = ENV_PREFIX + "KAFKA_SECURITY_PROTOCOL"
        if protocol.startswith("SASL_"):
            missing = [
                ENV_PREFIX + name.upper()
                for name, value in (
                    ("kafka_sasl_username", self.kafka_sasl_username),
                    ("kafka_sasl_password", self.kafka_sasl_password),
                )
                if value is None or not _secret_text(value).strip()
            ]
            if missing:
                raise ValueError(f"required when {var} is {protocol}: " + ", ".join(missing))
        else:
            given = [
                ENV_PREFIX + name.upper()
                for name in ("kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(f"{', '.join(given)} set but {var} is {protocol} (not SASL_*)")
        if not protocol.endswith("SSL"):
            given = [
                ENV_PREFIX + name.upper()
                for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
                if getattr(self, name) is not None
            ]
            if given:
                raise ValueError(f"{', '.join(given)} set but {var} is {protocol} (not *SSL)")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError(f"{ENV_PREFIX}KAFKA_SSL_KEYFILE needs {ENV_PREFIX}KAFKA_SSL_CERTFILE")
        return self

    @model_validator(mode="after")
    def _topics_distinct_and_valid(self) -> Settings:
        """Every topic setting a legal Kafka topic name, and no two the same: a dead-letter
        topic equal to the batches topic would feed each rejection back as input, growing it
        forever (breaker finding), and two inputs on one topic would be read twice."""
        names: dict[str, str] = {}
        for field in TOPIC_FIELDS:
            var = ENV_PREFIX + field.upper()
            name = getattr(self, field)
            if not TOPIC_NAME.fullmatch(name) or len(name) > MAX_TOPIC_NAME or name in {".", ".."}:
                raise ValueError(
                    f"{var} is not a Kafka topic name ({MAX_TOPIC_NAME} at most of "
                    "A-Z a-z 0-9 . _ -)"
                )
            if name in names:
                raise ValueError(f"{var} and {names[name]} name the same topic {name!r}")
            names[name] = var
        return self

    @model_validator(mode="after")
    def _credentials_when_forwarding(self) -> Settings:
        if self.forwarding_enabled:
            missing = [
                name
                for name, value in (
                    ("customerio_site_id", self.customerio_site_id),
                    ("customerio_api_key", self.customerio_api_key),
                )
                if value is None or not _secret_text(value).strip()
            ]
            if missing:
                raise ValueError(
                    "required when MPCIO_FORWARDING_ENABLED is true: "
                    + ", ".join(ENV_PREFIX + name.upper() for name in missing)
                )
        if not self.environments:
            raise ValueError("MPCIO_ENVIRONMENTS must name at least one environment")
        return self

    @property
    def bootstrap_servers(self) -> list[str]:
        """The broker URL as aiokafka's list of host:port."""
        return [hp for hp in self.broker.removeprefix("kafka://").split(";") if hp]

    @property
    def customerio_base_url(self) -> str:
        """The Track API base URL: the override, else the region's own host (never a redirect)."""
        if self.customerio_url:
            return self.customerio_url.rstrip("/")
        return CUSTOMERIO_HOSTS[self.customerio_region]

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value of these settings, the one list that logs, views and printers
        redact: the :data:`SECRET_FIELDS` (no URL setting carries credentials: see
        :meth:`_no_url_credentials`)."""
        values = [
            _secret_text(secret)
            for secret in (getattr(self, name) for name in sorted(SECRET_FIELDS))
            if secret is not None
        ]
        return tuple(value for value in values if value)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log or print: secret fields are ``**********`` and
        URL credentials are replaced (``http://**********@host``)."""
        from app.masking import masker_for  # noqa: PLC0415 - masking imports settings

        masker = masker_for(self)
        return {
            name: masker.text(value) if isinstance(value, str) else value
            for name, value in self.model_dump(mode="json").items()
        }


def _secret_text(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise :class:`ConfigError` naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # an env value that cannot even be decoded
        raise ConfigError(f"invalid setting: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if error["type"] == "default_factory_not_called":  # only follows another bad setting
            continue
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if not field:  # a rule across several settings names them in its message
            lines.append(f"invalid settings: {message}")
            continue
        if "input" in error and not _is_secret_field(field):
            message += f" (got {_masked(repr(error['input']))})"
        lines.append(f"invalid setting {ENV_PREFIX}{field.upper()}: {message}")
    return "; ".join(lines)


def _is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


#: Settings whose values are secret (SecretStr): never printed, logged or echoed in errors.
SECRET_FIELDS = frozenset(
    name for name, field in Settings.model_fields.items() if _is_secret(field)
)
FILE_SUFFIX = "_FILE"
# Read by the code outside Settings (app/dev/localkafka.py: where the Kafka jars are cached).
OTHER_VARIABLES = frozenset({ENV_PREFIX + "KAFKA_CACHE"})


class SecretFilesSource(PydanticBaseSettingsSource):
    """``MPCIO_<SECRET>_FILE=/run/secrets/x``: the secret is the file's content.

    Raises :class:`~app.errors.ConfigError` (one line naming the variable) when the file
    cannot be read or is empty, or when both ``MPCIO_<SECRET>`` and its ``_FILE`` are set.
    Only the process environment is looked at, with the names in upper case.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002 - the base class API
        return None, field_name, False  # every value comes from __call__

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in sorted(SECRET_FIELDS):
            var = ENV_PREFIX + name.upper()
            path = os.environ.get(var + FILE_SUFFIX)
            if not path:
                continue
            if os.environ.get(var):
                raise ConfigError(f"set {var} or {var}{FILE_SUFFIX}, not both")
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise ConfigError(
                    f"invalid setting {var}{FILE_SUFFIX}: cannot read {path}: {reason}"
                ) from None
            secret = text.removesuffix("\n").removesuffix("\r")
            if not secret.strip():
                raise ConfigError(f"invalid setting {var}{FILE_SUFFIX}: {path} is empty")
            values[name] = secret
        return values


def known_variables() -> frozenset[str]:
    """Every ``MPCIO_*`` name mpcio reads: the settings, the secrets' ``_FILE`` variants and
    :data:`OTHER_VARIABLES`."""
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    files = {ENV_PREFIX + name.upper() + FILE_SUFFIX for name in SECRET_FIELDS}
    return frozenset(settings | files | OTHER_VARIABLES)


def unknown_variable_warnings(environ: Mapping[str, str]) -> list[str]:
    """One line per ``MPCIO_*`` variable of ``environ`` that mpcio does not read, naming the
    nearest valid name when one is close (difflib); sorted by name."""
    known = known_variables()
    # compared without the shared prefix, which would make every name look close
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        line = f"{name} is not an mpcio setting and is ignored"
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1)
        if close:
            line += f"; did you mean {suffixes[close[0]]}?"
        lines.append(line)
    return lines


#: Shortest support token or mask key accepted (a guessable token protects nothing).
MIN_SECRET_LENGTH = 16


def _is_secret_field(field: str) -> bool:
    return field in SECRET_FIELDS


def _masked(text: str) -> str:
    """An invalid value as echoed in the error: URL credentials and addresses masked."""
    from app.masking import active  # noqa: PLC0415

    return active().text(text)
