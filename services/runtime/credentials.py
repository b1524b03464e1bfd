"""The credential a client sends on every call: `authorization: Bearer <token>` metadata.

The router refuses every RouterService call without one (health and reflection stay open). A
channel made with `bearer_interceptors(token)`, or `open_channel(..., token=token)`, sends it on
every call of every shape, so no call site can forget it:

    channel = grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token))

The token is held by `BearerToken`, whose repr and str name it without revealing it (an API
key's non-secret prefix, `tgk_3f9a2c1d`), so a token in a log line, an exception or a test's
assertion message shows nothing an onlooker could use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc

__all__ = ["API_KEY_PATTERN", "AUTHORIZATION", "BearerToken", "bearer_interceptors"]

#: The metadata key of the credential (gRPC metadata keys are lowercase).
AUTHORIZATION = "authorization"
#: An API key: `tgk_`, 8 hex digits (with it, the prefix that names the key), `_`, the secret.
API_KEY_PATTERN = re.compile(r"(tgk_[0-9a-f]{8})_[A-Za-z0-9_-]+")
#: Longest token sent; the router refuses longer ones without looking at them.
MAX_TOKEN_CHARS = 8192


class BearerToken:
    """An API key or an OIDC token, to send as `authorization: Bearer <token>`.

    Its repr and str show `label` only; `secret` is the one way to the token itself.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        """ValueError, which never quotes the token, unless `secret` (surrounding blanks and
        line ends ignored, as in a key file) is one token of printable ASCII characters."""
        secret = secret.strip()
        if not secret:
            raise ValueError("the API key is empty")
        if len(secret) > MAX_TOKEN_CHARS:
            raise ValueError(f"the API key is longer than {MAX_TOKEN_CHARS} characters")
        if not secret.isascii() or not secret.isprintable() or any(c.isspace() for c in secret):
            raise ValueError("the API key holds blanks or characters no key has")
        self._secret = secret

    @classmethod
    def from_file(cls, path: Path) -> BearerToken:
        """The token in the file at `path`; OSError when it cannot be read, ValueError when
        what it holds is no token."""
        return cls(path.read_text(encoding="ascii", errors="replace"))

    @property
    def secret(self) -> str:
        """The token itself. Send it; never print or log it."""
        return self._secret

    @property
    def label(self) -> str:
        """A name for the token that reveals nothing: an API key's prefix, else "token"."""
        match = API_KEY_PATTERN.fullmatch(self._secret)
        return match.group(1) if match else "token"

    @property
    def metadata(self) -> tuple[str, str]:
        """The metadata entry that carries it."""
        return (AUTHORIZATION, f"Bearer {self._secret}")

    def __repr__(self) -> str:
        return f"BearerToken({self.label})"

    __str__ = __repr__


class _Bearer:
    """Adds the token to a call's metadata, keeping every entry the call already has.

    A call that carries an `authorization` entry of its own keeps it, so one channel can also
    make a call as another caller (a test of a revoked key, an admin command).
    """

    def __init__(self, token: BearerToken) -> None:
        self._entry = token.metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if metadata.get(AUTHORIZATION) is None:
            metadata.add(*self._entry)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnaryBearer(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamBearer(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def bearer_interceptors(token: BearerToken | str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that send `token` on every call of a grpc.aio channel, one per call shape.

    A grpc.aio channel files each interceptor under the first interface it implements, so one
    object implementing all four would only ever see unary-unary calls.
    """
    bearer = token if isinstance(token, BearerToken) else BearerToken(token)
    return [
        _UnaryUnaryBearer(bearer),
        _UnaryStreamBearer(bearer),
        _StreamUnaryBearer(bearer),
        _StreamStreamBearer(bearer),
    ]
