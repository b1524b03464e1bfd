"""The whole suite in this process: four real servers on port 0 talking gRPC to each other, over
TLS with the run's certificates (`tests.tls`): mutual TLS from the router to the backends, and
TLS without a client certificate from the tests to the router, as a tenant's platform calls."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.generator.server import create_server as create_generator
from services.generator.settings import GeneratorSettings
from services.ledger.server import create_server as create_ledger
from services.ledger.settings import LedgerSettings
from services.router.access.keys import KeyStore
from services.router.access.scopes import Scope
from services.router.server import create_server as create_router
from services.router.settings import RouterSettings
from services.runtime.credentials import bearer_interceptors
from services.runtime.server import Server
from services.runtime.status import from_rpc_error
from services.upscaler.server import create_server as create_upscaler
from services.upscaler.settings import UpscalerSettings
from tests.tls import session_pki

#: The tenant of the suite's own key.
MAIN_TENANT = "t-main"
#: Every scope there is, as a key's scopes.
EVERY_SCOPE = tuple(scope.value for scope in Scope)
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 8 << 20)]


async def issue_key(
    dsn: str, tenant: str = MAIN_TENANT, scopes: Iterable[str] = EVERY_SCOPE, *, name: str = ""
) -> str:
    """A new key made directly in the router database at `dsn`, as an operator would."""
    keys = await KeyStore.open(dsn, pool_size=1)
    try:
        return (await keys.create(tenant, scopes, name=name or f"tests-{tenant}")).secret
    finally:
        await keys.close()


def router_channel(address: str, api_key: str | None) -> grpc.aio.Channel:
    """A TLS channel to the router at `address` (trusting the run's CA, with no client
    certificate) that sends `api_key` on every call (None: no credential at all)."""
    interceptors = None if api_key is None else bearer_interceptors(api_key)
    return session_pki().channel(address, None, options=_CHANNEL_OPTIONS, interceptors=interceptors)


@dataclass
class InProcessSuite:
    """Handles on the running servers and a router stub that calls with `api_key`, a key of
    tenant `t-main` with every scope."""

    servers: dict[str, Server]
    addresses: dict[str, str]
    router: router_pb2_grpc.RouterServiceStub
    data_dir: Path
    api_key: str
    #: The router's database, where `new_key` makes keys.
    router_dsn: str
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def new_key(
        self, tenant: str = MAIN_TENANT, scopes: Iterable[str] = EVERY_SCOPE, *, name: str = ""
    ) -> str:
        """A new key of `tenant` (another tenant, for isolation tests) made directly in the
        router's store."""
        return await issue_key(self.router_dsn, tenant, scopes, name=name)

    def stub(self, api_key: str | None) -> router_pb2_grpc.RouterServiceStub:
        """A router stub that calls with `api_key` (None: with no credential); its channel
        closes with the suite."""
        channel = router_channel(self.addresses["router"], api_key)
        self._channels.append(channel)
        return router_pb2_grpc.RouterServiceStub(channel)

    async def stub_of(
        self, tenant: str, scopes: Iterable[str] = EVERY_SCOPE
    ) -> router_pb2_grpc.RouterServiceStub:
        """A router stub calling with a new key of `tenant` with `scopes`."""
        return self.stub(await self.new_key(tenant, scopes))

    async def open_account(self, credits_note: str = "") -> str:
        account = f"acct-{uuid.uuid4().hex[:10]}"
        await self.router.OpenAccount(
            router_pb2.OpenAccountRequest(account_id=account, idempotency_key=f"open-{account}")
        )
        return account

    async def generate_outcome(
        self, account: str, spec: router_pb2.GenerationSpec
    ) -> tuple[str, str]:
        """A Generate on a new key, read to its end (the hold is settled before the stream
        closes): the last job's status and "", or the refusal's code and reason."""
        request = router_pb2.GenerateRequest(
            account_id=account, idempotency_key=uuid.uuid4().hex, spec=spec
        )
        outcome = "NO_RESULT"
        try:
            async for event in self.router.Generate(request):
                if event.WhichOneof("event") == "job":
                    outcome = router_pb2.JobStatus.Name(event.job.status)
        except grpc.aio.AioRpcError as error:
            return error.code().name, from_rpc_error(error).reason
        return outcome, ""

    async def balance(self, account: str) -> Any:
        reply = await self.router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
        return reply.balance


async def _start(factory: Any, settings: Any) -> tuple[Server, str]:
    server, port = await factory(settings)
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def router_env() -> dict[str, str]:
    """Extra router settings; a test module overrides this fixture to change them."""
    return {}


