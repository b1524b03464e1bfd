"""The whole suite in this process: four real servers on port 0 talking gRPC to each other."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.generator.server import create_server as create_generator
from services.generator.settings import GeneratorSettings
from services.ledger.server import create_server as create_ledger
from services.ledger.settings import LedgerSettings
from services.router.server import create_server as create_router
from services.router.settings import RouterSettings
from services.runtime.server import Server
from services.upscaler.server import create_server as create_upscaler
from services.upscaler.settings import UpscalerSettings


@dataclass
class InProcessSuite:
    """Handles on the running servers and a router stub."""

    servers: dict[str, Server]
    addresses: dict[str, str]
    router: router_pb2_grpc.RouterServiceStub
    data_dir: Path

    async def open_account(self, credits_note: str = "") -> str:
        account = f"acct-{uuid.uuid4().hex[:10]}"
        await self.router.OpenAccount(
            router_pb2.OpenAccountRequest(account_id=account, idempotency_key=f"open-{account}")
        )
        return account

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
    servers: dict[str, Server] = {}
    addresses: dict[str, str] = {}
    channel: grpc.aio.Channel | None = None
    try:
        servers["ledger"], addresses["ledger"] = await _start(
            create_ledger,
            LedgerSettings.from_env(
                {**env, "TIERGEN_LEDGER_DSN": f"sqlite:///{data_dir / 'ledger.db'}"}
            ),
        )
        servers["generator"], addresses["generator"] = await _start(
            create_generator, GeneratorSettings.from_env({**env, **generator_env})
        )
        servers["upscaler"], addresses["upscaler"] = await _start(
            create_upscaler, UpscalerSettings.from_env({**env, "TIERGEN_UPSCALER_WORKERS": "2"})
        )
        servers["router"], addresses["router"] = await _start(
            create_router,
            RouterSettings.from_env(
                {
                    **env,
                    "LEDGER_ADDR": addresses["ledger"],
                    "GENERATOR_ADDR": addresses["generator"],
                    "UPSCALER_ADDR": addresses["upscaler"],
                    "TIERGEN_ROUTER_DSN": f"sqlite:///{data_dir / 'router.db'}",
                    "TIERGEN_ROUTER_ASSETS_DIR": str(data_dir / "assets"),
                    **router_env,
                }
            ),
        )
        channel = grpc.aio.insecure_channel(
            addresses["router"], options=[("grpc.max_receive_message_length", 8 << 20)]
        )
        yield InProcessSuite(
            servers, addresses, router_pb2_grpc.RouterServiceStub(channel), data_dir
        )
    finally:
        if channel is not None:
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
