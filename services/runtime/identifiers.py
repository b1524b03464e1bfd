"""The limits every service puts on the ids, keys and text callers send, checked the same way
on every store and through every service.

Checked at the edge of the domain, before anything is stored or echoed: PostgreSQL's `text`
cannot hold a NUL (SQLite can), so an unchecked key would be accepted by one store and be an
INTERNAL error on the other; and an error that repeats a megabyte of caller input exceeds gRPC's
metadata limit and reaches the caller as RESOURCE_EXHAUSTED instead of its real answer. Every
message that names caller input therefore names a bounded `excerpt` of it.
"""

from __future__ import annotations

import re

from services.runtime.errors import InvalidArgument

__all__ = [
    "ACCOUNT_ID_PATTERN",
    "DEFAULT_TENANT",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_ID_CHARS",
    "TENANT_PATTERN",
    "excerpt",
    "require_account_id",
    "require_id",
    "require_idempotency_key",
    "require_plain_text",
    "require_tenant",
]

#: The tenant of the rows written before tenancy, and of a ledger request that names none.
DEFAULT_TENANT = "default"
#: Account ids: 1-128 characters of letters, digits and ._:@-, starting with a letter or digit.
ACCOUNT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
#: Tenant names: 1-63 lowercase letters, digits and hyphens, starting and ending with a letter or
#: digit (a DNS label, so a tenant can name a namespace, a label value or a host).
TENANT_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Longest id of a job, batch, hold or asset a caller may name; every id Tiergen makes is shorter.
MAX_ID_CHARS = 128
#: Longest idempotency key.
MAX_IDEMPOTENCY_KEY_CHARS = 256
#: Characters of caller input an error message repeats at most.
_EXCERPT_CHARS = 40
# C0 and C1 control characters and DEL. Text fields keep tab, newline and carriage return.
# Lone surrogates too: no store can encode them (UTF-8 has none), and an in-process caller can
# pass one (a string decoded with surrogateescape) where gRPC never would.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def excerpt(value: str) -> str:
    """A bounded, printable rendering of caller input for an error message."""
    if len(value) <= _EXCERPT_CHARS:
        return repr(value)
    return f"{value[:_EXCERPT_CHARS]!r}... ({len(value)} characters)"


def require_idempotency_key(key: str, field: str = "idempotency_key") -> str:
    """`key` when it is a usable idempotency key; InvalidArgument on `field` otherwise."""
    if not key.strip():
        raise InvalidArgument(
            "an idempotency key is required: a unique string per intended operation, reused only"
            " to retry it",
            field=field,
            reason="IDEMPOTENCY_KEY_REQUIRED",
        )
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidArgument(
            f"the idempotency key is {len(key)} characters; the limit is"
            f" {MAX_IDEMPOTENCY_KEY_CHARS}",
            field=field,
            reason="IDEMPOTENCY_KEY_TOO_LONG",
        )
    if _CONTROL.search(key):
        raise InvalidArgument(
            "the idempotency key holds a control character (NUL, newline, ...); use printable"
            " characters",
            field=field,
            reason="IDEMPOTENCY_KEY_MALFORMED",
        )
    return key


def require_account_id(account_id: str, field: str = "account_id") -> str:
    """`account_id` when it is well formed; InvalidArgument on `field` otherwise."""
    if not ACCOUNT_ID_PATTERN.fullmatch(account_id):
        raise InvalidArgument(
            f"account id {excerpt(account_id)} is malformed: account ids are 1-128 characters of"
            " letters, digits and ._:@-, starting with a letter or digit",
            field=field,
            reason="MALFORMED_ACCOUNT_ID",
        )
    return account_id


def require_id(value: str, field: str, *, required: bool = True) -> str:
    """`value` when it could name a job, batch, hold or asset; InvalidArgument otherwise.

    Only the shape is checked: at most `MAX_ID_CHARS` printable characters. Whether the id
    exists is the store's answer (NOT_FOUND).
    """
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required", field=field, reason="ID_REQUIRED")
        return value
    if len(value) > MAX_ID_CHARS or _CONTROL.search(value):
        raise InvalidArgument(
            f"{field} {excerpt(value)} is malformed: ids are at most {MAX_ID_CHARS} printable"
            " characters",
            field=field,
            reason="MALFORMED_ID",
        )
    return value


def require_plain_text(text: str, field: str) -> str:
    """`text` (a prompt, a memo) unless it holds a control character other than tab or a line
    break; InvalidArgument on `field` otherwise. Length limits are the caller's own."""
    if _CONTROL_IN_TEXT.search(text):
        raise InvalidArgument(
            f"{field} holds a control character (such as NUL); send plain text",
            field=field,
            reason="TEXT_MALFORMED",
        )
    return text


def require_tenant(tenant: str, field: str = "tenant") -> str:
    """`tenant` when it is a well-formed tenant name; InvalidArgument on `field` otherwise."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidArgument(
            f"tenant {excerpt(tenant)} is malformed: tenants are 1-63 lowercase letters, digits"
            " and hyphens, starting and ending with a letter or digit",
            field=field,
            reason="MALFORMED_TENANT",
        )
    return tenant
