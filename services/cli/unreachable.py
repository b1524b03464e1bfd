"""A service the command could not reach (the router, or the ledger for `tiergen ledger`), said
in one line: the address tried, what went wrong, and the option or variable that changes it.

gRPC reports every failure to connect as UNAVAILABLE, with its own words about the last attempt
in the details ("connections to all backends failing; last error: ... Connection refused").
A router's own UNAVAILABLE (a backend down, a drain) comes with its status details instead, so
only the first kind is taken for a failure to connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

__all__ = ["LEDGER", "ROUTER", "Dialled", "connection_failure"]


@dataclass(frozen=True)
class Dialled:
    """The service a command called, and where its address comes from."""

    name: str
    #: The option and variable that give another address.
    elsewhere: str

    @property
    def where(self) -> str:
        return f"check the address, or give another with {self.elsewhere}"

    @property
    def trust(self) -> str:
        return (
            f"give the CA that signed the {self.name}'s certificate with --ca-file or"
            " TIERGEN_CA_FILE (or --data-dir of the `tiergen up` that serves it)"
        )


ROUTER = Dialled("router", "--router HOST[:PORT] or TIERGEN_ROUTER")
LEDGER = Dialled("ledger", "--ledger HOST:PORT or LEDGER_ADDR")
#: gRPC's words for an attempt to connect that failed, as opposed to an answer.
_CONNECTING = re.compile(
    r"connections to all backends failing|failed to connect to all addresses|errors resolving"
    r"|DNS resolution failed|Tls handshake failed|Ssl handshake failed|Socket closed"
    r"|Connection reset|Connection refused",
    re.IGNORECASE,
)
_LAST_ERROR = re.compile(r"last error: (?:[A-Z_]+: )?(?:ipv[46]:\S+?: )?(.*)$", re.DOTALL)


def connection_failure(
    error: grpc.aio.AioRpcError, address: str, *, insecure: bool, dialled: Dialled = ROUTER
) -> str | None:
    """The line that says `error` is a failure to reach `dialled` at `address` (in plaintext
    when `insecure`), and what to do about it; None when it is an answer instead."""
    if error.code() is not grpc.StatusCode.UNAVAILABLE:
        return None
    details = error.details() or ""
    if not _CONNECTING.search(details) or _has_status_details(error):
        return None
    last = _LAST_ERROR.search(details)
    said = " ".join((last.group(1) if last else details).split())
    head = f"cannot reach the {dialled.name} at {address}"
    where, trust = dialled.where, dialled.trust
    if "errors resolving" in details or "DNS resolution failed" in details:
        host = address.rpartition(":")[0] or address
        return f"{head}: no such host {host} ({said}); {where}"
    if "Connection refused" in details:
        return f"{head}: connection refused (nothing listens there); {where}"
    if "WRONG_VERSION_NUMBER" in details:
        return (
            f"{head}: TLS handshake failed, the server does not speak TLS there; {where}, or"
            f" call a plaintext {dialled.name} (behind a mesh) with --insecure or"
            " TIERGEN_INSECURE=true"
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        reason = said.rsplit("CERTIFICATE_VERIFY_FAILED: ", 1)[-1].removesuffix(": OK")
        return f"{head}: TLS handshake failed, its certificate is not trusted ({reason}); {trust}"
    if "handshake" in details.lower():
        return (
            f"{head}: TLS handshake failed ({said}); {trust}, and the client certificate with"
            " --cert-file and --key-file if it asks for one"
        )
    if insecure and "Socket closed" in details:
        return (
            f"{head}: the connection closed before any answer: it likely serves TLS, and this"
            " command called in plaintext; drop --insecure (and TIERGEN_INSECURE)"
        )
    return f"{head}: {said}; {where}"


def _has_status_details(error: grpc.aio.AioRpcError) -> bool:
    """Whether the service itself answered: its errors carry rich status details."""
    metadata = error.trailing_metadata() or ()
    return any(key == "grpc-status-details-bin" for key, _value in metadata)
