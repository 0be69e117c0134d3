"""How a stop signal ends a command: SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the
main thread, and the signal is remembered for the exit status (130 or 143).

Its own module, free of Ray, so that a single cell's command line need not import Ray.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

#: The signal (SIGINT or SIGTERM) that stopped this process, once one has.
STOP_SIGNAL: dict[str, int | None] = {"signum": None}


def raise_on_stop_signals() -> None:
    """Make Ctrl-C and SIGTERM stop the main thread with a ``KeyboardInterrupt``, and remember
    which came (exit status 130 or 143).

    The signal is also remembered, because Ray can swallow the exception: a
    ``KeyboardInterrupt`` raised while its C++ core checks for signals becomes an
    "interrupted" status that some of its calls ignore (a sweep once ran to the end after
    Ctrl-C). A sweep's pool (:mod:`helios.runner`) checks :data:`STOP_SIGNAL` after every
    wait.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        STOP_SIGNAL["signum"] = signum
        raise KeyboardInterrupt

    # ray.init installs its own SIGTERM handler (sys.exit(15)): call this after it.
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def stopped_by_sigterm() -> bool:
    """Whether the stop was SIGTERM (exit status 143) rather than Ctrl-C (130)."""
    return STOP_SIGNAL["signum"] == signal.SIGTERM
