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
  :class:`app.worker.ForwarderWorker` arms the stop deadline and stops gracefully.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

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


if is_worker_command(sys.argv):
    # at import, before app.cli imports settings (and the worker faust): the earliest point
    # our code runs in `mpcio worker`
    install_startup_handlers()
