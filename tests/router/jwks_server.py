"""A JWKS endpoint on 127.0.0.1 for the OIDC tests: serves the key set it is given, counts the
requests it answers, and can be told to fail."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["JwksServer", "serving_jwks"]


class JwksServer:
    """What the endpoint serves (`keys`, or a 500 while `failing`) and how often it was asked."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.failing = False
        self._requests = 0
        self._lock = threading.Lock()
        self.url = ""

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def answer(self) -> tuple[int, bytes]:
        with self._lock:
            self._requests += 1
            if self.failing:
                return 500, b"issuer down"
            return 200, json.dumps({"keys": self.keys}).encode()


@contextmanager
def serving_jwks(keys: list[dict[str, Any]]) -> Iterator[JwksServer]:
    """A running endpoint at `server.url`, stopped (and its thread joined) on the way out."""
    state = JwksServer(keys)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = state.answer()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read the request count, not stderr."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="jwks-server", daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/openid/v1/jwks"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
