"""The upscaler's server: its worker pool, job board and servicer behind the shared runtime."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from tiergen.upscaler.v1 import upscaler_pb2, upscaler_pb2_grpc

from services.runtime import server as runtime
from services.runtime.callers import caller_gate, same_for_every_method
from services.upscaler.servicer import UpscalerService
from services.upscaler.settings import UpscalerSettings
from services.upscaler.worker import JobBoard, prepare_worker

__all__ = ["SERVICE_NAME", "create_server"]

#: Full name of the gRPC service, as health checks and reflection know it.
_SERVICE = upscaler_pb2.DESCRIPTOR.services_by_name["UpscalerService"]
SERVICE_NAME: str = _SERVICE.full_name


async def create_server(settings: UpscalerSettings) -> tuple[runtime.Server, int]:
    """Build (but do not start) the upscaler's server; returns it and its bound port.

    The worker processes start here, so the first request does not wait for them; stopping the
    server stops them.
    """
    runtime.check_transport(settings.server)
    # Every RPC serves the allowed callers (TIERGEN_ALLOWED_CALLERS: the router by default).
    gate = caller_gate(
        settings.server,
        SERVICE_NAME,
        same_for_every_method(_SERVICE, settings.server.allowed_callers),
    )
    # Spawned, not forked: a fork would copy the gRPC threads' locks in whatever state they are.
    context = multiprocessing.get_context("spawn")
    board = JobBoard(settings.workers + settings.queue_limit, context)

    def start_pool() -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=settings.workers,
            mp_context=context,
            initializer=prepare_worker,
            initargs=(board, os.getpid()),
        )
        # A spawn pool starts a process per submission while none is idle: one trivial task
        # per worker starts them all now instead of on the first requests.
        for _ in range(settings.workers):
            pool.submit(os.getpid)
        return pool

    servicer = UpscalerService(settings, board, start_pool)
    registration = runtime.ServiceRegistration(
        SERVICE_NAME,
        lambda server: upscaler_pb2_grpc.add_UpscalerServiceServicer_to_server(servicer, server),
    )
    try:
        return await runtime.create_server(
            settings.server, [registration], on_stop=[servicer.close], gate=gate
        )
    except BaseException:
        await servicer.close()
        raise
