"""Tests of the job stores, each run on SQLite, on PostgreSQL and on the in-memory store the
domain tests use (so that it keeps the same contract): batches, idempotency, transitions,
lineage, listing, recovery; then what only PostgreSQL has (replicas, outages)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from services.router.assets.store import AssetInfo, AssetRef
from services.router.jobs.migrations import SCHEMA
from services.router.jobs.model import (
    HoldBalance,
    HoldState,
    Job,
    JobError,
    JobFilter,
    JobKind,
    JobStatus,
    Lease,
    NewJob,
    Owner,
    UpscaleMethod,
)
from services.router.jobs.queries import POSTGRESQL
from services.router.jobs.rows import to_us
from services.router.jobs.sql_store import SqlJobStore
from services.router.jobs.statements import CLAIM_ABANDONED
from services.router.jobs.store import JobStore
from services.router.routing.catalogue import AspectRatio, ImageSize, Stage
from services.router.routing.policy import Decision
from services.router.server import open_job_store
from services.router.settings import RouterSettings
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.runtime.migrations import upgrade
from tests.postgres import Schemas, require_postgres, with_search_path
from tests.router.fakes import MemoryJobStore, MemoryJobTables

ULID = r"[0-9A-HJKMNP-TV-Z]{26}"
#: Two tenants, and the same account ids in each, so that only the tenant tells them apart.
TENANT, OTHER_TENANT = "tenant-a", "tenant-b"
ACCT, ACCT_2 = Owner(TENANT, "acct-1"), Owner(TENANT, "acct-2")
A, B = Owner(TENANT, "a"), Owner(TENANT, "b")
ALICE, MALLORY, OTHER = Owner(TENANT, "alice"), Owner(TENANT, "mallory"), Owner(TENANT, "other")
ASSET = AssetRef("ab" * 32, AssetInfo(1024, 1024, "image/png", 12345))
DECISION = Decision(
    tier="nano",
    size=ImageSize.K1,
    aspect_ratio=AspectRatio.R1_1,
    width=1024,
    height=1024,
    unit_cost=2,
    n=3,
    total_cost=6,
    reasons=("stage explore routes to nano",),
)


class Clock:
    """A clock the test moves by hand, one second per reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test server's DSN; skips (fails under CI=true) when it cannot be reached."""
    return require_postgres("the PostgreSQL job store tests")


@pytest.fixture(scope="session")
def postgres_schemas(postgres_server: str) -> Iterator[Schemas]:
    schemas = Schemas(postgres_server, "router_jobs")
    yield schemas
    schemas.drop_all()


@dataclass
class Database:
    """One fresh, empty job database on one store; tests open and reopen stores on it."""

    kind: str
    #: The SQLite file, or the PostgreSQL DSN using this database's own schema.
    location: str
    clock: Clock
    #: PostgreSQL only: the schema, which is also its connections' application name.
    schema: str = ""
    #: The in-memory store only: the tables every store opened on this database shares.
    memory: MemoryJobTables | None = None

    async def open(self, **options: Any) -> JobStore:
        clock = options.pop("clock", self.clock)
        if self.memory is not None:
            return MemoryJobStore(self.memory, clock=clock)
        if self.kind == "sqlite":
            return await SqlJobStore.open_sqlite(Path(self.location), clock=clock, **options)
        options.setdefault("pool_size", 4)
        return await SqlJobStore.open_postgres(self.location, clock=clock, **options)

    async def execute_raw(self, statement: str) -> list[tuple[Any, ...]]:
        """Run SQL behind the store's back; the rows it returns."""
        if self.memory is not None:
            pytest.skip("the in-memory store has no SQL")
        if self.kind == "sqlite":
            with contextlib.closing(sqlite3.connect(self.location, isolation_level=None)) as db:
                return [tuple(row) for row in db.execute(statement)]
        async with await psycopg.AsyncConnection.connect(self.location, autocommit=True) as pg:
            cursor = await pg.execute(statement)
            return list(await cursor.fetchall()) if cursor.description else []


