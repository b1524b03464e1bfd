"""The job store's statements, built once with SQLAlchemy Core over `jobs.schema`.

Every statement is the same on SQLite and PostgreSQL but for the claim of abandoned batches
(`CLAIM_ABANDONED`), where leases are timed on one and not on the other, and the INSERT of a
batch, whose `ON CONFLICT DO NOTHING` SQLAlchemy builds per dialect. `FOR UPDATE` and
`SKIP LOCKED` are PostgreSQL's; SQLAlchemy leaves them out of SQLite's SQL, where a write
transaction (`BEGIN IMMEDIATE`) holds the whole database anyway.

Every statement a caller's request reaches is scoped by the owner (parameters `tenant` and
`account_id`), or reads by an id and leaves the owner's check to the store.

Conditions that a partial index must match (`hold_state = 'open'`, the unfinished statuses)
are literal SQL, as in the index: a planner matches a partial index against constants.

The statements that make a job final, settle a hold or insert a batch also set the webhook
outbox's flags (`jobs.schema`), each to whether the row's tenant has a webhook endpoint (and,
for credits.low, one whose threshold the hold crossed): the event commits with the change that
makes it, in the same statement.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa

from services.router.jobs.model import LIFECYCLE, HoldState, JobStatus
from services.router.jobs.queries import Query, insert_for, one_of
from services.router.jobs.schema import (
    UNFINISHED_STATUSES,
    batches,
    jobs,
    values_in,
    webhook_deliveries,
    webhooks,
)

__all__ = [
    "ATTACH_HOLD",
    "BATCH_BY_ID",
    "BATCH_BY_KEY",
    "CANCEL_UNFINISHED",
    "CHILDREN",
    "CLAIM_ABANDONED",
    "DELETE_BATCH",
    "DELETE_JOBS_OF_BATCH",
    "DELETE_PENDING_DELIVERIES_OF_BATCH",
    "FORGETTABLE_BATCH",
    "HAS_ASSET",
    "INSERT_BATCH",
    "INSERT_JOB",
    "JOBS_OF_BATCH",
    "JOBS_OF_BATCHES",
    "JOB_BY_ID",
    "LOCK_BATCH",
    "NEW_JOB_COLUMNS",
    "OWN_JOBS",
    "RENEW_LEASES",
    "SETTLE_HOLD",
    "SET_SHORTLISTED",
    "listing",
    "move_job",
]

_p = sa.bindparam


def _literal(value: str) -> sa.ColumnElement[Any]:
    """An enum's value as an SQL literal (never user input)."""
    return sa.literal_column(f"'{value}'", sa.Text)


def _owned(table: sa.Table) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """The rows of `table` that are the owner's (parameters `tenant` and `account_id`)."""
    return table.c.tenant == _p("tenant"), table.c.account_id == _p("account_id")


_OPEN_HOLD = sa.text(f"hold_state = '{HoldState.OPEN.value}'")
_UNFINISHED = sa.text(values_in("status", UNFINISHED_STATUSES))
#: A job's batch's hold, in the RETURNING of an UPDATE of `jobs`. Written as SQL because
#: SQLAlchemy's SQLite compiler strips the table names inside RETURNING, subqueries included,
#: which would turn this correlation into `batch_id = batch_id`; SQLite itself accepts them.
_HOLD_OF_UPDATED_JOB: sa.Label[Any] = sa.literal_column(
    "(SELECT batches.hold_id FROM batches WHERE batches.batch_id = jobs.batch_id)"
).label("hold_id")

