"""Settling a batch its caller left after some images were delivered: charged for exactly the
delivered images, from the stored final states, nothing left held. On both job stores, with
the router's domain over in-memory stand-ins for the ledger and the generator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.router.assets.store import LocalAssetStore
from services.router.jobs.migrations import SCHEMA
from services.router.jobs.model import JobStatus, Owner
from services.router.jobs.sql_store import SqlJobStore
from services.router.jobs.store import JobStore
from services.router.operations.events import JobFinished
from services.router.operations.limits import OperationLimits
from services.router.operations.orchestrator import Orchestrator
from services.router.routing.catalogue import ImageSize
from services.router.routing.policy import RouteRequest, RoutingPolicy
from services.router.routing.pricing import PriceTable
from services.runtime.migrations import upgrade
from tests.postgres import fresh_schema, with_search_path
from tests.router.fakes import MemoryLedger, PictureRenderer, PictureUpscaler
from tests.router.generator_tiers import reported_tiers

#: Three standard 1K images at 6 credits, rendered one at a time.
REQUEST = RouteRequest(prompt="a harbour at dawn", tier="standard", size=ImageSize.K1, n=3)
UNIT_COST = 6


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def job_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "jobs.db")
        return
    with fresh_schema("router_settlement", "the router's settlement tests") as schema:
        upgrade(SCHEMA, with_search_path(schema))
        yield with_search_path(schema)


@pytest.fixture
async def jobs(job_dsn: str) -> AsyncIterator[JobStore]:
    store: JobStore
    if job_dsn.startswith("postgresql"):
        store = await SqlJobStore.open_postgres(job_dsn)
    else:
        store = await SqlJobStore.open_sqlite(Path(job_dsn))
    yield store
    await store.close()


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def renderer() -> PictureRenderer:
    # The first image renders at once; the next ones wait until the test opens the gate.
    return PictureRenderer(gate=asyncio.Event(), ungated=1)


@pytest.fixture
def router(
    jobs: JobStore, ledger: MemoryLedger, renderer: PictureRenderer, tmp_path: Path
) -> Orchestrator:
    return Orchestrator(
        jobs=jobs,
        assets=LocalAssetStore(tmp_path / "assets"),
        ledger=ledger,
        renderer=renderer,
        upscaler=PictureUpscaler(),
        policy=RoutingPolicy.load(prices=PriceTable.load(), catalogue=reported_tiers()),
        limits=OperationLimits(parallel_jobs=1, progress_interval_seconds=0),
    )


async def first_delivery(events: AsyncIterator[object]) -> str:
    """Reads events until the first delivered image; returns its batch's id."""
    async for event in events:
        if isinstance(event, JobFinished) and event.job.status is JobStatus.SUCCEEDED:
            return event.job.batch_id
    raise AssertionError("the batch delivered nothing")


async def assert_charged_for_one(
    router: Orchestrator, jobs: JobStore, ledger: MemoryLedger, account: Owner, batch_id: str
) -> None:
    record = await jobs.batch(account, batch_id)
    statuses = sorted(job.status.value for job in record.jobs)
    assert statuses == ["cancelled", "cancelled", "succeeded"], statuses
    assert ledger.accounts[account] == 400 - UNIT_COST
    assert ledger.held(account) == 0
    assert record.batch.captured == UNIT_COST


async def test_a_caller_gone_after_the_first_image_pays_for_that_image_only(
    router, jobs, ledger, renderer
):
    account = ledger.open("acct-gone")
    events = router.generate(account, "key-1", REQUEST, seed=1)
    batch_id = await first_delivery(events)
    await renderer.entered.get()  # the second image is rendering
    await events.aclose()  # the caller disconnects
    await assert_charged_for_one(router, jobs, ledger, account, batch_id)


async def test_a_batch_cancelled_after_the_first_image_pays_for_that_image_only(
    router, jobs, ledger, renderer
):
    account = ledger.open("acct-cancel")
    events = router.generate(account, "key-2", REQUEST, seed=1)
    batch_id = await first_delivery(events)
    await renderer.entered.get()
    await router.cancel(account, batch_id=batch_id)
    rest = [event async for event in events]
    finished = [event.job.status for event in rest if isinstance(event, JobFinished)]
    assert finished == [JobStatus.CANCELLED, JobStatus.CANCELLED]
    await assert_charged_for_one(router, jobs, ledger, account, batch_id)
