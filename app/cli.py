"""``mpcio``: the command line of the forwarder.

Every command validates the settings first; a configuration error prints one line naming the
``MPCIO_*`` variable and exits 2, before anything connects anywhere.
"""

from __future__ import annotations

# first of all: under `mpcio worker` it installs the start-up SIGTERM/SIGINT handlers now,
# before the imports below load (app.stopping)
from app import stopping  # noqa: F401

# isort: split
import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from app.errors import (
    ConfigError,
    MpcioError,
    is_kafka_error,
    plain_kafka_error,
    plain_os_error,
)
from app.logs import configure_logging
from app.metrics import package_version
from app.settings import (
    ENV_PREFIX,
    Settings,
    load_settings,
    unknown_variable_warnings,
)

if TYPE_CHECKING:
    from app.dev.localkafka import LocalKafka

log = logging.getLogger("mpcio")

EXIT_CONFIG = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer stopped by SIGPIPE (128 + 13)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``mpcio`` console script.

    Before the command runs: logging goes to stderr (text, or JSON when ``MPCIO_LOG_FORMAT``
    is ``json``) and every unknown ``MPCIO_*`` variable is warned about once. Exit codes: 0 ok
    (``mpcio worker`` stopped by SIGTERM/SIGINT, in its start-up too: :mod:`app.stopping`),
    1 failure, 2 configuration error, 130 interrupted, 141 the reader of stdout went away
    (``mpcio … | head``: the rest of the output is dropped quietly). An ``OSError`` or an
    aiokafka error that reaches here is printed as one line in words, exit 1.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    configure_logging("WARNING", _log_format())
    for warning in unknown_variable_warnings(os.environ):
        log.warning("%s", warning)
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        code = _stdout_gone()
    except MpcioError as exc:
        print(f"mpcio: {exc}", file=sys.stderr)
        code = EXIT_CONFIG if exc.fatal else EXIT_FAILURE
    except KeyboardInterrupt:
        code = 130
    except OSError as exc:  # the machine's answer (a port in use, a file missing): one line
        print(f"mpcio: {plain_os_error(exc)}", file=sys.stderr)
        code = EXIT_FAILURE
    except Exception as exc:
        if not is_kafka_error(exc):
            raise  # a bug: its traceback is what a report needs
        print(f"mpcio: Kafka error: {plain_kafka_error(exc)}", file=sys.stderr)
        code = EXIT_FAILURE
    sys.exit(code)


def _log_format() -> str:
    """``MPCIO_LOG_FORMAT`` as given, for logging before (or without) the settings."""
    return os.environ.get(ENV_PREFIX + "LOG_FORMAT", "text").strip().lower()


