"""The one place that maps domain errors to gRPC status codes with rich details, and back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime import errors
from services.runtime.errors import ERROR_DOMAIN, FieldViolation, QuotaViolation, TiergenError

__all__ = ["from_rpc_error", "grpc_code", "to_status"]

_DETAILS_KEY = "grpc-status-details-bin"


def grpc_code(error: TiergenError) -> grpc.StatusCode:
    """The status code of a domain error."""
    return grpc.StatusCode[error.code]


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: TiergenError) -> grpc.Status:
    """A `grpc.Status` with ErrorInfo and, where they apply, BadRequest, QuotaFailure, RetryInfo."""
    code = grpc_code(error)
    details = [
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    ]
    if isinstance(error, errors.InvalidArgument) and error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if isinstance(error, errors.ResourceExhausted) and error.violations:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=v.subject, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
    status = status_pb2.Status(
        code=code.value[0], message=error.message, details=[_pack(d) for d in details]
    )
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def _details(metadata: Iterable[tuple[str, Any]] | None) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == _DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


def from_rpc_error(error: grpc.RpcError) -> TiergenError:
    """Rebuilds the domain error a downstream service raised, from its status and details.

    A router that calls the ledger gets the ledger's INSUFFICIENT_CREDITS back as the same
    FailedPrecondition, so it can pass the reason and facts on to its own caller unchanged.
    """
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    cls = errors.error_class(code.name)
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    quota: list[QuotaViolation] = []
    retry_after: float | None = None
    status = _details(error.trailing_metadata())  # type: ignore[arg-type]
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif packed.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            packed.Unpack(failure)
            quota = [QuotaViolation(v.subject, v.description) for v in failure.violations]
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument(
            message, violations=violations, reason=reason, metadata=metadata
        )
    if cls is errors.ResourceExhausted:
        return errors.ResourceExhausted(
            message, retry_after=retry_after, violations=quota, reason=reason, metadata=metadata
        )
    if cls is errors.Unavailable:
        return errors.Unavailable(
            message, retry_after=retry_after, reason=reason, metadata=metadata
        )
    return cls(message, reason=reason, metadata=metadata)
