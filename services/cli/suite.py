"""Runs the four services as local processes on loopback under one data directory.

The router refuses calls without a credential, so a suite also has a key to call it with: the
data directory's dev key (`services.cli.credentials`), made in the router's store before the
router starts, on the first start of the directory, and kept for the later ones.

Every port serves TLS from the directory's own CA and certificates (`services.cli.pki`, made
on its first start too): the router's port trusts any caller with the CA (callers authenticate
with the key), the ledger, generator and upscaler admit only the router's certificate (and the
ledger the operator commands' `cli` certificate, for Grant and the reads). Whatever TLS or
plaintext settings the environment holds are not passed on: the suite is always TLS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services.cli.credentials import DevKey, provision_dev_key
from services.cli.pki import LocalPki, provision_local_pki
from services.runtime.credentials import BearerToken
from services.runtime.errors import TiergenError
from services.runtime.migrations import redact
from services.runtime.settings import (
    CA_FILE_VARIABLE,
    CERT_FILE_VARIABLE,
    CLIENT_CA_FILE_VARIABLE,
    HEALTH_PORT_VARIABLE,
    INSECURE_VARIABLE,
    KEY_FILE_VARIABLE,
    ChannelSecurity,
    ConfigError,
    Env,
)

__all__ = ["SERVICES", "Suite", "SuiteError"]

_LEDGER_DSN = "TIERGEN_LEDGER_DSN"
_ROUTER_DSN = "TIERGEN_ROUTER_DSN"
#: Start order: the router last, once the addresses of its dependencies are known.
SERVICES = ("ledger", "generator", "upscaler", "router")
#: Settings of the environment not passed on: the transport's, replaced by the suite's own
#: certificates, and a health port, which four processes cannot share.
_NOT_INHERITED = frozenset(
    {
        HEALTH_PORT_VARIABLE,
        CERT_FILE_VARIABLE,
        KEY_FILE_VARIABLE,
        CLIENT_CA_FILE_VARIABLE,
        CA_FILE_VARIABLE,
        INSECURE_VARIABLE,
    }
)
_PORT_OFFSETS = {"router": 0, "generator": 1, "ledger": 2, "upscaler": 3}


class SuiteError(RuntimeError):
    """A service did not start; the message carries the tail of its log."""


@dataclass
class _Running:
    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    address: str = ""


@dataclass
class Suite:
    """The suite as four child processes; a context manager that always stops what it started.

    `port_base` 0 lets every service pick a free port; otherwise the router listens on
    `port_base`, the generator on +1, the ledger on +2 and the upscaler on +3.
    `metrics_port_base`, when given, places the services' Prometheus endpoints the same way;
    otherwise none is served (one inherited TIERGEN_METRICS_PORT cannot serve four processes).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port_base: int = 0
    metrics_port_base: int | None = None
    start_timeout: float = 60.0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    _running: dict[str, _Running] = field(default_factory=dict, init=False)
    _dev_key: DevKey | None = field(default=None, init=False)
    _pki: LocalPki | None = field(default=None, init=False)
    #: Whether this start made or issued again any of the data directory's certificates.
    certificates_made: bool = field(default=False, init=False)

    @property
    def addresses(self) -> dict[str, str]:
        return {name: running.address for name, running in self._running.items()}

    @property
    def router(self) -> str:
        return self._running["router"].address

    @property
    def dev_key(self) -> DevKey:
        """The data directory's dev key (tenant `dev`, every scope); known once started."""
        if self._dev_key is None:
            raise SuiteError("the suite has not been started: it has no dev key yet")
        return self._dev_key

    @property
    def api_key(self) -> BearerToken:
        """The key to call the router with: the dev key."""
        return self.dev_key.token

    @property
    def pki(self) -> LocalPki:
        """The data directory's CA and certificates; known once started."""
        if self._pki is None:
            raise SuiteError("the suite has not been started: it has no certificates yet")
        return self._pki

    @property
    def client_security(self) -> ChannelSecurity:
        """How a client calls the suite: TLS trusting its CA, with the operator's certificate."""
        return self.pki.client_security()

    def _router_dsn(self) -> str:
        environ = {**os.environ, **self.extra_env}
        return Env(environ).secret(_ROUTER_DSN) or f"sqlite:///{self.data_dir / 'router.db'}"

    def _environment(self, name: str) -> dict[str, str]:
        port = 0 if self.port_base == 0 else self.port_base + _PORT_OFFSETS[name]
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env.update(self.extra_env)
        env.update(self.pki.server_env(name))
        env.update(
            {
                "TIERGEN_HOST": self.host,
                "TIERGEN_PORT": str(port),
                "TIERGEN_READY_FILE": str(self.data_dir / "run" / f"{name}.addr"),
            }
        )
        env.pop("TIERGEN_METRICS_PORT", None)
        if self.metrics_port_base is not None:
            env["TIERGEN_METRICS_PORT"] = str(self.metrics_port_base + _PORT_OFFSETS[name])
        if name == "ledger" and not env.get(f"{_LEDGER_DSN}_FILE"):
            env.setdefault(_LEDGER_DSN, f"sqlite:///{self.data_dir / 'ledger.db'}")
        if name == "router" and not env.get(f"{_ROUTER_DSN}_FILE"):
            env[_ROUTER_DSN] = self._router_dsn()
        if name == "router":
            env.setdefault("TIERGEN_ROUTER_ASSETS_DIR", str(self.data_dir / "assets"))
            env["LEDGER_ADDR"] = self._running["ledger"].address
            env["GENERATOR_ADDR"] = self._running["generator"].address
            env["UPSCALER_ADDR"] = self._running["upscaler"].address
        return env

    def _spawn(self, name: str) -> _Running:
        env = self._environment(name)
        ready_file = Path(env["TIERGEN_READY_FILE"])
        ready_file.unlink(missing_ok=True)
        log_path = self.data_dir / "logs" / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C in the terminal reaches the supervisor only,
                # which then stops every service in order.
                start_new_session=True,
            )
        running = _Running(name, process, ready_file, log_path)
        self._running[name] = running
        return running

    def _await_ready(self, running: _Running) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if running.ready_file.exists():
                running.address = running.ready_file.read_text().strip()
                return
            if running.process.poll() is not None:
                raise SuiteError(
                    self._failure(running, f"exited with {running.process.returncode}")
                )
            time.sleep(0.05)
        raise SuiteError(self._failure(running, f"not ready after {self.start_timeout:.0f} s"))

    @staticmethod
    def _failure(running: _Running, what: str) -> str:
        lines = running.log_path.read_text(errors="replace").splitlines()[-15:]
        tail = "\n".join(f"  {line}" for line in lines)
        return f"{running.name} {what}; last lines of {running.log_path}:\n{tail}"

    def start(self) -> dict[str, str]:
        """Starts the services and returns their addresses; stops them all if one fails."""
        for sub in ("run", "logs"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._pki, self.certificates_made = provision_local_pki(self.data_dir, [self.host])
        try:
            first = [self._spawn(name) for name in SERVICES[:-1]]
            self._dev_key = _provisioned(self.data_dir, self._router_dsn())
            for running in first:
                self._await_ready(running)
            self._await_ready(self._spawn("router"))
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM in reverse start order (the router drains first), SIGKILL after `timeout`."""
        for name in reversed(SERVICES):
            running = self._running.get(name)
            if running is not None and running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)
                try:
                    running.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    running.process.kill()
                    running.process.wait()
        codes = {name: r.process.returncode for name, r in self._running.items()}
        self._running.clear()
        return codes

    def kill(self, name: str) -> None:
        """SIGKILLs one service, as a crash would, and waits for it to go."""
        process = self._running[name].process
        process.send_signal(signal.SIGKILL)
        process.wait()

    def dead(self) -> list[str]:
        """Services that exited on their own."""
        return [n for n, r in self._running.items() if r.process.poll() is not None]

    def __enter__(self) -> Suite:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _provisioned(data_dir: Path, dsn: str) -> DevKey:
    """`provision_dev_key` from synchronous code, which may itself run inside an event loop
    (an async test starting a suite): on a loop of its own, in a thread of its own."""
    try:
        with ThreadPoolExecutor(max_workers=1) as thread:
            return thread.submit(asyncio.run, provision_dev_key(data_dir, dsn)).result()
    except (ConfigError, TiergenError, OSError) as error:
        raise SuiteError(f"cannot make the dev key in {redact(dsn)}: {error}") from None
