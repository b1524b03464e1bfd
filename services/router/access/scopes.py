"""Scopes: what a credential may do, and the one scope each RouterService RPC needs.

`METHOD_SCOPES` is the only table of it: the interceptor checks calls against it, docs/api.md
prints it (a test compares the two), and a test checks that every RPC of the contract has a row.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from services.runtime.errors import InvalidArgument

__all__ = ["METHOD_SCOPES", "SERVICE", "Scope", "parse_scopes"]


class Scope(enum.StrEnum):
    """A permission a credential carries."""

    IMAGES_WRITE = "images:write"
    IMAGES_READ = "images:read"
    ACCOUNTS_WRITE = "accounts:write"
    ACCOUNTS_READ = "accounts:read"
    CREDITS_GRANT = "credits:grant"
    KEYS_ADMIN = "keys:admin"
    WEBHOOKS_ADMIN = "webhooks:admin"


#: The full name of the router's public service.
SERVICE = "tiergen.router.v1.RouterService"

#: RPC name -> the scope a call of it needs.
METHOD_SCOPES: dict[str, Scope] = {
    "Quote": Scope.IMAGES_WRITE,
    "Generate": Scope.IMAGES_WRITE,
    "Promote": Scope.IMAGES_WRITE,
    "Upscale": Scope.IMAGES_WRITE,
    "Edit": Scope.IMAGES_WRITE,
    "CancelJob": Scope.IMAGES_WRITE,
    "SetShortlist": Scope.IMAGES_WRITE,
    "GetJob": Scope.IMAGES_READ,
    "ListJobs": Scope.IMAGES_READ,
    "GetAsset": Scope.IMAGES_READ,
    "OpenAccount": Scope.ACCOUNTS_WRITE,
    "CheckIn": Scope.ACCOUNTS_WRITE,
    "GetBalance": Scope.ACCOUNTS_READ,
    "Grant": Scope.CREDITS_GRANT,
    "CreateApiKey": Scope.KEYS_ADMIN,
    "ListApiKeys": Scope.KEYS_ADMIN,
    "RotateApiKey": Scope.KEYS_ADMIN,
    "RevokeApiKey": Scope.KEYS_ADMIN,
    "CreateWebhook": Scope.WEBHOOKS_ADMIN,
    "ListWebhooks": Scope.WEBHOOKS_ADMIN,
    "UpdateWebhook": Scope.WEBHOOKS_ADMIN,
    "DeleteWebhook": Scope.WEBHOOKS_ADMIN,
    "RotateWebhookSecret": Scope.WEBHOOKS_ADMIN,
    "ListWebhookDeliveries": Scope.WEBHOOKS_ADMIN,
}


def parse_scopes(names: Iterable[str], field: str = "scopes") -> frozenset[Scope]:
    """The scopes `names` spell (surrounding blanks ignored); InvalidArgument naming the first
    unknown one, or when there is none."""
    scopes: set[Scope] = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        try:
            scopes.add(Scope(name))
        except ValueError:
            known = ", ".join(scope.value for scope in Scope)
            raise InvalidArgument(
                f"unknown scope {name[:40]!r}; scopes are {known}",
                field=field,
                reason="UNKNOWN_SCOPE",
            ) from None
    if not scopes:
        raise InvalidArgument(
            "at least one scope is required", field=field, reason="SCOPES_REQUIRED"
        )
    return frozenset(scopes)
