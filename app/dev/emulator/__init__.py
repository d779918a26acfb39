"""A faithful local emulator of Customer.io's Track API, for tests, benchmarks and the demo.

Start one in-process with :func:`running_emulator` (tests), serve one in the foreground with
:func:`serve` (``mpcio emulator``), or mount :func:`build_app` in any aiohttp runner. It
authenticates like Customer.io, validates with production's limits, keeps a workspace of people
and events that tests can inspect, and injects faults on demand. The modules:
:mod:`~app.dev.emulator.validation` (pure checks), :mod:`~app.dev.emulator.store` (the workspace),
:mod:`~app.dev.emulator.faults` (fault rules and rate limit), :mod:`~app.dev.emulator.recording`
(request log and counters) and :mod:`~app.dev.emulator.server` (HTTP). ``docs/emulator.md``
documents the HTTP interface.
"""

from app.dev.emulator.faults import Fault, FaultInjector, FaultRule, RateLimit, parse_faults
from app.dev.emulator.server import (
    DEFAULT_PORT,
    EmulatorConfig,
    EmulatorState,
    RunningEmulator,
    build_app,
    running_emulator,
    serve,
)

__all__ = [
    "DEFAULT_PORT",
    "EmulatorConfig",
    "EmulatorState",
    "Fault",
    "FaultInjector",
    "FaultRule",
    "RateLimit",
    "RunningEmulator",
    "build_app",
    "parse_faults",
    "running_emulator",
    "serve",
]
