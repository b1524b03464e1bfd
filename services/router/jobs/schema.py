"""The job database's tables, for SQLite and PostgreSQL alike: columns, constraints and indexes.

One `MetaData` describes both databases, so the job store's statements and the migrations
that build the tables are made from the same definition (tests/router/test_router_migrations.py
checks that a migrated database matches it). The constraints repeat, in the database, what the
store checks before writing, so a row no router could have written cannot exist on either.

Every batch and job carries its tenant next to its account (`Owner`); idempotency keys are
unique per tenant and account, and the index a listing reads starts with both. The tenant
columns come last because PostgreSQL can only append the column a migration adds, and a
migrated table must look like a new one.

Times are integer microseconds since the epoch; the reasons and the routing decision are JSON
text. Two columns differ by dialect, each through a named variant:

- `jobs.seq`, which orders jobs by creation, is PostgreSQL's identity column and SQLite's
  `INTEGER PRIMARY KEY AUTOINCREMENT` (only that spelling makes it the rowid, and
  AUTOINCREMENT keeps a forgotten job's seq from being reused, as the identity does).
- `jobs.seed` is a uint64, which overflows both databases' BIGINT: NUMERIC(20) in PostgreSQL,
  decimal TEXT in SQLite, whose NUMERIC would turn a large seed into an imprecise REAL. Its
  range check is written per dialect accordingly.

Constraint names are the ones PostgreSQL gave the constraints of the hand-written schema, so
that existing PostgreSQL databases already carry them.

The webhook outbox lives here too (`services.router.webhooks`), because it must commit with
the job's final state: the very UPDATE that makes a job final, or settles a batch, or the
INSERT that records a batch whose hold took an account under a credits.low threshold, sets a
pending flag on the row (`jobs.event_pending`, `batches.completion_pending`,
`batches.credits_low_pending`) when the tenant has a webhook endpoint, at no extra statement.
The dispatcher turns flagged rows into `webhook_deliveries`, one per endpoint, and clears the
flags, in one transaction; a router killed in between leaves the flags for the next to find.
"""

from __future__ import annotations

import sqlalchemy as sa

from services.router.jobs.model import HoldState, JobKind, JobStatus

__all__ = [
    "UNFINISHED_STATUSES",
    "api_keys",
    "batches",
    "jobs",
    "metadata",
    "quota_rates",
    "values_in",
    "webhook_deliveries",
    "webhooks",
]

metadata = sa.MetaData()

#: The statuses of a job that has not finished, as the partial index `jobs_unfinished` spells
#: them; a statement that should use that index spells its condition the same way.
UNFINISHED_STATUSES: tuple[JobStatus, ...] = tuple(s for s in JobStatus if not s.is_final)


def values_in(column: str, values: tuple[str, ...]) -> str:
    """`column IN ('a', 'b')` as SQL text, for constraints and partial-index predicates, which
    must carry their values as literals. The values are the enums' own, never user input."""
    return f"{column} IN ({', '.join(repr(str(value)) for value in values)})"


_OPEN_HOLD = f"hold_state = '{HoldState.OPEN.value}'"
#: The partial indexes' predicates of the webhook outbox flags, spelled as statements that
#: should use them spell their conditions.
JOB_EVENT_PENDING = "event_pending"
BATCH_EVENTS_PENDING = "completion_pending OR credits_low_pending"
_UNFINISHED = values_in("status", UNFINISHED_STATUSES)
_UINT64_LIMIT = 2**64


def _dialect_check(name: str, **by_dialect: str) -> list[sa.CheckConstraint]:
    """One CHECK constraint `name` whose text differs by dialect: one constraint per dialect,
    each created only there."""
    return [
        sa.CheckConstraint(text, name=name).ddl_if(dialect=dialect)
        for dialect, text in by_dialect.items()
    ]


batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("decision", sa.Text),
    sa.Column("hold_id", sa.Text),
    sa.Column("hold_state", sa.Text, nullable=False),
    sa.Column("captured", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    # The router process running the batch; NULL for a batch of a router older than owners.
    sa.Column("owner", sa.Text),
    # Until when the owner holds the batch; read only where leases are timed (PostgreSQL).
    sa.Column("lease_until_us", sa.BigInteger),
    # The tenant of the account (`account_id` is unique only within it); no default, so that
    # no statement can leave it out.
    sa.Column("tenant", sa.Text, nullable=False),
    # Whether the call that created it answered at once and left the batch to run on.
    sa.Column("detached", sa.Boolean(), nullable=False, server_default=sa.false()),
    # The webhook endpoint the call named to be told about this batch only; NULL for every
    # subscribed endpoint of the tenant. Not a foreign key: deleting an endpoint keeps batches.
    sa.Column("webhook_id", sa.Text),
    # Outbox flags (see the module's docstring): batch.completed to send, and credits.low.
    sa.Column("completion_pending", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("credits_low_pending", sa.Boolean(), nullable=False, server_default=sa.false()),
    # The account's available credits before and after the batch's hold, as the ledger said;
    # NULL when it said nothing. What a credits.low event reports.
    sa.Column("available_before", sa.BigInteger),
    sa.Column("available_after", sa.BigInteger),
    sa.PrimaryKeyConstraint("batch_id", name="batches_pkey"),
    sa.UniqueConstraint(
        "tenant",
        "account_id",
        "idempotency_key",
        name="batches_tenant_account_id_idempotency_key_key",
    ),
    sa.CheckConstraint(values_in("hold_state", tuple(HoldState)), name="batches_hold_state_check"),
    sa.CheckConstraint("captured >= 0", name="batches_captured_check"),
    sa.CheckConstraint(
        f"(hold_id IS NULL) = (hold_state = '{HoldState.NONE.value}')", name="batches_hold_check"
    ),
    # Unsettled batches by lease expiry: a claim reads only the expired (and the never leased),
    # not the live batches every replica is running.
    sa.Index(
        "batches_unsettled_leases",
        "lease_until_us",
        postgresql_where=sa.text(_OPEN_HOLD),
        sqlite_where=sa.text(_OPEN_HOLD),
    ),
    # Batches with an event to fan out: what the webhook dispatcher scans, among every batch.
    sa.Index(
        "batches_events_pending",
        "create_us",
        postgresql_where=sa.text(BATCH_EVENTS_PENDING),
        sqlite_where=sa.text(BATCH_EVENTS_PENDING),
    ),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        sa.Identity(always=True),
        nullable=False,
    ),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("seed", sa.Numeric(20, 0).with_variant(sa.Text(), "sqlite"), nullable=False),
    sa.Column("variation", sa.Integer, nullable=False),
    sa.Column("size", sa.Text),
    sa.Column("aspect_ratio", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("quoted_cost", sa.BigInteger, nullable=False),
    sa.Column("cost", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("parent_job_id", sa.Text),
    sa.Column("asset_id", sa.Text),
    sa.Column("asset_width", sa.Integer),
    sa.Column("asset_height", sa.Integer),
    sa.Column("asset_media_type", sa.Text),
    sa.Column("asset_size_bytes", sa.BigInteger),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("strength", sa.Double),
    sa.Column("drift", sa.Double),
    sa.Column("upscale_factor", sa.Double),
    sa.Column("upscale_method", sa.Text),
    sa.Column("error_code", sa.Text),
    sa.Column("error_reason", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("start_us", sa.BigInteger),
    sa.Column("finish_us", sa.BigInteger),
    sa.Column("trace_id", sa.Text, nullable=False),
    # Marked by the caller as one of the handful of viable compositions. SQLite has no
    # BOOLEAN: there it is 0 or 1, and the type's own constraint says so.
    sa.Column(
        "shortlisted",
        sa.Boolean(create_constraint=True, name="jobs_shortlisted_check"),
        nullable=False,
        server_default=sa.false(),
    ),
    # The tenant of the account, as on `batches`.
    sa.Column("tenant", sa.Text, nullable=False),
    # Outbox flag: the job's final state is still to be told to its tenant's webhooks.
    sa.Column("event_pending", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.PrimaryKeyConstraint("seq", name="jobs_pkey"),
    sa.UniqueConstraint("job_id", name="jobs_job_id_key"),
    sa.ForeignKeyConstraint(["batch_id"], ["batches.batch_id"], name="jobs_batch_id_fkey"),
    sa.ForeignKeyConstraint(["parent_job_id"], ["jobs.job_id"], name="jobs_parent_job_id_fkey"),
    sa.CheckConstraint(values_in("kind", tuple(JobKind)), name="jobs_kind_check"),
    sa.CheckConstraint(values_in("status", tuple(JobStatus)), name="jobs_status_check"),
    *_dialect_check(
        "jobs_seed_check",
        postgresql=f"seed >= 0 AND seed < {_UINT64_LIMIT}",
        # Decimal digits without a leading zero, and at most 2^64 - 1: of two such texts of
        # one length, the text order is the numeric order.
        sqlite=(
            "seed <> '' AND seed NOT GLOB '*[^0-9]*' AND (seed = '0' OR seed NOT GLOB '0*')"
            f" AND (length(seed) < {len(str(_UINT64_LIMIT - 1))}"
            f" OR (length(seed) = {len(str(_UINT64_LIMIT - 1))}"
            f" AND seed <= '{_UINT64_LIMIT - 1}'))"
        ),
    ),
    sa.CheckConstraint("width > 0", name="jobs_width_check"),
    sa.CheckConstraint("height > 0", name="jobs_height_check"),
    sa.CheckConstraint("quoted_cost >= 0", name="jobs_quoted_cost_check"),
    sa.CheckConstraint("cost >= 0 AND cost <= quoted_cost", name="jobs_cost_check"),
    sa.CheckConstraint("drift >= 0 AND drift <= 1", name="jobs_drift_check"),
    sa.Index("jobs_by_account", "tenant", "account_id", "seq"),
    sa.Index("jobs_by_batch", "batch_id", "variation"),
    sa.Index("jobs_by_parent", "parent_job_id"),
    sa.Index("jobs_by_asset", "asset_id"),
    # Jobs in flight: what a claim looks for besides open holds, among every job ever made.
    sa.Index(
        "jobs_unfinished",
        "seq",
        postgresql_where=sa.text(_UNFINISHED),
        sqlite_where=sa.text(_UNFINISHED),
    ),
    # Jobs whose final state is still to be fanned out to webhooks.
    sa.Index(
        "jobs_events_pending",
        "seq",
        postgresql_where=sa.text(JOB_EVENT_PENDING),
        sqlite_where=sa.text(JOB_EVENT_PENDING),
    ),
    sqlite_autoincrement=True,
)

# The router's API keys (`services.router.access.keys`): one row per key, named by its
# non-secret prefix, holding only the SHA-256 of the whole key (hex). `scopes` is the key's
# scopes as space-separated text; `replaces` names the key a rotation replaced.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("expire_us", sa.BigInteger),
    sa.Column("revoke_us", sa.BigInteger),
    sa.Column("replaces", sa.Text),
    sa.PrimaryKeyConstraint("prefix", name="api_keys_pkey"),
    sa.CheckConstraint("length(key_hash) = 64", name="api_keys_key_hash_check"),
    sa.CheckConstraint("scopes <> ''", name="api_keys_scopes_check"),
    # A tenant's keys, newest first: what a listing reads.
    sa.Index("api_keys_by_tenant", "tenant", "create_us"),
)

#: The events a webhook endpoint can subscribe to (`services.router.webhooks.model.EventType`),
#: frozen here as the constraints spell them.
WEBHOOK_EVENT_TYPES = (
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "batch.completed",
    "credits.low",
)

# A tenant's webhook endpoints (`services.router.webhooks`). `events` is the subscribed event
# types as space-separated text; `credits_low_threshold` is set exactly when credits.low is one
# of them. `secret` is the Standard Webhooks signing secret (`whsec_...`), kept as it is because
# signing needs it (docs/security.md says how it is protected); no statement but the
# dispatcher's reads it. `consecutive_failures` and `failing_since_us` count the attempts that
# failed since the last success, from which an endpoint is paused (`pause_reason` says why).
# `previous_secret` is the secret the last rotation replaced, which also signs deliveries until
# `previous_secret_expire_us`; both are null when no rotation kept one.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("webhook_id", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("events", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("credits_low_threshold", sa.BigInteger),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("pause_reason", sa.Text),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("failing_since_us", sa.BigInteger),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("update_us", sa.BigInteger, nullable=False),
    sa.Column("pause_us", sa.BigInteger),
    sa.Column("previous_secret", sa.Text),
    sa.Column("previous_secret_expire_us", sa.BigInteger),
    sa.PrimaryKeyConstraint("webhook_id", name="webhooks_pkey"),
    sa.CheckConstraint(values_in("state", ("active", "paused")), name="webhooks_state_check"),
    sa.CheckConstraint("events <> ''", name="webhooks_events_check"),
    sa.CheckConstraint("credits_low_threshold > 0", name="webhooks_credits_low_threshold_check"),
    sa.CheckConstraint("consecutive_failures >= 0", name="webhooks_consecutive_failures_check"),
    # A tenant's endpoints, newest first (a listing), and whether a tenant has any (the flags).
    sa.Index("webhooks_by_tenant", "tenant", "create_us"),
)

_PENDING_DELIVERY = "state = 'pending'"

# One event on its way to one endpoint: the durable outbox the dispatcher sends from. `payload`
# is the JSON body, made once so that every attempt sends the same bytes. `next_attempt_us` is
# when the next attempt is due; a dispatcher taking a delivery moves it past the attempt's
# timeout, which leases the delivery to it (a router that dies mid-attempt leaves it due again).
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("delivery_id", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("webhook_id", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text),
    sa.Column("job_id", sa.Text),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("next_attempt_us", sa.BigInteger, nullable=False),
    sa.Column("last_attempt_us", sa.BigInteger),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("finish_us", sa.BigInteger),
    sa.PrimaryKeyConstraint("delivery_id", name="webhook_deliveries_pkey"),
    sa.ForeignKeyConstraint(
        ["webhook_id"], ["webhooks.webhook_id"], name="webhook_deliveries_webhook_id_fkey"
    ),
    sa.CheckConstraint(
        values_in("state", ("pending", "delivered", "failed")),
        name="webhook_deliveries_state_check",
    ),
    sa.CheckConstraint(
        values_in("event_type", WEBHOOK_EVENT_TYPES), name="webhook_deliveries_event_type_check"
    ),
    sa.CheckConstraint("attempts >= 0", name="webhook_deliveries_attempts_check"),
    # Pending deliveries by when they are due: what the dispatcher takes from.
    sa.Index(
        "webhook_deliveries_due",
        "next_attempt_us",
        postgresql_where=sa.text(_PENDING_DELIVERY),
        sqlite_where=sa.text(_PENDING_DELIVERY),
    ),
    # A tenant's deliveries newest first, and an endpoint's (the listings), and a batch's
    # (forgetting a batch refused before any work forgets its deliveries).
    sa.Index("webhook_deliveries_by_tenant", "tenant", "create_us", "delivery_id"),
    sa.Index("webhook_deliveries_by_webhook", "webhook_id", "create_us", "delivery_id"),
    sa.Index("webhook_deliveries_by_batch", "batch_id"),
)

# The quota limiter's state (`services.router.quotas`): one row per rate-limited subject
# ("tenant:acme:requests_per_second", "account:acme/alice:images_per_minute"), holding the
# subject's theoretical arrival time (GCRA) in microseconds since the epoch, which one UPDATE
# moves forward as it admits a call. A row whose time has passed means the same as no row (an
# idle subject), so the limiter deletes rows idle for a while and makes them again on use.
quota_rates = sa.Table(
    "quota_rates",
    metadata,
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("tat_us", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("subject", name="quota_rates_pkey"),
)
