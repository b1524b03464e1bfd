"""API keys: the table of the router's credentials (`services.router.access.keys`).

A new table, so nothing is copied and nothing is rewritten: on both dialects this is one
CREATE TABLE and one CREATE INDEX, in the upgrade's transaction, taking no lock on the job
tables. Existing deployments start with no keys; an operator makes each tenant's first key
directly on the store (`tiergen keys create --dsn ...` or `--data-dir ...`).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
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
    )
    op.create_index("api_keys_by_tenant", "api_keys", ["tenant", "create_us"])


def downgrade() -> None:
    op.drop_index("api_keys_by_tenant", table_name="api_keys")
    op.drop_table("api_keys")
