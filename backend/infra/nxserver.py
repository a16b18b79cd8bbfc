"""Child-process entry for the embedded NX-27017 server.

Runs ``nx_27017`` in this process with its per-command INFO logging turned
down (it logs every command, which costs latency) and asks the kernel to
stop it when the parent dies, so a ``kill -9`` of ChangeCast leaves no orphan.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's cleanup still applies
        pass
    # The parent may have died before prctl took effect.
    expected = os.environ.get("CHANGECAST_PARENT_PID")
    if expected and int(expected) != os.getppid():
        sys.exit(0)


def _watch_parent(parent: int) -> None:
    """Backstop for PDEATHSIG: its SIGTERM asks NX-27017 for a clean stop, which it does not
    always finish (seen under load). Once orphaned, give it 3 s, then end the process
    (SQLite's journal makes that safe)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    time.sleep(3)
    os._exit(0)


def main() -> None:
    """Start NX-27017 with the arguments given on the command line."""
    _die_with_parent()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True,
                     name="parent-watch").start()
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    from nx_27017.nx_27017 import main as nx_main  # type: ignore[import-untyped]

    sys.argv[0] = "nx-27017"
    nx_main()


if __name__ == "__main__":
    main()
