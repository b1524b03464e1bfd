"""The embedded job store: batches and jobs in one SQLite database (WAL), for one router process.

One router owns the file, so a batch another process left unfinished was abandoned: a claim
takes it at once, and a lease is only its owner's name, never timed.

The API is async. SQLite calls block, so they all run on one dedicated thread that owns the
connection; calls are serialized there, and each write is one `BEGIN IMMEDIATE` transaction.

Only marking a job succeeded waits for the disk (`synchronous=FULL`): it must survive a power
loss because the ledger charges for the job next. Every other commit is `synchronous=NORMAL`,
atomic and kept through a crash of the process, and made durable by the next FULL commit; after
a power loss it may be lost, which costs nothing: an unrecorded batch's hold expires in the
ledger, a retried request finds the same hold by its key, an unrecorded start or failure leaves
the job unfinished for `recover`, and an unrecorded settlement is settled again by `recover`
with the same idempotency keys. A FULL commit is an fsync: up to several ms on a shared disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
from services.router.jobs.rows import Listing, batch_from_row, job_from_row
from services.router.routing.policy import Decision
from services.runtime.errors import FailedPrecondition

__all__ = ["MIGRATIONS", "SqliteJobStore"]

_T = TypeVar("_T")

#: Schema versions in order; each is applied once, in one transaction, and recorded in
#: schema_migrations when a store opens the database.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "batches and jobs",
        (
            """
            CREATE TABLE batches (
                batch_id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                decision TEXT,
                hold_id TEXT,
                hold_state TEXT NOT NULL,
                captured INTEGER NOT NULL DEFAULT 0,
                create_us INTEGER NOT NULL,
                UNIQUE (account_id, idempotency_key)
            )
            """,
            # seq orders jobs by creation; seed is TEXT because a uint64 overflows INTEGER.
            """
            CREATE TABLE jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                job_id TEXT NOT NULL UNIQUE,
                batch_id TEXT NOT NULL REFERENCES batches (batch_id),
                account_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                status TEXT NOT NULL,
                tier TEXT NOT NULL,
                stage TEXT NOT NULL,
                prompt TEXT NOT NULL,
                seed TEXT NOT NULL,
                variation INTEGER NOT NULL,
                size TEXT,
                aspect_ratio TEXT NOT NULL,
                width INTEGER NOT NULL,
                height INTEGER NOT NULL,
                quoted_cost INTEGER NOT NULL,
                cost INTEGER NOT NULL DEFAULT 0,
                parent_job_id TEXT REFERENCES jobs (job_id),
                asset_id TEXT,
                asset_width INTEGER,
                asset_height INTEGER,
                asset_media_type TEXT,
                asset_size_bytes INTEGER,
                reasons TEXT NOT NULL,
                strength REAL,
                drift REAL,
                upscale_factor REAL,
                upscale_method TEXT,
                error_code TEXT,
                error_reason TEXT,
                error_message TEXT,
                create_us INTEGER NOT NULL,
                start_us INTEGER,
                finish_us INTEGER,
                trace_id TEXT NOT NULL
            )
            """,
            "CREATE INDEX jobs_by_account ON jobs (account_id, seq)",
            "CREATE INDEX jobs_by_batch ON jobs (batch_id, variation)",
            "CREATE INDEX jobs_by_parent ON jobs (parent_job_id)",
            "CREATE INDEX jobs_by_asset ON jobs (asset_id)",
            "CREATE INDEX jobs_unfinished ON jobs (seq) WHERE status IN ('queued', 'running')",
            "CREATE INDEX batches_open_holds ON batches (batch_id) WHERE hold_state = 'open'",
        ),
    ),
    (
        2,
        "edits and the shortlist mark",
        (
            "ALTER TABLE jobs ADD COLUMN shortlisted INTEGER NOT NULL DEFAULT 0"
            " CHECK (shortlisted IN (0, 1))",
        ),
    ),
    (
        3,
        "batch owners",
        # NULL for a batch a router older than owners wrote.
        ("ALTER TABLE batches ADD COLUMN owner TEXT",),
    ),
)

_JOB_SELECT = """
    SELECT jobs.*, batches.hold_id AS hold_id
    FROM jobs JOIN batches ON batches.batch_id = jobs.batch_id
"""
#: Unfinished batches of another owner (or none), oldest first; the conditions on hold_state
#: and status are spelled as in the partial indexes batches_open_holds and jobs_unfinished.
_CLAIM_ABANDONED = """
    UPDATE batches SET owner = :owner
    WHERE batch_id IN (
        SELECT batch_id FROM batches
        WHERE owner IS NOT :owner AND batch_id IN (
            SELECT batch_id FROM batches WHERE hold_state = 'open'
            UNION
            SELECT batch_id FROM jobs WHERE status IN ('queued', 'running'))
        ORDER BY create_us, batch_id
        LIMIT :limit)
    RETURNING *
