"""Worker processes end with their server, even one killed outright."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from services.runtime.workers import end_with_server
from tests.tls import session_pki

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads processes from /proc"
)


def _children(parent: int) -> set[int]:
    """Live processes whose parent is `parent`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == parent and state != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_until_gone(pids: set[int], seconds: float) -> None:
    give_up = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < give_up, "worker processes outlived their server"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("service", "workers"),
    [("generator", "TIERGEN_GENERATOR_WORKERS"), ("upscaler", "TIERGEN_UPSCALER_WORKERS")],
)
def test_workers_end_when_their_server_is_killed(
    tmp_path: Path, service: str, workers: str
) -> None:
    ready_file = tmp_path / f"{service}.addr"
    environment = dict(
        os.environ,
        TIERGEN_PORT="0",
        TIERGEN_READY_FILE=str(ready_file),
        **session_pki().env(service),
        **{workers: "2"},
    )
    server = subprocess.Popen(
        [sys.executable, "-m", f"services.{service}"],
        cwd=Path(__file__).resolve().parents[2],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        give_up = time.monotonic() + 60
        while not ready_file.exists():
            assert server.poll() is None, f"the {service} exited before it was ready"
            assert time.monotonic() < give_up, f"the {service} did not start"
            time.sleep(0.05)
        # Its worker processes and the multiprocessing resource tracker.
        children = _children(server.pid)
        assert len(children) >= 3
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    _wait_until_gone(children, 30)


def test_a_worker_whose_server_died_before_it_started_ends_too() -> None:
    # A process that has already exited stands in for a server killed while its workers spawn.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        1, mp_context=context, initializer=end_with_server, initargs=(dead_pid,)
    )
    try:
        # The worker exits on its own; the pool notices it broke.
        with pytest.raises(BrokenProcessPool):
            for _ in range(50):
                pool.submit(time.sleep, 0.1).result(timeout=30)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
