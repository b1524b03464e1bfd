"""Where webhooks may go: the URL rules, the addresses refused (no SSRF), and the httpx
transport that checks every address at the moment it connects.

A tenant names the URL, so without these rules the router would POST, from inside the cluster,
wherever a tenant pointed it: its own pods, the database, a cloud's metadata service. So:

- A URL is `https://` (plain `http://` only when private targets are allowed, for development),
  with a host, and no user, password or fragment.
- Every address its host resolves to must be a public unicast one: loopback, private (RFC 1918,
  unique-local), link-local, carrier-grade NAT, reserved, multicast and unspecified addresses
  are refused, IPv4 inside IPv6 (mapped, 6to4) judged as the IPv4 address it carries. A host
  resolving to several addresses is refused if any one is. `allow_private` (the operator's
  TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS, for development and tests) lifts the rule for
  loopback, private and link-local addresses, never for a cloud's metadata addresses.
- The rule is applied when a URL is saved (`check_target`, so a tenant hears at once) and again
  at every connection (`GuardedBackend`), which resolves the host itself and connects to the
  address it checked: a name whose DNS answer changes after the URL was saved (rebinding)
  gains nothing. TLS still verifies the certificate against the URL's host name.
- Redirects are never followed (the transport is used without httpx's client, which alone
  follows them): a 3xx answer is a failed attempt. No proxy from the environment is used.

The transport is httpx's own (its mapping of requests, responses and errors) over httpcore's
connection pool, whose connections all come from `GuardedBackend`: plain asyncio streams, which
also cost a third less CPU per delivery than the pool's default backend.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx

from services.runtime.errors import InvalidArgument

__all__ = [
    "MAX_URL_CHARS",
    "METADATA_ADDRESSES",
    "DeliveryTransport",
    "GuardedBackend",
    "Resolver",
    "address_refusal",
    "check_target",
    "check_url",
    "client_ssl_context",
]

#: Longest URL an endpoint may have.
MAX_URL_CHARS = 2000
#: How long closing a connection waits for the receiver's side of it.
_CLOSE_SECONDS = 1.0

#: Cloud metadata and platform services, refused even when private targets are allowed: AWS,
#: GCP, Azure, OpenStack, DigitalOcean and Oracle (169.254.169.254, and AWS's IPv6 one), AWS ECS
#: task metadata, Alibaba Cloud, Azure's wire server.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",
        "fd00:ec2::254",
        "169.254.170.2",
        "100.100.100.200",
        "168.63.129.16",
    )
)

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Resolves (host, port) to the addresses a connection may use, as text.
Resolver = Callable[[str, int], Awaitable[list[str]]]


def _carried(address: _Address) -> _Address:
    """The IPv4 address an IPv6 one carries (mapped or 6to4), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def address_refusal(text: str, *, allow_private: bool) -> str | None:
    """Why a webhook may not connect to the address `text`, or None when it may. The reason
    names the kind of address, never the address."""
    try:
        address = _carried(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return "not an IP address"
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified or address.is_multicast:
        return "not a unicast address"
    if isinstance(address, ipaddress.IPv6Address) and address.teredo is not None:
        return "a Teredo tunnel address"
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None


def check_url(url: str, *, allow_private: bool, field: str = "url") -> SplitResult:
    """The parts of `url`; InvalidArgument on `field` (reason WEBHOOK_URL_INVALID) unless it
    has a webhook URL's shape, or WEBHOOK_TARGET_REFUSED when it names a refused address."""

    def invalid(problem: str) -> InvalidArgument:
        return InvalidArgument(f"{field} {problem}", field=field, reason="WEBHOOK_URL_INVALID")

    if not 0 < len(url) <= MAX_URL_CHARS or not url.isprintable() or any(c.isspace() for c in url):
        raise invalid(f"must be 1 to {MAX_URL_CHARS} printable characters without spaces")
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise invalid("must be an https:// URL")
    if not parts.hostname:
        raise invalid("has no host")
    if parts.username is not None or parts.password is not None:
        raise invalid("must not carry a user or password: put a token in the path or query")
    if parts.fragment:
        raise invalid("must not have a #fragment")
    try:
        _ = parts.port
    except ValueError:
        raise invalid("has a malformed port") from None
    if _is_ip_literal(parts.hostname):
        refusal = address_refusal(parts.hostname, allow_private=allow_private)
        if refusal is not None:
            raise _refused(field, refusal)
    return parts


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _refused(field: str, refusal: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} leads to {refusal}, where webhooks are not sent",
        field=field,
        reason="WEBHOOK_TARGET_REFUSED",
    )


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, by the system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_target(
    url: str,
    *,
    allow_private: bool,
    field: str = "url",
    resolve: Resolver = system_resolver,
) -> None:
    """`check_url`, then every address the host resolves to now: InvalidArgument
    (WEBHOOK_TARGET_REFUSED) when one is refused, (WEBHOOK_URL_UNRESOLVABLE) when none is found.
    The same check runs again at every connection; this one tells the tenant early."""
    parts = check_url(url, allow_private=allow_private, field=field)
    assert parts.hostname is not None  # check_url
    try:
        addresses = await resolve(parts.hostname, _port(parts))
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise InvalidArgument(
            f"{field}: its host does not resolve to any address",
            field=field,
            reason="WEBHOOK_URL_UNRESOLVABLE",
        )
    for address in addresses:
        refusal = address_refusal(address, allow_private=allow_private)
        if refusal is not None:
            raise _refused(field, refusal)


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies receivers against the system's CA store, and the CAs in `ca_file` too (a
    receiver behind a private CA; the tests' loopback receiver)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def _reason(error: OSError) -> str:
    """What went wrong with a socket, in the system's words, without the address (which a
    tenant whose DNS points somewhere private is not to learn)."""
    if error.errno is not None:
        return os.strerror(error.errno).lower()
    return type(error).__name__


