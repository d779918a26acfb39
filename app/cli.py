"""``mpcio``: the command line of the forwarder.

Every command validates the settings first; a configuration error prints one line naming the
``MPCIO_*`` variable and exits 2, before anything connects anywhere.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from app.errors import ConfigError, MpcioError
from app.settings import Settings, load_settings

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``mpcio`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
    except MpcioError as exc:
        print(f"mpcio: {exc}", file=sys.stderr)
        code = EXIT_CONFIG if exc.fatal else EXIT_FAILURE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpcio", description="Self-hosted mParticle → Customer.io stream forwarder."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run the forwarder (production entry point)")
    worker.set_defaults(handler=_cmd_worker)

    kafka = commands.add_parser("kafka", help="run a local Apache Kafka broker (no Docker)")
    kafka.add_argument("--port", type=int, default=9092, help="client port (default 9092)")
    kafka.add_argument("--data-dir", type=Path, default=None, help="keep data here")
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
    emulator.set_defaults(handler=_cmd_emulator)

    dry = commands.add_parser(
        "dry-run", help="print the Customer.io items a JSON Lines file of batches would send"
    )
    dry.add_argument("file", type=Path, help="JSON Lines, one mParticle batch per line; - = stdin")
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
    dry.set_defaults(handler=_cmd_dry_run)

    check = commands.add_parser("check-config", help="validate the settings and print them")
    check.set_defaults(handler=_cmd_check_config)
    return parser


def _cmd_worker(_: argparse.Namespace) -> int:
    settings = load_settings()  # before importing faust: a bad setting stops at once
    from app.worker import run_worker  # noqa: PLC0415 - faust import is slow; only here

    run_worker(settings)
    return 0


def _cmd_emulator(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from app.emulator.faults import RateLimit, parse_faults  # noqa: PLC0415
    from app.emulator.server import EmulatorConfig, serve  # noqa: PLC0415

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
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(config, host=args.host, port=args.port)
    return 0


def _cmd_dry_run(args: argparse.Namespace) -> int:
    from app.dryrun import dry_run  # noqa: PLC0415

    overrides = {
        name: getattr(args, name)
        for name in ("include_user_attributes", "send_created_at")
        if getattr(args, name) is not None
    }
    settings = load_settings(forwarding_enabled=False, **overrides)
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
        f"{summary.batches} batches, {summary.operations} operations",
        file=sys.stderr,
    )
    return 0


def _cmd_check_config(_: argparse.Namespace) -> int:
    settings = load_settings()
    for name, value in settings.redacted().items():
        print(f"{name:32} {value}")
    print("settings: ok")
    return 0


def _cmd_kafka(args: argparse.Namespace) -> int:
    from app.localkafka import LocalKafka, fetch_kafka  # noqa: PLC0415

    if args.fetch_only:
        print(f"Kafka jars in {fetch_kafka()}")
        return 0
    broker = LocalKafka(port=args.port, data_dir=args.data_dir)
    broker.start()
    print(f"Kafka ready at {broker.bootstrap} in {broker.started_in:.1f}s (log: {broker.log_file})")
    print("Ctrl-C stops it.")
    _wait_for_signal()
    broker.close()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo  # noqa: PLC0415

    run_demo(kafka_port=args.kafka_port, keep_running=args.keep_running)
    return 0


def settings_as_env(settings: Settings) -> dict[str, str]:
    """``MPCIO_*`` variables that reproduce ``settings`` in a child process (key included)."""
    env: dict[str, str] = {}
    dumped = settings.model_dump(mode="json")
    if settings.customerio_api_key is not None:
        dumped["customerio_api_key"] = settings.customerio_api_key.get_secret_value()
    for name, value in dumped.items():
        if value is None:
            continue
        text = ",".join(sorted(value)) if isinstance(value, list) else str(value)
        env[f"MPCIO_{name.upper()}"] = text.lower() if isinstance(value, bool) else text
    return env


def _wait_for_signal() -> None:
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        time.sleep(0.2)
