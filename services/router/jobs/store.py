"""The job store contract: what the router's operations need from wherever jobs are kept.

Both databases implement it with the same meaning; the contract tests
(tests/router/test_router_jobs.py) hold every implementation to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.router.assets.store import AssetRef
from services.router.jobs.model import (
    Batch,
    BatchRecord,
    HoldBalance,
    HoldState,
    Job,
    JobFilter,
    JobPage,
    Lease,
    NewJob,
    Owner,
)
from services.router.routing.policy import Decision

__all__ = ["JobStore"]


class JobStore(Protocol):
    """Where the router keeps batches and jobs; every store behaves the same way.

    Every call a caller's request reaches names the `Owner` (tenant and account) it acts for,
    and sees only that owner's batches, jobs and images: a job, batch or image of another
    account, of this tenant or another, is reported exactly like a missing one (NotFound, or
    nothing found), so ids leak nothing. The calls of the router's own bookkeeping (holds,
    moves, leases) go by id. A store whose database cannot be reached raises Unavailable; one
    that was closed raises RuntimeError.

    The SQL store also keeps the webhook outbox (`services.router.webhooks`): the change that
    makes a job final, settles a batch's hold or records a batch whose hold crossed a credits.low
    threshold flags its event in the same commit, when the tenant has a webhook endpoint. That
    is no part of this contract: the in-memory store keeps no outbox.
    """

    async def close(self) -> None:
        """Release the database; the store refuses work afterwards."""
        ...

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
        """Create a batch and its queued jobs atomically, or replay the one the key created.

        The same owner and key with the same fingerprint returns the existing batch with
        `replayed` True, also when the two calls race; with another fingerprint, AlreadyExists
        (IDEMPOTENCY_KEY_REUSED, metadata batch_id). Keys are the owner's: another owner's key
        makes another batch. A parent job that is not the owner's is NotFound. A `hold_id`
        marks the hold OPEN. A `lease` makes the batch the leasing router process's; a batch
        created without one is treated as a router older than leases wrote it (see
        `claim_abandoned`). An empty key is InvalidArgument on "idempotency_key"; no jobs, or
        a job with a seed outside 0..2^64-1, a size below 1x1 or a negative cost, is ValueError.

        `detached` and `webhook_id` (the endpoint the call named) are kept on the batch as
        given; `balance` is the account's credits around the batch's hold, which a store with a
        webhook outbox compares with its tenant's credits.low thresholds in the same commit.
        """
        ...

    async def find_batch(self, owner: Owner, idempotency_key: str) -> BatchRecord | None:
        """The batch an earlier call of the owner with this key created, marked `replayed`, or
        None."""
        ...

    async def batch(self, owner: Owner, batch_id: str) -> BatchRecord:
        """A batch of the owner with its jobs; NotFound otherwise (also for other owners)."""
        ...

    async def attach_hold(self, batch_id: str, hold_id: str) -> Batch:
        """Record the hold paying for a batch; attaching the same hold again changes nothing.

        FailedPrecondition (HOLD_ALREADY_ATTACHED) when the batch has another hold.
        """
        ...

    async def settle_hold(self, batch_id: str, state: HoldState, captured: int = 0) -> Batch:
        """Record that a batch's open hold was captured (for `captured` credits) or released.

        Recording the same outcome again changes nothing; any other change of a settled hold,
        or settling a batch without a hold, is FailedPrecondition (HOLD_NOT_OPEN). A `state`
        other than CAPTURED or RELEASED, or credits captured by a release, is ValueError.
        """
        ...

    async def forget_batch(self, batch_id: str) -> bool:
        """Deletes a batch that did no work, with its jobs, so that its idempotency key runs
        anew on a retry: a refusal for overload or shutdown is not the key's answer.

        Only a batch whose hold is settled (or never placed) and none of whose jobs succeeded
        or is unfinished is forgotten; returns whether this one was. An unknown batch is False.
        """
        ...

    async def renew_leases(self, lease: Lease, batch_ids: Sequence[str]) -> frozenset[str]:
        """Extend the lease of those of `batch_ids` still the owner's, in one statement.

        Returns the ids renewed; a batch missing from them was claimed by another router. A
        store whose leases are not timed (SQLite) only tells which are still the owner's.
        """
        ...

    async def claim_abandoned(
        self, lease: Lease, *, unleased_seconds: float, limit: int
    ) -> tuple[BatchRecord, ...]:
        """Make up to `limit` abandoned batches the lease's, oldest first, with their jobs.

        Abandoned: unfinished (its hold still open, or a job still queued or running) and its
        router gone. Two routers claiming at once never both get one batch. A store shared by
        replicas (PostgreSQL) judges a router gone by its lease having run out; a batch without
        a lease by its being older than `unleased_seconds`. A store one router owns (SQLite)
        judges every batch gone that another owner (or none) left unfinished.
        """
        ...

    async def mark_running(self, job_id: str) -> Job:
        """QUEUED -> RUNNING, stamping the start time.

        Every `mark_*` refuses a move the lifecycle does not allow with FailedPrecondition:
        reason JOB_FINAL from a final status, ILLEGAL_TRANSITION otherwise (metadata job_id,
        status, target). An unknown job is NotFound.
        """
        ...

    async def mark_succeeded(
        self,
        job_id: str,
        asset: AssetRef,
        cost: int,
        drift: float | None = None,
        fallback: tuple[str, tuple[str, ...]] | None = None,
    ) -> Job:
        """RUNNING -> SUCCEEDED with its asset, the credits charged and (for a handover) drift.

        `fallback` records the tier that rendered instead of the routed one, with the reasons
        that now say why. ValueError when `cost` is outside 0..quoted cost or `drift` outside
        0..1.
        """
        ...

    async def mark_failed(self, job_id: str, code: str, reason: str, message: str) -> Job:
        """QUEUED or RUNNING -> FAILED, with why (`code` is a gRPC status code name)."""
        ...

    async def mark_cancelled(self, job_id: str, message: str = "cancelled by the caller") -> Job:
        """QUEUED or RUNNING -> CANCELLED (error code CANCELLED, reason CANCELLED)."""
        ...

    async def cancel_job(
        self, owner: Owner, job_id: str, message: str = "cancelled by the caller"
    ) -> Job:
        """Cancel the owner's job if unfinished; a final job is returned unchanged."""
        ...

    async def cancel_batch(
        self, owner: Owner, batch_id: str, message: str = "cancelled by the caller"
    ) -> tuple[Job, ...]:
        """Cancel every unfinished job of the owner's batch; returns all its jobs after."""
        ...

    async def get(self, owner: Owner, job_id: str) -> Job:
        """The owner's job; NotFound for an unknown job or one of another owner."""
        ...

    async def children(self, owner: Owner, job_id: str) -> tuple[Job, ...]:
        """Jobs promoted, upscaled or edited from the owner's job, oldest first; NotFound as
        `get`."""
        ...

    async def list(
        self,
        owner: Owner,
        filters: JobFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        """The owner's jobs matching `filters`, newest first, a page at a time.

        `page_size` 0 means `DEFAULT_PAGE_SIZE`; more than `MAX_PAGE_SIZE` gets that many; a
        negative one is InvalidArgument on "page_size". A page token only continues the listing
        it came from (same tenant, account and filters); anything else is InvalidArgument on
        "page_token".
        """
        ...

    async def has_asset(self, owner: Owner, asset_id: str) -> bool:
        """Whether one of the owner's jobs produced the asset (who may read it)."""
        ...

    async def set_shortlisted(self, owner: Owner, job_id: str, shortlisted: bool) -> Job:
        """Marks or unmarks the owner's job as shortlisted; NotFound as `get`."""
        ...
