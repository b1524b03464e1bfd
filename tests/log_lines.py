"""The servers' `rpc` log lines, awaited: a server writes a call's line as the call ends, which
may be just after its caller has the answer, so a test waits for the lines, not for a time."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping, Sequence
from typing import Any

__all__ = ["rpc_lines"]


async def rpc_lines(
    logs: Sequence[MutableMapping[str, Any]], count: int, *, seconds: float = 5.0
) -> list[MutableMapping[str, Any]]:
    """The `rpc` lines captured in `logs`, once there are `count` of them (or `seconds` on,
    whatever there are then, for the test's assertion to show)."""
    for _ in range(int(seconds / 0.01)):
        lines = [entry for entry in logs if entry["event"] == "rpc"]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.01)
    return [entry for entry in logs if entry["event"] == "rpc"]
