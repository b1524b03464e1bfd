"""One schema on both dialects: the tables of `services/router/jobs/schema.py`, every row kept.

PostgreSQL already had that schema but for the name of one constraint. SQLite lacked the CHECK
constraints, the lease expiry column and the lease index, and declared narrower types; SQLite
cannot add a constraint to a table, so both tables are rebuilt (Alembic's batch mode: create
the new table, copy every row, drop the old, rename), which takes a write lock on the file for
as long as the copy, about a second per million jobs. A row the new constraints refuse stops
the upgrade, and the transaction leaves the database as it was.

SQLite enforces no foreign key while the tables are swapped (the runner's connections leave
`foreign_keys` off, and the revision refuses to run otherwise); a `foreign_key_check` at the
end proves the copy kept them all. The jobs' AUTOINCREMENT counter is carried over, so the seq
of a job forgotten last is never handed out again.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0002"
down_revision: str | None = "0001"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_legacy = sa.MetaData()

#: The tables as revision 0001 made them on SQLite, for batch mode to copy from rather than
#: reflect. Their unnamed key constraints are written with the names the new tables carry:
#: SQLite keeps no name for them, so the name is all that changes.
_LEGACY_BATCHES = sa.Table(
    "batches",
    _legacy,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("decision", sa.Text),
    sa.Column("hold_id", sa.Text),
    sa.Column("hold_state", sa.Text, nullable=False),
    sa.Column("captured", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("create_us", sa.Integer, nullable=False),
    sa.Column("owner", sa.Text),
    sa.PrimaryKeyConstraint("batch_id", name="batches_pkey"),
    sa.UniqueConstraint(
        "account_id", "idempotency_key", name="batches_account_id_idempotency_key_key"
    ),
    sa.Index("batches_open_holds", "batch_id", sqlite_where=sa.text("hold_state = 'open'")),
)
_LEGACY_JOBS = sa.Table(
    "jobs",
    _legacy,
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
    sa.Column("quoted_cost", sa.Integer, nullable=False),
    sa.Column("cost", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("parent_job_id", sa.Text),
    sa.Column("asset_id", sa.Text),
    sa.Column("asset_width", sa.Integer),
    sa.Column("asset_height", sa.Integer),
    sa.Column("asset_media_type", sa.Text),
    sa.Column("asset_size_bytes", sa.Integer),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("strength", sa.REAL),
    sa.Column("drift", sa.REAL),
    sa.Column("upscale_factor", sa.REAL),
    sa.Column("upscale_method", sa.Text),
    sa.Column("error_code", sa.Text),
    sa.Column("error_reason", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("create_us", sa.Integer, nullable=False),
    sa.Column("start_us", sa.Integer),
    sa.Column("finish_us", sa.Integer),
    sa.Column("trace_id", sa.Text, nullable=False),
    # Its unnamed CHECK (shortlisted IN (0, 1)) is not copied: the new type restates it, named.
    sa.Column("shortlisted", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.PrimaryKeyConstraint("seq", name="jobs_pkey"),
    sa.UniqueConstraint("job_id", name="jobs_job_id_key"),
    sa.ForeignKeyConstraint(["batch_id"], ["batches.batch_id"], name="jobs_batch_id_fkey"),
    sa.ForeignKeyConstraint(["parent_job_id"], ["jobs.job_id"], name="jobs_parent_job_id_fkey"),
    sa.Index("jobs_by_account", "account_id", "seq"),
    sa.Index("jobs_by_batch", "batch_id", "variation"),
    sa.Index("jobs_by_parent", "parent_job_id"),
    sa.Index("jobs_by_asset", "asset_id"),
    sa.Index("jobs_unfinished", "seq", sqlite_where=sa.text("status IN ('queued', 'running')")),
    sqlite_autoincrement=True,
)

#: Integer columns that hold credits, bytes and times: BIGINT, as on PostgreSQL.
_WIDENED = {
    "batches": ("captured", "create_us"),
    "jobs": ("quoted_cost", "cost", "asset_size_bytes", "create_us", "start_us", "finish_us"),
}
_NOT_NULL = {"captured", "create_us", "quoted_cost", "cost"}
_SEED_TEXT_CHECK = (
    "seed <> '' AND seed NOT GLOB '*[^0-9]*' AND (seed = '0' OR seed NOT GLOB '0*')"
    " AND (length(seed) < 20 OR (length(seed) = 20 AND seed <= '18446744073709551615'))"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite()
    else:
        op.execute("ALTER TABLE batches RENAME CONSTRAINT batches_check TO batches_hold_check")
        op.execute("ALTER TABLE jobs RENAME CONSTRAINT jobs_check TO jobs_cost_check")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        raise NotImplementedError(
            "the SQLite job tables are not rebuilt back: restore the file from before the upgrade"
        )
    op.execute("ALTER TABLE batches RENAME CONSTRAINT batches_hold_check TO batches_check")
    op.execute("ALTER TABLE jobs RENAME CONSTRAINT jobs_cost_check TO jobs_check")


def _rebuild_sqlite() -> None:
    bind = op.get_bind()
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "the job tables are rebuilt with foreign keys off; this connection enforces them"
        )
    sequence = bind.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").scalar()

    with op.batch_alter_table("batches", copy_from=_LEGACY_BATCHES, recreate="always") as batch:
        _widen(batch, "batches")
        batch.add_column(sa.Column("lease_until_us", sa.BigInteger))
        batch.create_check_constraint(
            "batches_hold_state_check",
            "hold_state IN ('none', 'open', 'captured', 'released')",
        )
        batch.create_check_constraint("batches_captured_check", "captured >= 0")
        batch.create_check_constraint(
            "batches_hold_check", "(hold_id IS NULL) = (hold_state = 'none')"
        )
        batch.drop_index("batches_open_holds")
        batch.create_index(
            "batches_unsettled_leases",
            ["lease_until_us"],
            sqlite_where=sa.text("hold_state = 'open'"),
        )

    with op.batch_alter_table("jobs", copy_from=_LEGACY_JOBS, recreate="always") as batch:
        _widen(batch, "jobs")
        for column in ("strength", "drift", "upscale_factor"):
            batch.alter_column(column, type_=sa.Double, existing_type=sa.REAL)
        batch.alter_column(
            "shortlisted",
            type_=sa.Boolean(create_constraint=True, name="jobs_shortlisted_check"),
            existing_type=sa.Integer,
            existing_nullable=False,
            existing_server_default=sa.text("0"),
        )
        batch.create_check_constraint(
            "jobs_kind_check", "kind IN ('generate', 'promote', 'upscale', 'edit')"
        )
        batch.create_check_constraint(
            "jobs_status_check",
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
        )
        batch.create_check_constraint("jobs_seed_check", _SEED_TEXT_CHECK)
        batch.create_check_constraint("jobs_width_check", "width > 0")
        batch.create_check_constraint("jobs_height_check", "height > 0")
        batch.create_check_constraint("jobs_quoted_cost_check", "quoted_cost >= 0")
        batch.create_check_constraint("jobs_cost_check", "cost >= 0 AND cost <= quoted_cost")
        batch.create_check_constraint("jobs_drift_check", "drift >= 0 AND drift <= 1")

    if sequence is not None:
        # The copy set the counter to the highest seq copied; a job forgotten last was higher.
        bind.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs'", (sequence,)
        )
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"the rebuilt job tables break foreign keys: {broken[:5]}")


def _widen(batch: BatchOperations, table: str) -> None:
    for column in _WIDENED[table]:
        batch.alter_column(
            column,
            type_=sa.BigInteger,
            existing_type=sa.Integer,
            existing_nullable=column not in _NOT_NULL,
        )
