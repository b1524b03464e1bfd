"""Client channels to other Tiergen services: deadlines, retries, message limits and tracing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from services.runtime.credentials import BearerToken, bearer_interceptors
from services.runtime.interceptors import client_interceptors

__all__ = ["RETRY_THROTTLING", "open_channel", "service_config"]

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


def open_channel(
    target: str,
    *,
    services: Sequence[str],
    default_timeout: float = 30.0,
    max_attempts: int = 4,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    token: BearerToken | None = None,
) -> grpc.aio.Channel:
    """An insecure channel to `target` (`host:port`) with tracing and a retry policy.

    `services` are the full names of the services called on it (their methods get the retry
    policy). A call made without a timeout gets the remaining deadline of the RPC being served,
    capped by `default_timeout`, so no call ever waits forever. With a `token`, every call
    carries it as `authorization: Bearer` metadata (the router's public calls need one).
    """
    options = [
        ("grpc.service_config", json.dumps(service_config(services, max_attempts))),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    interceptors = client_interceptors(default_timeout)
    if token is not None:
        interceptors += bearer_interceptors(token)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
