"""The scope table: every RouterService RPC has exactly one scope, in the code and in the docs."""

from __future__ import annotations

import re
from pathlib import Path

from tiergen.router.v1 import router_pb2

from services.router.access.scopes import METHOD_SCOPES, SERVICE, Scope

_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _documented() -> dict[str, str]:
    """RPC -> scope, from the scope table of docs/api.md."""
    rows: dict[str, str] = {}
    for line in _DOCS.read_text().splitlines():
        match = re.fullmatch(r"\| `([a-z]+:[a-z]+)` \| ([A-Za-z, ]+) \|", line)
        if match is None:
            continue
        for rpc in match[2].split(","):
            assert rpc.strip() not in rows, f"{rpc.strip()} has two rows in docs/api.md"
            rows[rpc.strip()] = match[1]
    return rows


def test_every_rpc_of_the_contract_has_one_scope() -> None:
    service = router_pb2.DESCRIPTOR.services_by_name["RouterService"]
    assert service.full_name == SERVICE
    assert {method.name for method in service.methods} == set(METHOD_SCOPES)


def test_the_docs_table_is_the_code_table() -> None:
    assert _documented() == {rpc: scope.value for rpc, scope in METHOD_SCOPES.items()}


def test_every_scope_is_needed_by_some_rpc() -> None:
    assert set(METHOD_SCOPES.values()) == set(Scope)
