"""Reading the google.rpc details a Tiergen service attaches to an error status."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["bad_fields", "details"]

_KINDS = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
)


def details(error: grpc.aio.AioRpcError) -> dict[type, Any]:
    """The google.rpc details of `error`, by message type."""
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} carries no rich status"
    found: dict[type, Any] = {}
    for packed in status.details:
        for kind in _KINDS:
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                found[kind] = message
    return found


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields an INVALID_ARGUMENT error names, in order."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    bad_request = details(error)[error_details_pb2.BadRequest]
    return [violation.field for violation in bad_request.field_violations]
