"""Runs one service as a child of `tiergen up` that does not outlive it.

`tiergen up` starts each service in a session of its own, so that a Ctrl-C in the terminal
reaches the supervisor alone, which then stops the services in order. The cost is that a
supervisor killed outright (SIGKILL, an out-of-memory kill) would leave them running, holding
their ports. On Linux each child therefore asks the kernel for a SIGTERM when its parent dies
(PR_SET_PDEATHSIG), before it imports the service, then runs the service as `python -m` would:
the service drains and exits as on any SIGTERM. Elsewhere the request is not available and the
service runs without it.

    python -m services.cli.child PARENT_PID services.router [ARGUMENTS...]
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

__all__ = ["main"]

#: From <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Asks for SIGTERM when the parent process ends (Linux only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def main(argv: list[str]) -> None:
    parent, module, arguments = int(argv[0]), argv[1], argv[2:]
    _die_with_parent()
    # The parent may have died before the request was made: then no signal will come.
    if os.getppid() != parent:
        sys.exit(f"{module}: the supervising process {parent} is gone; not starting")
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
