"""The caller of the RPC being served: its tenant, its scopes and the credential it used.

The authentication interceptor sets it for the call's handler; the servicer reads it with
`current_principal()`, so the tenant a call acts in always comes from its credential and never
from a request field.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from services.router.access.scopes import Scope

__all__ = ["Principal", "bind_principal", "current_principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `credential` names the credential without revealing it: an API key's prefix
    ("tgk_3f9a2c1d"), or "oidc:<issuer>#<subject>" for a token.
    """

    tenant: str
    scopes: frozenset[Scope]
    credential: str

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "tiergen_principal", default=None
)


def bind_principal(principal: Principal) -> contextvars.Token[Principal | None]:
    """Makes `principal` the caller of the code that runs next in this context."""
    return _CURRENT.set(principal)


def current_principal() -> Principal:
    """The caller of the RPC being served. A handler reached without one is a wiring error."""
    principal = _CURRENT.get()
    if principal is None:
        raise RuntimeError("no authenticated caller: the access interceptor is not installed")
    return principal
