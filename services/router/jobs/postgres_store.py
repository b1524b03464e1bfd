"""The clustered job store: batches and jobs in PostgreSQL, through a psycopg 3 connection pool.

Router replicas share one database, so every change is safe against the same change racing in
from another replica, without holding locks across round trips:

- `create_batch` inserts the batch with `ON CONFLICT (account_id, idempotency_key) DO NOTHING`:
  of two calls racing with one key, the later waits for the earlier to commit, inserts nothing,
  and replays the winner's batch. The batch and its jobs commit together.
- A transition is one UPDATE guarded by the statuses it may start from
  (`WHERE status = ANY(...)`): of two racing moves one wins and the other is judged against the
  status the winner left, as if it had come second.
- A hold is attached or settled by one UPDATE guarded by the hold's state.
- A batch's lease is renewed by one UPDATE guarded by its owner, and claimed once it has run
  out by one UPDATE over the batches a `SELECT ... FOR UPDATE SKIP LOCKED` picks: of two
  routers claiming at once, each takes batches the other has not locked, and a batch claimed
  meanwhile is seen with its new lease and skipped. Leases are timed by the store's clock, so
  the replicas' clocks must agree to well within a lease.

Transactions run at READ COMMITTED. Deadlocks, serialization failures and lock waits past the
lock timeout roll back and are retried here; only a conflict that outlasts the retries reaches
the caller, as Aborted. A database that cannot be reached is Unavailable, and so is a call
whose connection was lost midway (not retried: its change may or may not have committed).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import DictRow, dict_row

from services.router.assets.store import AssetRef
from services.router.jobs import rows as job_rows
from services.router.jobs.model import (
    Batch,
    BatchRecord,
    HoldState,
    Job,
    JobFilter,
    JobPage,
    JobStatus,
    Lease,
    NewJob,
)
from services.router.jobs.rows import UNFINISHED, Listing, batch_from_row, job_from_row
from services.router.routing.policy import Decision
from services.runtime.errors import Aborted, Internal, InvalidArgument, Unavailable

__all__ = ["MIGRATIONS", "PostgresJobStore"]

_T = TypeVar("_T")
_Connection = psycopg.AsyncConnection[DictRow]

#: Schema versions in order; each is applied once, in one transaction, and recorded in
#: job_schema_migrations (not schema_migrations, so the ledger's tables may share the schema).
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "batches and jobs",
        (
            """CREATE TABLE batches (
                batch_id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                decision TEXT,
                hold_id TEXT,
                hold_state TEXT NOT NULL
                    CHECK (hold_state IN ('none', 'open', 'captured', 'released')),
                captured BIGINT NOT NULL DEFAULT 0 CHECK (captured >= 0),
                create_us BIGINT NOT NULL,
                UNIQUE (account_id, idempotency_key),
                CHECK ((hold_id IS NULL) = (hold_state = 'none'))
            )""",
            # seq orders jobs by creation; a uint64 seed overflows BIGINT, so it is NUMERIC(20).
            """CREATE TABLE jobs (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                job_id TEXT NOT NULL UNIQUE,
                batch_id TEXT NOT NULL REFERENCES batches (batch_id),
                account_id TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('generate', 'promote', 'upscale')),
                status TEXT NOT NULL
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
                tier TEXT NOT NULL,
                stage TEXT NOT NULL,
                prompt TEXT NOT NULL,
                seed NUMERIC(20) NOT NULL CHECK (seed >= 0 AND seed < 18446744073709551616),
                variation INTEGER NOT NULL,
                size TEXT,
                aspect_ratio TEXT NOT NULL,
                width INTEGER NOT NULL CHECK (width > 0),
                height INTEGER NOT NULL CHECK (height > 0),
                quoted_cost BIGINT NOT NULL CHECK (quoted_cost >= 0),
                cost BIGINT NOT NULL DEFAULT 0 CHECK (cost >= 0 AND cost <= quoted_cost),
                parent_job_id TEXT REFERENCES jobs (job_id),
                asset_id TEXT,
                asset_width INTEGER,
                asset_height INTEGER,
                asset_media_type TEXT,
                asset_size_bytes BIGINT,
                reasons TEXT NOT NULL,
                strength DOUBLE PRECISION,
                drift DOUBLE PRECISION CHECK (drift >= 0 AND drift <= 1),
                upscale_factor DOUBLE PRECISION,
                upscale_method TEXT,
                error_code TEXT,
                error_reason TEXT,
                error_message TEXT,
                create_us BIGINT NOT NULL,
                start_us BIGINT,
                finish_us BIGINT,
                trace_id TEXT NOT NULL
            )""",
            "CREATE INDEX jobs_by_account ON jobs (account_id, seq)",
            "CREATE INDEX jobs_by_batch ON jobs (batch_id, variation)",
            "CREATE INDEX jobs_by_parent ON jobs (parent_job_id)",
            "CREATE INDEX jobs_by_asset ON jobs (asset_id)",
            "CREATE INDEX jobs_unfinished ON jobs (seq) WHERE status IN ('queued', 'running')",
            "CREATE INDEX batches_open_holds ON batches (create_us) WHERE hold_state = 'open'",
        ),
    ),
    (
        2,
        "edits and the shortlist mark",
        (
            "ALTER TABLE jobs ADD COLUMN shortlisted BOOLEAN NOT NULL DEFAULT FALSE",
            "ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check",
            "ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check"
            " CHECK (kind IN ('generate', 'promote', 'upscale', 'edit'))",
        ),
    ),
    (
        3,
        "batch leases",
        (
            # NULL in both for a batch a router older than leases wrote.
            "ALTER TABLE batches ADD COLUMN owner TEXT",
            "ALTER TABLE batches ADD COLUMN lease_until_us BIGINT",
            # Unsettled batches by lease expiry: the claim reads only the expired ones (and the
            # never leased, NULL), not the live batches every replica is running.
            "CREATE INDEX batches_unsettled_leases ON batches (lease_until_us)"
            " WHERE hold_state = 'open'",
            # Read only by the start-up recovery the claim replaces.
            "DROP INDEX batches_open_holds",
        ),
    ),
)

_CREATE_MIGRATIONS = """CREATE TABLE IF NOT EXISTS job_schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_us BIGINT NOT NULL
)"""
#: Serialises migrations when several routers start against one database at once.
_MIGRATION_LOCK = 0x74672D6A6F6273  # "tg-jobs"

#: Rolled back and retried: what a concurrent transaction can cause, never the caller.
_CONFLICTS = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
)
_CONFLICT_ATTEMPTS = 8

_JOB_SELECT = """SELECT jobs.*, batches.hold_id
    FROM jobs JOIN batches ON batches.batch_id = jobs.batch_id"""
_SELECT_BATCH_BY_KEY = "SELECT * FROM batches WHERE account_id = %s AND idempotency_key = %s"
_INSERT_BATCH = """INSERT INTO batches (batch_id, account_id, idempotency_key, fingerprint,
        decision, hold_id, hold_state, create_us, owner, lease_until_us)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (account_id, idempotency_key) DO NOTHING
    RETURNING *"""
_INSERT_JOB = """INSERT INTO jobs (job_id, batch_id, account_id, kind, status, tier, stage,
        prompt, seed, variation, size, aspect_ratio, width, height, quoted_cost, parent_job_id,
        reasons, strength, upscale_factor, upscale_method, create_us, trace_id)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
        %s, %s)"""
#: The guarded UPDATE behind every transition; {assignments} are the columns it sets.
_MOVE_JOB = """UPDATE jobs SET {assignments}
    FROM batches
    WHERE batches.batch_id = jobs.batch_id AND jobs.job_id = %(job_id)s
        AND jobs.status = ANY(%(sources)s) AND jobs.quoted_cost >= %(charged)s
        AND (%(account_id)s::text IS NULL OR jobs.account_id = %(account_id)s)
    RETURNING jobs.*, batches.hold_id"""
_RENEW_LEASES = """UPDATE batches SET lease_until_us = %(until)s
    WHERE batch_id = ANY(%(batch_ids)s) AND owner = %(owner)s
    RETURNING batch_id"""
#: Unfinished batches whose lease ran out (or, never leased, that are old enough), oldest
#: first. The conditions on hold_state and status are spelled as in the partial indexes
#: batches_unsettled_leases and jobs_unfinished, so both are used: the first two branches read
#: only expired or never leased batches with open holds; the third reads the jobs in flight,
#: to find the rare batch left with unfinished jobs under a settled hold (the store was away
#: when it stopped).
_CLAIM_ABANDONED = """UPDATE batches SET owner = %(owner)s, lease_until_us = %(until)s
    WHERE batch_id IN (
        SELECT batch_id FROM batches
        WHERE batch_id IN (
                SELECT batch_id FROM batches
                    WHERE hold_state = 'open' AND lease_until_us < %(now)s
                UNION
                SELECT batch_id FROM batches
                    WHERE hold_state = 'open' AND lease_until_us IS NULL
                UNION
                SELECT batch_id FROM jobs WHERE status IN ('queued', 'running'))
            AND (lease_until_us < %(now)s
                OR (lease_until_us IS NULL AND create_us < %(unleased_before)s))
        ORDER BY create_us, batch_id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING *"""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


class PostgresJobStore:
    """A `JobStore` on a PostgreSQL database (tables in the first schema of the search path).

    Open with `await PostgresJobStore.open(dsn)`.
    """

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[_Connection],
        timeout_seconds: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._pool = pool
        self._timeout = timeout_seconds
        self._clock = clock

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        clock: Callable[[], datetime] = _utc_now,
        pool_size: int = 10,
        timeout_seconds: float = 5.0,
    ) -> PostgresJobStore:
        """Connect, bring the schema up to date, and keep up to `pool_size` connections.

        A call waits at most `timeout_seconds` for a connection (then Unavailable) and as long
        for a row lock (then retried, and Aborted if that keeps happening).
        """
        lock_timeout_ms = str(max(1, round(timeout_seconds * 1000)))

        async def configure(connection: _Connection) -> None:
            await connection.execute(
                "SELECT set_config('lock_timeout', %s, false)", (lock_timeout_ms,)
            )

        pool: psycopg_pool.AsyncConnectionPool[_Connection] = psycopg_pool.AsyncConnectionPool(
            dsn,
            connection_class=_Connection,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=configure,
            # A connection the server dropped (a restart, a failover) is replaced before use:
            # no call is retried on a lost connection, as its change may have been applied.
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            timeout=timeout_seconds,
            name="router-jobs",
        )
        try:
            await pool.open(wait=True, timeout=timeout_seconds)
            store = cls(pool, timeout_seconds, clock)
            await store._run(lambda connection: _migrate(connection, store._now_us()))
        except BaseException as error:
            await pool.close()
            if isinstance(error, psycopg_pool.PoolTimeout):
                raise Unavailable(
                    f"cannot connect to the job database within {timeout_seconds} s",
                    retry_after=1.0,
                ) from error
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def create_batch(
        self,
        *,
        account_id: str,
        idempotency_key: str,
        fingerprint: str,
        jobs: Sequence[NewJob],
        decision: Decision | None = None,
        hold_id: str | None = None,
        lease: Lease | None = None,
    ) -> BatchRecord:
        job_rows.check_batch_request(account_id, idempotency_key, jobs)

        async def create(connection: _Connection) -> BatchRecord:
            async with connection.transaction():
                existing = await _fetchone(
                    connection, _SELECT_BATCH_BY_KEY, (account_id, idempotency_key)
                )
                if existing is None:
                    await _check_parents(connection, account_id, jobs)
                    created = await self._insert_batch(
                        connection,
                        account_id,
                        idempotency_key,
                        fingerprint,
                        jobs,
                        decision,
                        hold_id,
                        lease,
                    )
                    if created is not None:
                        return created
                    # A call with the same key committed first: ON CONFLICT waited for it, and
                    # this statement, with a new snapshot, sees its batch.
                    existing = await _fetchone(
                        connection, _SELECT_BATCH_BY_KEY, (account_id, idempotency_key)
                    )
                    assert existing is not None, "the conflicting batch is committed"
                if existing["fingerprint"] != fingerprint:
                    raise job_rows.key_reused(idempotency_key, existing["batch_id"])
                (record,) = await _records(connection, [existing], replayed=True)
                return record

        return await self._run(create)

    async def find_batch(self, account_id: str, idempotency_key: str) -> BatchRecord | None:
        async def find(connection: _Connection) -> BatchRecord | None:
            row = await _fetchone(connection, _SELECT_BATCH_BY_KEY, (account_id, idempotency_key))
            if row is None:
                return None
            (record,) = await _records(connection, [row], replayed=True)
            return record

        return await self._run(find)

    async def batch(self, account_id: str, batch_id: str) -> BatchRecord:
        async def find(connection: _Connection) -> BatchRecord:
            (record,) = await _records(
                connection, [await _batch_row(connection, account_id, batch_id)]
            )
            return record

        return await self._run(find)

    async def attach_hold(self, batch_id: str, hold_id: str) -> Batch:
        async def attach(connection: _Connection) -> Batch:
            row = await _fetchone(
                connection,
                "UPDATE batches SET hold_id = %s, hold_state = %s"
                " WHERE batch_id = %s AND hold_state = %s RETURNING *",
                (hold_id, HoldState.OPEN.value, batch_id, HoldState.NONE.value),
            )
            if row is not None:
                return batch_from_row(row)
            # A hold, once attached, is never detached: the refusal cannot go stale.
            row = await _batch_row(connection, None, batch_id)
            if row["hold_id"] != hold_id:
                raise job_rows.hold_already_attached(batch_id, row["hold_id"])
            return batch_from_row(row)

        return await self._run(attach)

    async def settle_hold(self, batch_id: str, state: HoldState, captured: int = 0) -> Batch:
        job_rows.check_settlement(state, captured)

        async def settle(connection: _Connection) -> Batch:
            row = await _fetchone(
                connection,
                "UPDATE batches SET hold_state = %s, captured = %s"
                " WHERE batch_id = %s AND hold_state = %s RETURNING *",
                (state.value, captured, batch_id, HoldState.OPEN.value),
            )
            if row is not None:
                return batch_from_row(row)
            # A settled hold never opens again: the refusal cannot go stale.
            row = await _batch_row(connection, None, batch_id)
            if row["hold_state"] != state or row["captured"] != captured:
                raise job_rows.hold_not_open(batch_id, row["hold_state"])
            return batch_from_row(row)

        return await self._run(settle)

    async def forget_batch(self, batch_id: str) -> bool:
        async def forget(connection: _Connection) -> bool:
            async with connection.transaction():
                # Locked first, so that no settlement or job move slips in between the check
                # and the deletes.
                row = await _fetchone(
                    connection, "SELECT 1 FROM batches WHERE batch_id = %s FOR UPDATE", (batch_id,)
                )
                if row is None:
                    return False
                if await _fetchone(connection, job_rows.FORGETTABLE_BATCH, (batch_id,)) is None:
                    return False
                await connection.execute("DELETE FROM jobs WHERE batch_id = %s", (batch_id,))
                await connection.execute("DELETE FROM batches WHERE batch_id = %s", (batch_id,))
                return True

        return await self._run(forget)

    async def renew_leases(self, lease: Lease, batch_ids: Sequence[str]) -> frozenset[str]:
        if not batch_ids:
            return frozenset()

        async def renew(connection: _Connection) -> frozenset[str]:
            cursor = await connection.execute(
                _RENEW_LEASES,
                {
                    "until": self._now_us() + _micros(lease.seconds),
                    "batch_ids": list(batch_ids),
                    "owner": lease.owner,
                },
            )
            return frozenset(row["batch_id"] for row in await cursor.fetchall())

        return await self._run(renew)

    async def claim_abandoned(
        self, lease: Lease, *, unleased_seconds: float, limit: int
    ) -> tuple[BatchRecord, ...]:
        async def claim(connection: _Connection) -> tuple[BatchRecord, ...]:
            now_us = self._now_us()
            cursor = await connection.execute(
                _CLAIM_ABANDONED,
                {
                    "owner": lease.owner,
                    "until": now_us + _micros(lease.seconds),
                    "now": now_us,
                    "unleased_before": now_us - _micros(unleased_seconds),
                    "limit": limit,
                },
            )
            rows = sorted(
                await cursor.fetchall(), key=lambda row: (row["create_us"], row["batch_id"])
            )
            return await _records(connection, rows)

        return await self._run(claim)

    async def mark_running(self, job_id: str) -> Job:
        return await self._transition(job_id, JobStatus.RUNNING, {}, start=True)

    async def mark_succeeded(
        self,
        job_id: str,
        asset: AssetRef,
        cost: int,
        drift: float | None = None,
        fallback: tuple[str, tuple[str, ...]] | None = None,
    ) -> Job:
        changes = job_rows.succeeded_changes(asset, cost, drift, fallback)
        return await self._transition(job_id, JobStatus.SUCCEEDED, changes, charged=cost)

    async def mark_failed(self, job_id: str, code: str, reason: str, message: str) -> Job:
        changes = job_rows.failed_changes(code, reason, message)
        return await self._transition(job_id, JobStatus.FAILED, changes)

    async def mark_cancelled(self, job_id: str, message: str = "cancelled by the caller") -> Job:
        changes = job_rows.cancelled_changes(message)
        return await self._transition(job_id, JobStatus.CANCELLED, changes)

    async def cancel_job(
        self, account_id: str, job_id: str, message: str = "cancelled by the caller"
    ) -> Job:
        changes = job_rows.cancelled_changes(message)

        async def cancel(connection: _Connection) -> Job:
            row = await self._move(
                connection, job_id, JobStatus.CANCELLED, changes, account_id=account_id
            )
            if row is not None:
                return job_from_row(row)
            # Missing, another account's, or final already: a final job never changes again.
            return await _job(connection, account_id, job_id)

        return await self._run(cancel)

    async def cancel_batch(
        self, account_id: str, batch_id: str, message: str = "cancelled by the caller"
    ) -> tuple[Job, ...]:
        async def cancel(connection: _Connection) -> tuple[Job, ...]:
            async with connection.transaction():
                await _batch_row(connection, account_id, batch_id)
                await connection.execute(
                    """UPDATE jobs SET status = %s, error_code = 'CANCELLED',
                        error_reason = 'CANCELLED', error_message = %s, finish_us = %s
                    WHERE batch_id = %s AND status = ANY(%s)""",
                    (
                        JobStatus.CANCELLED.value,
                        message,
                        self._now_us(),
                        batch_id,
                        list(UNFINISHED),
                    ),
                )
                return await _batch_jobs(connection, batch_id)

        return await self._run(cancel)

    async def get(self, account_id: str, job_id: str) -> Job:
        return await self._run(lambda connection: _job(connection, account_id, job_id))

    async def children(self, account_id: str, job_id: str) -> tuple[Job, ...]:
        async def find(connection: _Connection) -> tuple[Job, ...]:
            await _job(connection, account_id, job_id)
            cursor = await connection.execute(
                _JOB_SELECT + " WHERE jobs.parent_job_id = %s ORDER BY jobs.seq", (job_id,)
            )
            return tuple(job_from_row(row) for row in await cursor.fetchall())

        return await self._run(find)

    async def list(
        self,
        account_id: str,
        filters: JobFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        listing = Listing.of(account_id, filters, page_size, page_token)
        clauses: list[sql.Composable] = [sql.SQL("jobs.account_id = %s")]
        arguments: list[Any] = [listing.account_id]
        for column, value in listing.conditions:
            clauses.append(sql.SQL("jobs.{} = %s").format(sql.Identifier(column)))
            arguments.append(value)
        if listing.before is not None:
            clauses.append(sql.SQL("jobs.seq < %s"))
            arguments.append(listing.before)
        arguments.append(listing.limit + 1)
        query = sql.SQL("{select} WHERE {conditions} ORDER BY jobs.seq DESC LIMIT %s").format(
            select=sql.SQL(_JOB_SELECT), conditions=sql.SQL(" AND ").join(clauses)
        )

        async def page(connection: _Connection) -> JobPage:
            cursor = await connection.execute(query, arguments)
            return listing.page(await cursor.fetchall())

        return await self._run(page)

    async def set_shortlisted(self, account_id: str, job_id: str, shortlisted: bool) -> Job:
        async def mark(connection: _Connection) -> Job:
            await connection.execute(
                "UPDATE jobs SET shortlisted = %s WHERE job_id = %s AND account_id = %s",
                (shortlisted, job_id, account_id),
            )
            return await _job(connection, account_id, job_id)

        return await self._run(mark)

    async def has_asset(self, account_id: str, asset_id: str) -> bool:
        async def find(connection: _Connection) -> bool:
            row = await _fetchone(
                connection,
                "SELECT 1 AS found FROM jobs WHERE asset_id = %s AND account_id = %s LIMIT 1",
                (asset_id, account_id),
            )
            return row is not None

        return await self._run(find)

    def _now_us(self) -> int:
        return job_rows.to_us(self._clock())

    async def _insert_batch(
        self,
        connection: _Connection,
        account_id: str,
        idempotency_key: str,
        fingerprint: str,
        jobs: Sequence[NewJob],
        decision: Decision | None,
        hold_id: str | None,
        lease: Lease | None,
    ) -> BatchRecord | None:
        """Insert the batch and its jobs; None when a batch with the key already exists."""
        now_us = self._now_us()
        batch_id = job_rows.new_id("bat_", now_us)
        row = await _fetchone(
            connection,
            _INSERT_BATCH,
            (
                batch_id,
                account_id,
                idempotency_key,
                fingerprint,
                None if decision is None else job_rows.encode_decision(decision),
                hold_id,
                (HoldState.NONE if hold_id is None else HoldState.OPEN).value,
                now_us,
                None if lease is None else lease.owner,
                None if lease is None else now_us + _micros(lease.seconds),
            ),
        )
        if row is None:
            return None
        async with connection.cursor() as cursor:
            await cursor.executemany(
                _INSERT_JOB,
                [
                    _job_params(new, job_rows.new_id("job_", now_us), batch_id, account_id, now_us)
                    for new in jobs
                ],
            )
        return BatchRecord(batch_from_row(row), await _batch_jobs(connection, batch_id))

    async def _transition(
        self,
        job_id: str,
        target: JobStatus,
        changes: dict[str, Any],
        *,
        start: bool = False,
        charged: int | None = None,
    ) -> Job:
        async def move(connection: _Connection) -> Job:
            # Ends: a lap that finds the move still allowed saw the job move forward since the
            # UPDATE looked, and a job moves forward at most twice.
            while True:
                row = await self._move(
                    connection, job_id, target, changes, start=start, charged=charged
                )
                if row is not None:
                    return job_from_row(row)
                job = await _job(connection, None, job_id)
                if job.status not in job_rows.SOURCES[target]:
                    raise job_rows.refusal(job, target)
                job_rows.check_charge(job, charged)

        return await self._run(move)

    async def _move(
        self,
        connection: _Connection,
        job_id: str,
        target: JobStatus,
        changes: dict[str, Any],
        *,
        start: bool = False,
        charged: int | None = None,
        account_id: str | None = None,
    ) -> DictRow | None:
        """Apply a transition if the job's status allows it; the job's row after, or None."""
        columns = {**changes, "status": target.value}
        columns["start_us" if start else "finish_us"] = self._now_us()
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
            for column in columns
        )
        return await _fetchone(
            connection,
            sql.SQL(_MOVE_JOB).format(assignments=assignments),
            {
                **columns,
                "job_id": job_id,
                "sources": [status.value for status in job_rows.SOURCES[target]],
                "charged": charged or 0,
                "account_id": account_id,
            },
        )

    async def _run(self, work: Callable[[_Connection], Awaitable[_T]]) -> _T:
        """Run `work` on a pooled connection, retrying conflicts, translating failures."""
        conflicts = 0
        while True:
            try:
                async with self._pool.connection(timeout=self._timeout) as connection:
                    return await work(connection)
            except _CONFLICTS as error:
                conflicts += 1
                if conflicts >= _CONFLICT_ATTEMPTS:
                    raise Aborted(
                        "the job records were changed concurrently; retry",
                        reason="WRITE_CONFLICT",
                    ) from error
            except psycopg_pool.PoolClosed:
                raise RuntimeError("the job store is closed") from None
            except psycopg_pool.PoolTimeout as error:
                raise Unavailable(
                    f"no job database connection within {self._timeout} s", retry_after=1.0
                ) from error
            except psycopg.OperationalError as error:
                raise Unavailable(
                    f"the job database is unreachable: {error}", retry_after=1.0
                ) from error
            except psycopg.DataError as error:
                # Values the checks let through but PostgreSQL cannot hold, such as U+0000 in
                # an id being looked up.
                raise InvalidArgument(
                    f"the job database cannot hold a value: {error}", reason="UNSTORABLE_VALUE"
                ) from error
            except psycopg.Error as error:
                raise Internal(f"the job database refused a change: {error}") from error
            # Jittered so that transactions that just collided do not collide again.
            await asyncio.sleep(random.uniform(0, 0.002 * 2**conflicts))


async def _migrate(connection: _Connection, now_us: int) -> None:
    latest = MIGRATIONS[-1][0]
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await connection.execute(_CREATE_MIGRATIONS)
        cursor = await connection.execute("SELECT version FROM job_schema_migrations")
        applied = {row["version"] for row in await cursor.fetchall()}
        newer = [version for version in applied if version > latest]
        if newer:
            raise RuntimeError(
                f"the job database is at schema version {max(newer)}; this router knows"
                f" up to {latest}"
            )
        for version, description, statements in MIGRATIONS:
            if version in applied:
                continue
            for statement in statements:
                await connection.execute(statement)
            await connection.execute(
                "INSERT INTO job_schema_migrations (version, description, applied_us)"
                " VALUES (%s, %s, %s)",
                (version, description, now_us),
            )


async def _fetchone(
    connection: _Connection, query: str | sql.Composed, params: Any = None
) -> DictRow | None:
    cursor = await connection.execute(query, params)
    return await cursor.fetchone()


async def _batch_row(connection: _Connection, account_id: str | None, batch_id: str) -> DictRow:
    row = await _fetchone(connection, "SELECT * FROM batches WHERE batch_id = %s", (batch_id,))
    if row is None or (account_id is not None and row["account_id"] != account_id):
        raise job_rows.batch_not_found(batch_id)
    return row


async def _job(connection: _Connection, account_id: str | None, job_id: str) -> Job:
    row = await _fetchone(connection, _JOB_SELECT + " WHERE jobs.job_id = %s", (job_id,))
    if row is None or (account_id is not None and row["account_id"] != account_id):
        raise job_rows.job_not_found(job_id)
    return job_from_row(row)


async def _check_parents(connection: _Connection, account_id: str, jobs: Sequence[NewJob]) -> None:
    """NotFound for the first parent job that is not the account's."""
    parents = list(dict.fromkeys(new.parent_job_id for new in jobs if new.parent_job_id))
    if not parents:
        return
    cursor = await connection.execute(
        "SELECT job_id FROM jobs WHERE job_id = ANY(%s) AND account_id = %s",
        (parents, account_id),
    )
    found = {row["job_id"] for row in await cursor.fetchall()}
    for parent in parents:
        if parent not in found:
            raise job_rows.job_not_found(parent)


async def _batch_jobs(connection: _Connection, batch_id: str) -> tuple[Job, ...]:
    cursor = await connection.execute(
        _JOB_SELECT + " WHERE jobs.batch_id = %s ORDER BY jobs.variation, jobs.seq", (batch_id,)
    )
    return tuple(job_from_row(row) for row in await cursor.fetchall())


async def _records(
    connection: _Connection, batch_rows: Sequence[DictRow], *, replayed: bool = False
) -> tuple[BatchRecord, ...]:
    """The batches with their jobs, read in one query."""
    jobs: dict[str, list[Job]] = {row["batch_id"]: [] for row in batch_rows}
    if jobs:
        cursor = await connection.execute(
            _JOB_SELECT
            + " WHERE jobs.batch_id = ANY(%s) ORDER BY jobs.batch_id, jobs.variation, jobs.seq",
            (list(jobs),),
        )
        for row in await cursor.fetchall():
            jobs[row["batch_id"]].append(job_from_row(row))
    return tuple(
        BatchRecord(batch_from_row(row), tuple(jobs[row["batch_id"]]), replayed)
        for row in batch_rows
    )


def _job_params(
    new: NewJob, job_id: str, batch_id: str, account_id: str, now_us: int
) -> tuple[Any, ...]:
    return (
        job_id,
        batch_id,
        account_id,
        new.kind.value,
        JobStatus.QUEUED.value,
        new.tier,
        new.stage.value,
        new.prompt,
        new.seed,
        new.variation,
        None if new.size is None else new.size.value,
        new.aspect_ratio.value,
        new.width,
        new.height,
        new.quoted_cost,
        new.parent_job_id,
        job_rows.encode_reasons(new.reasons),
        new.strength,
        new.upscale_factor,
        None if new.upscale_method is None else new.upscale_method.value,
        now_us,
        new.trace_id,
    )
