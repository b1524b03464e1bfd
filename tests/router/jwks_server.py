"""A JWKS endpoint on 127.0.0.1 for the OIDC tests: serves the key set it is given (or any
body), over HTTPS when given a server context, counts the requests it answers and keeps their
`Authorization` headers, and can be told to fail."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["JwksServer", "serving_jwks"]


class JwksServer:
    """What the endpoint serves (`keys`, `body` instead when set, or a 500 while `failing`),
    how often it was asked, and with which `Authorization` headers."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.body: bytes | None = None
        self.failing = False
        self.authorizations: list[str | None] = []
        self._requests = 0
        self._lock = threading.Lock()
        self.url = ""

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def answer(self, authorization: str | None) -> tuple[int, bytes]:
        with self._lock:
            self._requests += 1
            self.authorizations.append(authorization)
            if self.failing:
                return 500, b"issuer down"
            if self.body is not None:
                return 200, self.body
            return 200, json.dumps({"keys": self.keys}).encode()


@contextmanager
def serving_jwks(
    keys: list[dict[str, Any]], tls: ssl.SSLContext | None = None
) -> Iterator[JwksServer]:
    """A running endpoint at `server.url` (https with `tls`), stopped (and its thread joined)
    on the way out."""
    state = JwksServer(keys)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = state.answer(self.headers.get("Authorization"))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read the request count, not stderr."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, name="jwks-server", daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}/openid/v1/jwks"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
