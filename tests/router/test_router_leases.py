"""Router replicas over one PostgreSQL job store: a replica that dies mid-batch leaves its batch
to the others once its lease runs out; a live replica's batches are never taken; and a batch
whose caller or router goes away before it ran is not left behind at all.

Each replica is an `Orchestrator` in this process with its own job store connections and channels to
the suite's real ledger and generator. The generator renders the standard tier on a fake Gemini
API that can hang, so a batch stays running for as long as a test needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from services.ledger.ledger import Ledger
from services.ledger.settings import LedgerSettings
from services.router.assets.store import AssetInfo, AssetRef, LocalAssetStore
from services.router.downstream.grpc_clients import (
    GENERATOR_SERVICE,
    LEDGER_SERVICE,
    UPSCALER_SERVICE,
    GrpcLedger,
    GrpcRenderer,
    GrpcUpscaler,
)
from services.router.downstream.ports import Reservation
from services.router.jobs.migrations import SCHEMA
from services.router.jobs.model import HoldState, JobKind, JobStatus, Lease, NewJob, Owner
from services.router.jobs.sql_store import SqlJobStore
from services.router.operations.events import BatchAccepted
from services.router.operations.limits import OperationLimits
from services.router.operations.orchestrator import Orchestrator
from services.router.routing.catalogue import ImageSize, Stage
from services.router.routing.policy import RouteRequest
from services.router.server import load_policy
from services.router.settings import RouterSettings
from services.runtime.channels import open_channel
from services.runtime.errors import TiergenError
from services.runtime.migrations import upgrade
from tests.generator.fake_providers import FakeGemini, Mode
from tests.postgres import fresh_schema, with_search_path
from tests.router.conftest import MAIN_TENANT
from tests.router.gemini_tiers import standard_on_gemini
from tests.tls import session_pki

pytestmark = pytest.mark.postgres

#: Short, so that a dead replica's batch is free soon; renewed every third of it.
LEASE_SECONDS = 0.5
REQUEST = RouteRequest(prompt="a lighthouse at dawn", tier="standard", size=ImageSize.K1, n=2)


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def generator_env(tmp_path: Path, gemini: FakeGemini) -> dict[str, str]:
    """Overrides the suite's generator settings: the standard tier renders on the fake."""
    return standard_on_gemini(tmp_path, gemini, TIMEOUT_SECONDS="30")


@pytest.fixture
def job_dsn() -> Iterator[str]:
    """A DSN on a fresh schema of the test server, dropped afterwards."""
    with fresh_schema("router_leases", "the router's lease tests") as name:
        upgrade(SCHEMA, with_search_path(name))
        yield with_search_path(name)