"""


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any]) -> dict[str, Any]:
    """Inserts `row` into `table`; the row as stored, its columns' defaults included."""
    columns = ", ".join(row)
    marks = ", ".join("?" * len(row))
    stored = db.execute(
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING *", tuple(row.values())
    ).fetchone()
    return dict(zip(stored.keys(), stored, strict=True))


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqliteJobStore:
    """A `JobStore` on a SQLite file. Open with `await SqliteJobStore.open(path)`."""

    def __init__(self, executor: ThreadPoolExecutor, clock: Callable[[], datetime]) -> None:
        self._executor = executor
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> SqliteJobStore:
        """Open (creating if needed) the database at `path` and bring its schema up to date."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")
        store = cls(executor, clock)
        try:
            await store._call(lambda: store._connect(path))
        except BaseException:
            executor.shutdown(wait=True)
            raise
        return store

    async def close(self) -> None:
        await self._call(self._disconnect)
        self._closed = True
        self._executor.shutdown(wait=True)

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
        owner = None if lease is None else lease.owner
        return await self._call(
            lambda: self._create_batch(
                account_id, idempotency_key, fingerprint, jobs, decision, hold_id, owner
            )
        )

    async def find_batch(self, account_id: str, idempotency_key: str) -> BatchRecord | None:
        def find() -> BatchRecord | None:
            row = self._db.execute(
                "SELECT * FROM batches WHERE account_id = ? AND idempotency_key = ?",
                (account_id, idempotency_key),
            ).fetchone()
            return None if row is None else self._record(row, replayed=True)

        return await self._call(find)

    async def batch(self, account_id: str, batch_id: str) -> BatchRecord:
        return await self._call(lambda: self._record(self._batch_row(account_id, batch_id)))

    async def attach_hold(self, batch_id: str, hold_id: str) -> Batch:
        def attach() -> Batch:
            with self._transaction():
                row = self._batch_row(None, batch_id)
                if row["hold_id"] == hold_id:
                    return batch_from_row(row)
                if row["hold_id"] is not None:
                    raise job_rows.hold_already_attached(batch_id, row["hold_id"])
                self._db.execute(
                    "UPDATE batches SET hold_id = ?, hold_state = ? WHERE batch_id = ?",
                    (hold_id, HoldState.OPEN, batch_id),
                )
                return batch_from_row(self._batch_row(None, batch_id))

        return await self._call(attach)

    async def settle_hold(self, batch_id: str, state: HoldState, captured: int = 0) -> Batch:
        job_rows.check_settlement(state, captured)

        def settle() -> Batch:
            with self._transaction():
                row = self._batch_row(None, batch_id)
                if row["hold_state"] == state and row["captured"] == captured:
                    return batch_from_row(row)
                if row["hold_state"] != HoldState.OPEN:
                    raise job_rows.hold_not_open(batch_id, row["hold_state"])
                self._db.execute(
                    "UPDATE batches SET hold_state = ?, captured = ? WHERE batch_id = ?",
                    (state, captured, batch_id),
                )
                return batch_from_row(self._batch_row(None, batch_id))

        return await self._call(settle)

    async def forget_batch(self, batch_id: str) -> bool:
        def forget() -> bool:
            with self._transaction():
                query = job_rows.FORGETTABLE_BATCH.replace("%s", "?")
                if self._db.execute(query, (batch_id,)).fetchone() is None:
                    return False
                self._db.execute("DELETE FROM jobs WHERE batch_id = ?", (batch_id,))
                self._db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
                return True

        return await self._call(forget)

    async def renew_leases(self, lease: Lease, batch_ids: Sequence[str]) -> frozenset[str]:
        # A lease here is never timed: renewing only tells which batches are still the owner's.
        def held() -> frozenset[str]:
            marks = ", ".join("?" * len(batch_ids))
            rows = self._db.execute(
                f"SELECT batch_id FROM batches WHERE owner = ? AND batch_id IN ({marks})",
                (lease.owner, *batch_ids),
            ).fetchall()
            return frozenset(row["batch_id"] for row in rows)

        return await self._call(held) if batch_ids else frozenset()

    async def claim_abandoned(
        self, lease: Lease, *, unleased_seconds: float, limit: int
    ) -> tuple[BatchRecord, ...]:
        def claim() -> tuple[BatchRecord, ...]:
            with self._transaction():
                rows = self._db.execute(
                    _CLAIM_ABANDONED, {"owner": lease.owner, "limit": limit}
                ).fetchall()
                rows.sort(key=lambda row: (row["create_us"], row["batch_id"]))
                return tuple(self._record(row) for row in rows)

        return await self._call(claim)

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
        job = await self.get(account_id, job_id)
        if job.status.is_final:
            return job
        try:
            return await self.mark_cancelled(job_id, message)
        except FailedPrecondition:
            # It reached a final state between the read and the cancel.
            return await self.get(account_id, job_id)

    async def cancel_batch(
        self, account_id: str, batch_id: str, message: str = "cancelled by the caller"
    ) -> tuple[Job, ...]:
        def cancel() -> tuple[Job, ...]:
            with self._transaction():
                self._batch_row(account_id, batch_id)
                self._db.execute(
                    """
                    UPDATE jobs SET status = ?, error_code = 'CANCELLED',
                        error_reason = 'CANCELLED', error_message = ?, finish_us = ?
                    WHERE batch_id = ? AND status IN ('queued', 'running')
                    """,
                    (JobStatus.CANCELLED, message, self._now_us(), batch_id),
                )
                return self._batch_jobs(batch_id)

        return await self._call(cancel)

    async def get(self, account_id: str, job_id: str) -> Job:
        return await self._call(lambda: self._job(account_id, job_id))

    async def children(self, account_id: str, job_id: str) -> tuple[Job, ...]:
        def find() -> tuple[Job, ...]:
            self._job(account_id, job_id)
            rows = self._db.execute(
                _JOB_SELECT + " WHERE jobs.parent_job_id = ? ORDER BY jobs.seq", (job_id,)
            ).fetchall()
            return tuple(job_from_row(row) for row in rows)

        return await self._call(find)

    async def list(
        self,
        account_id: str,
        filters: JobFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        listing = Listing.of(account_id, filters, page_size, page_token)

        def page() -> JobPage:
            query = _JOB_SELECT + " WHERE jobs.account_id = ?"
            arguments: list[Any] = [listing.account_id]
            for column, value in listing.conditions:
                query += f" AND jobs.{column} = ?"
                arguments.append(value)
            if listing.before is not None:
                query += " AND jobs.seq < ?"
                arguments.append(listing.before)
            query += " ORDER BY jobs.seq DESC LIMIT ?"
            arguments.append(listing.limit + 1)
            return listing.page(self._db.execute(query, arguments).fetchall())

        return await self._call(page)

    async def set_shortlisted(self, account_id: str, job_id: str, shortlisted: bool) -> Job:
        def mark() -> Job:
            with self._transaction():
                self._db.execute(
                    "UPDATE jobs SET shortlisted = ? WHERE job_id = ? AND account_id = ?",
                    (int(shortlisted), job_id, account_id),
                )
                return self._job(account_id, job_id)

        return await self._call(mark)

    async def has_asset(self, account_id: str, asset_id: str) -> bool:
        def find() -> bool:
            row = self._db.execute(
                "SELECT 1 FROM jobs WHERE asset_id = ? AND account_id = ? LIMIT 1",
                (asset_id, account_id),
            ).fetchone()
            return row is not None

        return await self._call(find)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the job store is closed")
        return self._connection

    async def _call(self, work: Callable[[], _T]) -> _T:
        if self._closed:
            raise RuntimeError("the job store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _connect(self, path: Path) -> None:
        # isolation_level=None: transactions are begun explicitly, as BEGIN IMMEDIATE, so a
        # read-then-write never has to upgrade its lock.
        connection = sqlite3.connect(path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA busy_timeout = 5000")
            self._connection = connection
            self._migrate()
        except BaseException:
            self._connection = None
            connection.close()
            raise

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _migrate(self) -> None:
        self._db.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                description TEXT NOT NULL,
                applied_us INTEGER NOT NULL
            )
            """
        )
        latest = MIGRATIONS[-1][0]
        with self._transaction():
            applied = {row[0] for row in self._db.execute("SELECT version FROM schema_migrations")}
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
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, description, self._now_us()),
                )

    def _transaction(self, *, durable: bool = False) -> _Transaction:
        return _Transaction(self._db, durable)

    def _now_us(self) -> int:
        return job_rows.to_us(self._clock())

    def _create_batch(
        self,
        account_id: str,
        idempotency_key: str,
        fingerprint: str,
        jobs: Sequence[NewJob],
        decision: Decision | None,
        hold_id: str | None,
        owner: str | None,
    ) -> BatchRecord:
        with self._transaction():
            existing = self._db.execute(
                "SELECT * FROM batches WHERE account_id = ? AND idempotency_key = ?",
                (account_id, idempotency_key),
            ).fetchone()
            if existing is not None:
                if existing["fingerprint"] != fingerprint:
                    raise job_rows.key_reused(idempotency_key, existing["batch_id"])
                return self._record(existing, replayed=True)
            for new in jobs:
                if new.parent_job_id is not None:
                    self._job(account_id, new.parent_job_id)
            now_us = self._now_us()
            batch = {
                "batch_id": job_rows.new_id("bat_", now_us),
                "account_id": account_id,
                "idempotency_key": idempotency_key,
                "fingerprint": fingerprint,
                "decision": None if decision is None else job_rows.encode_decision(decision),
                "hold_id": hold_id,
                "hold_state": HoldState.NONE if hold_id is None else HoldState.OPEN,
                "captured": 0,
                "create_us": now_us,
                "owner": owner,
            }
            batch = _insert(self._db, "batches", batch)
            rows = [
                self._insert_job(new, job_rows.new_id("job_", now_us), batch, now_us)
                for new in jobs
            ]
            # The rows as their INSERTs returned them: no reading back.
            rows.sort(key=lambda row: int(row["variation"]))
            return BatchRecord(batch_from_row(batch), tuple(job_from_row(row) for row in rows))

    def _insert_job(
        self, new: NewJob, job_id: str, batch: dict[str, Any], now_us: int
    ) -> dict[str, Any]:
        """Inserts a queued job; returns its row, as `_JOB_SELECT` would read it."""
        row = {
            "job_id": job_id,
            "batch_id": batch["batch_id"],
            "account_id": batch["account_id"],
            "kind": new.kind,
            "status": JobStatus.QUEUED,
            "tier": new.tier,
            "stage": new.stage,
            "prompt": new.prompt,
            "seed": str(new.seed),
            "variation": new.variation,
            "size": new.size,
            "aspect_ratio": new.aspect_ratio,
            "width": new.width,
            "height": new.height,
            "quoted_cost": new.quoted_cost,
            "parent_job_id": new.parent_job_id,
            "reasons": job_rows.encode_reasons(new.reasons),
            "strength": new.strength,
            "upscale_factor": new.upscale_factor,
            "upscale_method": new.upscale_method,
            "create_us": now_us,
            "trace_id": new.trace_id,
        }
        return {**_insert(self._db, "jobs", row), "hold_id": batch["hold_id"]}

    def _batch_row(self, account_id: str | None, batch_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM batches WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        if row is None or (account_id is not None and row["account_id"] != account_id):
            raise job_rows.batch_not_found(batch_id)
        return row

    def _batch_jobs(self, batch_id: str) -> tuple[Job, ...]:
        rows = self._db.execute(
            _JOB_SELECT + " WHERE jobs.batch_id = ? ORDER BY jobs.variation, jobs.seq",
            (batch_id,),
        ).fetchall()
        return tuple(job_from_row(row) for row in rows)

    def _record(self, row: sqlite3.Row, *, replayed: bool = False) -> BatchRecord:
        return BatchRecord(batch_from_row(row), self._batch_jobs(row["batch_id"]), replayed)

    def _job(self, account_id: str | None, job_id: str) -> Job:
        row = self._job_row(job_id)
        if account_id is not None and row["account_id"] != account_id:
            raise job_rows.job_not_found(job_id)
        return job_from_row(row)

    def _job_row(self, job_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute(
            _JOB_SELECT + " WHERE jobs.job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise job_rows.job_not_found(job_id)
        return row

    async def _transition(
        self,
        job_id: str,
        target: JobStatus,
        changes: dict[str, Any],
        *,
        start: bool = False,
        charged: int | None = None,
    ) -> Job:
        def move() -> Job:
            with self._transaction(durable=target is JobStatus.SUCCEEDED):
                row = self._job_row(job_id)
                job = job_from_row(row)
                if job.status not in job_rows.SOURCES[target]:
                    raise job_rows.refusal(job, target)
                job_rows.check_charge(job, charged)
                columns = {**changes, "status": target}
                columns["start_us" if start else "finish_us"] = self._now_us()
                assignments = ", ".join(f"{column} = ?" for column in columns)
                self._db.execute(
                    f"UPDATE jobs SET {assignments} WHERE job_id = ?",
                    (*columns.values(), job_id),
                )
                # The row as updated, without reading it back.
                return job_from_row({**dict(row), **columns})

        return await self._call(move)


@dataclass(frozen=True)
class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` when the block raises; a `durable` one
    commits with `synchronous=FULL`."""

    connection: sqlite3.Connection
    durable: bool = False

    def __enter__(self) -> None:
        if self.durable:
            self.connection.execute("PRAGMA synchronous = FULL")
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            self.connection.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            if self.durable:
                self.connection.execute("PRAGMA synchronous = NORMAL")