#: Whether the tenant of the `jobs` or `batches` row being updated has a webhook endpoint: the
#: value of its outbox flag. Written as SQL for the reason `_HOLD_OF_UPDATED_JOB` is.
_JOB_TENANT_HAS_WEBHOOKS: sa.ColumnElement[Any] = sa.literal_column(
    "(EXISTS (SELECT 1 FROM webhooks WHERE webhooks.tenant = jobs.tenant))"
)
_BATCH_TENANT_HAS_WEBHOOKS: sa.ColumnElement[Any] = sa.literal_column(
    "(EXISTS (SELECT 1 FROM webhooks WHERE webhooks.tenant = batches.tenant))"
)
#: Whether an endpoint of the new batch's tenant subscribes to credits.low with a threshold its
#: hold crossed: at or under the credits before the hold, above those after. Either balance
#: NULL (the ledger said nothing) compares to nothing, so no flag.
_HOLD_CROSSED_A_THRESHOLD = sa.exists().where(
    webhooks.c.tenant == _p("tenant"),
    webhooks.c.credits_low_threshold > _p("available_after"),
    webhooks.c.credits_low_threshold <= _p("available_before"),
)

_JOB_ROWS = sa.select(jobs, batches.c.hold_id).join_from(
    jobs, batches, jobs.c.batch_id == batches.c.batch_id
)

JOB_BY_ID = Query.of("job by id", _JOB_ROWS.where(jobs.c.job_id == _p("job_id")))
JOBS_OF_BATCH = Query.of(
    "jobs of a batch",
    _JOB_ROWS.where(jobs.c.batch_id == _p("batch_id")).order_by(jobs.c.variation, jobs.c.seq),
)
JOBS_OF_BATCHES = Query.of(
    "jobs of batches",
    _JOB_ROWS.where(one_of(jobs.c.batch_id, "batch_ids")).order_by(
        jobs.c.batch_id, jobs.c.variation, jobs.c.seq
    ),
)
CHILDREN = Query.of(
    "children", _JOB_ROWS.where(jobs.c.parent_job_id == _p("job_id")).order_by(jobs.c.seq)
)
#: Which of `job_ids` are the owner's.
OWN_JOBS = Query.of(
    "own jobs",
    sa.select(jobs.c.job_id).where(one_of(jobs.c.job_id, "job_ids"), *_owned(jobs)),
)
HAS_ASSET = Query.of(
    "has asset",
    sa.select(sa.literal_column("1").label("found"))
    .select_from(jobs)
    .where(jobs.c.asset_id == _p("asset_id"), *_owned(jobs))
    .limit(1),
)

BATCH_BY_ID = Query.of(
    "batch by id", sa.select(batches).where(batches.c.batch_id == _p("batch_id"))
)
BATCH_BY_KEY = Query.of(
    "batch by key",
    sa.select(batches).where(*_owned(batches), batches.c.idempotency_key == _p("idempotency_key")),
)
#: Locks the batch (PostgreSQL) before it is forgotten, so that no settlement or job move
#: slips in between the check and the deletes.
LOCK_BATCH = Query.of(
    "lock batch",
    sa.select(batches.c.batch_id).where(batches.c.batch_id == _p("batch_id")).with_for_update(),
)
#: The batch when it may be forgotten (`JobStore.forget_batch`): its hold settled or never
#: placed, and every job failed or cancelled.
FORGETTABLE_BATCH = Query.of(
    "forgettable batch",
    sa.select(batches.c.batch_id).where(
        batches.c.batch_id == _p("batch_id"),
        batches.c.hold_state != _literal(HoldState.OPEN),
        ~sa.exists().where(
            jobs.c.batch_id == batches.c.batch_id,
            jobs.c.status.not_in([_literal(JobStatus.FAILED), _literal(JobStatus.CANCELLED)]),
        ),
    ),
)
DELETE_JOBS_OF_BATCH = Query.of(
    "delete jobs of batch", sa.delete(jobs).where(jobs.c.batch_id == _p("batch_id"))
)
DELETE_BATCH = Query.of(
    "delete batch", sa.delete(batches).where(batches.c.batch_id == _p("batch_id"))
)
#: The deliveries not yet made of a batch being forgotten: its ids are about to mean nothing.
DELETE_PENDING_DELIVERIES_OF_BATCH = Query.of(
    "delete pending deliveries of batch",
    sa.delete(webhook_deliveries).where(
        webhook_deliveries.c.batch_id == _p("batch_id"),
        webhook_deliveries.c.state == _literal("pending"),
    ),
)

