"""Domain errors: what every service raises, free of gRPC; the edge maps them to status codes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "QuotaViolation",
    "ResourceExhausted",
    "TiergenError",
    "Unauthenticated",
    "Unavailable",
    "error_class",
]

#: The `ErrorInfo.domain` of every error Tiergen raises.
ERROR_DOMAIN = "tiergen"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: the field path and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exhausted quota: what was limited and why."""

    subject: str
    description: str


class TiergenError(Exception):
    """Base of every error a caller can act on.

    `reason` is a stable UPPER_SNAKE_CASE identifier (carried as `ErrorInfo.reason`);
    `metadata` carries the facts behind it (for example `available` and `required`).
    """

    #: Name of the gRPC status code the edge answers with.
    code = "UNKNOWN"
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(TiergenError):
    """The request itself is wrong; retrying it unchanged can never succeed."""

    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        found = list(violations)
        if field is not None:
            found.insert(0, FieldViolation(field, message))
        self.violations: list[FieldViolation] = found


class NotFound(TiergenError):
    """The named resource does not exist (or is not the caller's to see)."""

    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(TiergenError):
    """The resource exists, or an idempotency key was reused with a different request."""

    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(TiergenError):
    """The system is not in a state that allows the operation (for example too few credits)."""

    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Aborted(TiergenError):
    """A concurrency conflict that persisted after internal retries; safe to retry."""

    code = "ABORTED"
    default_reason = "ABORTED"


class Unavailable(TiergenError):
    """A dependency is down or unreachable; retry after `retry_after` seconds if given."""

    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class ResourceExhausted(TiergenError):
    """Overload or a rate limit: retry after `retry_after` seconds."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        violations: Sequence[QuotaViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after
        self.violations = list(violations)


class DeadlineExceeded(TiergenError):
    """The work could not finish before the caller's deadline."""

    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(TiergenError):
    """The caller (or an operator) cancelled the work."""

    code = "CANCELLED"
    default_reason = "CANCELLED"


class PermissionDenied(TiergenError):
    """The caller is known but may not do this."""

    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(TiergenError):
    """The caller could not be identified."""

    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class Internal(TiergenError):
    """A bug or an invariant broken inside Tiergen; never used for a caller's mistake."""

    code = "INTERNAL"
    default_reason = "INTERNAL"


_BY_CODE: dict[str, type[TiergenError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        Unavailable,
        ResourceExhausted,
        DeadlineExceeded,
        Cancelled,
        PermissionDenied,
        Unauthenticated,
        Internal,
    )
}


def error_class(code: str) -> type[TiergenError]:
    """The error answering with the gRPC status code named `code`; Internal for any other."""
    return _BY_CODE.get(code, Internal)
