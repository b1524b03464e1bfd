"""The job store: batches and jobs in SQLite (one router) or PostgreSQL (replicas), one
implementation over one schema (`jobs.schema`).

Each operation is a script of SQLAlchemy Core statements (`jobs.statements`) that a
`jobs.databases` database runs where its driver lives; the dialects differ only in a few named
places: how a script's statements are made a transaction and retried, and how errors are
translated (`jobs.databases`); how a claim judges a router gone (`statements.CLAIM_ABANDONED`:
timed leases on PostgreSQL, one owner on SQLite); list parameters and the dialect's
`ON CONFLICT` (`jobs.queries`); and how the schema is kept current (`open_sqlite` upgrades it,
`open_postgres` refuses a schema `tiergen migrate` has not brought up to date).

Every read and change a caller reaches is its owner's (tenant and account): a row of another
owner is read as if it did not exist, in the statement itself or in the check that follows it.

Every change is safe against the same change racing in from another replica, without holding
locks across round trips:

- `create_batch` inserts the batch with `ON CONFLICT (tenant, account_id, idempotency_key) DO
  NOTHING`: of two calls racing with one key, the later waits for the earlier to commit,
  inserts nothing, and replays the winner's batch. The batch and its jobs commit together; new
  rows come back from their INSERT ... RETURNING, never read again.
- A transition, an attached hold, a settlement and a renewed lease are each one UPDATE guarded
  by the state it may start from, with the row coming back from its RETURNING.
- A claim is one UPDATE over the batches a `SELECT ... FOR UPDATE SKIP LOCKED` picks. Leases
  are timed by the store's clock, so the replicas' clocks must agree to well within a lease.

The webhook outbox (`jobs.schema`) is flagged by the statements themselves; the store tells
`on_events` (the router's dispatcher) after each commit that flagged an event, so that it is
sent within moments rather than at the dispatcher's next look.

Durability on SQLite: only marking a job succeeded waits for the disk (`synchronous=FULL`): it
must survive a power loss because the ledger charges for the job next. Any other commit lost
to a power loss costs nothing: an unrecorded batch's hold expires in the ledger, a retried
request finds the same hold by its key, an unrecorded start or failure leaves the job
unfinished for recovery, and an unrecorded settlement is settled again with the same keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.router.assets.store import AssetRef
from services.router.jobs import rows, statements
from services.router.jobs.databases import (
    Database,
    Fetch,
    Mode,
    PostgresDatabase,
    Script,
    SqliteDatabase,
    Step,
)
from services.router.jobs.migrations import SCHEMA
from services.router.jobs.model import (
    Batch,
    BatchRecord,
    HoldBalance,
    HoldState,
    Job,
    JobFilter,
    JobPage,
    JobStatus,
    Lease,
    NewJob,
    Owner,
    may_move,
)
from services.router.routing.policy import Decision
from services.runtime.migrations import require_current, upgrade

__all__ = ["SqlJobStore"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


class SqlJobStore:
    """A `JobStore` on SQLite or PostgreSQL. Open with `open_sqlite` or `open_postgres`."""

    def __init__(self, database: Database, clock: Callable[[], datetime]) -> None:
        self._database = database
        self._clock = clock
        self._on_events: Callable[[], None] | None = None

    @property
    def database(self) -> Database:
        """The database, which the webhook store shares: its outbox is in the same tables."""
        return self._database

    def on_events(self, callback: Callable[[], None] | None) -> None:
        """Calls `callback` on the event loop after every commit that flagged a webhook event."""
        self._on_events = callback

    def _told(self, flagged: _Flagged) -> None:
        if flagged.any and self._on_events is not None:
            self._on_events()

    @classmethod
    async def open_sqlite(
        cls, path: Path, *, clock: Callable[[], datetime] = _utc_now
    ) -> SqlJobStore:
        """Open (creating if needed) the database at `path`, bringing its schema up to date:
        one router owns the file, so nothing else would."""
        database = await SqliteDatabase.open(path, lambda: upgrade(SCHEMA, f"sqlite:///{path}"))
        return cls(database, clock)

    @classmethod
    async def open_postgres(
        cls,
        dsn: str,
        *,
        clock: Callable[[], datetime] = _utc_now,
        pool_size: int = 10,
        timeout_seconds: float = 5.0,
    ) -> SqlJobStore:
        """Connect to a database whose schema is current, keeping up to `pool_size` connections
        (tables in the first schema of the search path). Replicas share the database, so
        upgrading it is an operator's step (`tiergen migrate`), never a replica's.

        A call waits at most `timeout_seconds` for a connection (then Unavailable) and as long
        for a row lock (then retried, and Aborted if that keeps happening).
        """
        database = await PostgresDatabase.open(
            dsn, pool_size=pool_size, timeout_seconds=timeout_seconds
        )
        try:
            await asyncio.to_thread(require_current, SCHEMA, dsn)
        except BaseException:
            await database.close()
            raise
        return cls(database, clock)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._database.dialect.name

    async def close(self) -> None:
        await self._database.close()

    async def create_batch(
        self,
        *,
        owner: Owner,
        idempotency_key: str,
        fingerprint: str,
        jobs: Sequence[NewJob],
        decision: Decision | None = None,
        hold_id: str | None = None,
        lease: Lease | None = None,
        detached: bool = False,
        webhook_id: str | None = None,
        balance: HoldBalance | None = None,
    ) -> BatchRecord:
        rows.check_batch_request(owner, idempotency_key, jobs)
        flagged = _Flagged()
        batch_columns = {
            "detached": detached,
            "webhook_id": webhook_id,
            "available_before": None if balance is None else balance.before,
            "available_after": None if balance is None else balance.after,
        }

        def create() -> Script[BatchRecord]:
            key = {**_owner(owner), "idempotency_key": idempotency_key}
            existing = yield Step.one(statements.BATCH_BY_KEY, **key)
            if existing is None:
                yield from _check_parents(owner, jobs)
                created = yield from self._insert_batch(
                    owner,
                    idempotency_key,
                    fingerprint,
                    jobs,
                    decision,
                    hold_id,
                    lease,
                    batch_columns,
                    flagged,
                )
                if created is not None:
                    return created
                # A call with the same key committed first: ON CONFLICT waited for it, and
                # this statement, with a new snapshot, sees its batch.
                existing = yield Step.one(statements.BATCH_BY_KEY, **key)
                assert existing is not None, "the conflicting batch is committed"
            if existing["fingerprint"] != fingerprint:
                raise rows.key_reused(idempotency_key, existing["batch_id"])
            (record,) = yield from _records([existing], replayed=True)
            return record

        created = await self._database.run(Mode.ATOMIC, create)
        self._told(flagged)
        return created

    async def find_batch(self, owner: Owner, idempotency_key: str) -> BatchRecord | None:
        def find() -> Script[BatchRecord | None]:
            row = yield Step.one(
                statements.BATCH_BY_KEY, **_owner(owner), idempotency_key=idempotency_key
            )
            if row is None:
                return None
            (record,) = yield from _records([row], replayed=True)
            return record

        return await self._database.run(Mode.READ, find)

    async def batch(self, owner: Owner, batch_id: str) -> BatchRecord:
        def find() -> Script[BatchRecord]:
            row = yield from _batch_row(owner, batch_id)
            (record,) = yield from _records([row])
            return record

        return await self._database.run(Mode.READ, find)

    async def attach_hold(self, batch_id: str, hold_id: str) -> Batch:
        def attach() -> Script[Batch]:
            row = yield Step.one(statements.ATTACH_HOLD, batch_id=batch_id, new_hold_id=hold_id)
            if row is not None:
                return rows.batch_from_row(row)
            # A hold, once attached, is never detached: the refusal cannot go stale.
            row = yield from _batch_row(None, batch_id)
            if row["hold_id"] != hold_id:
                raise rows.hold_already_attached(batch_id, row["hold_id"])
            return rows.batch_from_row(row)

        return await self._database.run(Mode.WRITE, attach)

    async def settle_hold(self, batch_id: str, state: HoldState, captured: int = 0) -> Batch:
        rows.check_settlement(state, captured)
        flagged = _Flagged()

        def settle() -> Script[Batch]:
            row = yield Step.one(
                statements.SETTLE_HOLD,
                batch_id=batch_id,
                new_state=state.value,
                new_captured=captured,
            )
            if row is not None:
                flagged.note(row["completion_pending"])
                return rows.batch_from_row(row)
            # A settled hold never opens again: the refusal cannot go stale.
            row = yield from _batch_row(None, batch_id)
            if row["hold_state"] != state or row["captured"] != captured:
                raise rows.hold_not_open(batch_id, row["hold_state"])
            return rows.batch_from_row(row)

        settled = await self._database.run(Mode.WRITE, settle)
        self._told(flagged)
        return settled

    async def forget_batch(self, batch_id: str) -> bool:
        def forget() -> Script[bool]:
            # Locked first (PostgreSQL; SQLite's transaction holds the database), so that no
            # settlement or job move slips in between the check and the deletes.
            if (yield Step.one(statements.LOCK_BATCH, batch_id=batch_id)) is None:
                return False
            if (yield Step.one(statements.FORGETTABLE_BATCH, batch_id=batch_id)) is None:
                return False
            yield Step.run(statements.DELETE_PENDING_DELIVERIES_OF_BATCH, batch_id=batch_id)
            yield Step.run(statements.DELETE_JOBS_OF_BATCH, batch_id=batch_id)
            yield Step.run(statements.DELETE_BATCH, batch_id=batch_id)
            return True

        return await self._database.run(Mode.ATOMIC, forget)

    async def renew_leases(self, lease: Lease, batch_ids: Sequence[str]) -> frozenset[str]:
        # Where leases are not timed (SQLite) the new expiry is written and never read: renewing
        # only tells which batches are still the owner's.
        if not batch_ids:
            return frozenset()

        def renew() -> Script[frozenset[str]]:
            renewed = yield Step.all(
                statements.RENEW_LEASES,
                until=self._now_us() + _micros(lease.seconds),
                batch_ids=list(batch_ids),
                claimant=lease.owner,
            )
            return frozenset(row["batch_id"] for row in renewed)

        return await self._database.run(Mode.WRITE, renew)

    async def claim_abandoned(
        self, lease: Lease, *, unleased_seconds: float, limit: int
    ) -> tuple[BatchRecord, ...]:
        def claim() -> Script[tuple[BatchRecord, ...]]:
            now_us = self._now_us()
            claimed = yield Step.all(
                statements.CLAIM_ABANDONED,
                claimant=lease.owner,
                until=now_us + _micros(lease.seconds),
                now=now_us,
                unleased_before=now_us - _micros(unleased_seconds),
                limit=limit,
            )
            claimed.sort(key=lambda row: (row["create_us"], row["batch_id"]))
            return (yield from _records(claimed))

        return await self._database.run(Mode.WRITE, claim)

    async def mark_running(self, job_id: str) -> Job:
        return await self._transition(job_id, JobStatus.RUNNING, {"start_us": self._now_us()})

    async def mark_succeeded(
        self,
        job_id: str,
        asset: AssetRef,
        cost: int,
        drift: float | None = None,
        fallback: tuple[str, tuple[str, ...]] | None = None,
    ) -> Job:
        changes = rows.succeeded_changes(asset, cost, drift, fallback)
        changes["finish_us"] = self._now_us()
        return await self._transition(job_id, JobStatus.SUCCEEDED, changes, charged=cost)

    async def mark_failed(self, job_id: str, code: str, reason: str, message: str) -> Job:
        changes = {**rows.failed_changes(code, reason, message), "finish_us": self._now_us()}
        return await self._transition(job_id, JobStatus.FAILED, changes)

    async def mark_cancelled(self, job_id: str, message: str = "cancelled by the caller") -> Job:
        changes = {**rows.cancelled_changes(message), "finish_us": self._now_us()}
        return await self._transition(job_id, JobStatus.CANCELLED, changes)

    async def cancel_job(
        self, owner: Owner, job_id: str, message: str = "cancelled by the caller"
    ) -> Job:
        changes = {**rows.cancelled_changes(message), "finish_us": self._now_us()}
        move = _move(JobStatus.CANCELLED, changes, job_id=job_id, owner=owner)
        flagged = _Flagged()

        def cancel() -> Script[Job]:
            row = yield move
            if row is not None:
                flagged.note(row["event_pending"])
                return rows.job_from_row(row)
            # Missing, another owner's, or final already: a final job never changes again.
            return (yield from _job(owner, job_id))

        cancelled = await self._database.run(Mode.WRITE, cancel)
        self._told(flagged)
        return cancelled

    async def cancel_batch(
        self, owner: Owner, batch_id: str, message: str = "cancelled by the caller"
    ) -> tuple[Job, ...]:
        flagged = _Flagged()

        def cancel() -> Script[tuple[Job, ...]]:
            yield from _batch_row(owner, batch_id)
            yield Step.run(
                statements.CANCEL_UNFINISHED,
                batch_id=batch_id,
                message=message,
                now=self._now_us(),
            )
            found = yield Step.all(statements.JOBS_OF_BATCH, batch_id=batch_id)
            for row in found:
                flagged.note(row["event_pending"])
            return tuple(rows.job_from_row(row) for row in found)

        cancelled = await self._database.run(Mode.ATOMIC, cancel)
        self._told(flagged)
        return cancelled

    async def get(self, owner: Owner, job_id: str) -> Job:
        return await self._database.run(Mode.READ, lambda: _job(owner, job_id))

    async def children(self, owner: Owner, job_id: str) -> tuple[Job, ...]:
        def find() -> Script[tuple[Job, ...]]:
            yield from _job(owner, job_id)
            found = yield Step.all(statements.CHILDREN, job_id=job_id)
            return tuple(rows.job_from_row(row) for row in found)

        return await self._database.run(Mode.READ, find)

    async def list(
        self,
        owner: Owner,
        filters: JobFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        listing = rows.Listing.of(owner, filters, page_size, page_token)
        query = statements.listing(
            tuple(column for column, _ in listing.conditions), listing.before is not None
        )
        params: dict[str, Any] = {
            **_owner(listing.owner),
            "before": listing.before,
            "limit": listing.limit + 1,
        }
        params.update((f"is_{column}", value) for column, value in listing.conditions)

        def page() -> Script[JobPage]:
            found = yield Step(query, params, Fetch.ALL)
            return listing.page(found)

        return await self._database.run(Mode.READ, page)

    async def set_shortlisted(self, owner: Owner, job_id: str, shortlisted: bool) -> Job:
        def mark() -> Script[Job]:
            yield Step.run(
                statements.SET_SHORTLISTED,
                job_id=job_id,
                **_owner(owner),
                new_shortlisted=shortlisted,
            )
            return (yield from _job(owner, job_id))

        return await self._database.run(Mode.WRITE, mark)

    async def has_asset(self, owner: Owner, asset_id: str) -> bool:
        def find() -> Script[bool]:
            row = yield Step.one(statements.HAS_ASSET, asset_id=asset_id, **_owner(owner))
            return row is not None

        return await self._database.run(Mode.READ, find)

    def _now_us(self) -> int:
        return rows.to_us(self._clock())

    def _insert_batch(
        self,
        owner: Owner,
        idempotency_key: str,
        fingerprint: str,
        jobs: Sequence[NewJob],
        decision: Decision | None,
        hold_id: str | None,
        lease: Lease | None,
        batch_columns: dict[str, Any],
        flagged: _Flagged,
    ) -> Script[BatchRecord | None]:
        """Insert the batch and its jobs; None when a batch with the key already exists."""
        now_us = self._now_us()
        batch = yield Step.one(
            statements.INSERT_BATCH,
            batch_id=rows.new_id("bat_", now_us),
            **_owner(owner),
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            decision=None if decision is None else rows.encode_decision(decision),
            hold_id=hold_id,
            hold_state=(HoldState.NONE if hold_id is None else HoldState.OPEN).value,
            create_us=now_us,
            owner=None if lease is None else lease.owner,
            lease_until_us=None if lease is None else now_us + _micros(lease.seconds),
            **batch_columns,
        )
        if batch is None:
            return None
        flagged.note(batch["credits_low_pending"])
        inserted = yield Step(
            statements.INSERT_JOB,
            [rows.new_job_row(new, batch["batch_id"], owner, now_us) for new in jobs],
            Fetch.EACH,
        )
        # The rows as their INSERTs returned them, with their batch's hold: no reading back.
        new_jobs = sorted(
            (rows.job_from_row({**dict(row), "hold_id": hold_id}) for row in inserted),
            key=lambda job: job.variation,
        )
        return BatchRecord(rows.batch_from_row(batch), tuple(new_jobs))

    async def _transition(
        self, job_id: str, target: JobStatus, changes: dict[str, Any], *, charged: int = 0
    ) -> Job:
        move = _move(target, changes, job_id=job_id, charged=charged)
        flagged = _Flagged()

        def transition() -> Script[Job]:
            # Ends: a lap that finds the move still allowed saw the job move forward since the
            # UPDATE looked, and a job moves forward at most twice.
            while True:
                row = yield move
                if row is not None:
                    flagged.note(row["event_pending"])
                    return rows.job_from_row(row)
                job = yield from _job(None, job_id)
                if not may_move(job.status, target):
                    raise rows.refusal(job, target)
                rows.check_charge(job, charged)

        durable = target is JobStatus.SUCCEEDED
        moved = await self._database.run(Mode.WRITE, transition, durable=durable)
        self._told(flagged)
        return moved


class _Flagged:
    """Whether a script flagged a webhook event: noted where the script runs (the database's
    thread, for SQLite), read on the event loop once it has committed."""

    __slots__ = ("any",)

    def __init__(self) -> None:
        self.any = False

    def note(self, flag: object) -> None:
        if flag:
            self.any = True


def _owner(owner: Owner) -> dict[str, str]:
    """The parameters that scope a statement to the owner's rows."""
    return {"tenant": owner.tenant, "account_id": owner.account_id}


