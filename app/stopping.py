"""How ``mpcio worker`` stops on SIGTERM/SIGINT, from its first moments on.

Standard library only, and imported by :mod:`app.cli` before anything slow, so that when the
process is ``mpcio worker`` (:func:`is_worker_command`) its start-up handlers are in place
while the rest still loads. Before, a SIGTERM in the first seconds (imports, topic and
transactions checks, the local store, fast restore) met Python's default action and killed
the worker with -15.

- **Start-up** (:func:`install_startup_handlers`, until faust's worker installs its own):
  nothing has been consumed yet, so nothing is to flush or commit. The first SIGTERM/SIGINT
  writes one line to stderr and ends the process at once with exit code 0 (the exit code of a
  graceful stop), through ``os._exit``: unwinding with an exception instead could land in the
  middle of a C extension's import or set-up and crash the interpreter (SIGSEGV seen in CI).
  What such a stop leaves is what a kill leaves, which start-up handles anyway: the local table
  store has no clean-stop marker (the next start rebuilds it), the data directory's lock goes
  with the process, a Kafka client just disappears before it joined a group.
- **Running**: faust's worker replaces these handlers with its own on its event loop;
  :class:`app.worker.ForwarderWorker` arms the same deadline and stops gracefully.

The stop deadline (:func:`arm_stop_deadline`): ``STOP_DEADLINE_SECONDS`` after the first
signal the process exits with code 1 whatever it waits for, after writing where every thread
and task waited (:mod:`app.stacks`, code locations only). Nothing is lost by that: what was not
committed is aborted by the broker and redone on the next start.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

# Kubernetes' default grace period is 30 s; stop well inside it, logs flushed.
STOP_DEADLINE_SECONDS = 25.0
EXIT_STOP_DEADLINE = 1
EXIT_STOPPED = 0  # a stop asked for by a signal is a graceful one, as faust's
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def is_worker_command(argv: Sequence[str]) -> bool:
    """True for the command line of ``mpcio worker`` (``argv`` as :data:`sys.argv`: the
    program, then the command; ``mpcio`` has no option before a command but ``--version``)."""
    return len(argv) > 1 and argv[1] == "worker"


def install_startup_handlers() -> None:
    """SIGTERM and SIGINT stop the process at once and cleanly (module docstring), until
    someone installs other handlers (faust's worker does when it starts)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_starting)


def _stop_starting(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    name = signal.Signals(signum).name
    # os.write, not print: a handler may run while the main thread is inside a print
    os.write(2, f"mpcio: {name} during start-up; stopped (nothing consumed yet)\n".encode())
    os._exit(EXIT_STOPPED)


_deadline: threading.Timer | None = None


def arm_stop_deadline(seconds: float = STOP_DEADLINE_SECONDS) -> None:
    """Exit the process ``seconds`` from now unless it has exited by then (first call only).

    A thread, not a task: it must fire even when the event loop is stuck in a blocking call."""
    global _deadline  # noqa: PLW0603 - one deadline per process
    if _deadline is not None:
        return
    loop = _running_loop()

    def expire() -> None:
        from app.stacks import report_now  # noqa: PLC0415 - only when it fires

        # where it waited (code locations only): a stop that hangs names its cause in the log
        sys.stderr.write(
            f"mpcio: graceful stop exceeded {seconds:.0f} s; exiting now (uncommitted work "
            "is redone on the next start); where it waited:\n" + report_now(loop)
        )
        sys.stderr.flush()
        os._exit(EXIT_STOP_DEADLINE)

    _deadline = threading.Timer(seconds, expire)
    _deadline.daemon = True
    _deadline.start()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running this call (faust's signal handlers run on it), or None; asyncio
    is not imported for it (a signal may arrive before anything imported it)."""
    module = sys.modules.get("asyncio")
    if module is None:
        return None
    try:
        loop: asyncio.AbstractEventLoop = module.get_running_loop()
    except RuntimeError:
        return None
    return loop


if is_worker_command(sys.argv):
    # at import, before app.cli imports settings (and the worker faust): the earliest point
    # our code runs in `mpcio worker`
    install_startup_handlers()
