"""Which SQLite job-store commits wait for the disk: only marking a job succeeded.

White-box on purpose: durability cannot be seen from outside without pulling the power, so
these tests trace the statements the store's connection runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from services.router.assets.store import AssetInfo, AssetRef
from services.router.jobs.databases import SqliteDatabase
from services.router.jobs.model import JobKind, NewJob, Owner
from services.router.jobs.sql_store import SqlJobStore
from services.runtime.errors import FailedPrecondition

ASSET = AssetRef("cd" * 32, AssetInfo(1024, 1024, "image/png", 222))
OWNER = Owner("tenant-a", "acct")
NEW_JOB = NewJob(
    kind=JobKind.GENERATE, prompt="a lighthouse", seed=7, width=1024, height=1024, quoted_cost=2
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlJobStore]:
    store = await SqlJobStore.open_sqlite(tmp_path / "router.db")
    try:
        yield store
    finally:
        await store.close()


async def _on_connection(store: SqlJobStore, work: Callable[[sqlite3.Connection], Any]) -> Any:
    """`work` on the store's connection, on the thread that owns it."""
    database = store._database
    assert isinstance(database, SqliteDatabase) and database._connection is not None
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(database._executor, work, database._connection)


async def _traced(store: SqlJobStore) -> list[str]:
    statements: list[str] = []
    await _on_connection(store, lambda db: db.set_trace_callback(statements.append))
    return statements


async def _synchronous(store: SqlJobStore) -> int:
    return int(
        await _on_connection(store, lambda db: db.execute("PRAGMA synchronous").fetchone()[0])
    )


def _pragmas(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith(("PRAGMA synchronous", "COMMIT"))]


async def test_only_the_succeeded_mark_commits_with_full_sync(store):
    record = await store.create_batch(
        owner=OWNER, idempotency_key="k", fingerprint="f", jobs=[NEW_JOB], hold_id="h"
    )
    job_id = record.jobs[0].job_id
    statements = await _traced(store)

    await store.mark_running(job_id)
    running = _pragmas(statements)
    statements.clear()
    await store.mark_succeeded(job_id, ASSET, 2)
    succeeded = _pragmas(statements)

    assert running == ["COMMIT"]
    assert succeeded == ["PRAGMA synchronous = FULL", "COMMIT", "PRAGMA synchronous = NORMAL"]
    assert await _synchronous(store) == 1  # NORMAL


async def test_a_refused_succeeded_mark_restores_normal_sync(store):
    record = await store.create_batch(
        owner=OWNER, idempotency_key="k", fingerprint="f", jobs=[NEW_JOB], hold_id="h"
    )
    job_id = record.jobs[0].job_id
    await store.mark_failed(job_id, "UNAVAILABLE", "BACKEND_DOWN", "the generator is down")
    statements = await _traced(store)

    with pytest.raises(FailedPrecondition):
        await store.mark_succeeded(job_id, ASSET, 2)

    assert _pragmas(statements) == ["PRAGMA synchronous = FULL", "PRAGMA synchronous = NORMAL"]
    assert "ROLLBACK" in statements
    assert await _synchronous(store) == 1  # NORMAL


async def test_settling_and_batches_commit_without_waiting_for_the_disk(store):
    statements = await _traced(store)
    record = await store.create_batch(
        owner=OWNER, idempotency_key="k", fingerprint="f", jobs=[NEW_JOB], hold_id="h"
    )
    await store.mark_cancelled(record.jobs[0].job_id)
    await store.cancel_batch(OWNER, record.batch.batch_id)

    assert "PRAGMA synchronous = FULL" not in statements
    assert statements.count("COMMIT") == 3
