"""How every Kafka client of the forwarder connects: TLS and SASL from ``MPCIO_KAFKA_*``.

One source of truth, two shapes: :func:`client_kwargs` for the aiokafka clients we build
ourselves (the sink's consumer and producer, topic administration, ``mpcio replay``,
``mpcio deadletter``, ``mpcio check-config``) and :func:`broker_credentials` for faust
(``broker_credentials``, which faust turns into the same aiokafka arguments for its own
consumer, producer and admin client).

Failure semantics: the settings were validated already (SASL has a user name and password,
TLS files exist); a TLS file that exists but cannot be loaded raises
:class:`~app.errors.ConfigError` naming the variables. :func:`start_client` turns a client that
cannot connect into one :class:`~app.errors.BrokerError` line that says why (refused,
authentication failed, TLS handshake), because aiokafka's own error only says "Unable to
bootstrap".
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import BrokerError, ConfigError, is_kafka_error, plain_kafka_error

if TYPE_CHECKING:
    from app.settings import Settings

PROBE_TIMEOUT_SECONDS = 10.0


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context: the configured CA (else the system's), optional client cert."""
    from aiokafka.helpers import create_ssl_context  # noqa: PLC0415 - heavy import

    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            "invalid TLS files in MPCIO_KAFKA_SSL_CAFILE / _CERTFILE / _KEYFILE: "
            f"{exc.strerror or exc}"
        ) from None
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (consumer, producer, admin, client)."""
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in {"SSL", "SASL_SSL"}:
        kwargs["ssl_context"] = ssl_context(settings)
    if protocol in {"SASL_PLAINTEXT", "SASL_SSL"}:
        password = settings.kafka_sasl_password
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
    return kwargs


def broker_credentials(settings: Settings) -> Any:
    """faust's ``broker_credentials`` for the settings, or None for PLAINTEXT."""
    import faust  # noqa: PLC0415 - heavy import, only where a faust app is built

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
    )


class _Startable(Protocol):
    async def start(self) -> Any: ...


async def start_client(client: _Startable, settings: Settings) -> None:
    """``await client.start()``; if it cannot connect, close it and raise one BrokerError
    saying why. ``client``: an aiokafka producer, consumer or admin client."""
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    try:
        await client.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):  # producer/consumer: stop(); admin: close()
            await (getattr(client, "stop", None) or getattr(client, "close"))()  # noqa: B009
        reason = await connection_problem(settings) or str(exc)
        raise BrokerError(f"cannot use Kafka at {settings.broker}: {reason}") from None


async def connection_problem(
    settings: Settings, seconds: float = PROBE_TIMEOUT_SECONDS
) -> str | None:
    """Why no bootstrap server accepts a connection with these settings (None if one does).

    Opens one connection per bootstrap server the way every client does (TLS, SASL
    handshake and authentication included) and keeps the first server's error.
    """
    from aiokafka.conn import create_conn  # noqa: PLC0415
    from aiokafka.protocol.metadata import MetadataRequest  # noqa: PLC0415

    problems: list[str] = []
    kwargs = client_kwargs(settings)
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        conn = None
        try:
            async with asyncio.timeout(seconds):
                conn = await create_conn(
                    host, int(port), request_timeout_ms=int(seconds * 1000), **kwargs
                )
                # a PLAINTEXT client connects to a SASL/TLS listener; its first request fails
                await conn.send(MetadataRequest([]))
        except TimeoutError:
            problems.append(f"{server}: no answer within {seconds:.0f}s")
            continue
        except Exception as exc:  # noqa: BLE001 - any failure is the answer we report
            problems.append(f"{server}: {describe_connection_error(exc)}")
            continue
        finally:
            if conn is not None:
                conn.close()
        return None
    return "; ".join(problems)


def describe_connection_error(exc: BaseException) -> str:
    """A short operator-facing reason for a failed Kafka connection."""
    text = plain_kafka_error(exc) if is_kafka_error(exc) else str(exc) or type(exc).__name__
    lowered = text.lower()
    if "authentication" in lowered or "sasl" in lowered:
        return f"authentication failed (check MPCIO_KAFKA_SASL_*): {text}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed (check MPCIO_KAFKA_SSL_*): {text}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if "closed" in lowered:
        return (
            f"the broker closed the connection ({text}); does "
            "MPCIO_KAFKA_SECURITY_PROTOCOL match the broker's listener?"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text
