"""A webhook receiver for the router benchmark: `python -m bench.webhook_receiver`.

Serves HTTPS on loopback (TIERGEN_TLS_CERT_FILE and TIERGEN_TLS_KEY_FILE; plaintext without
them), writes its base URL to TIERGEN_READY_FILE, answers every POST 204 at once, and measures
how long each event took from its moment (a job event's `finish_time`, any other's `timestamp`)
to its arrival here, on the machine's one clock. `GET /stats` answers those figures as JSON,
by event type; `GET /stats?reset` also starts them afresh. It is kept as small as a receiver
can be, so that the CPU it takes from the shared machine is mostly HTTP and TLS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import uvloop

__all__ = ["main"]


class _Figures:
    """Arrival delays by event type, in milliseconds."""

    def __init__(self) -> None:
        self.delays: dict[str, list[float]] = {}
        self.ids: set[str] = set()
        self.duplicates = 0

    def reset(self) -> None:
        self.delays.clear()
        self.ids.clear()
        self.duplicates = 0

    def add(self, message_id: str, body: bytes, arrived: float) -> None:
        if message_id in self.ids:
            self.duplicates += 1
            return
        self.ids.add(message_id)
        event = orjson.loads(body)
        moment = event["data"].get("finish_time") or event["timestamp"]
        happened = datetime.fromisoformat(moment).timestamp()
        self.delays.setdefault(event["type"], []).append((arrived - happened) * 1000)

    def document(self) -> dict[str, Any]:
        by_type = {}
        for event_type, delays in sorted(self.delays.items()):
            ordered = sorted(delays)
            by_type[event_type] = {
                "count": len(ordered),
                "p50_ms": round(statistics.median(ordered), 3),
                "p99_ms": round(
                    ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3
                ),
                "max_ms": round(ordered[-1], 3),
            }
        return {"events": by_type, "duplicates": self.duplicates}


async def _serve(
    figures: _Figures, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            message_id = ""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"webhook-id":
                    message_id = value.strip().decode()
            body = await reader.readexactly(length) if length else b""
            arrived = time.time()
            if head.startswith(b"GET /stats"):
                answer = orjson.dumps(figures.document())
                if b"reset" in head.split(b"\r\n", 1)[0]:
                    figures.reset()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d"
                    b"\r\n\r\n%s" % (len(answer), answer)
                )
                continue
            writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            figures.add(message_id, body, arrived)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _main() -> None:
    certificate = os.environ.get("TIERGEN_TLS_CERT_FILE")
    key = os.environ.get("TIERGEN_TLS_KEY_FILE")
    context = None
    if certificate and key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
    figures = _Figures()
    server = await asyncio.start_server(
        lambda reader, writer: _serve(figures, reader, writer),
        os.environ.get("TIERGEN_HOST", "127.0.0.1"),
        int(os.environ.get("TIERGEN_PORT", "0")),
        ssl=context,
    )
    host, port = server.sockets[0].getsockname()[:2]
    ready = os.environ.get("TIERGEN_READY_FILE")
    if ready:
        address = f"{'https' if context else 'http'}://{host}:{port}"
        await asyncio.to_thread(Path(ready).write_text, address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    uvloop.run(_main())


if __name__ == "__main__":
    main()
