"""Runs the four services as local processes on loopback under one data directory, and keeps
them running.

The router refuses calls without a credential, so a suite also has a key to call it with: the
data directory's dev key (`services.cli.credentials`), made in the router's store before the
router starts, on the first start of the directory, and kept for the later ones.

Every port serves TLS from the directory's own CA and certificates (`services.cli.pki`, made
on its first start too): the router's port trusts any caller with the CA (callers authenticate
with the key), the ledger, generator and upscaler admit only the router's certificate (and the
ledger the operator commands' `cli` certificate, for Grant and the reads). Whatever TLS or
plaintext settings the environment holds are not passed on: the suite is always TLS.

A service may run as several replicas (`replicas`), each on its own port; every address of a
service is given to its callers as one comma-separated list, which their channels balance round
robin. The ledger's and the router's replicas share one PostgreSQL database (`postgres`),
brought to this release's schema before any of them starts. With `assets_url` the routers keep
assets in that S3 bucket; when no endpoint is configured (TIERGEN_ROUTER_S3_ENDPOINT_URL) the
suite serves one itself, moto's S3-compatible server on loopback, whose objects last as long
as the suite.

`supervise`, called every fraction of a second, starts again each process that exited on its
own, on the same port, after the delays of `services.cli.supervision.RestartPolicy`; each exit
and each restart is a log line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from services.cli.credentials import DevKey, provision_dev_key
from services.cli.migrate import migrate_local_postgres
from services.cli.pki import LocalPki, provision_local_pki
from services.cli.supervision import RestartPolicy, check_replicas, describe_exit
from services.router.settings import S3AssetSettings
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

__all__ = ["REPLICA_PORT_STEP", "SERVICES", "Suite", "SuiteError"]

_log = structlog.get_logger("tiergen.up")

_LEDGER_DSN = "TIERGEN_LEDGER_DSN"
_ROUTER_DSN = "TIERGEN_ROUTER_DSN"
_DSN_VARIABLES = {"ledger": _LEDGER_DSN, "router": _ROUTER_DSN}
_S3_ENDPOINT = "TIERGEN_ROUTER_S3_ENDPOINT_URL"
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
#: Replica i (from 0) of a service listens on its first replica's port plus this times i.
REPLICA_PORT_STEP = 10
#: moto's server takes any credentials; these keep boto3 from looking for real ones.
_LOCAL_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "tiergen-local",
    "AWS_SECRET_ACCESS_KEY": "tiergen-local",
    "AWS_REGION": "us-east-1",
}


class SuiteError(RuntimeError):
    """A service did not start; the message carries the tail of its log."""


@dataclass
class _Running:
    """One process of a service: the service's first replica is named as the service
    (`ledger`), the others with their number (`ledger-2`)."""

    name: str
    service: str
    replica: int
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    #: When the process was started (monotonic).
    started: float
    address: str = ""
    #: Restarts in the current run of exits; 0 before the first.
    attempt: int = 0
    #: While the process is down: when it is started again (monotonic).
    restart_due: float | None = None
    #: False from a restart until the new process says it serves.
    ready: bool = True


def _silent(_line: str) -> None:
    pass


@dataclass
class Suite:
    """The suite as child processes; a context manager that always stops what it started.

    `port_base` 0 lets every service pick a free port; otherwise the router listens on
    `port_base`, the generator on +1, the ledger on +2 and the upscaler on +3, and replica i
    (from 0) of a service on its port + 10 * i. `metrics_port_base`, when given, places the
    services' Prometheus endpoints the same way; otherwise none is served (one inherited
    TIERGEN_METRICS_PORT cannot serve several processes).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port_base: int = 0
    metrics_port_base: int | None = None
    start_timeout: float = 60.0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Processes per service (1 when not named); see `services.cli.supervision`.
    replicas: Mapping[str, int] = field(default_factory=dict)
    #: One PostgreSQL database for the ledger and the router (their replicas need one).
    postgres: str | None = field(default=None, repr=False)
    #: `s3://bucket/prefix` for the routers' assets; None keeps them in the data directory.
    assets_url: str | None = None
    #: Each service gets SIGTERM when this process dies (see `services.cli.child`). The
    #: kernel sends it when the thread that started the service ends, so only a process that
    #: starts and restarts its services from one long-lived thread (`tiergen up`) asks for it.
    bound_to_parent: bool = False
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    #: Where the suite's own lines (migrations applied) go.
    say: Callable[[str], None] = _silent
    _running: dict[str, _Running] = field(default_factory=dict, init=False)
    _dev_key: DevKey | None = field(default=None, init=False)
    _pki: LocalPki | None = field(default=None, init=False)
    _s3_server: Any = field(default=None, init=False)
    #: The local S3-compatible server's endpoint, when the suite started one.
    s3_endpoint: str | None = field(default=None, init=False)
    #: Whether this start made or issued again any of the data directory's certificates.
    certificates_made: bool = field(default=False, init=False)

    @property
    def addresses(self) -> dict[str, str]:
        """Each service's address; a service with replicas has them all, comma-separated."""
        addresses: dict[str, list[str]] = {}
        for running in self._running.values():
            addresses.setdefault(running.service, []).append(running.address)
        return {name: ",".join(found) for name, found in addresses.items()}

    @property
    def instances(self) -> dict[str, str]:
        """Each process's address by its name (`router`, `router-2`, ...)."""
        return {name: running.address for name, running in self._running.items()}

    @property
    def router(self) -> str:
        """The router's address, or the routers' addresses comma-separated."""
        return self.addresses["router"]

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

    def count(self, service: str) -> int:
        """How many processes of `service` the suite runs."""
        return self.replicas.get(service, 1)

    def dsn(self, service: str) -> str:
        """The database of the ledger or the router."""
        if self.postgres is not None:
            return self.postgres
        environ = {**os.environ, **self.extra_env}
        default = f"sqlite:///{self.data_dir / f'{service}.db'}"
        return Env(environ).secret(_DSN_VARIABLES[service]) or default

    def check(self) -> None:
        """SuiteError when the replicas asked for cannot run over the databases given."""
        unknown = sorted(set(self.replicas) - set(SERVICES))
        if unknown:
            raise SuiteError(f"unknown service(s) {', '.join(unknown)}")
        if any(count < 1 for count in self.replicas.values()):
            raise SuiteError("every service needs at least one replica")
        try:
            check_replicas(self.replicas, {name: self.dsn(name) for name in _DSN_VARIABLES})
        except ValueError as error:
            raise SuiteError(str(error)) from None
        if self.assets_url is not None:
            self._bucket(self.assets_url)

    @staticmethod
    def _bucket(url: str) -> str:
        """The bucket of an `s3://bucket/prefix` URL; SuiteError when it is not one."""
        try:
            settings = S3AssetSettings.from_env({"TIERGEN_ROUTER_ASSETS_URL": url})
        except ConfigError as error:
            raise SuiteError(f"--assets: {error}") from None
        if settings is None:
            raise SuiteError("--assets: expected s3://bucket or s3://bucket/prefix")
        return settings.bucket

    def _port(self, service: str, replica: int, base: int) -> int:
        return base + _PORT_OFFSETS[service] + REPLICA_PORT_STEP * replica

    def _environment(self, service: str, replica: int, name: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        env.update(self.extra_env)
        env.update(self.pki.server_env(service))
        env.update(
            {
                "TIERGEN_HOST": self.host,
                "TIERGEN_PORT": str(port),
                "TIERGEN_READY_FILE": str(self.data_dir / "run" / f"{name}.addr"),
            }
        )
        env.pop("TIERGEN_METRICS_PORT", None)
        if self.metrics_port_base is not None:
            env["TIERGEN_METRICS_PORT"] = str(self._port(service, replica, self.metrics_port_base))
        variable = _DSN_VARIABLES.get(service)
        if variable is not None and (self.postgres is not None or not env.get(f"{variable}_FILE")):
            env.pop(f"{variable}_FILE", None)
            env[variable] = self.dsn(service)
        if service == "router":
            env.setdefault("TIERGEN_ROUTER_ASSETS_DIR", str(self.data_dir / "assets"))
            addresses = self.addresses
            env["LEDGER_ADDR"] = addresses["ledger"]
            env["GENERATOR_ADDR"] = addresses["generator"]
            env["UPSCALER_ADDR"] = addresses["upscaler"]
            if self.assets_url is not None:
                env["TIERGEN_ROUTER_ASSETS_URL"] = self.assets_url
            if self.s3_endpoint is not None:
                env[_S3_ENDPOINT] = self.s3_endpoint
                env.update(_LOCAL_S3_ENV)
        return env

    def _spawn(self, service: str, replica: int, port: int | None = None) -> _Running:
        """Starts one process of `service`: on `port` when given (a restart keeps its port),
        else on the suite's port for it."""
        name = service if replica == 0 else f"{service}-{replica + 1}"
        if port is None:
            port = 0 if self.port_base == 0 else self._port(service, replica, self.port_base)
        env = self._environment(service, replica, name, port)
        ready_file = Path(env["TIERGEN_READY_FILE"])
        ready_file.unlink(missing_ok=True)
        log_path = self.data_dir / "logs" / f"{name}.log"
        command = [sys.executable, "-m", f"services.{service}"]
        if self.bound_to_parent:
            command = [*command[:2], "services.cli.child", str(os.getpid()), command[2]]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C in the terminal reaches the supervisor only,
                # which then stops every service in order.
                start_new_session=True,
            )
        running = _Running(name, service, replica, process, ready_file, log_path, time.monotonic())
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
        self.check()
        for sub in ("run", "logs"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        # An earlier run's addresses (more replicas than this one's) must not be read as live.
        for stale in (self.data_dir / "run").glob("*.addr"):
            stale.unlink(missing_ok=True)
        self._pki, self.certificates_made = provision_local_pki(self.data_dir, [self.host])
        try:
            if self.postgres is not None:
                self._migrate(self.postgres)
            if self.assets_url is not None:
                self._serve_s3(self.assets_url)
            first = [
                self._spawn(name, replica)
                for name in SERVICES[:-1]
                for replica in range(self.count(name))
            ]
            self._dev_key = _provisioned(self.data_dir, self.dsn("router"))
            for running in first:
                self._await_ready(running)
            routers = [self._spawn("router", replica) for replica in range(self.count("router"))]
            for running in routers:
                self._await_ready(running)
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def _migrate(self, dsn: str) -> None:
        """The shared database brought to this release's schema, once, before any replica."""
        try:
            migrate_local_postgres({_LEDGER_DSN: dsn, _ROUTER_DSN: dsn}, self.say)
        except (ConfigError, TiergenError) as error:
            raise SuiteError(f"cannot migrate {redact(dsn)}: {error}") from None

    def _serve_s3(self, url: str) -> None:
        """A local S3-compatible server with the bucket of `url`, unless an endpoint is set."""
        bucket = self._bucket(url)
        if {**os.environ, **self.extra_env}.get(_S3_ENDPOINT):
            return
        try:
            import boto3
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise SuiteError(
                f"--assets {url} with no {_S3_ENDPOINT} serves the bucket from a local"
                " S3-compatible server, moto's, which is not installed: install"
                f" 'moto[server]', or set {_S3_ENDPOINT} to your S3-compatible store"
            ) from None
        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        self._s3_server = server
        host, port = server.get_host_and_port()
        self.s3_endpoint = f"http://{host}:{port}"
        client = boto3.session.Session(
            aws_access_key_id=_LOCAL_S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_LOCAL_S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=_LOCAL_S3_ENV["AWS_REGION"],
        ).client("s3", endpoint_url=self.s3_endpoint)
        try:
            client.create_bucket(Bucket=bucket)
        finally:
            client.close()

    def supervise(self) -> None:
        """Starts again, on its port, each process that exited on its own: once its delay
        (`restart_policy`) is over. Call it every fraction of a second until `stop`."""
        now = time.monotonic()
        for running in list(self._running.values()):
            returncode = running.process.poll()
            if running.restart_due is not None:
                if now >= running.restart_due:
                    self._restart(running)
            elif returncode is not None:
                running.attempt = self.restart_policy.attempt(
                    running.attempt, now - running.started
                )
                delay = self.restart_policy.delay(running.attempt)
                running.restart_due = now + delay
                _log.warning(
                    "service exited; restarting it",
                    service=running.name,
                    **describe_exit(returncode),
                    attempt=running.attempt,
                    delay_seconds=delay,
                    log_file=str(running.log_path),
                )
            elif not running.ready and running.ready_file.exists():
                running.ready = True
                _log.info(
                    "service restarted",
                    service=running.name,
                    address=running.address,
                    attempt=running.attempt,
                )

    def _restart(self, previous: _Running) -> None:
        port = int(previous.address.rpartition(":")[2])
        running = self._spawn(previous.service, previous.replica, port)
        running.address = previous.address
        running.attempt = previous.attempt
        running.ready = False

    def stop(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM in reverse start order (the routers drain first), each service's replicas
        together; SIGKILL to those still running after `timeout`."""
        for service in reversed(SERVICES):
            group = [r.process for r in self._running.values() if r.service == service]
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for process in group:
                try:
                    process.wait(max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        codes = {name: r.process.returncode for name, r in self._running.items()}
        self._running.clear()
        if self._s3_server is not None:
            self._s3_server.stop()
            self._s3_server = None
            self.s3_endpoint = None
        return codes

    def kill(self, name: str) -> None:
        """SIGKILLs one process (`router`, `ledger-2`, ...), as a crash would, and waits for it
        to go."""
        process = self._running[name].process
        process.send_signal(signal.SIGKILL)
        process.wait()

    def pid(self, name: str) -> int:
        """The process id of one process of the suite."""
        return self._running[name].process.pid

    def dead(self) -> list[str]:
        """Processes that exited on their own and are not running again yet."""
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
