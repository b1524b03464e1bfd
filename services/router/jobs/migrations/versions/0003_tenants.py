"""Tenants: every batch and job belongs to an account of one tenant; the rows from before tenants
are the default tenant's (`services.runtime.identifiers.DEFAULT_TENANT`, "default").

Both tables gain `tenant` (NOT NULL, and no default once the rows are filled: every statement
names it). An idempotency key becomes unique per tenant and account, and the index of a
listing leads with the tenant. Each column is first added with the default tenant as its
default, which fills the existing rows without rewriting them (PostgreSQL 11 and later, and
SQLite alike), and the default is then dropped:

- PostgreSQL drops it in place; the new unique constraint and index are built inside the
  upgrade's transaction, which holds the tables' locks for as long as building them takes.
- SQLite can drop neither a default nor a constraint, so both tables are rebuilt as revision
  0002 rebuilt them (Alembic's batch mode from frozen copies, foreign keys off and checked at
  the end, the jobs' AUTOINCREMENT counter carried over), which takes a write lock on the file
  for about a second per million jobs.

Routers of the previous release cannot create batches in the upgraded tables (their INSERT
names no tenant, and their ON CONFLICT names the old key): stop them before upgrading. A
downgrade is refused once a row belongs to another tenant, since dropping the column would
merge that tenant's accounts into the default tenant's.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

#: The tenant of every row written before tenants (services.runtime.identifiers.DEFAULT_TENANT,
#: frozen here as the rows were filled).
_DEFAULT_TENANT = "default"
_OPEN_HOLD = "hold_state = 'open'"
_UNFINISHED = "status IN ('queued', 'running')"
_SEED_TEXT_CHECK = (
    "seed <> '' AND seed NOT GLOB '*[^0-9]*' AND (seed = '0' OR seed NOT GLOB '0*')"
    " AND (length(seed) < 20 OR (length(seed) = 20 AND seed <= '18446744073709551615'))"
)

_frozen = sa.MetaData()


def _tenant_column() -> sa.Column[str]:
    """`tenant` as the first step of the upgrade adds it: filled with the default tenant."""
    return sa.Column(
        "tenant", sa.Text, nullable=False, server_default=sa.text(f"'{_DEFAULT_TENANT}'")
    )


#: The tables as revision 0002 made them on SQLite, with the column the first step added, for
#: batch mode to copy from rather than reflect.
_BATCHES = sa.Table(
    "batches",
    _frozen,
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("decision", sa.Text),
    sa.Column("hold_id", sa.Text),
    sa.Column("hold_state", sa.Text, nullable=False),
    sa.Column("captured", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.Text),
    sa.Column("lease_until_us", sa.BigInteger),
    _tenant_column(),
    sa.PrimaryKeyConstraint("batch_id", name="batches_pkey"),
    sa.UniqueConstraint(
        "account_id", "idempotency_key", name="batches_account_id_idempotency_key_key"
    ),
    sa.CheckConstraint(
        "hold_state IN ('none', 'open', 'captured', 'released')", name="batches_hold_state_check"
    ),
    sa.CheckConstraint("captured >= 0", name="batches_captured_check"),
    sa.CheckConstraint("(hold_id IS NULL) = (hold_state = 'none')", name="batches_hold_check"),
    sa.Index("batches_unsettled_leases", "lease_until_us", sqlite_where=sa.text(_OPEN_HOLD)),
)
_JOBS = sa.Table(
    "jobs",
    _frozen,
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("batch_id", sa.Text, nullable=False),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("seed", sa.Text, nullable=False),
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
    sa.Column(
        "shortlisted",
        sa.Boolean(create_constraint=True, name="jobs_shortlisted_check"),
        nullable=False,
        server_default=sa.false(),
    ),
    _tenant_column(),
    sa.PrimaryKeyConstraint("seq", name="jobs_pkey"),
    sa.UniqueConstraint("job_id", name="jobs_job_id_key"),
    sa.ForeignKeyConstraint(["batch_id"], ["batches.batch_id"], name="jobs_batch_id_fkey"),
    sa.ForeignKeyConstraint(["parent_job_id"], ["jobs.job_id"], name="jobs_parent_job_id_fkey"),
    sa.CheckConstraint(
        "kind IN ('generate', 'promote', 'upscale', 'edit')", name="jobs_kind_check"
    ),
    sa.CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
        name="jobs_status_check",
    ),
    sa.CheckConstraint(_SEED_TEXT_CHECK, name="jobs_seed_check"),
    sa.CheckConstraint("width > 0", name="jobs_width_check"),
    sa.CheckConstraint("height > 0", name="jobs_height_check"),
    sa.CheckConstraint("quoted_cost >= 0", name="jobs_quoted_cost_check"),
    sa.CheckConstraint("cost >= 0 AND cost <= quoted_cost", name="jobs_cost_check"),
    sa.CheckConstraint("drift >= 0 AND drift <= 1", name="jobs_drift_check"),
    sa.Index("jobs_by_account", "account_id", "seq"),
    sa.Index("jobs_by_batch", "batch_id", "variation"),
    sa.Index("jobs_by_parent", "parent_job_id"),
    sa.Index("jobs_by_asset", "asset_id"),
    sa.Index("jobs_unfinished", "seq", sqlite_where=sa.text(_UNFINISHED)),
    sqlite_autoincrement=True,
)


def upgrade() -> None:
    for table in ("batches", "jobs"):
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN tenant TEXT NOT NULL DEFAULT '{_DEFAULT_TENANT}'"
        )
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite()
        return
    for table in ("batches", "jobs"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN tenant DROP DEFAULT")
    op.execute("ALTER TABLE batches DROP CONSTRAINT batches_account_id_idempotency_key_key")
    op.execute(
        "ALTER TABLE batches ADD CONSTRAINT batches_tenant_account_id_idempotency_key_key"
        " UNIQUE (tenant, account_id, idempotency_key)"
    )
    op.execute("DROP INDEX jobs_by_account")
    op.execute("CREATE INDEX jobs_by_account ON jobs (tenant, account_id, seq)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        raise NotImplementedError(
            "the SQLite job tables are not rebuilt back: restore the file from before the upgrade"
        )
    others = op.get_bind().exec_driver_sql(
        f"SELECT count(*) FROM batches WHERE tenant <> '{_DEFAULT_TENANT}'"
    )
    if others.scalar():
        raise RuntimeError(
            "batches of tenants other than the default one exist; dropping the tenant would"
            " merge their accounts into the default tenant's"
        )
    op.execute("DROP INDEX jobs_by_account")
    op.execute("CREATE INDEX jobs_by_account ON jobs (account_id, seq)")
    op.execute("ALTER TABLE jobs DROP COLUMN tenant")
    op.execute("ALTER TABLE batches DROP CONSTRAINT batches_tenant_account_id_idempotency_key_key")
    op.execute(
        "ALTER TABLE batches ADD CONSTRAINT batches_account_id_idempotency_key_key"
        " UNIQUE (account_id, idempotency_key)"
    )
    op.execute("ALTER TABLE batches DROP COLUMN tenant")


def _rebuild_sqlite() -> None:
    bind = op.get_bind()
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "the job tables are rebuilt with foreign keys off; this connection enforces them"
        )
    sequence = bind.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").scalar()

    with op.batch_alter_table("batches", copy_from=_BATCHES, recreate="always") as batch:
        batch.alter_column(
            "tenant", server_default=None, existing_type=sa.Text, existing_nullable=False
        )
        batch.drop_constraint("batches_account_id_idempotency_key_key", type_="unique")
        batch.create_unique_constraint(
            "batches_tenant_account_id_idempotency_key_key",
            ["tenant", "account_id", "idempotency_key"],
        )

    with op.batch_alter_table("jobs", copy_from=_JOBS, recreate="always") as batch:
        batch.alter_column(
            "tenant", server_default=None, existing_type=sa.Text, existing_nullable=False
        )
        batch.drop_index("jobs_by_account")
        batch.create_index("jobs_by_account", ["tenant", "account_id", "seq"])

    if sequence is not None:
        # The copy set the counter to the highest seq copied; a job forgotten last was higher.
        bind.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs'", (sequence,)
        )
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"the rebuilt job tables break foreign keys: {broken[:5]}")