def _owns(owner: Owner | None, row: Any) -> bool:
    """Whether `row` (of `batches` or `jobs`) is the owner's; any row when `owner` is None."""
    return owner is None or (row["tenant"], row["account_id"]) == (owner.tenant, owner.account_id)


def _move(
    target: JobStatus,
    changes: dict[str, Any],
    *,
    job_id: str,
    charged: int = 0,
    owner: Owner | None = None,
) -> Step:
    """The guarded UPDATE moving a job to `target` and setting `changes`; with `owner`, only
    the owner's job."""
    query = statements.move_job(tuple(changes), target, owner is not None)
    params = {f"set_{column}": value for column, value in changes.items()}
    params.update(job_id=job_id, charged=charged)
    if owner is not None:
        params.update(_owner(owner))
    return Step(query, params, Fetch.ONE)


def _job(owner: Owner | None, job_id: str) -> Script[Job]:
    """The job; NotFound when missing or, with `owner`, another owner's."""
    row = yield Step.one(statements.JOB_BY_ID, job_id=job_id)
    if row is None or not _owns(owner, row):
        raise rows.job_not_found(job_id)
    return rows.job_from_row(row)


def _batch_row(owner: Owner | None, batch_id: str) -> Script[Any]:
    """The batch's row; NotFound when missing or, with `owner`, another owner's."""
    row = yield Step.one(statements.BATCH_BY_ID, batch_id=batch_id)
    if row is None or not _owns(owner, row):
        raise rows.batch_not_found(batch_id)
    return row


