"""The job tables as the hand-written migrations of the two job stores left them (version 3).

Written out per dialect, as each store wrote it, so that a database those migrations made and
a database this revision made are the same; the former is adopted by stamping this revision
(`services.router.jobs.migrations.SCHEMA`, `legacy_versions`). The schema they share is the
next revision's.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

#: services/router/jobs/sqlite_store.py, MIGRATIONS 1 to 3.
_SQLITE = (
    """CREATE TABLE batches (
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
    )""",
    """CREATE TABLE jobs (
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
    )""",
    "CREATE INDEX jobs_by_account ON jobs (account_id, seq)",
    "CREATE INDEX jobs_by_batch ON jobs (batch_id, variation)",
    "CREATE INDEX jobs_by_parent ON jobs (parent_job_id)",
    "CREATE INDEX jobs_by_asset ON jobs (asset_id)",
    "CREATE INDEX jobs_unfinished ON jobs (seq) WHERE status IN ('queued', 'running')",
    "CREATE INDEX batches_open_holds ON batches (batch_id) WHERE hold_state = 'open'",
    "ALTER TABLE jobs ADD COLUMN shortlisted INTEGER NOT NULL DEFAULT 0"
    " CHECK (shortlisted IN (0, 1))",
    "ALTER TABLE batches ADD COLUMN owner TEXT",
)

#: services/router/jobs/postgres_store.py, MIGRATIONS 1 to 3.
_POSTGRESQL = (
    """CREATE TABLE batches (
        batch_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        decision TEXT,
        hold_id TEXT,
        hold_state TEXT NOT NULL
            CHECK (hold_state IN ('none', 'open', 'captured', 'released')),
        captured BIGINT NOT NULL DEFAULT 0 CHECK (captured >= 0),
        create_us BIGINT NOT NULL,
        UNIQUE (account_id, idempotency_key),
        CHECK ((hold_id IS NULL) = (hold_state = 'none'))
    )""",
    """CREATE TABLE jobs (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE,
        batch_id TEXT NOT NULL REFERENCES batches (batch_id),
        account_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('generate', 'promote', 'upscale')),
        status TEXT NOT NULL
            CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        tier TEXT NOT NULL,
        stage TEXT NOT NULL,
        prompt TEXT NOT NULL,
        seed NUMERIC(20) NOT NULL CHECK (seed >= 0 AND seed < 18446744073709551616),
        variation INTEGER NOT NULL,
        size TEXT,
        aspect_ratio TEXT NOT NULL,
        width INTEGER NOT NULL CHECK (width > 0),
        height INTEGER NOT NULL CHECK (height > 0),
        quoted_cost BIGINT NOT NULL CHECK (quoted_cost >= 0),
        cost BIGINT NOT NULL DEFAULT 0 CHECK (cost >= 0 AND cost <= quoted_cost),
        parent_job_id TEXT REFERENCES jobs (job_id),
        asset_id TEXT,
        asset_width INTEGER,
        asset_height INTEGER,
        asset_media_type TEXT,
        asset_size_bytes BIGINT,
        reasons TEXT NOT NULL,
        strength DOUBLE PRECISION,
        drift DOUBLE PRECISION CHECK (drift >= 0 AND drift <= 1),
        upscale_factor DOUBLE PRECISION,
        upscale_method TEXT,
        error_code TEXT,
        error_reason TEXT,
        error_message TEXT,
        create_us BIGINT NOT NULL,
        start_us BIGINT,
        finish_us BIGINT,
        trace_id TEXT NOT NULL
    )""",
    "CREATE INDEX jobs_by_account ON jobs (account_id, seq)",
    "CREATE INDEX jobs_by_batch ON jobs (batch_id, variation)",
    "CREATE INDEX jobs_by_parent ON jobs (parent_job_id)",
    "CREATE INDEX jobs_by_asset ON jobs (asset_id)",
    "CREATE INDEX jobs_unfinished ON jobs (seq) WHERE status IN ('queued', 'running')",
    "CREATE INDEX batches_open_holds ON batches (create_us) WHERE hold_state = 'open'",
    "ALTER TABLE jobs ADD COLUMN shortlisted BOOLEAN NOT NULL DEFAULT FALSE",
    "ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check",
    "ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check"
    " CHECK (kind IN ('generate', 'promote', 'upscale', 'edit'))",
    "ALTER TABLE batches ADD COLUMN owner TEXT",
    "ALTER TABLE batches ADD COLUMN lease_until_us BIGINT",
    "CREATE INDEX batches_unsettled_leases ON batches (lease_until_us) WHERE hold_state = 'open'",
    "DROP INDEX batches_open_holds",
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE if dialect == "sqlite" else _POSTGRESQL:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("batches")
