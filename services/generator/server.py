"""Assembles the generator: its tier catalogue, render worker processes and gRPC service."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc

from services.generator.scheduling import RenderPool, prepare_worker
from services.generator.servicer import GeneratorServicer
from services.generator.settings import GeneratorSettings
from services.runtime.server import Server, ServiceRegistration
from services.runtime.server import create_server as create_grpc_server

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


async def create_server(settings: GeneratorSettings) -> tuple[Server, int]:
    """The generator's server with its worker processes started and warm; not started itself."""
    catalogue = settings.catalogue()
    # Spawned, not forked: a fork would copy the gRPC server's threads and locks mid-flight.
    context = multiprocessing.get_context("spawn")
    pool = RenderPool(
        lambda: ProcessPoolExecutor(
            settings.workers, mp_context=context, initializer=prepare_worker
        )
    )
    servicer = GeneratorServicer(catalogue, pool)
    registration = ServiceRegistration(
        SERVICE_NAME,
        lambda server: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server),
    )
    server, port = await create_grpc_server(settings.server, [registration], on_stop=[pool.close])
    try:
        await pool.warm_up(settings.workers)
    except BaseException:
        await pool.close()
        raise
    return server, port
