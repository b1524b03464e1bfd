"""Detached batches and webhooks: each tenant's webhook endpoints, the outbox of deliveries,
and the flags that make a job's final state and its event one commit
(`services.router.webhooks`).

Two new tables (`webhooks`, `webhook_deliveries`) and new columns at the end of `batches` and
`jobs`, each NOT NULL with a constant default or nullable, so that existing rows are neither
copied nor rewritten: PostgreSQL 11 and later, and SQLite alike, add such a column by changing
the table's definition only. The new partial indexes start empty on the job tables (no row is
flagged yet) but PostgreSQL still reads each table once to build them, inside the upgrade's
transaction: about a second per few million jobs, holding the tables' write locks.

Routers of the previous release keep working on the upgraded tables (every new column has a
default, and they never read it); they neither flag events nor send webhooks, so upgrade the
database first, then the routers. A downgrade drops the tables and columns, and with them every
endpoint, its secret and its deliveries.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_JOB_EVENT_PENDING = "event_pending"
_BATCH_EVENTS_PENDING = "completion_pending OR credits_low_pending"
_PENDING_DELIVERY = "state = 'pending'"
_EVENT_TYPES = "'job.succeeded', 'job.failed', 'job.cancelled', 'batch.completed', 'credits.low'"


def _flag(name: str) -> sa.Column[bool]:
    return sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())


def _partial_index(name: str, table: str, column: str, predicate: str) -> None:
    op.create_index(
        name,
        table,
        [column],
        postgresql_where=sa.text(predicate),
        sqlite_where=sa.text(predicate),
    )


def upgrade() -> None:
    op.add_column("batches", _flag("detached"))
    op.add_column("batches", sa.Column("webhook_id", sa.Text))
    op.add_column("batches", _flag("completion_pending"))
    op.add_column("batches", _flag("credits_low_pending"))
    op.add_column("batches", sa.Column("available_before", sa.BigInteger))
    op.add_column("batches", sa.Column("available_after", sa.BigInteger))
    op.add_column("jobs", _flag("event_pending"))
    _partial_index("batches_events_pending", "batches", "create_us", _BATCH_EVENTS_PENDING)
    _partial_index("jobs_events_pending", "jobs", "seq", _JOB_EVENT_PENDING)

    op.create_table(
        "webhooks",
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
        sa.PrimaryKeyConstraint("webhook_id", name="webhooks_pkey"),
        sa.CheckConstraint("state IN ('active', 'paused')", name="webhooks_state_check"),
        sa.CheckConstraint("events <> ''", name="webhooks_events_check"),
        sa.CheckConstraint(
            "credits_low_threshold > 0", name="webhooks_credits_low_threshold_check"
        ),
        sa.CheckConstraint("consecutive_failures >= 0", name="webhooks_consecutive_failures_check"),
    )
    op.create_index("webhooks_by_tenant", "webhooks", ["tenant", "create_us"])

    op.create_table(
        "webhook_deliveries",
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
            "state IN ('pending', 'delivered', 'failed')", name="webhook_deliveries_state_check"
        ),
        sa.CheckConstraint(
            f"event_type IN ({_EVENT_TYPES})", name="webhook_deliveries_event_type_check"
        ),
        sa.CheckConstraint("attempts >= 0", name="webhook_deliveries_attempts_check"),
    )
    _partial_index(
        "webhook_deliveries_due", "webhook_deliveries", "next_attempt_us", _PENDING_DELIVERY
    )
    op.create_index(
        "webhook_deliveries_by_tenant",
        "webhook_deliveries",
        ["tenant", "create_us", "delivery_id"],
    )
    op.create_index(
        "webhook_deliveries_by_webhook",
        "webhook_deliveries",
        ["webhook_id", "create_us", "delivery_id"],
    )
    op.create_index("webhook_deliveries_by_batch", "webhook_deliveries", ["batch_id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_index("jobs_events_pending", table_name="jobs")
    op.drop_index("batches_events_pending", table_name="batches")
    # SQLite 3.35 and later drop a column in place; one with an index must lose it first.
    op.drop_column("jobs", "event_pending")
    for column in (
        "available_after",
        "available_before",
        "credits_low_pending",
        "completion_pending",
        "webhook_id",
        "detached",
    ):
        op.drop_column("batches", column)
