"""Durable job records: batches, their jobs, lifecycle transitions and lineage.

A batch is what one mutating call (Generate, Promote or Upscale) created: its idempotency key,
the fingerprint of the request, the routing decision, the ledger hold paying for it, and its
jobs. Every job belongs to exactly one batch, and every batch to one `Owner`: an account of one
tenant. `alice` of one tenant and `alice` of another are two owners, and neither sees the
other's batches, jobs or images.

A batch is also leased to the router process running it (`Lease`): the process renews the
lease while it runs the batch, and once a lease runs out any router may claim the batch
(`JobStore.claim_abandoned`), fail its unfinished jobs and settle its hold.

Job lifecycle (`LIFECYCLE`, `may_move`); every other transition is refused, and a final job
never changes:

    QUEUED -> RUNNING -> SUCCEEDED
    QUEUED | RUNNING -> FAILED | CANCELLED

This module holds the records and the lifecycle rule; the contract of a store is
`services.router.jobs.store.JobStore`, and its one implementation, on SQLite or PostgreSQL,
`services.router.jobs.sql_store.SqlJobStore`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from services.router.assets.store import AssetRef
from services.router.routing.catalogue import AspectRatio, ImageSize, Stage
from services.router.routing.policy import Decision

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "LIFECYCLE",
    "MAX_PAGE_SIZE",
    "Batch",
    "BatchRecord",
    "HoldBalance",
    "HoldState",
    "Job",
    "JobError",
    "JobFilter",
    "JobKind",
    "JobPage",
    "JobStatus",
    "Lease",
    "NewJob",
    "Owner",
    "UpscaleMethod",
    "may_move",
]

#: Page size of `JobStore.list` when the caller gives none.
DEFAULT_PAGE_SIZE = 50
#: Largest page `JobStore.list` returns; larger requests get this many.
MAX_PAGE_SIZE = 500


class JobKind(enum.StrEnum):
    """What a job does."""

    GENERATE = "generate"
    PROMOTE = "promote"
    UPSCALE = "upscale"
    EDIT = "edit"


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

#: The job lifecycle: for each status a job can move to, the statuses it may move from.
LIFECYCLE: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
}


def may_move(status: JobStatus, target: JobStatus) -> bool:
    """Whether the lifecycle lets a job in `status` become `target`."""
    return status in LIFECYCLE.get(target, frozenset())


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


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose a batch, job, hold or image is: an account of one tenant.

    The tenant comes from the caller's credential, never from a request; the account id is the
    caller's own name for its user, unique only within the tenant.
    """

    tenant: str
    account_id: str


@dataclass(frozen=True)
class JobError:
    """Why a job failed or was cancelled: a gRPC code name, a stable reason and a message."""

    code: str
    reason: str
    message: str


@dataclass(frozen=True)
class Lease:
    """A router process's claim on the batches it runs: who it is and how long a renewal lasts."""

    #: The process, random for each start: batches it created or claimed carry it as owner
    #: (the router process running them, not the `Owner` whose they are).
    owner: str
    #: How long a batch stays the owner's after the lease was last written.
    seconds: float


@dataclass(frozen=True)
class HoldBalance:
    """An account's available credits just before and just after a batch's hold, as the ledger
    answered the hold: what decides whether it crossed a credits.low threshold."""

    before: int
    after: int


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
    owner: Owner
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
    #: Marked by the caller as one of the handful of viable compositions.
    shortlisted: bool = False


@dataclass(frozen=True)
class Batch:
    """What one mutating call created, with the hold that pays for it."""

    batch_id: str
    owner: Owner
    idempotency_key: str
    fingerprint: str
    decision: Decision | None
    hold_id: str | None
    hold_state: HoldState
    #: Credits captured from the hold once it is settled.
    captured: int
    create_time: datetime
    #: Whether the call that created it answered at once and left it to run on its own.
    detached: bool = False
    #: The webhook endpoint the call named to be told about this batch only.
    webhook_id: str | None = None


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
    shortlisted: bool | None = None


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first; `next_page_token` is empty on the last page."""

    jobs: tuple[Job, ...]
    next_page_token: str = ""