def _postgres_database(schemas: Schemas, clock: Clock) -> Database:
    """A fresh schema brought up to date, as `tiergen migrate` would before routers start."""
    schema = schemas.create()
    dsn = with_search_path(schema, application_name=schema)
    upgrade(SCHEMA, dsn)
    return Database("postgres", dsn, clock, schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
def database(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Database:
    """A fresh job database on each store in turn."""
    if request.param == "memory":
        return Database("memory", "", clock, memory=MemoryJobTables())
    if request.param == "sqlite":
        return Database("sqlite", str(tmp_path / "jobs.db"), clock)
    return _postgres_database(request.getfixturevalue("postgres_schemas"), clock)


@pytest.fixture
def postgres_database(postgres_schemas: Schemas, clock: Clock) -> Database:
    """A fresh job database on PostgreSQL only."""
    return _postgres_database(postgres_schemas, clock)


@pytest.fixture
async def store(database: Database) -> AsyncIterator[JobStore]:
    store = await database.open()
    yield store
    await store.close()


def generation(variation: int = 0, **changes: Any) -> NewJob:
    job = NewJob(
        kind=JobKind.GENERATE,
        prompt="a lighthouse",
        seed=1000 + variation,
        width=1024,
        height=1024,
        quoted_cost=2,
        tier="nano",
        stage=Stage.EXPLORE,
        size=ImageSize.K1,
        variation=variation,
        reasons=("stage explore routes to nano",),
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    return replace(job, **changes)


async def batch_of(
    store: JobStore, n: int = 1, *, account: Owner = ACCT, key: str = "key-1", **changes: Any
) -> tuple[Job, ...]:
    record = await store.create_batch(
        owner=account,
        idempotency_key=key,
        fingerprint="fp-" + key,
        jobs=[generation(i, **changes) for i in range(n)],
    )
    return record.jobs


async def succeeded(store: JobStore, job: Job) -> Job:
    await store.mark_running(job.job_id)
    return await store.mark_succeeded(job.job_id, ASSET, job.quoted_cost)


class TestCreateBatch:
    async def test_creates_queued_jobs(self, store: JobStore, clock: Clock) -> None:
        record = await store.create_batch(
            owner=ACCT,
            idempotency_key="key-1",
            fingerprint="fp",
            jobs=[generation(i) for i in range(3)],
            decision=DECISION,
            hold_id="hold-1",
        )
        assert not record.replayed
        assert re.fullmatch("bat_" + ULID, record.batch.batch_id)
        assert record.batch.decision == DECISION
        assert (record.batch.hold_id, record.batch.hold_state) == ("hold-1", HoldState.OPEN)
        assert [job.variation for job in record.jobs] == [0, 1, 2]
        assert len({job.job_id for job in record.jobs}) == 3
        for job in record.jobs:
            assert re.fullmatch("job_" + ULID, job.job_id)
            assert job.status is JobStatus.QUEUED
            assert (job.batch_id, job.owner, job.hold_id) == (
                record.batch.batch_id,
                ACCT,
                "hold-1",
            )
            assert (job.tier, job.stage, job.size, job.aspect_ratio) == (
                "nano",
                Stage.EXPLORE,
                ImageSize.K1,
                AspectRatio.R1_1,
            )
            assert (job.cost, job.asset, job.error, job.drift) == (0, None, None, None)
            assert job.create_time == clock.now
            assert job.start_time is None and job.finish_time is None
            assert job.reasons == ("stage explore routes to nano",)
            assert job.trace_id == "0af7651916cd43dd8448eb211c80319c"

    async def test_a_detached_batch_and_its_webhook_are_kept(self, store: JobStore) -> None:
        record = await store.create_batch(
            owner=ACCT,
            idempotency_key="key-1",
            fingerprint="fp",
            jobs=[generation()],
            hold_id="hold-1",
            detached=True,
            webhook_id="wh_01ABC",
            balance=HoldBalance(before=10, after=8),
        )
        assert (record.batch.detached, record.batch.webhook_id) == (True, "wh_01ABC")
        assert (await store.batch(ACCT, record.batch.batch_id)).batch == record.batch
        again = await store.create_batch(
            owner=ACCT, idempotency_key="key-1", fingerprint="fp", jobs=[generation()]
        )
        assert again.replayed and again.batch == record.batch
        plain = await store.create_batch(
            owner=ACCT, idempotency_key="key-2", fingerprint="fp", jobs=[generation()]
        )
        assert (plain.batch.detached, plain.batch.webhook_id) == (False, None)

    async def test_same_key_and_request_replays(self, store: JobStore) -> None:
        first = await store.create_batch(
            owner=A, idempotency_key="k", fingerprint="fp", jobs=[generation()]
        )
        again = await store.create_batch(
            owner=A, idempotency_key="k", fingerprint="fp", jobs=[generation()]
        )
        assert again.replayed
        assert again.batch == first.batch
        assert again.jobs == first.jobs
        found = await store.find_batch(A, "k")
        assert found is not None and found.replayed and found.jobs == first.jobs
        assert await store.find_batch(A, "other") is None

    async def test_same_key_with_another_request_is_refused(self, store: JobStore) -> None:
        first = await store.create_batch(
            owner=A, idempotency_key="k", fingerprint="fp", jobs=[generation()]
        )
        with pytest.raises(AlreadyExists) as caught:
            await store.create_batch(
                owner=A,
                idempotency_key="k",
                fingerprint="another",
                jobs=[generation(), generation(1)],
            )
        assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
        assert caught.value.metadata == {"batch_id": first.batch.batch_id}
        assert (await store.list(A)).jobs == first.jobs

    async def test_keys_are_per_account(self, store: JobStore) -> None:
        mine = await batch_of(store, account=A, key="k")
        theirs = await batch_of(store, account=B, key="k")
        assert mine[0].batch_id != theirs[0].batch_id

    async def test_concurrent_retries_create_one_batch(self, store: JobStore) -> None:
        records = await asyncio.gather(
            *(
                store.create_batch(
                    owner=A,
                    idempotency_key="k",
                    fingerprint="fp",
                    jobs=[generation(i) for i in range(4)],
                )
                for _ in range(10)
            )
        )
        assert sum(not record.replayed for record in records) == 1
        assert len({record.batch.batch_id for record in records}) == 1
        assert len((await store.list(A)).jobs) == 4

    async def test_bad_batches(self, store: JobStore) -> None:
        with pytest.raises(InvalidArgument) as caught:
            await store.create_batch(
                owner=A, idempotency_key="", fingerprint="fp", jobs=[generation()]
            )
        assert caught.value.violations[0].field == "idempotency_key"
        with pytest.raises(ValueError, match="at least one job"):
            await store.create_batch(owner=A, idempotency_key="k", fingerprint="fp", jobs=[])
        with pytest.raises(ValueError, match="seed"):
            await batch_of(store, seed=2**64)
        bad_texts: list[tuple[str, dict[str, Any]]] = [
            ("account_id", {"account": Owner(TENANT, "a\x00b")}),
            ("idempotency_key", {"key": "k\x00"}),
            ("prompt", {"prompt": "a\x00lighthouse"}),
        ]
        for field, changes in bad_texts:
            with pytest.raises(InvalidArgument) as caught:
                await batch_of(store, **changes)
            assert caught.value.violations[0].field == field
        assert (await store.list(A)).jobs == ()
        assert (await store.list(ACCT)).jobs == ()

    async def test_large_seeds_round_trip(self, store: JobStore) -> None:
        (job,) = await batch_of(store, seed=2**64 - 1)
        assert (await store.get(ACCT, job.job_id)).seed == 2**64 - 1


class TestTransitions:
    async def test_a_job_runs_and_succeeds(self, store: JobStore, clock: Clock) -> None:
        (job,) = await batch_of(store)
        running = await store.mark_running(job.job_id)
        assert running.status is JobStatus.RUNNING
        assert running.start_time == clock.now
        done = await store.mark_succeeded(job.job_id, ASSET, cost=2, drift=0.125)
        assert (done.status, done.asset, done.cost, done.drift) == (
            JobStatus.SUCCEEDED,
            ASSET,
            2,
            0.125,
        )
        assert done.finish_time == clock.now
        assert done.start_time == running.start_time
        assert await store.get(ACCT, job.job_id) == done

    @pytest.mark.parametrize("start", ["queued", "running"])
    async def test_fail_or_cancel_an_unfinished_job(self, store: JobStore, start: str) -> None:
        first, second = await batch_of(store, 2)
        if start == "running":
            await store.mark_running(first.job_id)
            await store.mark_running(second.job_id)
        failed = await store.mark_failed(
            first.job_id, "UNAVAILABLE", "BACKEND_UNAVAILABLE", "generator down"
        )
        assert failed.status is JobStatus.FAILED
        assert failed.error == JobError("UNAVAILABLE", "BACKEND_UNAVAILABLE", "generator down")
        cancelled = await store.mark_cancelled(second.job_id, "caller went away")
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.error is not None and cancelled.error.code == "CANCELLED"
        assert cancelled.finish_time is not None

    async def test_a_final_job_never_changes(self, store: JobStore) -> None:
        done, failed, cancelled = await batch_of(store, 3)
        done = await succeeded(store, done)
        failed = await store.mark_failed(failed.job_id, "INTERNAL", "BUG", "boom")
        cancelled = await store.mark_cancelled(cancelled.job_id)
        for job in (done, failed, cancelled):
            for attempt in (
                store.mark_running(job.job_id),
                store.mark_succeeded(job.job_id, ASSET, 0),
                store.mark_failed(job.job_id, "INTERNAL", "X", "x"),
                store.mark_cancelled(job.job_id),
            ):
                with pytest.raises(FailedPrecondition) as caught:
                    await attempt
                assert caught.value.reason == "JOB_FINAL"
            assert await store.get(ACCT, job.job_id) == job

    async def test_illegal_transitions(self, store: JobStore) -> None:
        (job,) = await batch_of(store)
        with pytest.raises(FailedPrecondition) as caught:
            await store.mark_succeeded(job.job_id, ASSET, 2)
        assert caught.value.reason == "ILLEGAL_TRANSITION"
        assert caught.value.metadata["status"] == "queued"
        await store.mark_running(job.job_id)
        with pytest.raises(FailedPrecondition, match="cannot become running"):
            await store.mark_running(job.job_id)
        assert (await store.get(ACCT, job.job_id)).status is JobStatus.RUNNING

    async def test_bad_outcomes_are_refused(self, store: JobStore) -> None:
        (job,) = await batch_of(store)
        await store.mark_running(job.job_id)
        with pytest.raises(ValueError, match="exceeds the 2 credits quoted"):
            await store.mark_succeeded(job.job_id, ASSET, 3)
        with pytest.raises(ValueError, match="negative"):
            await store.mark_succeeded(job.job_id, ASSET, -1)
        with pytest.raises(ValueError, match="drift"):
            await store.mark_succeeded(job.job_id, ASSET, 2, drift=1.5)
        assert (await store.get(ACCT, job.job_id)).status is JobStatus.RUNNING

    async def test_unknown_job(self, store: JobStore) -> None:
        with pytest.raises(NotFound):
            await store.mark_running("job_unknown")


class TestOwnership:
    async def test_another_accounts_job_is_not_found(self, store: JobStore) -> None:
        (job,) = await batch_of(store, account=ALICE)
        with pytest.raises(NotFound) as other:
            await store.get(MALLORY, job.job_id)
        with pytest.raises(NotFound) as missing:
            await store.get(MALLORY, "job_" + "0" * 26)
        # The two answers are indistinguishable, so ids reveal nothing.
        assert other.value.message.replace(job.job_id, "?") == missing.value.message.replace(
            "job_" + "0" * 26, "?"
        )
        with pytest.raises(NotFound):
            await store.children(MALLORY, job.job_id)
        with pytest.raises(NotFound):
            await store.cancel_job(MALLORY, job.job_id)
        with pytest.raises(NotFound):
            await store.batch(MALLORY, job.batch_id)
        with pytest.raises(NotFound):
            await store.cancel_batch(MALLORY, job.batch_id)
        assert (await store.list(MALLORY)).jobs == ()
        assert (await store.get(ALICE, job.job_id)).status is JobStatus.QUEUED

    async def test_a_strangers_shortlist_changes_nothing(self, store: JobStore) -> None:
        (job,) = await batch_of(store, account=ALICE)
        await store.set_shortlisted(ALICE, job.job_id, True)
        with pytest.raises(NotFound):
            await store.set_shortlisted(MALLORY, job.job_id, False)
        assert (await store.get(ALICE, job.job_id)).shortlisted

    async def test_asset_ownership(self, store: JobStore) -> None:
        (job,) = await batch_of(store, account=ALICE)
        await succeeded(store, job)
        assert await store.has_asset(ALICE, ASSET.asset_id)
        assert not await store.has_asset(MALLORY, ASSET.asset_id)
        assert not await store.has_asset(ALICE, "cd" * 32)


class TestTenants:
    """`alice` of one tenant and `alice` of another are two owners: neither sees, changes or
    learns of the other's batches, jobs or images."""

    HERS = Owner(TENANT, "alice")
    NAMESAKE = Owner(OTHER_TENANT, "alice")

    @staticmethod
    def _shape(error: NotFound, target_id: str) -> tuple[str, str, str]:
        return (error.code, error.reason, error.message.replace(target_id, "?"))

    async def test_the_same_account_id_in_two_tenants_sees_only_its_own_jobs(
        self, store: JobStore
    ) -> None:
        hers = await batch_of(store, 2, account=self.HERS, key="k-a")
        theirs = await batch_of(store, 3, account=self.NAMESAKE, key="k-b")
        listed = await store.list(self.HERS)
        assert {job.job_id for job in listed.jobs} == {job.job_id for job in hers}
        assert {job.owner for job in listed.jobs} == {self.HERS}
        listed = await store.list(self.NAMESAKE)
        assert {job.job_id for job in listed.jobs} == {job.job_id for job in theirs}
        assert (await store.batch(self.NAMESAKE, theirs[0].batch_id)).batch.owner == self.NAMESAKE

    async def test_every_id_of_another_tenant_is_not_found(self, store: JobStore) -> None:
        (parent,) = await batch_of(store, account=self.HERS, key="parent")
        parent = await succeeded(store, parent)
        child = await TestLineage().promote(store, parent, "child", account=self.HERS)
        unknown_job, unknown_batch = "job_" + "0" * 26, "bat_" + "0" * 26
        intruder = self.NAMESAKE

        job_reads: list[Callable[[str], Any]] = [
            lambda job_id: store.get(intruder, job_id),
            lambda job_id: store.children(intruder, job_id),
            lambda job_id: store.cancel_job(intruder, job_id),
            lambda job_id: store.set_shortlisted(intruder, job_id, True),
        ]
        for read in job_reads:
            with pytest.raises(NotFound) as theirs:
                await read(parent.job_id)
            with pytest.raises(NotFound) as missing:
                await read(unknown_job)
            assert self._shape(theirs.value, parent.job_id) == self._shape(
                missing.value, unknown_job
            )
        for batch_read in (store.batch, store.cancel_batch):
            with pytest.raises(NotFound) as theirs:
                await batch_read(intruder, parent.batch_id)
            with pytest.raises(NotFound) as missing:
                await batch_read(intruder, unknown_batch)
            assert self._shape(theirs.value, parent.batch_id) == self._shape(
                missing.value, unknown_batch
            )
        assert await store.find_batch(intruder, "parent") is None
        assert await store.find_batch(intruder, "child") is None
        assert not await store.has_asset(intruder, ASSET.asset_id)
        for filters in (
            JobFilter(),
            JobFilter(batch_id=parent.batch_id),
            JobFilter(parent_job_id=parent.job_id),
            JobFilter(status=JobStatus.SUCCEEDED),
        ):
            assert (await store.list(intruder, filters)).jobs == ()
        # Nothing the intruder tried changed anything.
        assert await store.get(self.HERS, parent.job_id) == parent
        after = await store.get(self.HERS, child.job_id)
        assert (after.status, after.shortlisted) == (JobStatus.QUEUED, False)
        assert await store.has_asset(self.HERS, ASSET.asset_id)
        assert [job.job_id for job in await store.children(self.HERS, parent.job_id)] == [
            child.job_id
        ]

    async def test_a_parent_of_another_tenant_is_not_found(self, store: JobStore) -> None:
        (parent,) = await batch_of(store, account=self.HERS)
        parent = await succeeded(store, parent)
        with pytest.raises(NotFound) as caught:
            await TestLineage().promote(store, parent, "steal", account=self.NAMESAKE)
        assert caught.value.reason == "JOB_NOT_FOUND"
        assert await store.find_batch(self.NAMESAKE, "steal") is None

    async def test_the_same_key_in_two_tenants_makes_two_batches(self, store: JobStore) -> None:
        first = await store.create_batch(
            owner=self.HERS, idempotency_key="k", fingerprint="fp-1", jobs=[generation()]
        )
        # Another request under the same key: another tenant's key, so not a reuse.
        second = await store.create_batch(
            owner=self.NAMESAKE, idempotency_key="k", fingerprint="fp-2", jobs=[generation()]
        )
        assert not first.replayed and not second.replayed
        assert first.batch.batch_id != second.batch.batch_id
        found = await store.find_batch(self.NAMESAKE, "k")
        assert found is not None and found.batch.batch_id == second.batch.batch_id
        found = await store.find_batch(self.HERS, "k")
        assert found is not None and found.batch.fingerprint == "fp-1"

    async def test_a_page_token_of_one_owner_is_refused_for_another(self, store: JobStore) -> None:
        await batch_of(store, 3, account=self.HERS, key="hers")
        await batch_of(store, 3, account=self.NAMESAKE, key="theirs")
        page = await store.list(self.HERS, page_size=1)
        assert page.next_page_token
        with pytest.raises(InvalidArgument) as caught:
            await store.list(self.NAMESAKE, page_size=1, page_token=page.next_page_token)
        assert caught.value.violations[0].field == "page_token"
        assert caught.value.reason == "BAD_PAGE_TOKEN"
        rest = await store.list(self.HERS, page_token=page.next_page_token)
        assert len(rest.jobs) == 2 and {job.owner for job in rest.jobs} == {self.HERS}


class TestLineage:
    async def promote(self, store: JobStore, parent: Job, key: str, account: Owner = ACCT) -> Job:
        record = await store.create_batch(
            owner=account,
            idempotency_key=key,
            fingerprint=key,
            jobs=[
                NewJob(
                    kind=JobKind.PROMOTE,
                    prompt=parent.prompt + ", brushed steel",
                    seed=parent.seed,
                    width=2048,
                    height=2048,
                    quoted_cost=12,
                    tier="standard",
                    stage=Stage.REFINE,
                    size=ImageSize.K2,
                    parent_job_id=parent.job_id,
                    strength=0.6,
                )
            ],
        )
        return record.jobs[0]

    async def test_children_and_parent(self, store: JobStore) -> None:
        (parent,) = await batch_of(store)
        parent = await succeeded(store, parent)
        child = await self.promote(store, parent, "promote-1")
        upscale = await store.create_batch(
            owner=ACCT,
            idempotency_key="upscale-1",
            fingerprint="u",
            jobs=[
                NewJob(
                    kind=JobKind.UPSCALE,
                    prompt=parent.prompt,
                    seed=parent.seed,
                    width=2048,
                    height=2048,
                    quoted_cost=4,
                    stage=Stage.ENHANCE,
                    parent_job_id=parent.job_id,
                    upscale_factor=2.0,
                    upscale_method=UpscaleMethod.LANCZOS,
                )
            ],
        )
        assert child.parent_job_id == parent.job_id
        assert child.strength == pytest.approx(0.6)
        (upscaled,) = upscale.jobs
        assert (upscaled.tier, upscaled.size, upscaled.upscale_method) == (
            "",
            None,
            UpscaleMethod.LANCZOS,
        )
        children = await store.children(ACCT, parent.job_id)
        assert [job.job_id for job in children] == [child.job_id, upscaled.job_id]
        assert await store.children(ACCT, child.job_id) == ()

    async def test_parent_of_another_account_is_not_found(self, store: JobStore) -> None:
        (parent,) = await batch_of(store, account=ALICE)
        with pytest.raises(NotFound):
            await self.promote(store, parent, "steal", account=MALLORY)
        assert await store.find_batch(MALLORY, "steal") is None
        assert (await store.list(MALLORY)).jobs == ()


class TestListing:
    async def test_newest_first_with_filters(self, store: JobStore) -> None:
        explore = await batch_of(store, 3, key="explore")
        refine = await batch_of(
            store, 2, key="refine", tier="pro", stage=Stage.REFINE, quoted_cost=15
        )
        await batch_of(store, 1, account=OTHER, key="explore")
        await succeeded(store, explore[1])
        everything = await store.list(ACCT)
        assert [job.job_id for job in everything.jobs] == [
            job.job_id for job in (*reversed(refine), *reversed(explore))
        ]
        assert everything.next_page_token == ""

        async def ids(filters: JobFilter) -> list[str]:
            return [job.job_id for job in (await store.list(ACCT, filters)).jobs]

        newest_refine = [job.job_id for job in reversed(refine)]
        assert await ids(JobFilter(tier="pro")) == newest_refine
        assert await ids(JobFilter(stage=Stage.EXPLORE)) == [
            job.job_id for job in reversed(explore)
        ]
        assert await ids(JobFilter(status=JobStatus.SUCCEEDED)) == [explore[1].job_id]
        assert await ids(JobFilter(status=JobStatus.QUEUED, tier="nano")) == [
            explore[2].job_id,
            explore[0].job_id,
        ]
        assert await ids(JobFilter(kind=JobKind.PROMOTE)) == []
        assert await ids(JobFilter(batch_id=refine[0].batch_id)) == newest_refine
        assert await ids(JobFilter(parent_job_id=explore[0].job_id)) == []

    async def test_pages_cover_every_job_once(self, store: JobStore) -> None:
        jobs = await batch_of(store, 7)
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await store.list(ACCT, page_size=3, page_token=token)
            seen.extend(job.job_id for job in page.jobs)
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert pages == 3
        assert seen == [job.job_id for job in reversed(jobs)]

    async def test_page_size_defaults_and_cap(self, store: JobStore) -> None:
        await batch_of(store, 501)
        default = await store.list(ACCT)
        assert len(default.jobs) == 50 and default.next_page_token
        capped = await store.list(ACCT, page_size=10_000)
        assert len(capped.jobs) == 500 and capped.next_page_token
        rest = await store.list(ACCT, page_size=10_000, page_token=capped.next_page_token)
        assert len(rest.jobs) == 1 and rest.next_page_token == ""

    async def test_bad_paging(self, store: JobStore) -> None:
        await batch_of(store, 3)
        page = await store.list(ACCT, page_size=1)
        with pytest.raises(InvalidArgument) as caught:
            await store.list(ACCT, page_size=-1)
        assert caught.value.violations[0].field == "page_size"
        for token, account, filters in (
            ("garbage!", ACCT, JobFilter()),
            ("eyJiZWZvcmUiOiAzfQ", ACCT, JobFilter()),  # {"before": 3}, no scope
            (page.next_page_token, ACCT, JobFilter(tier="pro")),  # other filters
            (page.next_page_token, ACCT_2, JobFilter()),  # other account
            (page.next_page_token, Owner(OTHER_TENANT, ACCT.account_id), JobFilter()),
        ):
            with pytest.raises(InvalidArgument) as caught:
                await store.list(account, filters, page_token=token)
            assert caught.value.violations[0].field == "page_token"


class TestCancel:
    async def test_cancel_batch_stops_the_unfinished(self, store: JobStore) -> None:
        done, running, queued = await batch_of(store, 3)
        done = await succeeded(store, done)
        await store.mark_running(running.job_id)
        after = await store.cancel_batch(ACCT, done.batch_id, "stopped by the caller")
        assert [job.status for job in after] == [
            JobStatus.SUCCEEDED,
            JobStatus.CANCELLED,
            JobStatus.CANCELLED,
        ]
        assert after[0] == done
        assert after[2].job_id == queued.job_id
        assert after[2].error is not None and after[2].error.message == "stopped by the caller"
        with pytest.raises(FailedPrecondition):
            await store.mark_succeeded(running.job_id, ASSET, 2)

    async def test_cancel_job_leaves_a_final_job_alone(self, store: JobStore) -> None:
        done, queued = await batch_of(store, 2)
        done = await succeeded(store, done)
        assert await store.cancel_job(ACCT, done.job_id) == done
        cancelled = await store.cancel_job(ACCT, queued.job_id)
        assert cancelled.status is JobStatus.CANCELLED
        assert await store.cancel_job(ACCT, queued.job_id) == cancelled


class TestHolds:
    async def test_hold_bookkeeping(self, store: JobStore) -> None:
        first, second = await batch_of(store, 2)
        batch_id = first.batch_id
        assert second.batch_id == batch_id
        record = await store.batch(ACCT, batch_id)
        assert (record.batch.hold_id, record.batch.hold_state) == (None, HoldState.NONE)
        attached = await store.attach_hold(batch_id, "hold-9")
        assert (attached.hold_id, attached.hold_state) == ("hold-9", HoldState.OPEN)
        assert await store.attach_hold(batch_id, "hold-9") == attached
        with pytest.raises(FailedPrecondition) as caught:
            await store.attach_hold(batch_id, "hold-10")
        assert caught.value.reason == "HOLD_ALREADY_ATTACHED"
        assert (await store.get(ACCT, first.job_id)).hold_id == "hold-9"

        settled = await store.settle_hold(batch_id, HoldState.CAPTURED, 2)
        assert (settled.hold_state, settled.captured) == (HoldState.CAPTURED, 2)
        assert await store.settle_hold(batch_id, HoldState.CAPTURED, 2) == settled
        with pytest.raises(FailedPrecondition) as caught:
            await store.settle_hold(batch_id, HoldState.RELEASED)
        assert caught.value.reason == "HOLD_NOT_OPEN"

    async def test_a_batch_refused_before_any_work_is_forgotten(self, store: JobStore) -> None:
        first, second = await batch_of(store, 2, key="refused")
        await store.attach_hold(first.batch_id, "hold-1")
        await store.mark_failed(first.job_id, "RESOURCE_EXHAUSTED", "QUEUE_FULL", "busy")
        await store.mark_cancelled(second.job_id)
        # Not while its hold is open: the credits are still to be returned.
        assert not await store.forget_batch(first.batch_id)
        await store.settle_hold(first.batch_id, HoldState.RELEASED)
        assert await store.forget_batch(first.batch_id)
        assert await store.find_batch(ACCT, "refused") is None
        with pytest.raises(NotFound):
            await store.get(ACCT, first.job_id)
        assert not await store.forget_batch(first.batch_id)
        # The key is free: a new batch takes it.
        (again,) = await batch_of(store, key="refused")
        assert again.batch_id != first.batch_id

    async def test_a_batch_that_did_work_is_never_forgotten(self, store: JobStore) -> None:
        delivered, refused = await batch_of(store, 2, key="partial")
        await store.attach_hold(delivered.batch_id, "hold-2")
        await succeeded(store, delivered)
        await store.mark_failed(refused.job_id, "RESOURCE_EXHAUSTED", "QUEUE_FULL", "busy")
        await store.settle_hold(delivered.batch_id, HoldState.CAPTURED, 2)
        assert not await store.forget_batch(delivered.batch_id)
        (running,) = await batch_of(store, key="running")
        await store.mark_running(running.job_id)
        assert not await store.forget_batch(running.batch_id)
        assert (await store.find_batch(ACCT, "partial")) is not None

    async def test_bad_settlements(self, store: JobStore) -> None:
        (job,) = await batch_of(store)
        with pytest.raises(FailedPrecondition):
            await store.settle_hold(job.batch_id, HoldState.RELEASED)
        with pytest.raises(ValueError, match="captured or released"):
            await store.settle_hold(job.batch_id, HoldState.OPEN)
        with pytest.raises(ValueError, match="released"):
            await store.settle_hold(job.batch_id, HoldState.RELEASED, 5)
        with pytest.raises(NotFound):
            await store.settle_hold("bat_unknown", HoldState.RELEASED)


class TestDurability:
    async def test_recovery_after_a_restart(self, database: Database, clock: Clock) -> None:
        store = await database.open()
        done, running, queued = (
            await store.create_batch(
                owner=A,
                idempotency_key="k",
                fingerprint="fp",
                jobs=[generation(i) for i in range(3)],
                hold_id="hold-1",
                lease=Lease("first", 5),
            )
        ).jobs
        await succeeded(store, done)
        await store.mark_running(running.job_id)
        await store.close()
        clock.now += timedelta(seconds=10)

        reopened = await database.open()
        try:
            (record,) = await reopened.claim_abandoned(
                Lease("second", 3600), unleased_seconds=900, limit=10
            )
            assert record.batch.hold_id == "hold-1"
            assert [(job.job_id, job.status) for job in record.jobs] == [
                (done.job_id, JobStatus.SUCCEEDED),
                (running.job_id, JobStatus.RUNNING),
                (queued.job_id, JobStatus.QUEUED),
            ]
            lease = Lease("second", 3600)
            assert await reopened.claim_abandoned(lease, unleased_seconds=900, limit=10) == ()
            for job in (running, queued):
                await reopened.mark_failed(job.job_id, "ABORTED", "ROUTER_LOST", "its router died")
            await reopened.settle_hold(record.batch.batch_id, HoldState.CAPTURED, 2)
            # Finished: no process claims it again.
            clock.now += timedelta(hours=2)
            assert (
                await reopened.claim_abandoned(Lease("third", 5), unleased_seconds=900, limit=10)
                == ()
            )
        finally:
            await reopened.close()

    async def test_a_closed_store_refuses_work(self, database: Database) -> None:
        store = await database.open()
        await store.close()
        with pytest.raises(RuntimeError, match="closed"):
            await store.get(A, "job_x")

    async def test_sqlite_runs_in_wal_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "jobs.db"
        await (await SqlJobStore.open_sqlite(path)).close()
        with contextlib.closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def leased_batch(
    store: JobStore, key: str, lease: Lease | None, *, n: int = 2, account: Owner = A
) -> str:
    """A batch with an open hold under `lease` (None: as a router older than leases wrote it)."""
    record = await store.create_batch(
        owner=account,
        idempotency_key=key,
        fingerprint="fp-" + key,
        jobs=[generation(i) for i in range(n)],
        hold_id="hold-" + key,
        lease=lease,
    )
    return record.batch.batch_id


async def claimed(store: JobStore, owner: str, *, limit: int = 100) -> list[str]:
    """The ids of the batches `owner` claims, holding them for an hour."""
    records = await store.claim_abandoned(Lease(owner, 3600), unleased_seconds=900, limit=limit)
    return [record.batch.batch_id for record in records]


class TestLeases:
    """Claiming the batches of a router that is gone, on each store."""

    async def test_only_unfinished_batches_are_claimed(self, store: JobStore, clock: Clock) -> None:
        dead = Lease("dead", 5)
        settled = await leased_batch(store, "settled", dead, n=1)
        (job,) = (await store.batch(A, settled)).jobs
        await succeeded(store, job)
        await store.settle_hold(settled, HoldState.CAPTURED, 2)
        open_hold = await leased_batch(store, "open-hold", dead, n=1)
        (job,) = (await store.batch(A, open_hold)).jobs
        await succeeded(store, job)
        # A job left running under a settled hold (the store was away when its batch stopped).
        stranded = await leased_batch(store, "stranded", dead, n=1)
        await store.mark_running((await store.batch(A, stranded)).jobs[0].job_id)
        await store.settle_hold(stranded, HoldState.RELEASED)
        clock.now += timedelta(seconds=60)

        assert await claimed(store, "alive") == [open_hold, stranded]

    async def test_claims_come_oldest_first_a_page_at_a_time(
        self, store: JobStore, clock: Clock
    ) -> None:
        batch_ids = [await leased_batch(store, f"k{i}", Lease("dead", 5)) for i in range(5)]
        clock.now += timedelta(seconds=60)
        assert await claimed(store, "alive", limit=2) == batch_ids[:2]
        assert await claimed(store, "alive", limit=2) == batch_ids[2:4]
        assert await claimed(store, "alive", limit=2) == batch_ids[4:]
        assert await claimed(store, "alive", limit=2) == []

    async def test_renewal_tells_which_batches_are_still_held(
        self, store: JobStore, clock: Clock
    ) -> None:
        mine = Lease("mine", 5)
        kept = await leased_batch(store, "kept", mine)
        taken = await leased_batch(store, "taken", mine)
        assert await store.renew_leases(mine, [kept, taken]) == {kept, taken}
        assert await store.renew_leases(mine, []) == frozenset()
        clock.now += timedelta(seconds=60)
        await store.renew_leases(mine, [kept])

        # SQLite has one router: another owner means the earlier process is gone, renewed or not.
        one_router = isinstance(store, SqlJobStore) and store.dialect == "sqlite"
        assert await claimed(store, "other") == ([kept, taken] if one_router else [taken])
        assert await store.renew_leases(mine, [kept, taken]) == (
            frozenset() if one_router else {kept}
        )


@pytest.mark.postgres
class TestPostgresLeases:
    """Leases over a store shared by replicas: timed, renewed, and claimed by one replica."""

    async def test_a_renewed_lease_is_never_claimed(
        self, postgres_database: Database, clock: Clock
    ) -> None:
        store = await postgres_database.open()
        try:
            mine = Lease("mine", 30)
            batch_id = await leased_batch(store, "k", mine)
            for _ in range(5):
                clock.now += timedelta(seconds=20)
                assert await claimed(store, "other") == []
                assert await store.renew_leases(mine, [batch_id]) == {batch_id}
            clock.now += timedelta(seconds=31)
            assert await claimed(store, "other") == [batch_id]
            assert await store.renew_leases(mine, [batch_id]) == frozenset()
        finally:
            await store.close()

    async def test_replicas_claiming_at_once_take_each_batch_once(
        self, postgres_database: Database, clock: Clock
    ) -> None:
        stores = [await postgres_database.open(pool_size=2) for _ in range(4)]
        try:
            batch_ids = [
                await leased_batch(stores[0], f"k{i}", Lease("dead", 5)) for i in range(24)
            ]
            clock.now += timedelta(seconds=60)

            async def claim_all(store: JobStore, owner: str) -> list[str]:
                taken: list[str] = []
                while page := await claimed(store, owner, limit=3):
                    taken.extend(page)
                return taken

            takings = await asyncio.gather(
                *(claim_all(store, f"replica-{i}") for i, store in enumerate(stores))
            )
        finally:
            for store in stores:
                await store.close()
        every = [batch_id for taken in takings for batch_id in taken]
        assert sorted(every) == sorted(batch_ids)
        owners = await postgres_database.execute_raw("SELECT batch_id, owner FROM batches")
        assert {
            batch_id: f"replica-{i}" for i, taken in enumerate(takings) for batch_id in taken
        } == dict(owners)

    async def test_a_batch_from_before_leases_waits_until_surely_abandoned(
        self, postgres_database: Database, clock: Clock
    ) -> None:
        # One of the batches routers older than leases wrote: no owner, no lease.
        await postgres_database.execute_raw(
            "INSERT INTO batches (batch_id, tenant, account_id, idempotency_key, fingerprint,"
            " hold_id, hold_state, create_us) VALUES ('bat_old', 'default', 'a', 'k', 'fp',"
            f" 'hold-old', 'open', {to_us(clock.now)})"
        )

        store = await postgres_database.open()
        try:
            # An old replica, still running during the upgrade, keeps writing batches too.
            clock.now += timedelta(seconds=300)
            newer = await leased_batch(store, "newer", None)
            clock.now += timedelta(seconds=590)
            assert await claimed(store, "new") == []
            clock.now += timedelta(seconds=20)
            assert await claimed(store, "new") == ["bat_old"]
            clock.now += timedelta(seconds=300)
            assert await claimed(store, "new") == [newer]
        finally:
            await store.close()

    async def test_the_claim_can_use_the_partial_indexes(self, postgres_database: Database) -> None:
        await (await postgres_database.open()).close()
        async with await psycopg.AsyncConnection.connect(
            postgres_database.location, autocommit=True
        ) as connection:
            # The tables are empty, so only forbidding the sequential scans shows which
            # indexes the claim is able to use.
            await connection.execute("SET enable_seqscan = off")
            cursor = psycopg.AsyncClientCursor(connection)
            await cursor.execute(
                "EXPLAIN (COSTS OFF) " + CLAIM_ABANDONED.compiled(POSTGRESQL).sql,
                {"claimant": "o", "until": 2, "now": 1, "unleased_before": 0, "limit": 10},
            )
            plan = "\n".join(row[0] for row in await cursor.fetchall())
        assert "batches_unsettled_leases" in plan, plan
        assert "jobs_unfinished" in plan, plan


class TestOpenJobStore:
    """`open_job_store` picks the store the router's DSN names."""

    async def test_a_sqlite_dsn_opens_sqlite_in_a_new_directory(self, tmp_path: Path) -> None:
        path = tmp_path / "deep" / "er" / "router.db"
        settings = RouterSettings.from_env({"TIERGEN_ROUTER_DSN": f"sqlite:///{path}"})
        store = await open_job_store(settings)
        try:
            assert isinstance(store, SqlJobStore) and store.dialect == "sqlite"
            await batch_of(store)
        finally:
            await store.close()
        assert path.is_file()

    @pytest.mark.postgres
    async def test_a_postgresql_dsn_opens_postgresql(self, postgres_database: Database) -> None:
        settings = RouterSettings.from_env(
            {"TIERGEN_ROUTER_DSN": postgres_database.location, "TIERGEN_ROUTER_DB_POOL_SIZE": "2"}
        )
        store = await open_job_store(settings)
        try:
            assert isinstance(store, SqlJobStore) and store.dialect == "postgresql"
            (job,) = await batch_of(store)
        finally:
            await store.close()
        rows = await postgres_database.execute_raw("SELECT job_id FROM jobs")
        assert rows == [(job.job_id,)]


class TcpRelay:
    """A TCP relay in front of the PostgreSQL server that a test can cut and restore."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        """Listen on a free port the first time, on the same port after `cut`."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and drop every relayed connection, as a dead server would."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.mark.postgres
class TestPostgres:
    """What only the shared database has: replicas racing, and a database that goes away."""

    async def test_replicas_racing_one_key_create_one_batch(
        self, postgres_database: Database
    ) -> None:
        first, second = [await postgres_database.open(pool_size=3) for _ in range(2)]
        try:
            records = await asyncio.gather(
                *(
                    store.create_batch(
                        owner=A,
                        idempotency_key="k",
                        fingerprint="fp",
                        jobs=[generation(i) for i in range(3)],
                    )
                    for store in [first, second] * 5
                )
            )
            winners = [record for record in records if not record.replayed]
            assert len(winners) == 1
            assert all(record.jobs == winners[0].jobs for record in records)
            assert len((await second.list(A)).jobs) == 3
        finally:
            await first.close()
            await second.close()

    async def test_racing_transitions_leave_one_winner(self, postgres_database: Database) -> None:
        first, second = [await postgres_database.open(pool_size=2) for _ in range(2)]
        try:
            jobs = await batch_of(first, 8)
            for job in jobs:
                await first.mark_running(job.job_id)
            outcomes = await asyncio.gather(
                *(first.mark_succeeded(job.job_id, ASSET, 2) for job in jobs),
                *(second.mark_cancelled(job.job_id) for job in jobs),
                return_exceptions=True,
            )
            for job, success, cancel in zip(jobs, outcomes[:8], outcomes[8:], strict=True):
                (won,) = [o for o in (success, cancel) if isinstance(o, Job)]
                (lost,) = [o for o in (success, cancel) if not isinstance(o, Job)]
                assert isinstance(lost, FailedPrecondition) and lost.reason == "JOB_FINAL"
                assert await second.get(ACCT, job.job_id) == won
        finally:
            await first.close()
            await second.close()

    async def test_a_batch_that_fails_midway_leaves_nothing(
        self, postgres_database: Database
    ) -> None:
        store = await postgres_database.open()
        await postgres_database.execute_raw(
            """CREATE FUNCTION refuse_third_job() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'disk full'; END $$"""
        )
        await postgres_database.execute_raw(
            "CREATE TRIGGER refuse_third_job BEFORE INSERT ON jobs FOR EACH ROW"
            " WHEN (NEW.variation = 2) EXECUTE FUNCTION refuse_third_job()"
        )
        try:
            with pytest.raises(Internal, match="disk full"):
                await batch_of(store, 4, account=A, key="k")
            assert await store.find_batch(A, "k") is None
        finally:
            await store.close()
        assert await postgres_database.execute_raw("SELECT count(*) FROM batches") == [(0,)]
        assert await postgres_database.execute_raw("SELECT count(*) FROM jobs") == [(0,)]

    async def test_a_value_postgresql_cannot_hold_is_invalid(
        self, postgres_database: Database
    ) -> None:
        store = await postgres_database.open()
        try:
            with pytest.raises(InvalidArgument) as caught:
                await store.get(ACCT, "job_\x00")
            assert caught.value.reason == "UNSTORABLE_VALUE"
        finally:
            await store.close()

    async def test_an_unreachable_database_is_unavailable(self) -> None:
        with pytest.raises(Unavailable, match="cannot connect"):
            await SqlJobStore.open_postgres(
                "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1", timeout_seconds=0.5
            )

    async def test_dropped_connections_are_replaced(
        self, postgres_database: Database, postgres_server: str
    ) -> None:
        store = await postgres_database.open(pool_size=2)
        try:
            (job,) = await batch_of(store)
            async with await psycopg.AsyncConnection.connect(
                postgres_server, autocommit=True
            ) as admin:
                cursor = await admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (postgres_database.schema,),
                )
                terminated = await cursor.fetchone()
            assert terminated is not None and terminated[0] >= 1
            # A transition is never retried, so it only works on a connection checked first.
            assert (await store.mark_running(job.job_id)).status is JobStatus.RUNNING
        finally:
            await store.close()

    async def test_unavailable_while_the_database_is_away(
        self, postgres_database: Database
    ) -> None:
        upstream = urlsplit(postgres_database.location)
        relay = TcpRelay(upstream.hostname or "127.0.0.1", upstream.port or 5432)
        await relay.start()
        relayed = postgres_database.location.replace(
            f"{upstream.hostname}:{upstream.port or 5432}", f"127.0.0.1:{relay.port}"
        )
        relayed_database = replace(postgres_database, location=relayed)
        store = await relayed_database.open(pool_size=2, timeout_seconds=0.5)
        try:
            (job,) = await batch_of(store)
            await relay.cut()
            with pytest.raises(Unavailable) as caught:
                await store.get(ACCT, job.job_id)
            assert caught.value.retry_after == 1.0
            with pytest.raises(Unavailable):
                await store.mark_running(job.job_id)

            await relay.start()
            assert (await until_available(lambda: store.mark_running(job.job_id))).status == (
                JobStatus.RUNNING
            )
        finally:
            await store.close()
            await relay.cut()


async def until_available(call: Callable[[], Any], attempts: int = 50) -> Any:
    """The result of `call` once it stops raising Unavailable."""
    for _ in range(attempts - 1):
        with contextlib.suppress(Unavailable):
            return await call()
        await asyncio.sleep(0.2)
    return await call()