class TargetRefused(httpcore.ConnectError):
    """A connection the address rules refused; its message is shown to the tenant."""


class _Stream(httpcore.AsyncNetworkStream):
    """One connection as httpcore uses it, over asyncio's streams. (The `timeout` parameters
    here and in `GuardedBackend` are httpcore's interface.)"""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(
        self,
        max_bytes: int,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("timed out reading the answer") from None
        except OSError as error:
            raise httpcore.ReadError(f"reading failed: {_reason(error)}") from None

    async def write(
        self,
        buffer: bytes,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("timed out sending") from None
        except OSError as error:
            raise httpcore.WriteError(f"sending failed: {_reason(error)}") from None

    async def aclose(self) -> None:
        self._writer.close()
        try:
            # A TLS close waits for the peer's close_notify, which a receiver that stopped
            # reading never sends: give it a moment, then drop the connection.
            async with asyncio.timeout(_CLOSE_SECONDS):
                await self._writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            self._writer.transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except ssl.SSLCertVerificationError as error:
            await self.aclose()
            raise httpcore.ConnectError(
                f"its TLS certificate is not trusted: {error.verify_message}"
            ) from None
        except (OSError, ssl.SSLError) as error:
            await self.aclose()
            raise httpcore.ConnectError(f"the TLS handshake failed: {error}") from None
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "is_readable":
            # Whether an idle connection was closed by the other end, so that httpcore opens a
            # new one rather than reuse it. The event loop has read the end of the stream
            # already: no system call, which httpcore would make for every idle connection
            # each time it places a request.
            return self._reader.at_eof() or self._writer.is_closing()
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses `address_refusal` allows, resolving the host itself and
    connecting to the very address it checked."""

    def __init__(self, *, allow_private: bool, resolve: Resolver = system_resolver) -> None:
        self._allow_private = allow_private
        self._resolve = resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout("timed out resolving the host") from None
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            raise httpcore.ConnectError("its host does not resolve")
        for address in addresses:
            refusal = address_refusal(address, allow_private=self._allow_private)
            if refusal is not None:
                raise TargetRefused(f"refused: its host resolves to {refusal}")
        failure = "the connection failed"
        for address in addresses:
            try:
                async with asyncio.timeout(timeout):
                    reader, writer = await asyncio.open_connection(address, port)
            except TimeoutError:
                raise httpcore.ConnectTimeout("timed out connecting") from None
            except OSError as error:
                failure = f"the connection failed: {_reason(error)}"
                continue
            return _Stream(reader, writer)
        raise httpcore.ConnectError(failure)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("refused: webhooks go to TCP addresses only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class DeliveryTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP/1.1 transport with every connection made by `GuardedBackend`, trusting
    `ssl_context`, keeping up to `max_connections` open (idle ones for 30 s)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        allow_private: bool,
        max_connections: int = 100,
        resolve: Resolver = system_resolver,
    ) -> None:
        super().__init__(verify=ssl_context, trust_env=False, http1=True, http2=False)
        # httpx builds its pool without a way to choose the network backend: swap it for one
        # with ours, keeping httpx's own mapping of requests, responses and errors around it.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(allow_private=allow_private, resolve=resolve),
        )
