"""Assembles the ledger service: the store behind the DSN, the expiry sweeper, the gRPC edge."""

from __future__ import annotations

import asyncio
import contextlib

from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.ledger.callers import allowed_callers
from services.ledger.ledger import Ledger
from services.ledger.model import Clock
from services.ledger.servicer import LedgerServicer
from services.ledger.settings import LedgerSettings
from services.runtime.callers import caller_gate
from services.runtime.server import Server, ServiceRegistration, check_transport
from services.runtime.server import create_server as create_grpc_server

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


async def create_server(settings: LedgerSettings, clock: Clock | None = None) -> tuple[Server, int]:
    """The ledger's server with its schema migrated and its sweeper running; not started.

    `clock` (the wall clock by default) is there for tests that cross an ISO week or a hold's
    expiry without waiting for it.
    """
    # The certificates, and who may call which RPC, checked before anything is opened: a bad
    # file, or a TLS server without client certificates (which could admit nobody), stops the
    # start with one line.
    check_transport(settings.server)
    gate = caller_gate(settings.server, SERVICE_NAME, allowed_callers(settings))
    ledger = await Ledger.open(settings, clock)
    sweeper = asyncio.create_task(ledger.run_sweeper(), name="ledger-sweeper")
    servicer = LedgerServicer(ledger, settings.admin_identities)

    async def stop_sweeper() -> None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper

    registration = ServiceRegistration(
        SERVICE_NAME,
        lambda server: ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server),
    )
    try:
        return await create_grpc_server(
            settings.server, [registration], on_stop=[ledger.close, stop_sweeper], gate=gate
        )
    except BaseException:
        await stop_sweeper()
        await ledger.close()
        raise
