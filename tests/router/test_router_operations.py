"""Operating the router: readiness follows the ledger, and the policy reloads without a restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiergen.router.v1 import router_pb2

from services.router.routing.pricing import DEFAULT_PRICES_TOML
from services.runtime.status import from_rpc_error
from tests.tls import session_pki

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def router_env(tmp_path: Path) -> dict[str, str]:
    prices = tmp_path / "prices.toml"
    prices.write_text(DEFAULT_PRICES_TOML)
    return {
        "TIERGEN_ROUTER_PRICES_FILE": str(prices),
        "TIERGEN_ROUTER_RELOAD_INTERVAL_SECONDS": "0.1",
        "TIERGEN_ROUTER_BREAKER_THRESHOLD": "2",
        "TIERGEN_ROUTER_BREAKER_COOLDOWN_SECONDS": "60",
    }


async def _eventually(check, seconds: float = 15.0):
    for _ in range(int(seconds / 0.1)):
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_readiness_is_not_serving_while_the_ledger_is_down(suite):
    async with session_pki().channel(suite.addresses["router"], None) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(service: str) -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            return reply.status

        assert await status("tiergen.router.v1.RouterService") == SERVING
        await suite.servers["ledger"].stop(0)

        async def readiness_down() -> bool:
            return await status("tiergen.router.v1.RouterService") == NOT_SERVING

        await _eventually(readiness_down)
        assert await status("") == SERVING  # liveness: restarting would not bring it back


class LoggedEvents:
    """A log processor that sets an event when a line is logged, so that a test waits for what
    the server did rather than for time."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def __call__(self, logger: Any, method: str, line: dict[str, Any]) -> dict[str, Any]:
        if (event := self._events.get(line["event"])) is not None:
            event.set()
        return line

    async def logged(self, event: str) -> None:
        """Waits for a line with this event (fails after 15 s without it)."""
        async with asyncio.timeout(15):
            await self._events.setdefault(event, asyncio.Event()).wait()


def rewrite(path: Path, text: str) -> None:
    """Writes `text` and moves the file's modification time on by a second, so that the
    reloader sees a change even where the file system's clock is coarse."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    stamp = max(path.stat().st_mtime_ns, before + 1_000_000_000)
    os.utime(path, ns=(stamp, stamp))


async def test_price_changes_apply_without_a_restart_and_a_bad_file_is_ignored(suite, tmp_path):
    account = await suite.open_account()
    request = router_pb2.QuoteRequest(
        account_id=account, spec=router_pb2.GenerationSpec(prompt="a fox", tier="nano")
    )
    assert (await suite.router.Quote(request)).decision.unit_cost == 2
    prices = tmp_path / "prices.toml"
    repriced_table = DEFAULT_PRICES_TOML.replace(
        '[generate.nano]\n"1K" = 2', '[generate.nano]\n"1K" = 3'
    )
    assert repriced_table != DEFAULT_PRICES_TOML
    events = LoggedEvents()

    with structlog.testing.capture_logs(processors=[events]) as logs:
        rewrite(prices, repriced_table)
        await events.logged("policy reloaded")
        assert (await suite.router.Quote(request)).decision.unit_cost == 3

        rewrite(prices, '[generate.nano]\n"1K" = -5\n')
        # The reloader read the bad file, and kept the policy it had.
        await events.logged("policy reload failed; the previous policy stays")
        assert (await suite.router.Quote(request)).decision.unit_cost == 3

    (failure, *_) = [line for line in logs if line["log_level"] == "error"]
    assert str(prices) in failure["error"] and "-5" in failure["error"]


async def test_a_failing_backend_opens_its_circuit_and_later_calls_fail_fast(suite):
    account = await suite.open_account()
    await suite.servers["generator"].stop(0)
    spec = router_pb2.GenerationSpec(prompt="a fox", tier="nano")
    reasons = []
    for index in range(3):
        request = router_pb2.GenerateRequest(
            account_id=account, idempotency_key=f"breaker-{index}", spec=spec
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in suite.router.Generate(request):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        reasons.append(from_rpc_error(caught.value).reason)
    assert reasons[-1] == "CIRCUIT_OPEN"
    assert "CIRCUIT_OPEN" not in reasons[:2]
    balance = await suite.balance(account)
    assert (balance.available, balance.held) == (400, 0)
