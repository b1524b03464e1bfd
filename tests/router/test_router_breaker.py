"""Circuit breakers: open after repeated backend failures, fail fast, try again after a pause."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from tiergen.router.v1 import router_pb2

from services.router.downstream.breaker import CircuitBreaker
from services.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.runtime.status import from_rpc_error
from tests.rich_errors import details


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _fail(error: Exception) -> None:
    raise error


async def _succeed() -> str:
    return "image"


async def test_opens_after_the_threshold_and_fails_fast():
    clock = Clock()
    breaker = CircuitBreaker("generator/pro", threshold=3, cooldown_seconds=10, clock=clock)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await breaker.call(lambda: _fail(Unavailable("down")))
    assert breaker.state == "open"
    calls = []

    async def counted() -> str:
        calls.append(1)
        return "image"

    with pytest.raises(Unavailable) as caught:
        await breaker.call(counted)
    assert caught.value.reason == "CIRCUIT_OPEN"
    assert caught.value.retry_after == pytest.approx(10)
    assert calls == []


async def test_half_open_trial_closes_on_success_and_reopens_on_failure():
    clock = Clock()
    breaker = CircuitBreaker("upscaler", threshold=1, cooldown_seconds=5, clock=clock)
    with pytest.raises(Unavailable):
        await breaker.call(lambda: _fail(Unavailable("down")))
    clock.now += 5
    assert breaker.state == "half-open"
    with pytest.raises(Unavailable):
        await breaker.call(lambda: _fail(Unavailable("still down")))
    assert breaker.state == "open"
    clock.now += 5
    assert await breaker.call(_succeed) == "image"
    assert breaker.state == "closed"


async def test_request_errors_and_overload_do_not_trip_it():
    breaker = CircuitBreaker("generator/nano", threshold=1, clock=Clock())
    with pytest.raises(InvalidArgument):
        await breaker.call(lambda: _fail(InvalidArgument("bad prompt")))
    with pytest.raises(ResourceExhausted):
        await breaker.call(lambda: _fail(ResourceExhausted("queue full", retry_after=1)))
    assert breaker.state == "closed"


async def test_a_success_resets_the_count():
    breaker = CircuitBreaker("generator/standard", threshold=2, clock=Clock())
    with pytest.raises(Unavailable):
        await breaker.call(lambda: _fail(Unavailable("blip")))
    await breaker.call(_succeed)
    with pytest.raises(Unavailable):
        await breaker.call(lambda: _fail(Unavailable("blip")))
    assert breaker.state == "closed"


async def test_the_router_stops_calling_a_ledger_that_is_down(suite):
    """The account calls a caller makes through the router go through the ledger's breaker."""
    account = await suite.open_account()
    await suite.servers["ledger"].stop(0)
    reasons = []
    for _ in range(6):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await suite.router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        reasons.append(from_rpc_error(caught.value).reason)
    # The default threshold is 5 failures in a row; the next call is not sent at all.
    assert reasons[-1] == "CIRCUIT_OPEN", reasons
    assert details(caught.value)[error_details_pb2.RetryInfo].retry_delay.ToNanoseconds() > 0
