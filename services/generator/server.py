"""Assembles the generator: its tier catalogue, the backends of its tiers and its gRPC service."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc

from services.generator.backends import open_backends
from services.generator.scheduling import BuiltinBackend, RenderPool, prepare_worker
from services.generator.servicer import GeneratorServicer
from services.generator.settings import GeneratorSettings
from services.runtime.callers import caller_gate, same_for_every_method
from services.runtime.server import Server, ServiceRegistration, check_transport
from services.runtime.server import create_server as create_grpc_server

__all__ = ["SERVICE_NAME", "create_server"]

_SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"]
SERVICE_NAME = _SERVICE.full_name


async def create_server(settings: GeneratorSettings) -> tuple[Server, int]:
    """The generator's server with its backends open (worker processes started and warm, when a
    tier renders with the built-in renderer); not started itself."""
    catalogue = settings.catalogue()
    check_transport(settings.server)
    # Every RPC serves the allowed callers (TIERGEN_ALLOWED_CALLERS: the router by default).
    gate = caller_gate(
        settings.server,
        SERVICE_NAME,
        same_for_every_method(_SERVICE, settings.server.allowed_callers),
    )
    # Spawned, not forked: a fork would copy the gRPC server's threads and locks mid-flight.
    context = multiprocessing.get_context("spawn")

    def pool(workers: int, nice: int) -> RenderPool:
        return RenderPool(
            lambda: ProcessPoolExecutor(
                workers,
                mp_context=context,
                initializer=prepare_worker,
                initargs=(os.getpid(), nice),
            )
        )

    def start_builtin() -> BuiltinBackend:
        lanes = settings.interactive_workers
        return BuiltinBackend(
            pool(settings.workers, settings.bulk_nice),
            settings.workers,
            pool(lanes, 0) if lanes else None,
            lanes,
        )

    backends = open_backends(catalogue, settings.providers, start_builtin)
    closing = [backend.close for backend in backends.values()]
    try:
        servicer = GeneratorServicer(catalogue, backends, settings.fair_share)
        registration = ServiceRegistration(
            SERVICE_NAME,
            lambda server: generator_pb2_grpc.add_GeneratorServiceServicer_to_server(
                servicer, server
            ),
        )
        server, port = await create_grpc_server(
            settings.server, [registration], on_stop=closing, gate=gate
        )
        builtin = backends.get("builtin")
        if isinstance(builtin, BuiltinBackend):
            await builtin.warm_up()
    except BaseException:
        for close in closing:
            await close()
        raise
    return server, port
