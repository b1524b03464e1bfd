"""A real ledger server on port 0 and a client of it, and what its failures carry, for the tests
that talk to the ledger as its callers do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tiergen.ledger.v1 import ledger_pb2

__all__ = ["Failure", "ServeFactory", "Served", "failure"]


@dataclass
class Served:
    """A started ledger server and a client of it."""

    stub: Any
    health: Any
    harness: Any

    async def open(
        self, account_id: str = "alice", tenant: str = ""
    ) -> ledger_pb2.OpenAccountResponse:
        return await self.stub.OpenAccount(
            ledger_pb2.OpenAccountRequest(
                account_id=account_id, idempotency_key="open", tenant=tenant
            )
        )

    async def reserve(
        self, amount: int, key: str, account_id: str = "alice", **fields: Any
    ) -> ledger_pb2.ReserveResponse:
        return await self.stub.Reserve(
            ledger_pb2.ReserveRequest(
                account_id=account_id, amount=amount, idempotency_key=key, **fields
            )
        )


#: Starts a server on the test database: `serve(clock=None, **settings overrides)`.
ServeFactory = Callable[..., Awaitable[Served]]


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    fields: list[str]
    #: Bytes of the rich status (every detail) the trailers carried.
    status_size: int


async def failure(call: Awaitable[Any]) -> Failure:
    """The status, ErrorInfo and BadRequest fields an RPC failed with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    status = rpc_status.from_call(caught.value)
    assert status is not None, "every ledger error carries google.rpc details"
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    for packed in status.details:
        if packed.Is(info.DESCRIPTOR):
            packed.Unpack(info)
        elif packed.Is(bad.DESCRIPTOR):
            packed.Unpack(bad)
    assert info.domain == "tiergen"
    return Failure(
        code=caught.value.code(),
        message=caught.value.details() or "",
        reason=info.reason,
        metadata=dict(info.metadata),
        fields=[violation.field for violation in bad.field_violations],
        status_size=status.ByteSize(),
    )