#: What a new batch row is given; the rest are the columns' defaults.
_NEW_BATCH_COLUMNS = (
    "batch_id",
    "tenant",
    "account_id",
    "idempotency_key",
    "fingerprint",
    "decision",
    "hold_id",
    "hold_state",
    "create_us",
    "owner",
    "lease_until_us",
    "detached",
    "webhook_id",
    "available_before",
    "available_after",
)
#: Inserts a batch unless its owner already used the key; of two calls racing with one
#: key, the later waits for the earlier to commit and inserts nothing (no row returned).
INSERT_BATCH = Query(
    "insert batch",
    lambda dialect: (
        insert_for(dialect, batches)
        .values(
            {
                **{column: _p(column) for column in _NEW_BATCH_COLUMNS},
                "credits_low_pending": _HOLD_CROSSED_A_THRESHOLD,
            }
        )
        .on_conflict_do_nothing(index_elements=["tenant", "account_id", "idempotency_key"])
        .returning(*batches.c)
    ),
)
#: What a new job row is given; the rest are the columns' defaults.
NEW_JOB_COLUMNS = (
    "job_id",
    "batch_id",
    "tenant",
    "account_id",
    "kind",
    "status",
    "tier",
    "stage",
    "prompt",
    "seed",
    "variation",
    "size",
    "aspect_ratio",
    "width",
    "height",
    "quoted_cost",
    "parent_job_id",
    "reasons",
    "strength",
    "upscale_factor",
    "upscale_method",
    "create_us",
    "trace_id",
)
INSERT_JOB = Query.of(
    "insert job",
    sa.insert(jobs).values({column: _p(column) for column in NEW_JOB_COLUMNS}).returning(*jobs.c),
)

ATTACH_HOLD = Query.of(
    "attach hold",
    sa.update(batches)
    .values(hold_id=_p("new_hold_id"), hold_state=_literal(HoldState.OPEN))
    .where(batches.c.batch_id == _p("batch_id"), batches.c.hold_state == _literal(HoldState.NONE))
    .returning(*batches.c),
)
SETTLE_HOLD = Query.of(
    "settle hold",
    sa.update(batches)
    .values(
        hold_state=_p("new_state"),
        captured=_p("new_captured"),
        completion_pending=_BATCH_TENANT_HAS_WEBHOOKS,
    )
    .where(batches.c.batch_id == _p("batch_id"), batches.c.hold_state == _literal(HoldState.OPEN))
    .returning(*batches.c),
)
CANCEL_UNFINISHED = Query.of(
    "cancel unfinished",
    sa.update(jobs)
    .values(
        status=_literal(JobStatus.CANCELLED),
        error_code=_literal("CANCELLED"),
        error_reason=_literal("CANCELLED"),
        error_message=_p("message"),
        finish_us=_p("now"),
        event_pending=_JOB_TENANT_HAS_WEBHOOKS,
    )
    .where(jobs.c.batch_id == _p("batch_id"), _UNFINISHED),
)
SET_SHORTLISTED = Query.of(
    "set shortlisted",
    sa.update(jobs)
    .values(shortlisted=_p("new_shortlisted"))
    .where(jobs.c.job_id == _p("job_id"), *_owned(jobs)),
)
#: Renews the lease of those of `batch_ids` still the owner's; the ids renewed.
RENEW_LEASES = Query.of(
    "renew leases",
    sa.update(batches)
    .values(lease_until_us=_p("until"))
    .where(one_of(batches.c.batch_id, "batch_ids"), batches.c.owner == _p("claimant"))
    .returning(batches.c.batch_id),
)