@pytest.fixture
def generator_env() -> dict[str, str]:
    """Extra generator settings; a test module overrides this fixture to change them."""
    return {}


@contextlib.asynccontextmanager
async def running_suite(
    data_dir: Path, router_env: dict[str, str], generator_env: dict[str, str]
) -> AsyncIterator[InProcessSuite]:
    """The four servers on port 0 with their files in `data_dir`, stopped on the way out."""
    env = {"TIERGEN_PORT": "0", "TIERGEN_SHUTDOWN_GRACE_SECONDS": "0"}
    tls = session_pki().env
    servers: dict[str, Server] = {}
    addresses: dict[str, str] = {}
    suite: InProcessSuite | None = None
    try:
        servers["ledger"], addresses["ledger"] = await _start(
            create_ledger,
            LedgerSettings.from_env(
                {
                    **env,
                    **tls("ledger"),
                    "TIERGEN_LEDGER_DSN": f"sqlite:///{data_dir / 'ledger.db'}",
                }
            ),
        )
        servers["generator"], addresses["generator"] = await _start(
            create_generator,
            GeneratorSettings.from_env({**env, **tls("generator"), **generator_env}),
        )
        servers["upscaler"], addresses["upscaler"] = await _start(
            create_upscaler,
            UpscalerSettings.from_env({**env, **tls("upscaler"), "TIERGEN_UPSCALER_WORKERS": "2"}),
        )
        router_settings = RouterSettings.from_env(
            {
                **env,
                **tls("router"),
                "LEDGER_ADDR": addresses["ledger"],
                "GENERATOR_ADDR": addresses["generator"],
                "UPSCALER_ADDR": addresses["upscaler"],
                "TIERGEN_ROUTER_DSN": f"sqlite:///{data_dir / 'router.db'}",
                "TIERGEN_ROUTER_ASSETS_DIR": str(data_dir / "assets"),
                **router_env,
            }
        )
        # The suite's key, made in the router's store before the router starts, as an
        # operator makes a tenant's first key.
        api_key = await issue_key(router_settings.jobs_dsn, name="suite")
        servers["router"], addresses["router"] = await _start(create_router, router_settings)
        channel = router_channel(addresses["router"], api_key)
        suite = InProcessSuite(
            servers,
            addresses,
            router_pb2_grpc.RouterServiceStub(channel),
            data_dir,
            api_key=api_key,
            router_dsn=router_settings.jobs_dsn,
            _channels=[channel],
        )
        yield suite
    finally:
        if suite is not None:
            for channel in suite._channels:
                await channel.close()
        for name in ("router", "upscaler", "generator", "ledger"):
            if name in servers:
                await servers[name].stop(0)


@pytest.fixture
async def suite(
    tmp_path: Path, router_env: dict[str, str], generator_env: dict[str, str]
) -> AsyncIterator[InProcessSuite]:
    async with running_suite(tmp_path, router_env, generator_env) as running:
        yield running


@contextlib.contextmanager
def router_replicas(
    suite: InProcessSuite, database: str, count: int, settings: Mapping[str, str]
) -> Iterator[list[str]]:
    """`count` router processes (`python -m services.router`) over `database`, beside the
    suite's own router and calling its backends, with `settings` added to their environment;
    their addresses. Each logs to `replicas/replica-N.log` of the suite's directory; all are
    stopped on the way out."""
    run = suite.data_dir / "replicas"
    run.mkdir(exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    ready = [run / f"replica-{i}.addr" for i in range(count)]
    try:
        for i, ready_file in enumerate(ready):
            env = {
                **os.environ,
                **session_pki().env("router"),
                "TIERGEN_PORT": "0",
                "TIERGEN_READY_FILE": str(ready_file),
                "TIERGEN_SHUTDOWN_GRACE_SECONDS": "0",
                "LEDGER_ADDR": suite.addresses["ledger"],
                "GENERATOR_ADDR": suite.addresses["generator"],
                "UPSCALER_ADDR": suite.addresses["upscaler"],
                "TIERGEN_ROUTER_DSN": database,
                "TIERGEN_ROUTER_ASSETS_DIR": str(suite.data_dir / "assets"),
                **settings,
            }
            with (run / f"replica-{i}.log").open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "services.router"], env=env, stdout=log, stderr=log
                    )
                )
        give_up = time.monotonic() + 60
        for process, ready_file in zip(processes, ready, strict=True):
            while not ready_file.exists():
                assert process.poll() is None, f"a replica exited; see {run}"
                assert time.monotonic() < give_up, f"a replica did not start; see {run}"
                time.sleep(0.05)
        yield [ready_file.read_text().strip() for ready_file in ready]
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
