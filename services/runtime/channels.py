"""Client channels to other Tiergen services: deadlines, retries, message limits and tracing."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from services.runtime.interceptors import client_interceptors

__all__ = ["open_channel"]

#: Chunks are at most 1 MiB; the margin covers the message around them.
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def _service_config(services: Sequence[str], attempts: int) -> str:
    # Retries are transparent to callers and safe: every call to these services is either
    # read-only, deterministic (renders, upscales) or carries an idempotency key.
    policy = {
        "maxAttempts": attempts,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    config = {
        # With a headless Service the resolver returns every ready replica; spread over them.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": s} for s in services], "retryPolicy": policy}],
    }
    return json.dumps(config)


def open_channel(
    target: str,
    *,
    services: Sequence[str],
    default_timeout: float = 30.0,
    max_attempts: int = 4,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.aio.Channel:
    """An insecure channel to `target` (`host:port`) with tracing and a retry policy.

    `services` are the full names of the services called on it (their methods get the retry
    policy). A call made without a timeout gets the remaining deadline of the RPC being served,
    capped by `default_timeout`, so no call ever waits forever.
    """
    options = [
        ("grpc.service_config", _service_config(services, max_attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=client_interceptors(default_timeout)
    )
