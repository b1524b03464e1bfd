"""Durable job records: batches, their jobs, lifecycle transitions and lineage, on SQLite.

A batch is what one mutating call (Generate, Promote or Upscale) created: its idempotency key,
the fingerprint of the request, the routing decision, the ledger hold paying for it, and its
jobs. Every job belongs to exactly one batch.

Job lifecycle; every other transition is refused, and a final job never changes:

    QUEUED -> RUNNING -> SUCCEEDED
    QUEUED | RUNNING -> FAILED | CANCELLED

The API is async. SQLite calls block, so they all run on one dedicated thread that owns the
connection; calls are serialized there, and each write is one `BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import json
import math
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from services.router.assets import AssetInfo, AssetRef
from services.router.catalogue import AspectRatio, ImageSize, Stage
from services.router.policy import Decision
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Batch",
    "BatchRecord",
    "HoldState",
    "Job",
    "JobError",
    "JobFilter",
    "JobKind",
    "JobPage",
    "JobStatus",
    "JobStore",
    "NewJob",
    "UpscaleMethod",
]

#: Page size of `JobStore.list` when the caller gives none.
DEFAULT_PAGE_SIZE = 50
#: Largest page `JobStore.list` returns; larger requests get this many.
MAX_PAGE_SIZE = 500

_T = TypeVar("_T")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class JobKind(enum.StrEnum):
    """What a job does."""

    GENERATE = "generate"
    PROMOTE = "promote"
    UPSCALE = "upscale"


class JobStatus(enum.StrEnum):
    """Where a job is in its lifecycle."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the job can no longer change."""
        return self in _FINAL


_FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
}


class UpscaleMethod(enum.StrEnum):
    """How an upscale job enlarges its parent's image."""

    LANCZOS = "lanczos"
    BICUBIC = "bicubic"
    ENHANCE = "enhance"


class HoldState(enum.StrEnum):
    """What became of the ledger hold paying for a batch, as far as the router knows."""

    #: No hold placed yet.
    NONE = "none"
    #: Credits held; to be captured or released.
    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"


@dataclass(frozen=True)
class JobError:
    """Why a job failed or was cancelled: a gRPC code name, a stable reason and a message."""

    code: str
    reason: str
    message: str


@dataclass(frozen=True)
class NewJob:
    """A job about to be created; the store assigns its id, batch, status and times."""

    kind: JobKind
    prompt: str
    seed: int
    width: int
    height: int
    quoted_cost: int
    tier: str = ""
    stage: Stage = Stage.EXPLORE
    size: ImageSize | None = None
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    variation: int = 0
    parent_job_id: str | None = None
    reasons: tuple[str, ...] = ()
    strength: float | None = None
    upscale_factor: float | None = None
    upscale_method: UpscaleMethod | None = None
    trace_id: str = ""


@dataclass(frozen=True)
class Job:
    """One unit of work producing one image, as stored."""

    job_id: str
    batch_id: str
    account_id: str
    kind: JobKind
    status: JobStatus
    tier: str
    stage: Stage
    prompt: str
    seed: int
    variation: int
    size: ImageSize | None
    aspect_ratio: AspectRatio
    width: int
    height: int
    quoted_cost: int
    cost: int
    parent_job_id: str | None
    asset: AssetRef | None
    reasons: tuple[str, ...]
    strength: float | None
    drift: float | None
    upscale_factor: float | None
    upscale_method: UpscaleMethod | None
    error: JobError | None
    hold_id: str | None
    create_time: datetime
    start_time: datetime | None
    finish_time: datetime | None
    trace_id: str


@dataclass(frozen=True)
class Batch:
    """What one mutating call created, with the hold that pays for it."""

    batch_id: str
    account_id: str
    idempotency_key: str
    fingerprint: str
    decision: Decision | None
    hold_id: str | None
    hold_state: HoldState
    #: Credits captured from the hold once it is settled.
    captured: int
    create_time: datetime