class CountingLedger:
    """The real ledger client, recording each capture and release a replica asks for."""

    def __init__(self, ledger: GrpcLedger) -> None:
        self._ledger = ledger
        self.settlements: list[tuple[str, str]] = []

    async def available(self, owner: Owner) -> int:
        return await self._ledger.available(owner)

    async def reserve(
        self, owner: Owner, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> Reservation:
        return await self._ledger.reserve(owner, amount, idempotency_key, memo, ttl_seconds)

    async def capture(self, owner: Owner, hold_id: str, amount: int, idempotency_key: str) -> None:
        self.settlements.append(("capture", hold_id))
        await self._ledger.capture(owner, hold_id, amount, idempotency_key)

    async def release(self, owner: Owner, hold_id: str, idempotency_key: str) -> None:
        self.settlements.append(("release", hold_id))
        await self._ledger.release(owner, hold_id, idempotency_key)


@dataclass
class Replica:
    """One router process, as far as the job store and the other replicas can tell."""

    router: Orchestrator
    jobs: SqlJobStore
    ledger: CountingLedger
    channels: list[grpc.aio.Channel]
    leases: asyncio.Task[None] | None = None
    streams: list[asyncio.Task[list[Any]]] = field(default_factory=list)

    def die(self) -> None:
        """Stops renewing, as a process that died would: nothing it runs is settled by it."""
        assert self.leases is not None
        self.leases.cancel()

    async def start_batch(self, account: Owner, key: str) -> str:
        """Starts a generation, read by a task of its own; returns the batch's id."""
        events = self.router.generate(account, key, REQUEST)
        first = await anext(events)
        assert isinstance(first, BatchAccepted)

        async def read_the_rest() -> list[Any]:
            try:
                return [event async for event in events]
            except TiergenError as error:
                return [error]

        self.streams.append(asyncio.create_task(read_the_rest()))
        return first.record.batch.batch_id

    async def close(self) -> None:
        if self.leases is not None:
            self.leases.cancel()
        await self.router.close()
        await asyncio.gather(*self.streams, return_exceptions=True)
        await self.jobs.close()
        for channel in self.channels:
            await channel.close()


@pytest.fixture
async def replicas(
    suite: Any, job_dsn: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Replica]]]:
    """Starts replicas over the suite's ledger and generator and one job store; closes them."""
    started: list[Replica] = []
    policy = load_policy(RouterSettings.from_env({}))

    async def start(*, keep_leases: bool = False) -> Replica:
        addresses = suite.addresses
        security = session_pki().security("router")
        channels = [
            open_channel(addresses[name], security=security, services=[service], default_timeout=t)
            for name, service, t in (
                ("ledger", LEDGER_SERVICE, 30),
                ("generator", GENERATOR_SERVICE, 60),
                ("upscaler", UPSCALER_SERVICE, 60),
            )
        ]
        jobs = await SqlJobStore.open_postgres(job_dsn, pool_size=4)
        ledger = CountingLedger(GrpcLedger(channels[0], timeout=30))
        renderer = GrpcRenderer(channels[1], 60, 64 << 20)
        router = Orchestrator(
            jobs=jobs,
            assets=LocalAssetStore(tmp_path / "assets"),
            ledger=ledger,
            renderer=renderer,
            upscaler=GrpcUpscaler(channels[2], 60, 64 << 20),
            # Each replica routes to the tiers the generator reports, as a started router does.
            policy=policy.with_catalogue(await renderer.tiers()),
            limits=OperationLimits(lease_seconds=LEASE_SECONDS, progress_interval_seconds=0),
        )
        replica = Replica(router, jobs, ledger, channels)
        if keep_leases:
            replica.leases = asyncio.create_task(router.keep_leases())
        started.append(replica)
        return replica

    yield start
    for replica in reversed(started):
        await replica.close()


async def opened(suite: Any) -> Owner:
    """A new account of the suite's tenant, opened through the router."""
    return Owner(MAIN_TENANT, await suite.open_account())


