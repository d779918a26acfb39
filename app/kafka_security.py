"""How every Kafka client of the forwarder connects: TLS and SASL from ``MPCIO_KAFKA_*``.

One source of truth, two shapes: :func:`client_kwargs` for the aiokafka clients we build
ourselves (the sink's consumer and producer, topic administration, ``mpcio replay``,
``mpcio deadletter``, ``mpcio check-config``) and :func:`broker_credentials` for faust
(``broker_credentials``, which faust turns into the same aiokafka arguments for its own
consumer, producer and admin client).

Failure semantics: the settings were validated already (SASL has a user name and password,
TLS files exist); a TLS file that exists but cannot be loaded raises
:class:`~app.errors.ConfigError` naming the variables. :func:`start_client` turns a client that
cannot connect into one line that says why, because aiokafka's own error only says "Unable to
bootstrap": a :class:`~app.errors.ConfigError` (exit 2) when the broker rejected what the
settings say — its certificate is not signed by the configured CA, or does not name the host
in ``MPCIO_BROKER``, or the SASL credentials were refused — since retrying unchanged cannot
succeed; a :class:`~app.errors.BrokerError` (exit 1) for everything else (refused, no
answer, closed connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import BrokerError, ConfigError, MpcioError

if TYPE_CHECKING:
    from app.settings import Settings

PROBE_TIMEOUT_SECONDS = 10.0
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH_CODES = frozenset({62, 64})


@dataclass(frozen=True, slots=True)
class ConnectionProblem:
    """Why a Kafka connection failed, for an operator.

    ``settings_rejected``: the broker refused what the settings say (untrusted certificate,
    host name not in it, credentials refused); retrying with the same settings cannot succeed.
    """

    reason: str
    settings_rejected: bool = False


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
    """``await client.start()``; if it cannot connect, close it and raise one line saying
    why (:class:`ConfigError` or :class:`BrokerError`, see the module docstring).
    ``client``: an aiokafka producer, consumer or admin client."""
    await start_or_explain(
        client, settings.bootstrap_servers, client_kwargs(settings), label=settings.broker
    )


async def start_or_explain(
    client: _Startable, servers: list[str], security: Mapping[str, Any], *, label: str
) -> None:
    """:func:`start_client` for callers that hold the bootstrap list and the
    :func:`client_kwargs` of the settings rather than the settings; ``label`` names the
    broker in the message."""
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    try:
        await client.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):  # producer/consumer: stop(); admin: close()
            await (getattr(client, "stop", None) or getattr(client, "close"))()  # noqa: B009
        problem = await connection_problem(servers, security) or ConnectionProblem(str(exc))
        error: type[MpcioError] = ConfigError if problem.settings_rejected else BrokerError
        raise error(f"cannot use Kafka at {label}: {problem.reason}") from None


async def connection_problem(
    servers: list[str], security: Mapping[str, Any], seconds: float = PROBE_TIMEOUT_SECONDS
) -> ConnectionProblem | None:
    """Why no server of ``servers`` accepts a connection with the client arguments
    ``security`` (None if one does).

    Opens one connection per bootstrap server the way every client does (TLS, SASL
    handshake and authentication included); the reason names each server's error, and the
    settings count as rejected when any server rejected them.
    """
    from aiokafka.conn import create_conn  # noqa: PLC0415
    from aiokafka.protocol.metadata import MetadataRequest  # noqa: PLC0415

    problems: list[ConnectionProblem] = []
    kwargs = dict(security)
    for server in servers:
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
            problems.append(ConnectionProblem(f"{server}: no answer within {seconds:.0f}s"))
            continue
        except Exception as exc:  # noqa: BLE001 - any failure is the answer we report
            problem = describe_connection_error(exc)
            problems.append(
                ConnectionProblem(f"{server}: {problem.reason}", problem.settings_rejected)
            )
            continue
        finally:
            if conn is not None:
                conn.close()
        return None
    return ConnectionProblem(
        "; ".join(problem.reason for problem in problems),
        any(problem.settings_rejected for problem in problems),
    )


def describe_connection_error(exc: BaseException) -> ConnectionProblem:
    """A short operator-facing reason for a failed Kafka connection, and whether the broker
    rejected the settings (see :class:`ConnectionProblem`)."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if (certificate := _certificate_problem(exc)) is not None:
        return certificate
    if "authentication" in lowered or "sasl" in lowered:
        return ConnectionProblem(
            f"authentication failed (check MPCIO_KAFKA_SASL_*): {text}", settings_rejected=True
        )
    if isinstance(exc, ssl.SSLError):
        reason = f"TLS handshake failed (check MPCIO_KAFKA_SSL_*): {text}"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused"
    elif "closed" in lowered:
        reason = (
            f"the broker closed the connection ({text}); does "
            "MPCIO_KAFKA_SECURITY_PROTOCOL match the broker's listener?"
        )
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = text
    return ConnectionProblem(reason)


def _certificate_problem(exc: BaseException) -> ConnectionProblem | None:
    """The certificate verification failure in ``exc`` or what caused it, if any."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ssl.SSLCertVerificationError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    detail = seen.verify_message or str(seen)
    if seen.verify_code in _NAME_MISMATCH_CODES:
        return ConnectionProblem(
            "host-name verification failed: the broker's certificate does not name the "
            f"address in MPCIO_BROKER ({detail})",
            settings_rejected=True,
        )
    return ConnectionProblem(
        "the broker's certificate is not trusted: it is not signed by the CA in "
        f"MPCIO_KAFKA_SSL_CAFILE (or the system's CAs when unset) ({detail})",
        settings_rejected=True,
    )
