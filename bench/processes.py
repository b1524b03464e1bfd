"""Service processes for the benchmarks: started on free loopback ports, timed, always stopped.

Every benchmark runs the services as their own processes (`python -m services.<name>` or a
small server of its own), each in its own session so a terminal's Ctrl-C reaches only the
benchmark, which then stops them in order. A process writes its address to a ready file once it
serves, and its log to a file beside it; a process that does not start raises with its log's
tail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcessGroup", "ServerProcess", "cpu_seconds"]

_START_SECONDS = 60.0
_STOP_SECONDS = 30.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process `pid` has used; None where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class ServerProcess:
    """One service process of a benchmark."""

    name: str
    popen: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.popen.pid)

    def poll_ready(self, deadline: float) -> bool:
        """Whether it serves now (its address then read); raises once it exited or timed out."""
        if self.ready_file.exists():
            self.address = self.ready_file.read_text().strip()
            return True
        if self.popen.poll() is not None or time.monotonic() > deadline:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{self.name} did not start (exit {self.popen.poll()}); its log ends:\n{tail}"
            )
        return False

    def wait_ready(self) -> str:
        """Blocks until it serves; its address."""
        deadline = time.monotonic() + _START_SECONDS
        while not self.poll_ready(deadline):
            time.sleep(0.05)
        return self.address

    async def ready(self) -> str:
        """Waits until it serves, without blocking the event loop; its address."""
        deadline = time.monotonic() + _START_SECONDS
        while True:
            if self.poll_ready(deadline):
                return self.address
            await asyncio.sleep(0.05)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        try:
            self.popen.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class ProcessGroup:
    """Every process a benchmark started, in `run_dir`; stopped in reverse start order."""

    run_dir: Path
    #: Added to every process's environment, before its own additions.
    environ: Mapping[str, str] = field(default_factory=dict)
    started: list[ServerProcess] = field(default_factory=list)

    def spawn(
        self, name: str, arguments: Sequence[str], environ: Mapping[str, str] | None = None
    ) -> ServerProcess:
        """Start `python ARGUMENTS` as `name` on a free loopback port, with `environ` added."""
        ready_file = self.run_dir / f"{name}.addr"
        log_path = self.run_dir / f"{name}.log"
        full_environ = {
            **os.environ,
            "TIERGEN_HOST": "127.0.0.1",
            "TIERGEN_PORT": "0",
            "TIERGEN_READY_FILE": str(ready_file),
            **self.environ,
            **(environ or {}),
        }
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, *arguments],
                env=full_environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = ServerProcess(name, popen, ready_file, log_path)
        self.started.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM each, last started first, each drained before the next (killed if stuck)."""
        for process in reversed(self.started):
            process.terminate()
            process.wait_stopped()
