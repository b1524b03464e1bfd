"""Tests of the SQLite job store: batches, idempotency, transitions, lineage, listing, recovery."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.router.assets import AssetInfo, AssetRef
from services.router.catalogue import AspectRatio, ImageSize, Stage
from services.router.jobs import (
    HoldState,
    Job,
    JobError,
    JobFilter,
    JobKind,
    JobStatus,
    JobStore,
    NewJob,
    UpscaleMethod,
)
from services.router.policy import Decision
from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

ULID = r"[0-9A-HJKMNP-TV-Z]{26}"
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


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[JobStore]:
    store = await JobStore.open(tmp_path / "jobs.db", clock=clock)
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
    store: JobStore, n: int = 1, *, account: str = "acct-1", key: str = "key-1", **changes: Any
) -> tuple[Job, ...]:
    record = await store.create_batch(
        account_id=account,
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
            account_id="acct-1",
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
            assert (job.batch_id, job.account_id, job.hold_id) == (
                record.batch.batch_id,
                "acct-1",
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

    async def test_same_key_and_request_replays(self, store: JobStore) -> None:
        first = await store.create_batch(
            account_id="a", idempotency_key="k", fingerprint="fp", jobs=[generation()]
        )
        again = await store.create_batch(
            account_id="a", idempotency_key="k", fingerprint="fp", jobs=[generation()]
        )
        assert again.replayed
        assert again.batch == first.batch
        assert again.jobs == first.jobs
        found = await store.find_batch("a", "k")
        assert found is not None and found.replayed and found.jobs == first.jobs
        assert await store.find_batch("a", "other") is None

    async def test_same_key_with_another_request_is_refused(self, store: JobStore) -> None:
        first = await store.create_batch(
            account_id="a", idempotency_key="k", fingerprint="fp", jobs=[generation()]
        )
        with pytest.raises(AlreadyExists) as caught:
            await store.create_batch(
                account_id="a",
                idempotency_key="k",
                fingerprint="another",
                jobs=[generation(), generation(1)],
            )
        assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
        assert caught.value.metadata == {"batch_id": first.batch.batch_id}
        assert (await store.list("a")).jobs == first.jobs

    async def test_keys_are_per_account(self, store: JobStore) -> None:
        mine = await batch_of(store, account="a", key="k")
        theirs = await batch_of(store, account="b", key="k")
        assert mine[0].batch_id != theirs[0].batch_id

    async def test_concurrent_retries_create_one_batch(self, store: JobStore) -> None:
        records = await asyncio.gather(
            *(
                store.create_batch(
                    account_id="a",
                    idempotency_key="k",
                    fingerprint="fp",
                    jobs=[generation(i) for i in range(4)],
                )
                for _ in range(10)
            )
        )
        assert sum(not record.replayed for record in records) == 1
        assert len({record.batch.batch_id for record in records}) == 1
        assert len((await store.list("a")).jobs) == 4

    async def test_bad_batches(self, store: JobStore) -> None:
        with pytest.raises(InvalidArgument) as caught:
            await store.create_batch(
                account_id="a", idempotency_key="", fingerprint="fp", jobs=[generation()]
            )
        assert caught.value.violations[0].field == "idempotency_key"
        with pytest.raises(ValueError, match="at least one job"):
            await store.create_batch(account_id="a", idempotency_key="k", fingerprint="fp", jobs=[])
        with pytest.raises(ValueError, match="seed"):
            await batch_of(store, seed=2**64)
        assert (await store.list("a")).jobs == ()

    async def test_large_seeds_round_trip(self, store: JobStore) -> None:
        (job,) = await batch_of(store, seed=2**64 - 1)
        assert (await store.get("acct-1", job.job_id)).seed == 2**64 - 1


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
        assert await store.get("acct-1", job.job_id) == done

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
            assert await store.get("acct-1", job.job_id) == job

    async def test_illegal_transitions(self, store: JobStore) -> None:
        (job,) = await batch_of(store)
        with pytest.raises(FailedPrecondition) as caught:
            await store.mark_succeeded(job.job_id, ASSET, 2)
        assert caught.value.reason == "ILLEGAL_TRANSITION"
        assert caught.value.metadata["status"] == "queued"
        await store.mark_running(job.job_id)
        with pytest.raises(FailedPrecondition, match="cannot become running"):
            await store.mark_running(job.job_id)
        assert (await store.get("acct-1", job.job_id)).status is JobStatus.RUNNING

    async def test_bad_outcomes_are_refused(self, store: JobStore) -> None:
        (job,) = await batch_of(store)
        await store.mark_running(job.job_id)
        with pytest.raises(ValueError, match="exceeds the 2 credits quoted"):
            await store.mark_succeeded(job.job_id, ASSET, 3)
        with pytest.raises(ValueError, match="negative"):
            await store.mark_succeeded(job.job_id, ASSET, -1)
        with pytest.raises(ValueError, match="drift"):
            await store.mark_succeeded(job.job_id, ASSET, 2, drift=1.5)
        assert (await store.get("acct-1", job.job_id)).status is JobStatus.RUNNING

    async def test_unknown_job(self, store: JobStore) -> None:
        with pytest.raises(NotFound):
            await store.mark_running("job_unknown")


class TestOwnership:
    async def test_another_accounts_job_is_not_found(self, store: JobStore) -> None:
        (job,) = await batch_of(store, account="alice")
        with pytest.raises(NotFound) as other:
            await store.get("mallory", job.job_id)
        with pytest.raises(NotFound) as missing:
            await store.get("mallory", "job_" + "0" * 26)
        # The two answers are indistinguishable, so ids reveal nothing.
        assert other.value.message.replace(job.job_id, "?") == missing.value.message.replace(
            "job_" + "0" * 26, "?"
        )
        with pytest.raises(NotFound):
            await store.children("mallory", job.job_id)
        with pytest.raises(NotFound):
            await store.cancel_job("mallory", job.job_id)
        with pytest.raises(NotFound):
            await store.batch("mallory", job.batch_id)
        with pytest.raises(NotFound):
            await store.cancel_batch("mallory", job.batch_id)
        assert (await store.list("mallory")).jobs == ()
        assert (await store.get("alice", job.job_id)).status is JobStatus.QUEUED

    async def test_asset_ownership(self, store: JobStore) -> None:
        (job,) = await batch_of(store, account="alice")
        await succeeded(store, job)
        assert await store.has_asset("alice", ASSET.asset_id)
        assert not await store.has_asset("mallory", ASSET.asset_id)
        assert not await store.has_asset("alice", "cd" * 32)


class TestLineage:
    async def promote(self, store: JobStore, parent: Job, key: str, account: str = "acct-1") -> Job:
        record = await store.create_batch(
            account_id=account,
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
            account_id="acct-1",
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
        children = await store.children("acct-1", parent.job_id)
        assert [job.job_id for job in children] == [child.job_id, upscaled.job_id]
        assert await store.children("acct-1", child.job_id) == ()

    async def test_parent_of_another_account_is_not_found(self, store: JobStore) -> None:
        (parent,) = await batch_of(store, account="alice")
        with pytest.raises(NotFound):
            await self.promote(store, parent, "steal", account="mallory")
        assert await store.find_batch("mallory", "steal") is None
        assert (await store.list("mallory")).jobs == ()


class TestListing:
    async def test_newest_first_with_filters(self, store: JobStore) -> None:
        explore = await batch_of(store, 3, key="explore")
        refine = await batch_of(
            store, 2, key="refine", tier="pro", stage=Stage.REFINE, quoted_cost=15
        )
        await batch_of(store, 1, account="other", key="explore")
        await succeeded(store, explore[1])
        everything = await store.list("acct-1")
        assert [job.job_id for job in everything.jobs] == [
            job.job_id for job in (*reversed(refine), *reversed(explore))
        ]
        assert everything.next_page_token == ""

        async def ids(filters: JobFilter) -> list[str]:
            return [job.job_id for job in (await store.list("acct-1", filters)).jobs]

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
            page = await store.list("acct-1", page_size=3, page_token=token)
            seen.extend(job.job_id for job in page.jobs)
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert pages == 3
        assert seen == [job.job_id for job in reversed(jobs)]

    async def test_page_size_defaults_and_cap(self, store: JobStore) -> None:
        await batch_of(store, 501)
        default = await store.list("acct-1")
        assert len(default.jobs) == 50 and default.next_page_token
        capped = await store.list("acct-1", page_size=10_000)
        assert len(capped.jobs) == 500 and capped.next_page_token
        rest = await store.list("acct-1", page_size=10_000, page_token=capped.next_page_token)
        assert len(rest.jobs) == 1 and rest.next_page_token == ""

    async def test_bad_paging(self, store: JobStore) -> None:
        await batch_of(store, 3)
        page = await store.list("acct-1", page_size=1)
        with pytest.raises(InvalidArgument) as caught:
            await store.list("acct-1", page_size=-1)
        assert caught.value.violations[0].field == "page_size"
        for token, account, filters in (
            ("garbage!", "acct-1", JobFilter()),
            ("eyJiZWZvcmUiOiAzfQ", "acct-1", JobFilter()),  # {"before": 3}, no scope
            (page.next_page_token, "acct-1", JobFilter(tier="pro")),  # other filters
            (page.next_page_token, "acct-2", JobFilter()),  # other account
        ):
            with pytest.raises(InvalidArgument) as caught:
                await store.list(account, filters, page_token=token)
            assert caught.value.violations[0].field == "page_token"


class TestCancel:
    async def test_cancel_batch_stops_the_unfinished(self, store: JobStore) -> None:
        done, running, queued = await batch_of(store, 3)
        done = await succeeded(store, done)
        await store.mark_running(running.job_id)
        after = await store.cancel_batch("acct-1", done.batch_id, "stopped by the caller")
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
        assert await store.cancel_job("acct-1", done.job_id) == done
        cancelled = await store.cancel_job("acct-1", queued.job_id)
        assert cancelled.status is JobStatus.CANCELLED
        assert await store.cancel_job("acct-1", queued.job_id) == cancelled


class TestHolds:
    async def test_hold_bookkeeping(self, store: JobStore) -> None:
        first, second = await batch_of(store, 2)
        batch_id = first.batch_id
        assert second.batch_id == batch_id
        record = await store.batch("acct-1", batch_id)
        assert (record.batch.hold_id, record.batch.hold_state) == (None, HoldState.NONE)
        attached = await store.attach_hold(batch_id, "hold-9")
        assert (attached.hold_id, attached.hold_state) == ("hold-9", HoldState.OPEN)
        assert await store.attach_hold(batch_id, "hold-9") == attached
        with pytest.raises(FailedPrecondition) as caught:
            await store.attach_hold(batch_id, "hold-10")
        assert caught.value.reason == "HOLD_ALREADY_ATTACHED"
        assert (await store.get("acct-1", first.job_id)).hold_id == "hold-9"
        assert [r.batch.batch_id for r in await store.open_holds()] == [batch_id]

        settled = await store.settle_hold(batch_id, HoldState.CAPTURED, 2)
        assert (settled.hold_state, settled.captured) == (HoldState.CAPTURED, 2)
        assert await store.settle_hold(batch_id, HoldState.CAPTURED, 2) == settled
        with pytest.raises(FailedPrecondition) as caught:
            await store.settle_hold(batch_id, HoldState.RELEASED)
        assert caught.value.reason == "HOLD_NOT_OPEN"
        assert await store.open_holds() == ()

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
    async def test_recovery_after_a_restart(self, tmp_path: Path) -> None:
        path = tmp_path / "jobs.db"
        store = await JobStore.open(path)
        done, running, queued = (
            await store.create_batch(
                account_id="a",
                idempotency_key="k",
                fingerprint="fp",
                jobs=[generation(i) for i in range(3)],
                hold_id="hold-1",
            )
        ).jobs
        await succeeded(store, done)
        await store.mark_running(running.job_id)
        await store.close()

        reopened = await JobStore.open(path)
        try:
            unfinished = await reopened.unfinished()
            assert [(job.job_id, job.status) for job in unfinished] == [
                (running.job_id, JobStatus.RUNNING),
                (queued.job_id, JobStatus.QUEUED),
            ]
            (open_hold,) = await reopened.open_holds()
            assert open_hold.batch.hold_id == "hold-1"
            for job in unfinished:
                await reopened.mark_failed(job.job_id, "ABORTED", "ROUTER_RESTARTED", "restart")
            assert await reopened.unfinished() == ()
        finally:
            await reopened.close()

    async def test_migrations_are_recorded_once(self, tmp_path: Path) -> None:
        path = tmp_path / "jobs.db"
        for _ in range(2):
            await (await JobStore.open(path)).close()
        with sqlite3.connect(path) as connection:
            rows = connection.execute("SELECT version FROM schema_migrations").fetchall()
            mode = connection.execute("PRAGMA journal_mode").fetchone()
        connection.close()
        assert rows == [(1,)]
        assert mode == ("wal",)

    async def test_a_newer_schema_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "jobs.db"
        await (await JobStore.open(path)).close()
        with sqlite3.connect(path) as connection:
            connection.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
        connection.close()
        with pytest.raises(RuntimeError, match="schema version 99"):
            await JobStore.open(path)

    async def test_a_closed_store_refuses_work(self, tmp_path: Path) -> None:
        store = await JobStore.open(tmp_path / "jobs.db")
        await store.close()
        with pytest.raises(RuntimeError):
            await store.get("a", "job_x")
