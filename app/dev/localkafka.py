"""A real Apache Kafka broker on loopback, without Docker (SPEC §8).

Used by the integration tests (a session fixture), ``mpcio kafka``, ``mpcio demo`` and the
benchmarks. It fetches ``org.apache.kafka:kafka_2.13`` and a log4j2 backend from Maven Central
with Maven into a cache folder (reused by every later run), formats KRaft storage once per data
directory, and runs one combined broker+controller on free loopback ports.
:class:`LocalKafkaCluster` runs N such nodes (one JVM each) as one KRaft cluster whose
controller quorum is every node, with replicated internal topics and ``min.insync.replicas``
2, for failover tests (``mpcio kafka --brokers 3``).

Failure semantics: every step raises :class:`~app.errors.LocalKafkaError` with what went wrong
and where the broker's own log is; :meth:`LocalKafka.stop` always leaves no Java process behind
(SIGTERM to the process group, SIGKILL after the grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from app.errors import LocalKafkaError

if TYPE_CHECKING:
    from app.dev.localtls import TlsFiles

KAFKA_VERSION = "4.0.2"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mpcio</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <!-- log4j-slf4j2-impl needs the SLF4J 2 API; Kafka alone pulls 1.7 -->
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def default_cache_dir() -> Path:
    """``$MPCIO_KAFKA_CACHE``, else ``.cache/kafka`` of a source checkout, else ``~/.cache``."""
    if env := os.environ.get("MPCIO_KAFKA_CACHE"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout / ".cache" / "kafka"
    return Path.home() / ".cache" / "mpcio" / "kafka"


def fetch_kafka(cache_dir: Path | None = None, version: str = KAFKA_VERSION) -> Path:
    """Return the folder of the broker's jars, downloading them with Maven the first time.

    A finished download is marked by a ``.complete`` file, so an interrupted one is redone.
    """
    libs = (cache_dir or default_cache_dir()) / version / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise LocalKafkaError("Maven (mvn) is not on PATH; it fetches Kafka from Maven Central")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(libs, ignore_errors=True)
    (work / "pom.xml").write_text(
        _POM.format(kafka=version, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION), encoding="utf-8"
    )
    command = [
        "mvn", "-q", "-B", "-f", str(work / "pom.xml"),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise LocalKafkaError(
            f"fetching Kafka {version} with Maven failed:\n{result.stdout[-2000:]}"
            f"{result.stderr[-2000:]}"
        )
    (libs / ".complete").write_text(version, encoding="utf-8")
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def metadata_round_trip(
    bootstrap: str, timeout: float = 10.0, client_kwargs: Mapping[str, Any] | None = None
) -> bool:
    """True when the broker answers a metadata request within ``timeout`` seconds.

    Runs in its own thread and event loop, so it is safe to call from sync code and from
    inside a running loop alike. ``client_kwargs``: security arguments for aiokafka (SASL).
    """
    outcome: list[bool] = []

    async def probe() -> bool:
        from aiokafka.client import AIOKafkaClient  # noqa: PLC0415 - heavy import, used here only

        client = AIOKafkaClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=int(timeout * 1000),
            **(client_kwargs or {}),
        )
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)
            return bool(client.cluster.brokers())
        except Exception:  # noqa: BLE001 - any failure here means "not ready yet"
            return False
        finally:
            await client.close()

    thread = threading.Thread(target=lambda: outcome.append(asyncio.run(probe())), daemon=True)
    thread.start()
    thread.join(timeout + 5)
    return bool(outcome and outcome[0])


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64url of a UUID, never starting with ``-``)."""
    cluster_id = "-"
    while cluster_id.startswith("-"):  # the storage tool would read it as an option
        cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def _port_open(port: int) -> bool:
    # A plain connect first keeps aiokafka from logging a refused connection per probe.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class _Lifecycle:
    """``close()`` and the ``with`` block, shared by one node and a cluster."""

    data_dir: Path
    _owns_data_dir: bool

    def start(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    def stop(self, grace: float = 30.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop, and remove the data directory if this object created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def signal_group_and_wait(
    process: subprocess.Popen[bytes], signum: signal.Signals, grace: float
) -> int | None:
    """Send ``signum`` to the process group of ``process`` (started with
    ``start_new_session=True``), wait up to ``grace`` seconds for it to exit, then SIGKILL the
    group; the exit code. Nothing is sent to a process that has already exited. Raises
    :class:`subprocess.TimeoutExpired` only if the process survives SIGKILL for 10 s."""
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        return process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(10)


#: A shell script that outlives its launcher: it waits for the end of its stdin, a pipe whose
#: only writer is the process that launched the broker, so the kernel ends it when that
#: process is gone however it went (killed, or stopped before its cleanup ran: pytest's Ctrl-C
#: or TERM); then, if the broker still runs, it stops the broker's process group as ``stop()``
#: would (TERM, KILL after the grace). It waits without polling: no cost meanwhile.
_WATCHDOG = (
    'read -r _; kill -0 "$1" 2>/dev/null || exit 0; kill -TERM -"$1" 2>/dev/null; '
    'i=0; while kill -0 "$1" 2>/dev/null && [ "$i" -lt "$2" ]; do sleep 1; i=$((i+1)); done; '
    'kill -KILL -"$1" 2>/dev/null; exit 0'
)
WATCHDOG_GRACE_SECONDS = 30


def watch_parent(broker_pid: int) -> subprocess.Popen[bytes]:
    """Start the watchdog (:data:`_WATCHDOG`) of the broker whose process group is
    ``broker_pid`` (started with ``start_new_session``), tied to this process by its stdin.

    The broker runs in its own session (so a terminal's Ctrl-C does not kill it before a
    graceful stop), and Java ignores its parent's death, so without this a launcher that dies
    leaves it running for ever. The watchdog has its own session too: the signal that killed
    the launcher's group must not kill it. Whoever stops the broker stops its watchdog
    (``_signal``), so it never signals a group id the system has given to someone else."""
    return subprocess.Popen(  # noqa: S603 - fixed argv, no shell input from outside
        ["/bin/sh", "-c", _WATCHDOG, "mpcio-kafka-watchdog", str(broker_pid),
         str(WATCHDOG_GRACE_SECONDS)],
        stdin=subprocess.PIPE,  # never written: its end (EOF) is the launcher's death
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


@contextlib.contextmanager
def signals_deferred(*signums: signal.Signals) -> Iterator[None]:
    """Hold ``signums`` (their Python handlers) for the block: one that arrives meanwhile is
    raised again as the block ends, when the handlers are back.

    For starting a child that must be stopped: a handler that raises (a stop) between the
    fork and the line that registers the child for stopping would leave the child running,
    so spawn and register inside the block. Not ``preexec_fn`` (``PR_SET_PDEATHSIG``): with
    it, CPython runs the ``os.register_at_fork`` hooks, and a handler running inside one
    raises into an "Exception ignored" (the demo then ignored the SIGTERM and ran on).
    Only the main thread has signal handlers: in any other thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[signal.Signals] = []

    def hold(signum: int, _frame: object) -> None:
        pending.append(signal.Signals(signum))

    previous = {signum: signal.signal(signum, hold) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler set outside Python, which this cannot put back; keep the default
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


class LocalKafka(_Lifecycle):
    """One single-node KRaft broker on 127.0.0.1.

    ``data_dir`` survives :meth:`stop` and :meth:`kill` so a restart on the same directory keeps
    every topic and offset (the reliability tests rely on it); a temporary one is removed by
    :meth:`close`.

    The client listener (``port``) speaks :attr:`security_protocol`:

    - ``tls`` (:func:`app.dev.localtls.generate_tls`) makes it TLS, serving ``tls.keystore``;
    - ``sasl_users`` (user name → password) makes it SASL, accepting exactly those users with
      ``sasl_mechanism``: ``PLAIN`` (users in the listener's JAAS line) or ``SCRAM-SHA-256`` /
      ``SCRAM-SHA-512`` (credentials written into the metadata log when storage is formatted,
      so users added for an existing ``data_dir`` are not created);
    - both: SASL_SSL; neither: PLAINTEXT.

    A secured broker also listens PLAINTEXT on loopback (``internal_port``) for its own
    broker-to-broker traffic (transaction markers), so a certificate made not to match the
    host name (the host-name tests) breaks only the clients; clients never see that listener
    (a client is told only the endpoints of the listener it connected to). The controller
    listener stays PLAINTEXT.

    ``properties``: server properties that replace the defaults written here, e.g. a
    ``transaction.state.log.replication.factor`` of 3 that one broker cannot hold (the
    exactly_once start-up check's tests).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "768m",
        sasl_users: Mapping[str, str] | None = None,
        sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN",
        tls: TlsFiles | None = None,
        controller_port: int | None = None,
        cluster: _ClusterMembership | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        if sasl_users is not None and not sasl_users:
            raise LocalKafkaError("sasl_users needs at least one user")
        # the storage tool's --add-scram and the JAAS line have no escaping for these
        if any(set(',]"=;') & set(text) for pair in (sasl_users or {}).items() for text in pair):
            raise LocalKafkaError('SASL user names and passwords must not contain , ] " = ;')
        self.sasl_users = dict(sasl_users) if sasl_users else None
        self.sasl_mechanism = sasl_mechanism
        self.tls = tls
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.internal_port = free_port()
        self.cluster = cluster
        self.properties = dict(properties or {})
        self._owns_data_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="mpcio-kafka-"))
        self.cache_dir = cache_dir
        self.version = version
        self.heap = heap
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._began = 0.0
        self.started_in: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def security_protocol(self) -> str:
        """The client listener's protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
        transport = "SSL" if self.tls else "PLAINTEXT"
        return f"SASL_{transport}" if self.sasl_users else transport

    @property
    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka security arguments that connect as the first SASL user, trusting the
        broker's CA (nothing for PLAINTEXT)."""
        kwargs: dict[str, Any] = {}
        if self.security_protocol != "PLAINTEXT":
            kwargs["security_protocol"] = self.security_protocol
        if self.tls:
            from aiokafka.helpers import create_ssl_context  # noqa: PLC0415 - heavy import

            kwargs["ssl_context"] = create_ssl_context(cafile=str(self.tls.ca))
        if self.sasl_users:
            user, password = next(iter(self.sasl_users.items()))
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=user,
                sasl_plain_password=password,
            )
        return kwargs

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Fetch if needed, format storage on first use, start, and wait for a metadata answer.

        ``started_in`` is the seconds from launching Java to the first metadata answer.
        """
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Fetch if needed, format storage on first use and start Java; do not wait.

        A cluster node answers only once a quorum of its controllers runs, so
        :class:`LocalKafkaCluster` launches every node before waiting for any.
        """
        libs = fetch_kafka(self.cache_dir, self.version)
        classpath = f"{libs}/*"
        config = self._write_config()
        logs_dir = self.data_dir / "kraft"
        if not (logs_dir / "meta.properties").exists():
            # a cluster's nodes share its id and name their voters in the config (static
            # quorum); a single node bootstraps a quorum of itself
            quorum = [] if self.cluster else ["--standalone"]
            cluster_id = self.cluster.cluster_id if self.cluster else new_cluster_id()
            self._java(classpath, "kafka.tools.StorageTool", "format", *quorum,
                       "-t", cluster_id, "-c", str(config), *self._scram_arguments())  # fmt: skip
        self._began = time.monotonic()
        # a stop signal while Java forks would leave it running: ``stop()`` finds it only
        # once ``_process`` holds it
        with signals_deferred(signal.SIGTERM, signal.SIGINT):
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [self._java_bin(), f"-Xmx{self.heap}", *self._jvm_flags(), "-cp", classpath,
                 "kafka.Kafka", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=(self.data_dir / "stderr.log").open("ab"),
                start_new_session=True,  # own process group: stop() reaches every child
            )  # fmt: skip
            self._watchdog = watch_parent(self._process.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the launched node answers a metadata request; stop it after ``timeout``."""
        process = self._process
        if process is None:
            raise LocalKafkaError("wait_ready before launch")
        probe = self.client_kwargs
        if self.tls:
            # readiness, not identity: a certificate made not to name 127.0.0.1 (host-name
            # tests) must still let start() see the broker answer
            probe["ssl_context"].check_hostname = False
        while time.monotonic() - self._began < timeout:
            if process.poll() is not None:
                raise LocalKafkaError(f"Kafka exited at start-up; see {self.log_file}")
            if _port_open(self.port) and metadata_round_trip(
                self.bootstrap, timeout=5.0, client_kwargs=probe
            ):
                self.started_in = time.monotonic() - self._began
                return
            time.sleep(0.2)
        self.stop()
        raise LocalKafkaError(f"Kafka did not answer within {timeout:.0f}s; see {self.log_file}")

    def stop(self, grace: float = 30.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL after ``grace`` seconds. Idempotent."""
        self._signal(signal.SIGTERM, grace)

    def kill(self) -> None:
        """SIGKILL the broker at once, as a crash would; the data directory stays."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, signum: signal.Signals, grace: float) -> None:
        process, self._process = self._process, None
        watchdog, self._watchdog = self._watchdog, None
        if process is not None:
            signal_group_and_wait(process, signum, grace)
        if watchdog is not None:  # its broker is gone: it must never signal that group id
            signal_group_and_wait(watchdog, signal.SIGKILL, 10.0)
            if watchdog.stdin is not None:
                watchdog.stdin.close()

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.data_dir / "kraft"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            # check for compactable logs every second (default 15 s), so erasure tests can see
            # a tombstoned value leave the changelog
            "log.cleaner.backoff.ms": "1000",
        }
        if self.security_protocol != "PLAINTEXT":
            properties.update(self._security_properties())
        if self.cluster:
            del properties["controller.quorum.bootstrap.servers"]  # static voters instead
            properties.update(self.cluster.properties(self))
        properties.update(self.properties)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()), encoding="utf-8")
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(log=self.log_file), encoding="utf-8"
        )
        return config

    def _security_properties(self) -> dict[str, str]:
        """The CLIENT listener with TLS and/or SASL, plus the PLAINTEXT INTERNAL one."""
        properties = {
            "listeners": f"CLIENT://127.0.0.1:{self.port},"
            f"INTERNAL://127.0.0.1:{self.internal_port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            # a client gets the endpoints of the listener it connected to: CLIENT only
            "advertised.listeners": f"CLIENT://127.0.0.1:{self.port},"
            f"INTERNAL://127.0.0.1:{self.internal_port}",
            "listener.security.protocol.map": f"CLIENT:{self.security_protocol},"
            "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
        }
        if self.tls:
            properties.update(
                {
                    "listener.name.client.ssl.keystore.type": "PEM",
                    "listener.name.client.ssl.keystore.location": str(self.tls.keystore),
                }
            )
        if self.sasl_users:
            mechanism = self.sasl_mechanism.lower()
            if self.sasl_mechanism == "PLAIN":
                users = " ".join(f'user_{name}="{pw}"' for name, pw in self.sasl_users.items())
                jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            else:  # the SCRAM users live in the metadata log (_scram_arguments)
                jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            properties.update(
                {
                    "sasl.enabled.mechanisms": self.sasl_mechanism,
                    f"listener.name.client.{mechanism}.sasl.jaas.config": jaas,
                }
            )
        return properties

    def _scram_arguments(self) -> list[str]:
        """``--add-scram`` options of the storage tool: KRaft keeps SCRAM users in metadata."""
        if not self.sasl_users or not self.sasl_mechanism.startswith("SCRAM-"):
            return []
        return [
            argument
            for name, password in self.sasl_users.items()
            for argument in (
                "--add-scram",
                f"{self.sasl_mechanism}=[name={name},password={password}]",
            )
        ]

    def _jvm_flags(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-XX:+UseG1GC",
            "-Xshare:auto",
            "-Djava.awt.headless=true",
        ]

    @staticmethod
    def _java_bin() -> str:
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("java is not on PATH; the local broker needs JDK 17+")
        return java

    def _java(self, classpath: str, main: str, *args: str) -> None:
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [self._java_bin(), *self._jvm_flags(), "-cp", classpath, main, *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise LocalKafkaError(f"{main} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")


@dataclass(frozen=True)
class _ClusterMembership:
    """What every node of a :class:`LocalKafkaCluster` shares: its id and its voters."""

    cluster_id: str
    voters: dict[int, int]  # node id -> controller port

    def properties(self, node: LocalKafka) -> dict[str, str]:
        """The node's server properties that differ from a single node's."""
        node_id = next(n for n, port in self.voters.items() if port == node.controller_port)
        replicas = str(len(self.voters))
        min_isr = str(min(2, len(self.voters)))
        return {
            "node.id": str(node_id),
            "controller.quorum.voters": ",".join(
                f"{n}@127.0.0.1:{port}" for n, port in self.voters.items()
            ),
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            # a killed node's partitions move to the others within seconds, not the default 18
            "broker.session.timeout.ms": "6000",
            "broker.heartbeat.interval.ms": "1000",
        }


class LocalKafkaCluster(_Lifecycle):
    """``nodes`` combined broker+controller nodes on 127.0.0.1, one JVM each, one cluster.

    Every node votes in the controller quorum (so the cluster survives losing one of three),
    internal topics are replicated to every node and ``min.insync.replicas`` is 2: with
    ``acks=all`` a write acknowledged by the cluster survives the loss of any one node. Topics
    the product creates need ``MPCIO_TOPIC_REPLICATION_FACTOR`` = ``nodes`` to be as safe.
    ``data_dir`` holds one sub-folder per node (``node-1``...); a temporary one is removed by
    :meth:`close`. PLAINTEXT only.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        ports: list[int] | None = None,
    ) -> None:
        if nodes < 1:
            raise LocalKafkaError("a cluster needs at least one node")
        if ports is not None and len(ports) != nodes:
            raise LocalKafkaError(f"{nodes} nodes need {nodes} client ports, got {len(ports)}")
        self._owns_data_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="mpcio-kafka-cluster-"))
        id_file = self.data_dir / "cluster.id"  # a restart on the same folder keeps the cluster
        if not id_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(new_cluster_id(), encoding="utf-8")
        controller_ports = [free_port() for _ in range(nodes)]
        membership = _ClusterMembership(
            id_file.read_text(encoding="utf-8").strip(),
            {index + 1: port for index, port in enumerate(controller_ports)},
        )
        self.nodes = [
            LocalKafka(
                port=None if ports is None else ports[index],
                data_dir=self.data_dir / f"node-{index + 1}",
                cache_dir=cache_dir,
                version=version,
                heap=heap,
                controller_port=controller_ports[index],
                cluster=membership,
            )
            for index in range(nodes)
        ]
        self.started_in: float | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def url(self) -> str:
        """The ``MPCIO_BROKER`` value: ``kafka://host:port;host:port;...``."""
        return "kafka://" + ";".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        """The node with KRaft ``node.id`` = ``node_id`` (1-based, as in metadata)."""
        return self.nodes[node_id - 1]

    def start(self, timeout: float = 90.0) -> None:
        """Launch every node, then wait until each answers a metadata request."""
        began = time.monotonic()
        try:
            self._each(LocalKafka.launch)  # formatting storage is a JVM run per node
            self._each(lambda node: node.wait_ready(timeout))
        except LocalKafkaError:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def stop(self, grace: float = 30.0) -> None:
        """Stop every node at once (one by one, the last ones wait for a lost quorum)."""
        self._each(lambda node: node.stop(grace))

    def _each(self, action: Callable[[LocalKafka], None]) -> None:
        """Run ``action`` on every node in parallel threads; re-raise the first failure."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(action, node) for node in self.nodes]:
                future.result()