async def until(check: Callable[[], Awaitable[bool]], *, give_up: float = 20.0) -> None:
    """Waits, a few polls a lease, for `check` to hold; fails if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    while not await check():
        assert loop.time() < deadline, "gave up waiting"
        await asyncio.sleep(LEASE_SECONDS / 10)


async def ledger_checks(suite: Any) -> list[str]:
    """The names of the ledger invariants that fail."""
    ledger = await Ledger.open(LedgerSettings(dsn=f"sqlite:///{suite.data_dir / 'ledger.db'}"))
    try:
        checks = await ledger.verify(sweep=False)
    finally:
        await ledger.close()
    return [check.name for check in checks if not check.ok]


async def test_a_dead_replicas_batch_is_recovered_by_another(suite, replicas, gemini) -> None:
    account = await opened(suite)
    a = await replicas(keep_leases=True)
    gemini.fail(Mode.HANG)
    batch_id = await a.start_batch(account, "doomed")

    async def rendering() -> bool:
        return gemini.hits >= 1

    await until(rendering)
    assert (await suite.balance(account.account_id)).held > 0
    a.die()

    b = await replicas()
    recovered = 0
    recovered_before = REGISTRY.get_sample_value("tiergen_router_batches_recovered_total") or 0

    async def claimed() -> bool:
        nonlocal recovered
        recovered += await b.router.recover()
        return recovered > 0

    await until(claimed)
    assert recovered == 1
    recovered_after = REGISTRY.get_sample_value("tiergen_router_batches_recovered_total")
    assert recovered_after == recovered_before + 1
    record = await b.jobs.batch(account, batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.FAILED}
    assert {(job.error.code, job.error.reason) for job in record.jobs if job.error} == {
        ("ABORTED", "ROUTER_LOST")
    }
    assert record.batch.hold_state is HoldState.RELEASED
    assert b.ledger.settlements == [("release", record.batch.hold_id)]
    balance = await suite.balance(account.account_id)
    assert (balance.available, balance.held) == (400, 0)

    # Had the replica only stalled, what it finishes later changes nothing.
    gemini.reset()
    await asyncio.gather(*a.streams)
    after = await b.jobs.batch(account, batch_id)
    assert after.jobs == record.jobs and after.batch == record.batch
    balance = await suite.balance(account.account_id)
    assert (balance.available, balance.held) == (400, 0)
    assert await ledger_checks(suite) == []


async def test_a_caller_leaving_at_the_first_event_leaves_nothing_behind(suite, replicas) -> None:
    account = await opened(suite)
    a = await replicas(keep_leases=True)
    events = a.router.generate(account, "gone", REQUEST)
    first = await anext(events)
    assert isinstance(first, BatchAccepted)
    assert (await suite.balance(account.account_id)).held > 0

    await events.aclose()

    record = await a.jobs.batch(account, first.record.batch.batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.CANCELLED}
    assert record.batch.hold_state is HoldState.RELEASED
    balance = await suite.balance(account.account_id)
    assert (balance.available, balance.held) == (400, 0)


async def test_a_router_closing_before_a_batch_ran_ends_its_stream_and_returns_all(
    suite, replicas
) -> None:
    account = await opened(suite)
    a = await replicas(keep_leases=True)
    events = a.router.generate(account, "closing", REQUEST)
    first = await anext(events)
    assert isinstance(first, BatchAccepted)

    # Before the batch's task has run a step: it is cancelled without ever starting.
    await a.router.close()

    assert [event async for event in events] == []
    record = await a.jobs.batch(account, first.record.batch.batch_id)
    assert {job.status for job in record.jobs} == {JobStatus.CANCELLED}
    assert record.batch.hold_state is HoldState.RELEASED
    assert (await suite.balance(account.account_id)).held == 0


async def test_a_live_replicas_batch_is_never_claimed(suite, replicas, gemini) -> None:
    account = await opened(suite)
    a = await replicas(keep_leases=True)
    gemini.fail(Mode.HANG)
    batch_id = await a.start_batch(account, "long")

    async def rendering() -> bool:
        return gemini.hits >= 1

    await until(rendering)
    b = await replicas()
    # Four leases long: without renewals the batch would have been free three times over.
    for _ in range(8):
        assert await b.router.recover() == 0
        await asyncio.sleep(LEASE_SECONDS / 2)

    gemini.reset()
    await asyncio.gather(*a.streams)
    record = await a.jobs.batch(account, batch_id)
    assert all(job.status.is_final for job in record.jobs)
    assert not [job for job in record.jobs if job.error and job.error.reason == "ROUTER_LOST"]
    assert record.batch.hold_state is not HoldState.OPEN
    assert b.ledger.settlements == []
    assert (await suite.balance(account.account_id)).held == 0


async def test_replicas_recovering_at_once_settle_each_batch_once(suite, replicas) -> None:
    account = await opened(suite)
    dead = await replicas()
    # Batches as a replica that died left them: held, recorded under its lease, one with an
    # image delivered before it died.
    holds = []
    for index in range(6):
        hold_id = (await dead.ledger.reserve(account, 4, f"hold-{index}", "abandoned", 900)).hold_id
        record = await dead.jobs.create_batch(
            owner=account,
            idempotency_key=f"batch-{index}",
            fingerprint="fp",
            jobs=[
                NewJob(
                    kind=JobKind.GENERATE,
                    prompt="a lighthouse",
                    seed=variation,
                    width=1024,
                    height=1024,
                    quoted_cost=2,
                    tier="nano",
                    stage=Stage.EXPLORE,
                    size=ImageSize.K1,
                    variation=variation,
                )
                for variation in range(2)
            ],
            hold_id=hold_id,
            lease=Lease("dead-replica", LEASE_SECONDS),
        )
        if index == 0:
            delivered = record.jobs[0]
            await dead.jobs.mark_running(delivered.job_id)
            asset = AssetRef("ab" * 32, AssetInfo(1024, 1024, "image/png", 100))
            await dead.jobs.mark_succeeded(delivered.job_id, asset, 2)
        holds.append(hold_id)

    b, c = await replicas(), await replicas()
    recovered = 0

    async def all_claimed() -> bool:
        nonlocal recovered
        recovered += sum(await asyncio.gather(b.router.recover(), c.router.recover()))
        return recovered >= len(holds)

    await until(all_claimed)
    assert recovered == len(holds)
    settlements = b.ledger.settlements + c.ledger.settlements
    assert sorted(settlements) == sorted(
        [("capture", holds[0])] + [("release", hold_id) for hold_id in holds[1:]]
    )
    balance = await suite.balance(account.account_id)
    assert (balance.available, balance.held) == (398, 0)
    assert await ledger_checks(suite) == []
