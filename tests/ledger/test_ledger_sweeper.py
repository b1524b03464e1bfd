"""The background sweeper says what it did: holds it returned, and rounds it had to skip."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
import structlog

from services.ledger.ledger import Ledger
from tests.ledger.conftest import TENANT


class Rounds:
    """Counts the sweeper's rounds (its calls of `sweep_expired`, which returns or raises
    before the round's line is logged) and lets a test wait for them instead of for time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ended = 0
        self._ended = asyncio.Event()
        sweep = ledger.sweep_expired

        async def counted(now: datetime | None = None) -> int:
            try:
                return await sweep(now)
            finally:
                self.ended += 1
                self._ended.set()

        ledger.sweep_expired = counted  # type: ignore[method-assign]

    async def wait(self, count: int, sweeper: asyncio.Task[None]) -> None:
        """Returns once `count` rounds have ended; fails as soon as the sweeper stops (and after
        5 s without the rounds)."""
        async with asyncio.timeout(5):
            while self.ended < count:
                self._ended.clear()
                ended = asyncio.ensure_future(self._ended.wait())
                await asyncio.wait({ended, sweeper}, return_when=asyncio.FIRST_COMPLETED)
                ended.cancel()
                if sweeper.done():
                    pytest.fail(f"the sweeper stopped after {self.ended} rounds: {sweeper!r}")


@contextlib.asynccontextmanager
async def sweeping(ledger: Ledger) -> AsyncIterator[asyncio.Task[None]]:
    sweeper = asyncio.create_task(ledger.run_sweeper())
    try:
        yield sweeper
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def test_the_sweeper_logs_the_holds_it_returned(harness, clock):
    ledger = await harness.open(sweep_interval_seconds=0.01)
    await ledger.open_account(TENANT, "alice", "open")
    for n in range(3):
        await ledger.reserve(TENANT, "alice", 10, f"job-{n}", ttl_seconds=30)
    clock.advance(minutes=1)
    rounds = Rounds(ledger)

    with structlog.testing.capture_logs() as logs:
        async with sweeping(ledger) as sweeper:
            # The round that returns the holds, then two with nothing left to return.
            await rounds.wait(3, sweeper)

    assert logs == [{"event": "expired holds returned", "holds": 3, "log_level": "info"}]


async def test_a_skipped_sweep_is_a_warning_and_the_sweeper_keeps_going(harness):
    ledger = await harness.open(sweep_interval_seconds=0.01)
    await ledger.close()
    rounds = Rounds(ledger)

    with structlog.testing.capture_logs() as logs:
        async with sweeping(ledger) as sweeper:
            await rounds.wait(2, sweeper)

    warnings = [line for line in logs if line["log_level"] == "warning"]
    assert len(warnings) >= 2 and len(warnings) == len(logs) == rounds.ended
    for warning in warnings:
        assert warning["event"] == "expiry sweep skipped"
        assert warning["code"] == "UNAVAILABLE"
        assert "closed" in warning["error"]
        assert warning["next_sweep_in_seconds"] == 0.01
