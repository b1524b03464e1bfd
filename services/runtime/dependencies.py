"""Readiness that follows hard dependencies: NOT_SERVING while one fails its health check."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.server import Server

__all__ = ["Dependency", "watch_dependencies"]

_log = structlog.get_logger("tiergen.dependencies")


@dataclass(frozen=True)
class Dependency:
    """A service this one cannot work without: its channel and its full service name."""

    name: str
    channel: grpc.aio.Channel
    service: str


async def _healthy(dependency: Dependency, limit: float) -> bool:
    stub = health_pb2_grpc.HealthStub(dependency.channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=dependency.service), timeout=limit
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def watch_dependencies(
    server: Server, dependencies: Sequence[Dependency], interval: float = 2.0
) -> None:
    """Checks every dependency each `interval` seconds and flips `server`'s readiness.

    Runs until cancelled; start it with `server.add_background`.
    """
    serving = True
    while True:
        results = await asyncio.gather(*(_healthy(d, min(interval, 1.0)) for d in dependencies))
        healthy = all(results)
        if healthy != serving:
            down = [d.name for d, ok in zip(dependencies, results, strict=True) if not ok]
            if healthy:
                _log.info("dependencies healthy again; serving")
            else:
                _log.warning("dependency down; readiness NOT_SERVING", down=down)
            await server.set_serving(healthy)
            serving = healthy
        await asyncio.sleep(interval)
