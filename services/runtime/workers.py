"""Worker processes that end with the server that started them."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["end_with_server"]

#: How often a worker looks for its server, in seconds.
_POLL_SECONDS = 1.0


def end_with_server(server_pid: int) -> None:
    """Ends this worker process once the server process `server_pid` is gone.

    Call it from a pool's initializer with the server's pid, taken in the server (the worker's
    own parent pid may already be another process's by the time it runs). A server killed
    outright (SIGKILL, the OOM killer) cannot stop its workers, and a worker waiting for a task
    never notices: it holds a write end of its own task queue's pipe, so it never reads
    end-of-file.
    """
    threading.Thread(
        target=_exit_when_orphaned, args=(server_pid,), name="orphan-watch", daemon=True
    ).start()


def _exit_when_orphaned(server_pid: int) -> None:
    while os.getppid() == server_pid:
        time.sleep(_POLL_SECONDS)
    os._exit(1)