def _stdout_gone() -> int:
    """stdout's reader closed the pipe: point stdout at /dev/null so the interpreter's final
    flush cannot raise again, and exit like a Unix filter killed by SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpcio", description="Self-hosted mParticle → Customer.io stream forwarder."
    )
    parser.add_argument("--version", action="version", version=f"mpcio {package_version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run the forwarder (production entry point)")
    worker.set_defaults(handler=_cmd_worker)

    ingress = commands.add_parser(
        "ingress", help="accept mParticle Firehose audience and DSR messages over HTTP"
    )
    ingress.set_defaults(handler=_cmd_ingress)

    kafka = commands.add_parser("kafka", help="run a local Apache Kafka broker (no Docker)")
    kafka.add_argument(
        "--port", type=int, default=9092, help="client port (default 9092; node N: port + N - 1)"
    )
    kafka.add_argument(
        "--brokers",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="N",
        help="run an N-node KRaft cluster (replication N, min in-sync 2; default 1)",
    )
    kafka.add_argument("--data-dir", type=Path, default=None, help="keep data here")
    kafka.add_argument(
        "--tls",
        action="store_true",
        help="TLS on the client port: a throwaway CA and broker certificate for 127.0.0.1 and "
        "localhost (valid one day), written to the data dir (single broker only)",
    )
    kafka.add_argument(
        "--sasl-user",
        metavar="NAME:PASSWORD",
        help="SASL on the client port with this one user (single broker only); with --tls "
        "that is SASL_SSL, as mParticle's Kafka output uses",
    )
    kafka.add_argument(
        "--sasl-mechanism",
        choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        default="SCRAM-SHA-512",
        help="with --sasl-user (default SCRAM-SHA-512)",
    )
    kafka.add_argument("--fetch-only", action="store_true", help="only download the jars")
    kafka.set_defaults(handler=_cmd_kafka)

    demo = commands.add_parser(
        "demo", help="local Kafka + worker on sample data: the one command to try it"
    )
    demo.add_argument("--kafka-port", type=int, default=None, help="default: a free port")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave everything up until Ctrl-C"
    )
    demo.set_defaults(handler=_cmd_demo)

    emulator = commands.add_parser(
        "emulator", help="run the Customer.io Track API emulator in the foreground"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8089)
    emulator.add_argument("--site-id", default="demo-site", help="Basic auth user")
    emulator.add_argument("--api-key", default="demo-key", help="Basic auth password")
    emulator.add_argument("--region", choices=("us", "eu"), default="us")
    emulator.add_argument("--rate-limit", type=float, default=None, help="requests/s, then 429")
    emulator.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help="a fault rule as JSON (repeatable), see docs/emulator.md",
    )
    emulator.add_argument("--seed", type=int, default=None, help="seed of probabilistic faults")
    emulator.add_argument(
        "--pessimistic",
        action="store_true",
        help="apply stale identifies, a finite event-id window, 300 attributes per person",
    )
    emulator.add_argument(
        "--dedup-window", type=int, default=None, help="event ids remembered (pessimistic mode)"
    )
    emulator.add_argument(
        "--other-region-port", type=int, default=None, help="also play the other region's host"
    )
    emulator.set_defaults(handler=_cmd_emulator)

    dry = commands.add_parser(
        "dry-run",
        help="print the Customer.io items a JSON Lines file of batches, audience changes, "
        "erasure requests and Firehose messages would send; exit 1 when any line is invalid "
        "or dead-lettered",
    )
    dry.add_argument(
        "file",
        type=Path,
        help="JSON Lines, one batch, audience change, erasure request or Firehose message per "
        "line; - = stdin",
    )
    dry.add_argument(
        "--include-user-attributes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override MPCIO_INCLUDE_USER_ATTRIBUTES",
    )
    dry.add_argument(
        "--send-created-at",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override MPCIO_SEND_CREATED_AT",
    )
    dry.add_argument(
        "--one-attribute-per-audience",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override MPCIO_ONE_ATTRIBUTE_PER_AUDIENCE",
    )
    dry.set_defaults(handler=_cmd_dry_run)

    _add_replay_parser(commands)
    _add_deadletter_parser(commands)

    metrics_check = commands.add_parser(
        "metrics-check",
        help="run every Grafana dashboard query against Prometheus and print the values",
    )
    metrics_check.add_argument("--prometheus", default="http://127.0.0.1:9090")
    metrics_check.add_argument("--dashboard", type=Path, default=None)
    metrics_check.set_defaults(handler=_cmd_metrics_check)

    check = commands.add_parser(
        "check-config",
        help="validate the settings, reach Kafka (topics, co-partitioning) and Customer.io",
    )
    check.add_argument(
        "--sample",
        type=_positive_int,
        default=0,
        metavar="N",
        help="also read N of the newest records of the batches topic and report their key forms",
    )
    check.set_defaults(handler=_cmd_check_config)
    return parser


def _add_replay_parser(commands: Any) -> None:
    replay = commands.add_parser(
        "replay", help="backfill/replay mParticle batches (JSON Lines, maybe gzip) into Kafka"
    )
    replay.add_argument("file", metavar="FILE|-", help="JSON Lines, one record per line; - = stdin")
    replay.add_argument("--topic", default=None, help="target topic (default MPCIO_TOPIC_BATCHES)")
    replay.add_argument("--rate", type=_positive_float, default=None, help="at most N records/s")
    replay.add_argument("--dry-run", action="store_true", help="validate only, send nothing")
    replay.add_argument(
        "--max-invalid",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="stop (exit 1) at the (N+1)th invalid line (default: no limit, exit 0)",
    )
    replay.add_argument(
        "--progress-every",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="progress line interval on stderr (default 1)",
    )
    replay.set_defaults(handler=_cmd_replay)


def _add_deadletter_parser(commands: Any) -> None:
    deadletter = commands.add_parser(
        "deadletter", help="list, show or redrive the records of the dead-letter topic"
    )
    actions = deadletter.add_subparsers(required=True, metavar="ACTION")
    dl_list = actions.add_parser("list", help="one line per dead letter")
    _add_selection_flags(dl_list)
    dl_list.add_argument("--unmasked", action="store_true", help="show emails in details")
    dl_list.add_argument(
        "--json", action="store_true", help="JSON Lines: one object per dead letter, as show"
    )
    dl_list.add_argument(
        "--newest-first",
        action="store_true",
        help="most recent failure first, across partitions (default: topic order)",
    )
    dl_list.set_defaults(handler=_cmd_deadletter_list)
    dl_show = actions.add_parser("show", help="one dead letter in full, as JSON")
    dl_show.add_argument("position", metavar="PARTITION@OFFSET", type=_position)
    dl_show.add_argument("--unmasked", action="store_true", help="show emails in the payload")
    dl_show.set_defaults(handler=_cmd_deadletter_show)
    dl_redrive = actions.add_parser(
        "redrive", help="send dead letters back to their input (ingest) or operations (sink)"
    )
    _add_selection_flags(dl_redrive)
    dl_redrive.add_argument(
        "--offsets", type=_positions, default=frozenset(), metavar="P@O,...", help="these only"
    )
    dl_redrive.add_argument(
        "--all", action="store_true", help="redrive every dead letter (needed without a filter)"
    )
    dl_redrive.add_argument("--dry-run", action="store_true", help="show what would be sent")
    dl_redrive.add_argument("--unmasked", action="store_true", help="show emails in keys")
    dl_redrive.set_defaults(handler=_cmd_deadletter_redrive)


def _add_selection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", action="append", default=[], help="only this reason (repeatable)"
    )
    parser.add_argument(
        "--stage", action="append", default=[], help="only this stage: ingest, sink (repeatable)"
    )
    parser.add_argument(
        "--since", default=None, help="failed since: 30m, 2h, 7d, 1w or an ISO date/time (UTC)"
    )
    parser.add_argument("--limit", type=_positive_int, default=None, help="at most N records")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, not {text!r}")
    return int(text)


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return int(text)


def _position(text: str) -> Any:
    from app.ops.deadletters import Position  # noqa: PLC0415

    try:
        return Position.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positions(text: str) -> frozenset[Any]:
    return frozenset(_position(part) for part in text.split(",") if part.strip())


def _load_masked(**overrides: Any) -> Settings:
    """The settings, with the deployment's masker installed for everything printed after."""
    from app import masking  # noqa: PLC0415

    settings = load_settings(**overrides)
    masking.install(masking.masker_for(settings))
    return settings


