"""Who may call each ledger RPC: the one table the ledger's caller gate reads.

Two groups of identities, both from the settings: the callers (TIERGEN_ALLOWED_CALLERS, the
router's `spiffe://tiergen/router` by default), which run the credits of every request, and the
admins (TIERGEN_LEDGER_ADMIN_IDENTITIES, `spiffe://tiergen/admin` by default), the operator
commands (`tiergen ledger grant`, `balance`, `entries`). An admin may add credits and read;
it may not open accounts, check in or touch holds: those belong to requests, which come through
the router, its credentials and its audit trail.
"""

from __future__ import annotations

from enum import Enum

from tiergen.ledger.v1 import ledger_pb2

from services.ledger.settings import LedgerSettings

__all__ = ["METHOD_GROUPS", "SERVICE", "Group", "allowed_callers"]

SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


class Group(Enum):
    CALLERS = "callers"
    ADMINS = "admins"


_BOTH = frozenset({Group.CALLERS, Group.ADMINS})
_CALLERS = frozenset({Group.CALLERS})

#: Every LedgerService RPC and the groups that may call it (docs/security.md shows this table).
METHOD_GROUPS: dict[str, frozenset[Group]] = {
    "OpenAccount": _CALLERS,
    "CheckIn": _CALLERS,
    "Reserve": _CALLERS,
    "Capture": _CALLERS,
    "Release": _CALLERS,
    "Grant": _BOTH,
    "GetBalance": _BOTH,
    "ListEntries": _BOTH,
}


def allowed_callers(settings: LedgerSettings) -> dict[str, frozenset[str]]:
    """The identities each RPC admits under `settings`."""
    members = {
        Group.CALLERS: settings.server.allowed_callers,
        Group.ADMINS: settings.admin_identities,
    }
    return {
        method: frozenset().union(*(members[group] for group in groups))
        for method, groups in METHOD_GROUPS.items()
    }