def _batch_jobs(batch_id: str) -> Script[tuple[Job, ...]]:
    found = yield Step.all(statements.JOBS_OF_BATCH, batch_id=batch_id)
    return tuple(rows.job_from_row(row) for row in found)


def _check_parents(owner: Owner, jobs: Sequence[NewJob]) -> Script[None]:
    """NotFound for the first parent job that is not the owner's."""
    parents = list(dict.fromkeys(new.parent_job_id for new in jobs if new.parent_job_id))
    if not parents:
        return
    found = yield Step.all(statements.OWN_JOBS, job_ids=parents, **_owner(owner))
    own = {row["job_id"] for row in found}
    for parent in parents:
        if parent not in own:
            raise rows.job_not_found(parent)


def _records(
    batch_rows: Sequence[Any], *, replayed: bool = False
) -> Script[tuple[BatchRecord, ...]]:
    """The batches with their jobs, read in one query."""
    jobs: dict[str, list[Job]] = {row["batch_id"]: [] for row in batch_rows}
    if len(jobs) == 1:
        (batch_id,) = jobs
        jobs[batch_id].extend((yield from _batch_jobs(batch_id)))
    elif jobs:
        found = yield Step.all(statements.JOBS_OF_BATCHES, batch_ids=list(jobs))
        for row in found:
            jobs[row["batch_id"]].append(rows.job_from_row(row))
    return tuple(
        BatchRecord(rows.batch_from_row(row), tuple(jobs[row["batch_id"]]), replayed)
        for row in batch_rows
    )