def _cmd_worker(_: argparse.Namespace) -> int:
    settings = load_settings()  # before importing faust: a bad setting stops at once
    from app.worker import run_worker  # noqa: PLC0415 - faust import is slow; only here

    run_worker(settings)
    return 0


def _cmd_ingress(_: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from app.ingress.server import serve  # noqa: PLC0415
    from app.logs import configure_logging  # noqa: PLC0415

    # The ingress never talks to Customer.io: its credentials are not required here.
    settings = _load_masked(forwarding_enabled=False)
    secret = settings.ingress_secret
    if secret is None or not secret.get_secret_value().strip():
        raise ConfigError("invalid setting MPCIO_INGRESS_SECRET: required by mpcio ingress")
    # masked like the worker's: identities of the records it writes never reach the log
    configure_logging(settings.log_level, settings.log_format)
    _quiet_kafka_logs()
    asyncio.run(serve(settings))
    return 0


def _cmd_metrics_check(args: argparse.Namespace) -> int:
    from app.ops.metrics_check import DASHBOARD, check_dashboard, report  # noqa: PLC0415

    try:
        results = check_dashboard(args.prometheus, args.dashboard or DASHBOARD)
    except OSError as exc:
        reason = plain_os_error(exc)
        print(f"mpcio: cannot query Prometheus at {args.prometheus}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    print(report(results))
    return 0 if all(result.ok for result in results) else EXIT_FAILURE


def _cmd_emulator(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from app.dev.emulator.faults import RateLimit, parse_faults  # noqa: PLC0415
    from app.dev.emulator.server import EmulatorConfig, serve  # noqa: PLC0415

    rules = []
    limit = RateLimit(args.rate_limit) if args.rate_limit else None
    for text in args.fault:
        try:
            parsed, parsed_limit = parse_faults(json.loads(text))
        except ValueError as exc:  # JSONDecodeError is a ValueError
            raise ConfigError(f"invalid --fault {text!r}: {exc}") from None
        rules.extend(parsed)
        limit = parsed_limit or limit
    config = EmulatorConfig(
        site_id=args.site_id,
        api_key=args.api_key,
        region=args.region,
        rate_limit=limit,
        faults=tuple(rules),
        seed=args.seed,
        pessimistic=args.pessimistic,
        **({} if args.dedup_window is None else {"dedup_window": args.dedup_window}),
    )
    configure_logging("INFO", _log_format())
    serve(config, host=args.host, port=args.port, other_region_port=args.other_region_port)
    return 0


def _cmd_dry_run(args: argparse.Namespace) -> int:
    from app.ops.dryrun import dry_run  # noqa: PLC0415

    overrides = {
        name: getattr(args, name)
        for name in ("include_user_attributes", "send_created_at", "one_attribute_per_audience")
        if getattr(args, name) is not None
    }
    settings = _load_masked(forwarding_enabled=False, **overrides)
    try:
        source = sys.stdin.buffer if str(args.file) == "-" else args.file.open("rb")
    except OSError as exc:
        print(f"mpcio: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    with source:
        summary = dry_run(source, settings, sys.stdout.buffer, sys.stderr)
    sys.stdout.flush()
    print(
        f"dry-run: {summary.lines} lines, {summary.invalid_lines} invalid, "
        f"{summary.batches} batches, {summary.audience_updates} audience updates, "
        f"{summary.erasures} erasures, {summary.firehose_messages} Firehose messages, "
        f"{summary.operations} operations",
        file=sys.stderr,
    )
    return EXIT_FAILURE if summary.invalid_lines else 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from app.ops.checks import Check, run_checks, summary  # noqa: PLC0415

    settings = _load_masked()
    for name, value in settings.redacted().items():
        print(f"{name:32} {value}")
    print()
    if settings.mask_key is None:
        from app.masking import generate_key  # noqa: PLC0415

        print(
            "MPCIO_MASK_KEY is not set: each process masks emails with a random key, so masks\n"
            "differ between workers, restarts and this CLI. A new key, shown only now (it is\n"
            "not stored anywhere): set it as a secret for every worker and CLI of this\n"
            "deployment, like the API key:\n"
            f"  MPCIO_MASK_KEY={generate_key()}\n"
        )
    _quiet_kafka_logs()
    checks = [Check("settings", True, ""), *asyncio.run(run_checks(settings, sample=args.sample))]
    for check in checks:
        print(check.line())
    print(f"check-config: {summary(checks)}")
    if any(check.settings_rejected for check in checks):
        return EXIT_CONFIG
    return EXIT_FAILURE if any(check.failed for check in checks) else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from app.errors import ReplayStoppedError  # noqa: PLC0415
    from app.ops.replay import replay_file  # noqa: PLC0415

    settings = _load_masked(forwarding_enabled=False)  # replay never talks to Customer.io
    topic = args.topic or settings.topic_batches
    _quiet_kafka_logs()
    try:
        summary = asyncio.run(
            replay_file(
                settings,
                args.file,
                topic=topic,
                rate=args.rate,
                max_invalid=args.max_invalid,
                dry_run=args.dry_run,
                progress_interval=args.progress_every,
            )
        )
    except ReplayStoppedError as exc:
        print(f"mpcio: {exc}", file=sys.stderr)
        summary, stopped = exc.summary, True
    else:
        stopped = False
    if args.dry_run:
        sent = f"{summary.sent} valid (dry run, nothing sent)"
    else:
        sent = f"sent {summary.sent} to {topic}" + (" (acknowledged before the error)" * stopped)
    print(
        f"replay: {sent}, {summary.invalid} invalid, {summary.seconds:.2f} s, "
        f"{summary.rate:,.0f} records/s",
        file=sys.stderr,
    )
    if summary.stopped:
        print(
            f"replay: stopped: more than {args.max_invalid} invalid lines (--max-invalid)",
            file=sys.stderr,
        )
    return EXIT_FAILURE if stopped or summary.stopped else 0


def _selection(args: argparse.Namespace) -> Any:
    from app.ops.deadletters import Selection, parse_since  # noqa: PLC0415

    try:
        since = None if args.since is None else parse_since(args.since)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Selection(
        reasons=frozenset(args.reason),
        stages=frozenset(args.stage),
        since_ms=since,
        positions=getattr(args, "offsets", frozenset()),
        limit=args.limit,
    )


def _cmd_deadletter_list(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from app.ops.deadletters import list_line, newest_first, select, show_document  # noqa: PLC0415

    settings = _load_masked(forwarding_enabled=False)
    selection = _selection(args)
    _quiet_kafka_logs()

    def line(stored: Any) -> str:
        if args.json:
            return orjson.dumps(show_document(stored, masked=not args.unmasked)).decode()
        return list_line(stored, masked=not args.unmasked)

    async def run() -> int:
        count = 0
        reader = (newest_first if args.newest_first else select)(settings, selection)
        # closed here, even when printing fails, so the consumer stops before the loop ends
        async with contextlib.aclosing(reader) as letters:
            async for stored in letters:
                print(line(stored), flush=True)
                count += 1
        return count

    count = asyncio.run(run())
    print(f"{count} dead letter(s) in {settings.topic_deadletter}", file=sys.stderr)
    return 0


def _cmd_deadletter_show(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from app.ops.deadletters import Selection, select, show_document  # noqa: PLC0415

    settings = _load_masked(forwarding_enabled=False)
    _quiet_kafka_logs()

    async def run() -> Any:
        reader = select(settings, Selection(positions=frozenset({args.position})))
        async with contextlib.aclosing(reader) as letters:
            async for stored in letters:
                return stored
        return None

    stored = asyncio.run(run())
    if stored is None:
        print(
            f"mpcio: no record at {args.position} in {settings.topic_deadletter}", file=sys.stderr
        )
        return EXIT_FAILURE
    document = show_document(stored, masked=not args.unmasked)
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


def _cmd_deadletter_redrive(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from app.ops.deadletters import redrive  # noqa: PLC0415

    settings = _load_masked(forwarding_enabled=False)
    selection = _selection(args)
    if selection.everything and not args.all:
        raise ConfigError("redrive needs --offsets, a filter (--reason, --stage, --since) or --all")
    _quiet_kafka_logs()
    counts = asyncio.run(
        redrive(
            settings,
            selection,
            dry_run=args.dry_run,
            report=lambda line: print(line, flush=True),
            masked=not args.unmasked,
        )
    )
    verb = "would be sent (dry run)" if args.dry_run else "sent"
    erased = f" ({counts.erased} of them: user erased after it)" if counts.erased else ""
    print(f"redrive: {counts.sent} {verb}, {counts.skipped} skipped{erased}", file=sys.stderr)
    return 0


def _quiet_kafka_logs() -> None:
    """aiokafka logs each failed connection attempt; our commands report one clear line."""
    import logging  # noqa: PLC0415

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _cmd_kafka(args: argparse.Namespace) -> int:
    from app.dev.localkafka import LocalKafkaCluster, fetch_kafka  # noqa: PLC0415

    if args.fetch_only:
        print(f"Kafka jars in {fetch_kafka()}")
        return 0
    broker: LocalKafka | LocalKafkaCluster
    secured = args.tls or args.sasl_user
    if secured and args.brokers != 1:
        raise ConfigError("--tls and --sasl-user run a single broker: drop --brokers")
    if args.brokers == 1:
        broker = _local_kafka(args)
        broker.start()
        print(f"Kafka ready at {broker.bootstrap} in {broker.started_in:.1f}s")
        print(f"log: {broker.log_file}")
        if secured:
            print("for the worker and the CLI:")
            print(" ".join(_secured_settings(broker)))
            if broker.sasl_users:
                print("and MPCIO_KAFKA_SASL_PASSWORD: the password given to --sasl-user")
    else:
        broker = LocalKafkaCluster(
            args.brokers,
            data_dir=args.data_dir,
            ports=[args.port + index for index in range(args.brokers)],
        )
        broker.start()
        print(f"Kafka cluster of {args.brokers} nodes ready in {broker.started_in:.1f}s")
        print(f"logs: {broker.data_dir}/node-*/server.log; for the worker:")
        print(f"MPCIO_BROKER='{broker.url}' MPCIO_TOPIC_REPLICATION_FACTOR={args.brokers}")
    print("Ctrl-C stops it.")
    _wait_for_signal()
    broker.close()
    return 0


def _local_kafka(args: argparse.Namespace) -> LocalKafka:
    """``mpcio kafka``'s single broker; with ``--tls``/``--sasl-user`` the broker the TLS
    integration tests run, by hand.

    The certificates go to ``<data dir>/tls`` (a temporary folder without ``--data-dir``).
    Raises :class:`ConfigError` for a ``--sasl-user`` that is not ``NAME:PASSWORD``."""
    import atexit  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from app.dev.localkafka import LocalKafka  # noqa: PLC0415
    from app.dev.localtls import generate_tls  # noqa: PLC0415

    users = None
    if args.sasl_user:
        name, _, password = args.sasl_user.partition(":")
        if not name or not password:
            raise ConfigError("--sasl-user must be NAME:PASSWORD")
        users = {name: password}
    tls = None
    if args.tls:
        if args.data_dir:
            folder = args.data_dir / "tls"
        else:
            folder = Path(tempfile.mkdtemp(prefix="mpcio-kafka-tls-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        tls = generate_tls(folder)
    return LocalKafka(
        port=args.port,
        data_dir=args.data_dir,
        tls=tls,
        sasl_users=users,
        sasl_mechanism=args.sasl_mechanism,
    )


def _secured_settings(broker: LocalKafka) -> list[str]:
    """The ``MPCIO_*`` settings that reach ``broker``, but the password (never printed)."""
    lines = [
        f"MPCIO_BROKER={broker.bootstrap}",
        f"MPCIO_KAFKA_SECURITY_PROTOCOL={broker.security_protocol}",
    ]
    if broker.tls:
        lines.append(f"MPCIO_KAFKA_SSL_CAFILE={broker.tls.ca}")
    if broker.sasl_users:
        lines += [
            f"MPCIO_KAFKA_SASL_MECHANISM={broker.sasl_mechanism}",
            f"MPCIO_KAFKA_SASL_USERNAME={next(iter(broker.sasl_users))}",
        ]
    return lines


def _cmd_demo(args: argparse.Namespace) -> int:
    from app.dev.demo import run_demo  # noqa: PLC0415

    run_demo(kafka_port=args.kafka_port, keep_running=args.keep_running)
    return 0


def _wait_for_signal() -> None:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        time.sleep(0.2)
