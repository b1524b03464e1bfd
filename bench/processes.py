"""Service processes for the benchmarks: started on free loopback ports, timed, always stopped.

Every benchmark runs the services as their own processes (`python -m services.<name>` or a
small server of its own), each in its own session so a terminal's Ctrl-C reaches only the
benchmark, which then stops them in order. A process writes its address to a ready file once it
serves, and its log to a file beside it; a process that does not start raises with its log's
tail.

Every process serves TLS as in a deployment: the group makes a CA and certificates in its
directory (`services.cli.pki`, as `tiergen up` does), `tls_env(name)` are the settings that
make a process serve and call with the certificate of `name` (mutual TLS for the ledger,
generator and upscaler), and `client_security(name)` is how the benchmark calls with it.
`PLAINTEXT` are the settings of a process asked to serve and call without TLS. Transport
settings of the benchmark's own environment never reach a process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services.cli.pki import LocalPki, provision_local_pki
from services.runtime.settings import (
    CA_FILE_VARIABLE,
    CERT_FILE_VARIABLE,
    CLIENT_CA_FILE_VARIABLE,
    INSECURE_VARIABLE,
    KEY_FILE_VARIABLE,
    ChannelSecurity,
)
from services.runtime.tls import channel_credentials

__all__ = ["PLAINTEXT", "ProcessGroup", "ServerProcess", "cpu_seconds", "report"]

#: The settings of a process that serves and calls in plaintext.
PLAINTEXT = {INSECURE_VARIABLE: "true"}
_TRANSPORT = (
    CERT_FILE_VARIABLE,
    KEY_FILE_VARIABLE,
    CLIENT_CA_FILE_VARIABLE,
    CA_FILE_VARIABLE,
    INSECURE_VARIABLE,
)

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
        self,
        name: str,
        module: str,
        environ: Mapping[str, str] | None = None,
        arguments: Sequence[str] = (),
    ) -> ServerProcess:
        """Start `python -m MODULE ARGUMENTS` as `name` on a free loopback port, with `environ`
        added.

        It runs through `services.cli.child`, as `tiergen up`'s services do: the kernel ends it
        when this process dies, so a benchmark killed outright leaves nothing behind."""
        ready_file = self.run_dir / f"{name}.addr"
        log_path = self.run_dir / f"{name}.log"
        full_environ = {
            **{k: v for k, v in os.environ.items() if k not in _TRANSPORT},
            "TIERGEN_HOST": "127.0.0.1",
            "TIERGEN_PORT": "0",
            "TIERGEN_READY_FILE": str(ready_file),
            **self.environ,
            **(environ or {}),
        }
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "services.cli.child", str(os.getpid()), module, *arguments),
                ],
                env=full_environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = ServerProcess(name, popen, ready_file, log_path)
        self.started.append(process)
        return process

    @functools.cached_property
    def pki(self) -> LocalPki:
        """The group's CA and certificates, made on first use in its directory."""
        return provision_local_pki(self.run_dir)[0]

    def tls_env(self, name: str) -> dict[str, str]:
        """The settings of a process serving and calling as `name` (router, ledger, generator,
        upscaler): its certificate, the CA, and for a backend the client CA."""
        return self.pki.server_env(name)

    def client_security(self, name: str = "router") -> ChannelSecurity:
        """TLS trusting the group's CA, presenting the certificate of `name`."""
        return self.pki.client_security(name)

    def aio_channel(self, address: str, name: str = "router") -> grpc.aio.Channel:
        """A bare TLS channel (no interceptors) to `address`, calling as `name`."""
        return grpc.aio.secure_channel(address, channel_credentials(self.client_security(name)))

    def stop(self) -> None:
        """SIGTERM each, last started first, each drained before the next (killed if stuck)."""
        for process in reversed(self.started):
            process.terminate()
            process.wait_stopped()


def report(
    measurement: Coroutine[Any, Any, dict[str, Any]],
    as_json: bool,
    table: Callable[[dict[str, Any]], str],
) -> int:
    """Runs a benchmark's `measurement` and prints its figures, as JSON or as `table` renders
    them; the exit status: 0, or 130 when interrupted (its processes are stopped by then)."""
    try:
        figures = asyncio.run(measurement)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every process the benchmark started is stopped", file=sys.stderr)
        return 130
    print(json.dumps(figures, indent=2) if as_json else table(figures))
    return 0