def _claim_abandoned(dialect: str) -> sa.ClauseElement:
    """Unfinished batches whose router is gone, oldest first, made the claimant's.

    Unfinished: an open hold, or a job queued or running (the rare batch left so under a
    settled hold, when the store was away as its batch stopped). Gone, where leases are timed
    (PostgreSQL): the lease ran out, or, never leased, the batch is older than anything a
    router older than leases could still be running. Where one router owns the database
    (SQLite): the batch is another owner's, or none's. The branches are spelled as the partial
    indexes `batches_unsettled_leases` and `jobs_unfinished`, so both serve the claim.
    """
    open_holds = sa.select(batches.c.batch_id).where(_OPEN_HOLD)
    in_flight = sa.select(jobs.c.batch_id).where(_UNFINISHED)
    if dialect == "postgresql":
        unsettled = sa.union(
            open_holds.where(batches.c.lease_until_us < _p("now")),
            open_holds.where(batches.c.lease_until_us.is_(None)),
            in_flight,
        )
        gone = sa.or_(
            batches.c.lease_until_us < _p("now"),
            sa.and_(
                batches.c.lease_until_us.is_(None), batches.c.create_us < _p("unleased_before")
            ),
        )
    else:
        unsettled = sa.union(open_holds, in_flight)
        gone = batches.c.owner.is_distinct_from(_p("claimant"))
    # Of two routers claiming at once, each takes batches the other has not locked, and a
    # batch claimed meanwhile is seen with its new lease and skipped.
    chosen = (
        sa.select(batches.c.batch_id)
        .where(batches.c.batch_id.in_(unsettled), gone)
        .order_by(batches.c.create_us, batches.c.batch_id)
        .limit(_p("limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        sa.update(batches)
        .values(owner=_p("claimant"), lease_until_us=_p("until"))
        .where(batches.c.batch_id.in_(chosen.scalar_subquery()))
        .returning(*batches.c)
    )


CLAIM_ABANDONED = Query("claim abandoned", _claim_abandoned)


@functools.cache
def move_job(columns: tuple[str, ...], target: JobStatus, scoped: bool) -> Query:
    """Moves a job to `target` if the lifecycle allows it from its status, setting `columns`
    (parameters `set_<column>`); the job's row after, or no row.

    One UPDATE guarded by the statuses it may start from and by the charge (parameter
    `charged`, at most the quoted cost): of two racing moves one wins and the other is judged
    against the status the winner left, as if it had come second. `scoped` also requires
    the job to be the owner's (parameters `tenant` and `account_id`).
    """
    sources = sorted(LIFECYCLE[target])
    conditions = [
        jobs.c.job_id == _p("job_id"),
        jobs.c.status.in_([_literal(status) for status in sources]),
        jobs.c.quoted_cost >= _p("charged"),
    ]
    if scoped:
        conditions.extend(_owned(jobs))
    # A final state is an event for the tenant's webhooks (see the module's docstring).
    flags = {"event_pending": _JOB_TENANT_HAS_WEBHOOKS} if target.is_final else {}
    statement = (
        sa.update(jobs)
        .values(
            status=_literal(target),
            **{column: _p(f"set_{column}") for column in columns},
            **flags,
        )
        .where(*conditions)
        .returning(*jobs.c, _HOLD_OF_UPDATED_JOB)
    )
    return Query.of(f"move job to {target}", statement)


@functools.cache
def listing(columns: tuple[str, ...], paged: bool) -> Query:
    """The owner's jobs (parameters `tenant` and `account_id`) whose `columns` equal the
    parameters `is_<column>`, below seq `before` when `paged`, newest first, at most `limit`."""
    statement = _JOB_ROWS.where(
        *_owned(jobs), *(jobs.c[column] == _p(f"is_{column}") for column in columns)
    )
    if paged:
        statement = statement.where(jobs.c.seq < _p("before"))
    statement = statement.order_by(jobs.c.seq.desc()).limit(_p("limit"))
    return Query.of(f"list by {', '.join(columns) or 'owner'}", statement)
