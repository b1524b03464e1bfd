"""Client channels to other Tiergen services: TLS, deadlines, retries, message limits and tracing.

A channel is TLS unless plaintext is asked for (`ChannelSecurity.plaintext()`, from
TIERGEN_INSECURE=true or `--insecure`). A channel whose security names files (a CA, a client
certificate and key) follows them as a server follows its own (`services.runtime.tls`): when
they change, calls from then on go over a new channel made with the new files, and the old
one closes once the calls it carried have had their time. gRPC's channel credentials are fixed
at creation, so without this a router would keep presenting a client certificate that
cert-manager has replaced until it expired, and then fail every call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
import structlog

from services.runtime.credentials import BearerToken, bearer_interceptors
from services.runtime.interceptors import client_interceptors
from services.runtime.settings import ChannelSecurity, ConfigError
from services.runtime.tls import channel_credentials, file_signature

__all__ = ["RETRY_THROTTLING", "dial_target", "open_channel", "service_config"]

_log = structlog.get_logger("tiergen.channels")

#: How often, at most, a channel looks at its files again (on a call).
_FILE_CHECK_SECONDS = 1.0

#: The longest wait between attempts to reconnect to an address that does not answer.
_MAX_RECONNECT_BACKOFF_MS = 5_000

#: Chunks are at most 1 MiB; the margin covers the message around them.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024

#: gRFC A6 retry throttling, with the values of its own example. A channel starts with 10
#: tokens; each failed attempt costs one, each success earns 0.1 back, and nothing is retried
#: while 5 or fewer are left. A dependency that is down therefore gets at most about 5 retries
#: from a channel, after which every call is a single attempt, instead of 4 attempts per call
#: for as long as the outage lasts; one that fails less than about one attempt in eleven keeps
#: its retries, so blips such as a replica restarting are still ridden out. grpcio 1.85 keeps
#: the tokens per channel (A6 says per server name); each process opens one channel per
#: dependency.
RETRY_THROTTLING = {"maxTokens": 10, "tokenRatio": 0.1}


def service_config(services: Sequence[str], attempts: int) -> dict[str, Any]:
    """The gRPC service config of a channel calling `services`, with `attempts` per call."""
    # Retries are transparent to callers and safe: every call to these services is either
    # read-only, deterministic (renders, upscales) or carries an idempotency key. They never
    # multiply across hops: a server that answers UNAVAILABLE after its own downstream call
    # was retried tells its caller not to retry (see `services.runtime.interceptors`).
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return {
        # With a headless Service the resolver returns every ready replica; spread over them.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": s} for s in services], "retryPolicy": policy}],
        "retryThrottling": RETRY_THROTTLING,
    }


#: gRPC target schemes: a target naming one is gRPC's to read, list or not.
_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds"})


def dial_target(target: str) -> tuple[str, str | None]:
    """What gRPC dials for `target`, and the authority to give it (None: gRPC's own).

    One `host:port`, or a target with a gRPC scheme (`ipv4:…`, `dns:///…`), is dialled as
    given, a name resolved by gRPC's DNS resolver. A
    comma-separated list (`127.0.0.1:5001,127.0.0.1:5002`: the replicas of a service) becomes
    one `ipv4:` (or `ipv6:`) target over every address, which the channel's round_robin policy
    spreads calls over, leaving out an address while it does not answer. Names in a list are
    resolved once, here; each address must be of the family of the first. The authority is the
    first entry's `host:port`: TLS checks every replica's certificate against that host, so each
    must name it (as the local suite's certificates name 127.0.0.1, ::1 and localhost).
    ConfigError when an entry is not `host:port`.
    """
    entries = [entry.strip() for entry in target.split(",")]
    if len(entries) == 1 or "://" in target or target.partition(":")[0] in _SCHEMES:
        return target, None
    addresses: list[str] = []
    family: int | None = None
    for entry in entries:
        host, separator, port = entry.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"{target!r}: expected host:port entries separated by commas, not {entry!r}"
            )
        for resolved_family, resolved in _resolved(host, int(port)):
            family = resolved_family if family is None else family
            if resolved_family == family:
                bracketed = f"[{resolved}]" if family == socket.AF_INET6 else resolved
                addresses.append(f"{bracketed}:{port}")
    if not addresses:
        raise ConfigError(f"{target!r}: no address of the first entry's family")
    scheme = "ipv6" if family == socket.AF_INET6 else "ipv4"
    return f"{scheme}:{','.join(dict.fromkeys(addresses))}", entries[0]


def _resolved(host: str, port: int) -> list[tuple[int, str]]:
    """The addresses of `host`: itself when it is one, else what the system resolves it to."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET, str(literal))]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ConfigError(f"cannot resolve {host!r}: {error}") from None
    return [(int(family), str(address[0])) for family, _, _, _, address in found]


def open_channel(
    target: str,
    *,
    security: ChannelSecurity,
    services: Sequence[str],
    default_timeout: float = 30.0,
    max_attempts: int = 4,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    token: BearerToken | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to `target` (`host:port`, or a comma-separated list of them balanced round
    robin: see `dial_target`) secured as `security` says, with tracing and a retry policy;
    ConfigError naming the setting of a bad certificate, key or CA file.

    `services` are the full names of the services called on it (their methods get the retry
    policy). A call made without a timeout gets the remaining deadline of the RPC being served,
    capped by `default_timeout`, so no call ever waits forever. With a `token`, every call
    carries it as `authorization: Bearer` metadata (the router's public calls need one).
    `interceptors` run inside the tracing ones, on every call (the router's client metrics).
    """
    options = [
        ("grpc.service_config", json.dumps(service_config(services, max_attempts))),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # gRPC waits up to 120 s between attempts to reconnect to an address that refused;
        # a replica restarted after a crash loop would then sit unused for minutes.
        ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
    ]
    target, authority = dial_target(target)
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    chain = [*client_interceptors(default_timeout), *interceptors]
    if token is not None:
        chain += bearer_interceptors(token)
    if security.insecure:
        return grpc.aio.insecure_channel(target, options=options, interceptors=chain)

    def make(credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=chain)

    if not security.files:
        return make(channel_credentials(security))
    return _FollowingChannel(security, make, retire_after=default_timeout)


class _FollowingChannel(grpc.aio.Channel):
    """A TLS channel that follows its security's files: a change seen on a call (looked for at
    most once a second) makes a new channel with the new files for that call and the next.

    Stubs take their callables from a channel once, when they are made, so the callables it
    hands out look up the current channel on every call. Files that changed into something
    unusable (half-written, a key of another certificate) are not taken: the current channel
    stays, with one error line for each state of the files seen.
    """

    def __init__(
        self,
        security: ChannelSecurity,
        make: Callable[[grpc.ChannelCredentials], grpc.aio.Channel],
        *,
        retire_after: float,
    ) -> None:
        self._security = security
        self._make = make
        self._retire_after = retire_after
        self._signature = file_signature(security.files)
        self._refused: object = None
        self._channel = make(channel_credentials(security))
        self._next_check = time.monotonic() + _FILE_CHECK_SECONDS
        self._retiring: dict[grpc.aio.Channel, asyncio.Task[None]] = {}

    def current(self) -> grpc.aio.Channel:
        """The channel for a call made now, made anew if the files changed."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + _FILE_CHECK_SECONDS
            signature = file_signature(self._security.files)
            if signature != self._signature and signature != self._refused:
                self._follow(signature)
        return self._channel

    def _follow(self, signature: object) -> None:
        try:
            credentials = channel_credentials(self._security)
        except ConfigError as error:
            self._refused = signature
            _log.error(
                "certificate files changed but cannot be used; the channel keeps the current ones",
                error=str(error),
            )
            return
        retired, self._channel = self._channel, self._make(credentials)
        self._signature = signature  # type: ignore[assignment]
        self._refused = None
        _log.info(
            "channel certificates reloaded", files=[f.describe() for f in self._security.files]
        )
        # Calls already made on the old channel finish there; it closes once they had the
        # channel's default timeout, which the services' calls do not exceed.
        task = asyncio.ensure_future(retired.close(self._retire_after))
        self._retiring[retired] = task
        task.add_done_callback(lambda _done: self._retiring.pop(retired, None))

    async def close(self, grace: float | None = None) -> None:
        # Channels still closing gracefully close now, with this close's grace.
        retiring = dict(self._retiring)
        for task in retiring.values():
            task.cancel()
        await asyncio.gather(*retiring.values(), return_exceptions=True)
        for channel in (*retiring, self._channel):
            await channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    async def __aenter__(self) -> _FollowingChannel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close(None)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(
            self, lambda channel: channel.unary_unary(method, *args, **kwargs)
        )

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(
            self, lambda channel: channel.unary_stream(method, *args, **kwargs)
        )

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(
            self, lambda channel: channel.stream_unary(method, *args, **kwargs)
        )

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(
            self, lambda channel: channel.stream_stream(method, *args, **kwargs)
        )


class _FollowingCallable:
    """A stub's callable for one method, bound to whichever channel is current at each call."""

    __slots__ = ("_bind", "_bound", "_callable", "_channel")

    def __init__(self, channel: _FollowingChannel, bind: Callable[[grpc.aio.Channel], Any]) -> None:
        self._channel = channel
        self._bind = bind
        self._bound: grpc.aio.Channel | None = None
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        current = self._channel.current()
        if current is not self._bound:
            self._callable = self._bind(current)
            self._bound = current
        return self._callable(*args, **kwargs)
