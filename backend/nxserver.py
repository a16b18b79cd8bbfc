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


def main() -> None:
    """Start NX-27017 with the arguments given on the command line."""
    _die_with_parent()
    logging.getLogger("nx_27017").setLevel(logging.WARNING)
    from nx_27017.nx_27017 import main as nx_main

    sys.argv[0] = "nx-27017"
    nx_main()


if __name__ == "__main__":
    main()
