"""The identities of Tiergen's processes, as their certificates name them.

Each process proves who it is with a certificate whose URI SAN is its SPIFFE-style identity,
`spiffe://tiergen/<name>`: one per service, and `spiffe://tiergen/admin` for the operator
commands (`tiergen ledger ...`). The backends admit callers by these names
(`services.runtime.callers`), from allow lists in their settings (TIERGEN_ALLOWED_CALLERS,
TIERGEN_LEDGER_ADMIN_IDENTITIES). The names are a convention shared with the certificates that
cert-manager issues in the cluster and that `tiergen up` makes locally; a name is compared as
written, never parsed further.

A DNS name (`router.tiergen.svc`) is accepted in an allow list too, and is matched against the
certificate's DNS SANs, for certificates issued without a URI.
"""

from __future__ import annotations

import re

__all__ = [
    "ADMIN_IDENTITY",
    "ROUTER_IDENTITY",
    "SERVICE_IDENTITIES",
    "TRUST_DOMAIN",
    "parse_identities",
    "service_identity",
]

#: The trust domain of every identity: the authority part of `spiffe://tiergen/...`.
TRUST_DOMAIN = "tiergen"


def service_identity(name: str) -> str:
    """The identity of process `name`: `spiffe://tiergen/<name>`."""
    return f"spiffe://{TRUST_DOMAIN}/{name}"


SERVICE_IDENTITIES = {
    name: service_identity(name) for name in ("router", "ledger", "generator", "upscaler")
}
ROUTER_IDENTITY = SERVICE_IDENTITIES["router"]
#: The operator commands' identity: `tiergen ledger grant`, `balance`, `entries`.
ADMIN_IDENTITY = service_identity("admin")

_URI = re.compile(r"[a-z][a-z0-9+.-]*://[^\s,/][^\s,]*")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def parse_identities(text: str) -> frozenset[str]:
    """The identities of a comma-separated list (blanks around each ignored); ValueError, saying
    which entry, for an entry that is neither a URI (`spiffe://tiergen/router`) nor a DNS name,
    and for an empty list."""
    identities = [part.strip() for part in text.split(",") if part.strip()]
    if not identities:
        raise ValueError("expected one identity or more, such as spiffe://tiergen/router")
    for identity in identities:
        if not (_URI.fullmatch(identity) or _DNS.fullmatch(identity)):
            raise ValueError(
                f"{identity!r} is neither a URI such as spiffe://tiergen/router nor a DNS name"
            )
    return frozenset(identities)
