"""The background sweeper says what it did: holds it returned, and rounds it had to skip."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog

from services.ledger.ledger import Ledger


@contextlib.asynccontextmanager
async def sweeping(ledger: Ledger) -> AsyncIterator[None]:
    sweeper = asyncio.create_task(ledger.run_sweeper())
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def logged(
    logs: list[dict[str, Any]], wanted: Callable[[dict[str, Any]], bool], count: int = 1
) -> list[dict[str, Any]]:
    """The first `count` captured lines `wanted` picks, waiting for them to be logged."""
    for _ in range(500):
        found = [line for line in logs if wanted(line)]
        if len(found) >= count:
            return found[:count]
        await asyncio.sleep(0.01)
    pytest.fail(f"not logged; the sweeper logged {logs}")


async def test_the_sweeper_logs_the_holds_it_returned(harness, clock):
    ledger = await harness.open(sweep_interval_seconds=0.01)
    await ledger.open_account("alice", "open")
    for n in range(3):
        await ledger.reserve("alice", 10, f"job-{n}", ttl_seconds=30)
    clock.advance(minutes=1)

    with structlog.testing.capture_logs() as logs:
        async with sweeping(ledger):
            (line,) = await logged(logs, lambda line: line["event"] == "expired holds returned")
            # Quiet once there is nothing left to return.
            await asyncio.sleep(0.1)

    assert line == {"event": "expired holds returned", "holds": 3, "log_level": "info"}
    assert [entry["event"] for entry in logs] == ["expired holds returned"]


async def test_a_skipped_sweep_is_a_warning_and_the_sweeper_keeps_going(harness):
    ledger = await harness.open(sweep_interval_seconds=0.01)
    await ledger.close()

    with structlog.testing.capture_logs() as logs:
        async with sweeping(ledger):
            warnings = await logged(logs, lambda line: line["log_level"] == "warning", count=2)

    for warning in warnings:
        assert warning["event"] == "expiry sweep skipped"
        assert warning["code"] == "UNAVAILABLE"
        assert "closed" in warning["error"]
        assert warning["next_sweep_in_seconds"] == 0.01
