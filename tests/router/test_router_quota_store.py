"""The quota limiter's state on SQLite and PostgreSQL: each rate admits its burst and then its
exact rate, a call is admitted on all its quotas or on none, concurrent jobs are counted from
the job table, and on PostgreSQL many connections drawing at once admit exactly what one would.

Every test sets the clock by hand (`now_us`): what is asserted is counted, never timed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.router.jobs.migrations import SCHEMA
from services.router.jobs.model import JobKind, NewJob, Owner
from services.router.jobs.sql_store import SqlJobStore
from services.router.quotas.rates import SECOND_US, Draw, Rate
from services.router.quotas.store import JobsAsk, QuotaAsk, SqlQuotaStore
from services.router.routing.catalogue import ImageSize
from services.runtime.migrations import upgrade
from tests.postgres import Schemas, require_postgres, with_search_path

ALICE = Owner("acme", "alice")
BOB = Owner("acme", "bob")
CAROL_AT_GLOBEX = Owner("globex", "alice")
T0 = 1_800_000_000 * SECOND_US
PER_SECOND_5 = Rate(5, SECOND_US)
PER_MINUTE_60 = Rate(60, 60 * SECOND_US)


@pytest.fixture(scope="module")
def postgres_schemas() -> Iterator[Schemas]:
    schemas = Schemas(require_postgres("the quota store tests"), "router_quotas")
    yield schemas
    schemas.drop_all()


@dataclass
class Stores:
    jobs: SqlJobStore
    quotas: SqlQuotaStore
    dsn: str | None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    dsn = None
    if request.param == "sqlite":
        jobs = await SqlJobStore.open_sqlite(tmp_path / "router.db")
    else:
        dsn = with_search_path(request.getfixturevalue("postgres_schemas").create())
        upgrade(SCHEMA, dsn)
        jobs = await SqlJobStore.open_postgres(dsn, pool_size=2)
    try:
        yield Stores(jobs, SqlQuotaStore(jobs.database), dsn)
    finally:
        await jobs.close()


def draw(quota: str, rate: Rate, cost: int = 1, owner: Owner = ALICE) -> Draw:
    return Draw(f"account:{owner.tenant}/{owner.account_id}:{quota}", rate, cost)


async def admitted_of(store: SqlQuotaStore, ask: QuotaAsk, now_us: int, calls: int) -> int:
    return sum([(await store.take(ask, now_us)).admitted for _ in range(calls)])


class TestRates:
    async def test_a_burst_then_one_per_emission_interval(self, stores: Stores) -> None:
        ask = QuotaAsk(ALICE, [draw("rps", PER_SECOND_5)])
        assert await admitted_of(stores.quotas, ask, T0, 8) == 5
        # One more every 0.2 s, and not a microsecond before.
        assert not (await stores.quotas.take(ask, T0 + 200_000 - 1)).admitted
        assert (await stores.quotas.take(ask, T0 + 200_000)).admitted
        assert not (await stores.quotas.take(ask, T0 + 200_000)).admitted
        # Idle for long: the burst again, never more.
        assert await admitted_of(stores.quotas, ask, T0 + 60 * SECOND_US, 9) == 5

    async def test_a_refusal_tells_where_the_subject_stands(self, stores: Stores) -> None:
        ask = QuotaAsk(ALICE, [draw("rps", PER_SECOND_5)])
        await admitted_of(stores.quotas, ask, T0, 5)
        verdict = await stores.quotas.take(ask, T0 + 50_000)
        assert not verdict.admitted
        assert verdict.bases_us == {ask.draws[0].subject: T0 + SECOND_US}

    async def test_images_cost_their_number(self, stores: Stores) -> None:
        images = QuotaAsk(ALICE, [draw("ipm", PER_MINUTE_60, cost=25)])
        assert await admitted_of(stores.quotas, images, T0, 3) == 2  # 50 of 60
        ten = QuotaAsk(ALICE, [draw("ipm", PER_MINUTE_60, cost=10)])
        assert (await stores.quotas.take(ten, T0)).admitted
        assert not (await stores.quotas.take(ten, T0)).admitted

    async def test_a_call_larger_than_the_burst_runs_from_idle_only(self, stores: Stores) -> None:
        wide = QuotaAsk(ALICE, [draw("ipm", PER_MINUTE_60, cost=64)])
        one = QuotaAsk(ALICE, [draw("ipm", PER_MINUTE_60, cost=1)])
        assert (await stores.quotas.take(one, T0)).admitted
        assert not (await stores.quotas.take(wide, T0 + SECOND_US // 2)).admitted
        assert (await stores.quotas.take(wide, T0 + SECOND_US)).admitted
        # It used 64 seconds of the rate: nothing fits until 4 s before it is idle again.
        assert not (await stores.quotas.take(one, T0 + 4 * SECOND_US)).admitted
        assert (await stores.quotas.take(one, T0 + 6 * SECOND_US)).admitted

    async def test_all_or_nothing(self, stores: Stores) -> None:
        tenant = Draw("tenant:acme:requests_per_second", Rate(2, SECOND_US), 1)
        alice = draw("rps", PER_SECOND_5)
        bob = draw("rps", PER_SECOND_5, owner=BOB)
        assert await admitted_of(stores.quotas, QuotaAsk(ALICE, [tenant, alice]), T0, 2) == 2
        # The tenant's quota refuses: Alice's own is left as it was.
        assert not (await stores.quotas.take(QuotaAsk(BOB, [tenant, bob]), T0)).admitted
        assert await admitted_of(stores.quotas, QuotaAsk(ALICE, [alice]), T0, 9) == 3
        assert await admitted_of(stores.quotas, QuotaAsk(BOB, [bob]), T0, 9) == 5

    async def test_given_back_and_swept(self, stores: Stores) -> None:
        images = draw("ipm", PER_MINUTE_60, cost=60)
        assert (await stores.quotas.take(QuotaAsk(ALICE, [images]), T0)).admitted
        await stores.quotas.give_back([images])
        assert (await stores.quotas.take(QuotaAsk(ALICE, [images]), T0)).admitted
        other = draw("rps", PER_SECOND_5, owner=BOB)
        assert (await stores.quotas.take(QuotaAsk(BOB, [other]), T0)).admitted
        # Bob's subject is idle from T0 + 0.2 s, Alice's from T0 + 60 s.
        assert await stores.quotas.sweep(T0 + SECOND_US) == 1
        assert not (await stores.quotas.take(QuotaAsk(ALICE, [images]), T0 + SECOND_US)).admitted
        assert await admitted_of(stores.quotas, QuotaAsk(BOB, [other]), T0, 9) == 5


def _job(variation: int) -> NewJob:
    return NewJob(
        kind=JobKind.GENERATE,
        prompt="a lighthouse",
        seed=variation,
        width=1024,
        height=1024,
        quoted_cost=2,
        tier="nano",
        size=ImageSize.K1,
        variation=variation,
    )


async def _batch(stores: Stores, owner: Owner, n: int, key: str) -> list[str]:
    record = await stores.jobs.create_batch(
        owner=owner,
        idempotency_key=key,
        fingerprint=f"fp-{key}",
        jobs=[_job(i) for i in range(n)],
        hold_id=f"hold-{key}",
    )
    return [job.job_id for job in record.jobs]


class TestConcurrentJobs:
    async def test_unfinished_jobs_of_the_tenant_and_the_account_count(
        self, stores: Stores
    ) -> None:
        alices = await _batch(stores, ALICE, 3, "a")
        await _batch(stores, BOB, 2, "b")
        await _batch(stores, CAROL_AT_GLOBEX, 4, "c")
        await stores.jobs.mark_failed(alices[0], "INTERNAL", "BOOM", "gone")

        def ask(jobs: int, tenant: int | None, account: int | None, pending: int = 0) -> QuotaAsk:
            return QuotaAsk(ALICE, jobs=JobsAsk(jobs, tenant, account, pending, pending))

        verdict = await stores.quotas.take(ask(1, 5, 3), T0)
        assert (verdict.tenant_jobs, verdict.account_jobs) == (4, 2)
        assert verdict.admitted
        assert not (await stores.quotas.take(ask(2, 5, 3), T0)).admitted  # the tenant's 5
        assert not (await stores.quotas.take(ask(2, None, 3), T0)).admitted  # Alice's 3
        assert (await stores.quotas.take(ask(2, 6, 4), T0)).admitted
        # This router's calls not recorded yet count as unfinished jobs.
        assert not (await stores.quotas.take(ask(1, 6, 4, pending=2), T0)).admitted

    async def test_a_call_wider_than_the_limit_runs_when_nothing_else_does(
        self, stores: Stores
    ) -> None:
        wide = QuotaAsk(ALICE, jobs=JobsAsk(8, None, 4))
        assert (await stores.quotas.take(wide, T0)).admitted
        await _batch(stores, ALICE, 1, "a")
        assert not (await stores.quotas.take(wide, T0)).admitted

    async def test_rates_are_not_drawn_when_jobs_refuse(self, stores: Stores) -> None:
        await _batch(stores, ALICE, 2, "a")
        rate = draw("rps", PER_SECOND_5)
        refused = QuotaAsk(ALICE, [rate], JobsAsk(1, None, 2))
        assert not (await stores.quotas.take(refused, T0)).admitted
        assert await admitted_of(stores.quotas, QuotaAsk(ALICE, [rate]), T0, 9) == 5


@pytest.mark.postgres
async def test_replicas_drawing_at_once_admit_exactly_the_rate(
    postgres_schemas: Schemas,
) -> None:
    """Three stores on their own pools (three routers) draw on one tenant's 25-call burst with
    120 calls at once, twice: exactly 25 are admitted each time, and the second time's refill is
    exact too. A limiter counting per replica would admit up to 75."""
    dsn = with_search_path(postgres_schemas.create())
    upgrade(SCHEMA, dsn)
    routers = [await SqlJobStore.open_postgres(dsn, pool_size=8) for _ in range(3)]
    try:
        stores = [SqlQuotaStore(router.database) for router in routers]
        tenant = Draw("tenant:acme:requests_per_second", Rate(25, SECOND_US), 1)
        account_of = [Owner("acme", f"user-{i}") for i in range(6)]

        async def call(i: int, now_us: int) -> bool:
            owner = account_of[i % len(account_of)]
            own = draw("rps", Rate(1000, SECOND_US), owner=owner)
            verdict = await stores[i % 3].take(QuotaAsk(owner, [tenant, own]), now_us)
            return verdict.admitted

        first = await asyncio.gather(*(call(i, T0) for i in range(120)))
        assert sum(first) == 25
        # Half a second later: 12 intervals of 40 ms have passed (the 13th ends at 520 ms).
        later = await asyncio.gather(*(call(i, T0 + 500_000) for i in range(120)))
        assert sum(later) == 12
    finally:
        for router in routers:
            await router.close()