@dataclass(frozen=True)
class BatchRecord:
    """A batch and its jobs in variation order; `replayed` when an earlier call created it."""

    batch: Batch
    jobs: tuple[Job, ...]
    replayed: bool = False


@dataclass(frozen=True)
class JobFilter:
    """Which jobs `JobStore.list` returns; a None field matches every job."""

    stage: Stage | None = None
    tier: str | None = None
    status: JobStatus | None = None
    kind: JobKind | None = None
    batch_id: str | None = None
    parent_job_id: str | None = None


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first; `next_page_token` is empty on the last page."""

    jobs: tuple[Job, ...]
    next_page_token: str = ""


# Each migration is a list of statements applied in one transaction and recorded in
# schema_migrations; a database is brought up to date when a store opens it.
_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
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
)

_JOB_SELECT = """
    SELECT jobs.*, batches.hold_id AS hold_id
    FROM jobs JOIN batches ON batches.batch_id = jobs.batch_id
"""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class JobStore:
    """Jobs and batches in one SQLite database (WAL). Open with `await JobStore.open(path)`."""

    def __init__(self, executor: ThreadPoolExecutor, clock: Callable[[], datetime]) -> None:
        self._executor = executor
        self._clock = clock
        self._connection: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> JobStore:
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
        """Close the database and stop the store's thread."""
        await self._call(self._disconnect)
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
    ) -> BatchRecord:
        """Create a batch and its queued jobs atomically, or replay the one the key created.

        The same account and key with the same fingerprint returns the existing batch with
        `replayed` True; with another fingerprint, AlreadyExists (IDEMPOTENCY_KEY_REUSED). A
        parent job that is not the account's is NotFound. A `hold_id` marks the hold OPEN.
        """
        if not idempotency_key:
            raise InvalidArgument("an idempotency key is required", field="idempotency_key")
        if not jobs:
            raise ValueError("a batch needs at least one job")
        for new in jobs:
            _check_new_job(new)
        return await self._call(
            lambda: self._create_batch(
                account_id, idempotency_key, fingerprint, jobs, decision, hold_id
            )
        )

    async def find_batch(self, account_id: str, idempotency_key: str) -> BatchRecord | None:
        """The batch an earlier call with this key created, marked `replayed`, or None."""

        def find() -> BatchRecord | None:
            row = self._db.execute(
                "SELECT * FROM batches WHERE account_id = ? AND idempotency_key = ?",
                (account_id, idempotency_key),
            ).fetchone()
            return None if row is None else self._record(row, replayed=True)

        return await self._call(find)

    async def batch(self, account_id: str, batch_id: str) -> BatchRecord:
        """A batch of the account with its jobs; NotFound otherwise (also for other accounts)."""
        return await self._call(lambda: self._record(self._batch_row(account_id, batch_id)))

    async def attach_hold(self, batch_id: str, hold_id: str) -> Batch:
        """Record the hold paying for a batch; attaching the same hold again changes nothing.

        FailedPrecondition (HOLD_ALREADY_ATTACHED) when the batch has another hold.
        """

        def attach() -> Batch:
            with self._transaction():
                row = self._batch_row(None, batch_id)
                if row["hold_id"] == hold_id:
                    return _batch(row)
                if row["hold_id"] is not None:
                    raise FailedPrecondition(
                        f"batch {batch_id} is already paid for by hold {row['hold_id']}",
                        reason="HOLD_ALREADY_ATTACHED",
                    )
                self._db.execute(
                    "UPDATE batches SET hold_id = ?, hold_state = ? WHERE batch_id = ?",
                    (hold_id, HoldState.OPEN, batch_id),
                )
                return _batch(self._batch_row(None, batch_id))

        return await self._call(attach)

    async def settle_hold(self, batch_id: str, state: HoldState, captured: int = 0) -> Batch:
        """Record that a batch's open hold was captured (for `captured` credits) or released.

        Recording the same outcome again changes nothing; any other change of a settled hold,
        or settling a batch without a hold, is FailedPrecondition (HOLD_NOT_OPEN).
        """
        if state not in (HoldState.CAPTURED, HoldState.RELEASED):
            raise ValueError(f"a hold settles as captured or released, not {state}")
        if captured < 0 or (state is HoldState.RELEASED and captured):
            raise ValueError(f"cannot record {captured} credits captured for a {state} hold")

        def settle() -> Batch:
            with self._transaction():
                row = self._batch_row(None, batch_id)
                if row["hold_state"] == state and row["captured"] == captured:
                    return _batch(row)
                if row["hold_state"] != HoldState.OPEN:
                    raise FailedPrecondition(
                        f"the hold of batch {batch_id} is {row['hold_state']}, not open",
                        reason="HOLD_NOT_OPEN",
                    )
                self._db.execute(
                    "UPDATE batches SET hold_state = ?, captured = ? WHERE batch_id = ?",
                    (state, captured, batch_id),
                )
                return _batch(self._batch_row(None, batch_id))

        return await self._call(settle)

    async def open_holds(self) -> tuple[BatchRecord, ...]:
        """Batches whose hold is still open, oldest first: what to settle after a restart."""

        def find() -> tuple[BatchRecord, ...]:
            rows = self._db.execute(
                "SELECT * FROM batches WHERE hold_state = ? ORDER BY create_us, batch_id",
                (HoldState.OPEN,),
            ).fetchall()
            return tuple(self._record(row) for row in rows)

        return await self._call(find)

    async def mark_running(self, job_id: str) -> Job:
        """QUEUED -> RUNNING, stamping the start time."""
        return await self._transition(job_id, JobStatus.RUNNING, {}, start=True)

    async def mark_succeeded(
        self, job_id: str, asset: AssetRef, cost: int, drift: float | None = None
    ) -> Job:
        """RUNNING -> SUCCEEDED with its asset, the credits charged and (for a handover) drift.

        ValueError when `cost` is outside 0..quoted cost or `drift` outside 0..1.
        """
        if drift is not None and not (math.isfinite(drift) and 0.0 <= drift <= 1.0):
            raise ValueError(f"drift {drift} is outside 0..1")
        if cost < 0:
            raise ValueError(f"cost {cost} is negative")
        changes = {
            "cost": cost,
            "drift": drift,
            "asset_id": asset.asset_id,
            "asset_width": asset.info.width,
            "asset_height": asset.info.height,
            "asset_media_type": asset.info.media_type,
            "asset_size_bytes": asset.info.size_bytes,
        }
        return await self._transition(job_id, JobStatus.SUCCEEDED, changes, charged=cost)

    async def mark_failed(self, job_id: str, code: str, reason: str, message: str) -> Job:
        """QUEUED or RUNNING -> FAILED, with why (`code` is a gRPC status code name)."""
        changes = {"error_code": code, "error_reason": reason, "error_message": message}
        return await self._transition(job_id, JobStatus.FAILED, changes)

    async def mark_cancelled(self, job_id: str, message: str = "cancelled by the caller") -> Job:
        """QUEUED or RUNNING -> CANCELLED (error code CANCELLED, reason CANCELLED)."""
        changes = {"error_code": "CANCELLED", "error_reason": "CANCELLED", "error_message": message}
        return await self._transition(job_id, JobStatus.CANCELLED, changes)

    async def cancel_job(
        self, account_id: str, job_id: str, message: str = "cancelled by the caller"
    ) -> Job:
        """Cancel the account's job if unfinished; a final job is returned unchanged."""
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
        """Cancel every unfinished job of the account's batch; returns all its jobs after."""

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
        """The account's job; NotFound for an unknown job or one of another account."""
        return await self._call(lambda: self._job(account_id, job_id))

    async def children(self, account_id: str, job_id: str) -> tuple[Job, ...]:
        """Jobs promoted or upscaled from the account's job, oldest first."""

        def find() -> tuple[Job, ...]:
            self._job(account_id, job_id)
            rows = self._db.execute(
                _JOB_SELECT + " WHERE jobs.parent_job_id = ? ORDER BY jobs.seq", (job_id,)
            ).fetchall()
            return tuple(_job(row) for row in rows)

        return await self._call(find)

    async def list(
        self,
        account_id: str,
        filters: JobFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """The account's jobs matching `filters`, newest first, a page at a time.

        `page_size` 0 means `DEFAULT_PAGE_SIZE`; more than `MAX_PAGE_SIZE` gets that many; a
        negative one is InvalidArgument on "page_size". A page token only continues the listing
        it came from (same account and filters); anything else is InvalidArgument on
        "page_token".
        """
        filters = filters or JobFilter()
        if page_size < 0:
            raise InvalidArgument(f"page size {page_size} is negative", field="page_size")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        scope = _listing_scope(account_id, filters)
        before = _decode_page_token(page_token, scope) if page_token else None

        def page() -> JobPage:
            clauses, params = ["jobs.account_id = ?"], [account_id]
            for column, value in (
                ("stage", filters.stage),
                ("tier", filters.tier),
                ("status", filters.status),
                ("kind", filters.kind),
                ("batch_id", filters.batch_id),
                ("parent_job_id", filters.parent_job_id),
            ):
                if value is not None:
                    clauses.append(f"jobs.{column} = ?")
                    params.append(value)
            query = _JOB_SELECT + " WHERE " + " AND ".join(clauses)
            arguments: list[Any] = [*params]
            if before is not None:
                query += " AND jobs.seq < ?"
                arguments.append(before)
            query += " ORDER BY jobs.seq DESC LIMIT ?"
            arguments.append(limit + 1)
            rows = self._db.execute(query, arguments).fetchall()
            jobs = tuple(_job(row) for row in rows[:limit])
            token = _encode_page_token(rows[limit - 1]["seq"], scope) if len(rows) > limit else ""
            return JobPage(jobs, token)

        return await self._call(page)

    async def unfinished(self) -> tuple[Job, ...]:
        """Every queued or running job, oldest first: what a restart must fail and settle."""

        def find() -> tuple[Job, ...]:
            rows = self._db.execute(
                _JOB_SELECT + " WHERE jobs.status IN ('queued', 'running') ORDER BY jobs.seq"
            ).fetchall()
            return tuple(_job(row) for row in rows)

        return await self._call(find)

    async def has_asset(self, account_id: str, asset_id: str) -> bool:
        """Whether one of the account's jobs produced the asset (who may read it)."""

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
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _connect(self, path: Path) -> None:
        # isolation_level=None: transactions are begun explicitly, as BEGIN IMMEDIATE, so a
        # read-then-write never has to upgrade its lock.
        connection = sqlite3.connect(path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
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
        latest = _MIGRATIONS[-1][0]
        with self._transaction():
            applied = {row[0] for row in self._db.execute("SELECT version FROM schema_migrations")}
            newer = [version for version in applied if version > latest]
            if newer:
                raise RuntimeError(
                    f"the job database is at schema version {max(newer)}; this router knows"
                    f" up to {latest}"
                )
            for version, description, statements in _MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, description, self._now_us()),
                )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _now_us(self) -> int:
        return _to_us(self._clock())

    def _create_batch(
        self,
        account_id: str,
        idempotency_key: str,
        fingerprint: str,
        jobs: Sequence[NewJob],
        decision: Decision | None,
        hold_id: str | None,
    ) -> BatchRecord:
        with self._transaction():
            existing = self._db.execute(
                "SELECT * FROM batches WHERE account_id = ? AND idempotency_key = ?",
                (account_id, idempotency_key),
            ).fetchone()
            if existing is not None:
                if existing["fingerprint"] != fingerprint:
                    raise AlreadyExists(
                        f"idempotency key {idempotency_key!r} was used for another request",
                        reason="IDEMPOTENCY_KEY_REUSED",
                        metadata={"batch_id": existing["batch_id"]},
                    )
                return self._record(existing, replayed=True)
            for new in jobs:
                if new.parent_job_id is not None:
                    self._job(account_id, new.parent_job_id)
            now_us = self._now_us()
            batch_id = _new_id("bat_", now_us)
            self._db.execute(
                """
                INSERT INTO batches (batch_id, account_id, idempotency_key, fingerprint,
                    decision, hold_id, hold_state, create_us)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    batch_id,
                    account_id,
                    idempotency_key,
                    fingerprint,
                    None if decision is None else _encode_decision(decision),
                    hold_id,
                    HoldState.NONE if hold_id is None else HoldState.OPEN,
                    now_us,
                ),
            )
            for new in jobs:
                self._insert_job(new, _new_id("job_", now_us), batch_id, account_id, now_us)
            return self._record(self._batch_row(account_id, batch_id))

    def _insert_job(
        self, new: NewJob, job_id: str, batch_id: str, account_id: str, now_us: int
    ) -> None:
        self._db.execute(
            """
            INSERT INTO jobs (job_id, batch_id, account_id, kind, status, tier, stage, prompt,
                seed, variation, size, aspect_ratio, width, height, quoted_cost,
                parent_job_id, reasons, strength, upscale_factor, upscale_method, create_us,
                trace_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (
                job_id,
                batch_id,
                account_id,
                new.kind,
                JobStatus.QUEUED,
                new.tier,
                new.stage,
                new.prompt,
                str(new.seed),
                new.variation,
                new.size,
                new.aspect_ratio,
                new.width,
                new.height,
                new.quoted_cost,
                new.parent_job_id,
                json.dumps(list(new.reasons)),
                new.strength,
                new.upscale_factor,
                new.upscale_method,
                now_us,
                new.trace_id,
            ),
        )

    def _batch_row(self, account_id: str | None, batch_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM batches WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        if row is None or (account_id is not None and row["account_id"] != account_id):
            raise NotFound(f"batch {batch_id!r} not found", reason="BATCH_NOT_FOUND")
        return row

    def _batch_jobs(self, batch_id: str) -> tuple[Job, ...]:
        rows = self._db.execute(
            _JOB_SELECT + " WHERE jobs.batch_id = ? ORDER BY jobs.variation, jobs.seq",
            (batch_id,),
        ).fetchall()
        return tuple(_job(row) for row in rows)

    def _record(self, row: sqlite3.Row, *, replayed: bool = False) -> BatchRecord:
        return BatchRecord(_batch(row), self._batch_jobs(row["batch_id"]), replayed)

    def _job(self, account_id: str | None, job_id: str) -> Job:
        row = self._db.execute(_JOB_SELECT + " WHERE jobs.job_id = ?", (job_id,)).fetchone()
        # Another account's job is reported exactly like a missing one, so ids leak nothing.
        if row is None or (account_id is not None and row["account_id"] != account_id):
            raise NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND")
        return _job(row)

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
            with self._transaction():
                job = self._job(None, job_id)
                if job.status not in _ALLOWED[target]:
                    raise FailedPrecondition(
                        f"job {job_id} is {job.status}; it cannot become {target}",
                        reason="JOB_FINAL" if job.status.is_final else "ILLEGAL_TRANSITION",
                        metadata={"job_id": job_id, "status": job.status, "target": target},
                    )
                if charged is not None and charged > job.quoted_cost:
                    raise ValueError(
                        f"cost {charged} exceeds the {job.quoted_cost} credits quoted for {job_id}"
                    )
                now_us = self._now_us()
                columns = {**changes, "status": target}
                columns["start_us" if start else "finish_us"] = now_us
                assignments = ", ".join(f"{column} = ?" for column in columns)
                self._db.execute(
                    f"UPDATE jobs SET {assignments} WHERE job_id = ?",
                    (*columns.values(), job_id),
                )
                return self._job(None, job_id)

        return await self._call(move)


@dataclass(frozen=True)
class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` when the block raises."""

    connection: sqlite3.Connection

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")


def _check_new_job(new: NewJob) -> None:
    if not 0 <= new.seed < 2**64:
        raise ValueError(f"seed {new.seed} is outside 0..2^64-1")
    if new.width < 1 or new.height < 1 or new.quoted_cost < 0:
        raise ValueError(f"job has size {new.width}x{new.height} and cost {new.quoted_cost}")


def _new_id(prefix: str, now_us: int) -> str:
    """`prefix` and a ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32.

    Ids sort by creation time to the millisecond; the store orders listings by insertion.
    """
    value = ((now_us // 1000) << 80) | secrets.randbits(80)
    digits = []
    for _ in range(26):
        digits.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(digits))


def _to_us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _from_us(micros: int | None) -> datetime | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def _job(row: sqlite3.Row) -> Job:
    asset = None
    if row["asset_id"] is not None:
        asset = AssetRef(
            row["asset_id"],
            AssetInfo(
                width=row["asset_width"],
                height=row["asset_height"],
                media_type=row["asset_media_type"],
                size_bytes=row["asset_size_bytes"],
            ),
        )
    error = None
    if row["error_code"] is not None:
        error = JobError(row["error_code"], row["error_reason"], row["error_message"])
    create_time = _from_us(row["create_us"])
    assert create_time is not None, "create_us is NOT NULL"
    return Job(
        job_id=row["job_id"],
        batch_id=row["batch_id"],
        account_id=row["account_id"],
        kind=JobKind(row["kind"]),
        status=JobStatus(row["status"]),
        tier=row["tier"],
        stage=Stage(row["stage"]),
        prompt=row["prompt"],
        seed=int(row["seed"]),
        variation=row["variation"],
        size=None if row["size"] is None else ImageSize(row["size"]),
        aspect_ratio=AspectRatio(row["aspect_ratio"]),
        width=row["width"],
        height=row["height"],
        quoted_cost=row["quoted_cost"],
        cost=row["cost"],
        parent_job_id=row["parent_job_id"],
        asset=asset,
        reasons=tuple(json.loads(row["reasons"])),
        strength=row["strength"],
        drift=row["drift"],
        upscale_factor=row["upscale_factor"],
        upscale_method=(
            None if row["upscale_method"] is None else UpscaleMethod(row["upscale_method"])
        ),
        error=error,
        hold_id=row["hold_id"],
        create_time=create_time,
        start_time=_from_us(row["start_us"]),
        finish_time=_from_us(row["finish_us"]),
        trace_id=row["trace_id"],
    )


def _batch(row: sqlite3.Row) -> Batch:
    create_time = _from_us(row["create_us"])
    assert create_time is not None, "create_us is NOT NULL"
    return Batch(
        batch_id=row["batch_id"],
        account_id=row["account_id"],
        idempotency_key=row["idempotency_key"],
        fingerprint=row["fingerprint"],
        decision=None if row["decision"] is None else _decode_decision(row["decision"]),
        hold_id=row["hold_id"],
        hold_state=HoldState(row["hold_state"]),
        captured=row["captured"],
        create_time=create_time,
    )


def _encode_decision(decision: Decision) -> str:
    return json.dumps(asdict(decision))


def _decode_decision(text: str) -> Decision:
    fields = json.loads(text)
    return Decision(
        **{
            **fields,
            "size": ImageSize(fields["size"]),
            "aspect_ratio": AspectRatio(fields["aspect_ratio"]),
            "reasons": tuple(fields["reasons"]),
        }
    )


def _listing_scope(account_id: str, filters: JobFilter) -> str:
    """A digest of what a listing is over, so a page token cannot continue another listing."""
    canonical = json.dumps([account_id, asdict(filters)], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode_page_token(before_seq: int, scope: str) -> str:
    payload = json.dumps({"before": before_seq, "scope": scope}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_page_token(token: str, scope: str) -> int:
    invalid = InvalidArgument(
        "page token is not one this listing returned", field="page_token", reason="BAD_PAGE_TOKEN"
    )
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if not isinstance(payload, dict) or payload.get("scope") != scope:
        raise invalid
    before = payload.get("before")
    if not isinstance(before, int) or isinstance(before, bool) or before < 1:
        raise invalid
    return before
