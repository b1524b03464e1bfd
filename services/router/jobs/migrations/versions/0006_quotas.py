"""Quotas: the limiter's state, one row per rate-limited subject (`services.router.quotas`).

A new table, so nothing is copied and nothing is rewritten: on both dialects one CREATE TABLE in
the upgrade's transaction, taking no lock on the job tables. It starts empty, which the limiter
reads as every subject idle. Routers of the previous release never read it; upgrade the
database first, then the routers. A downgrade drops it: every subject is idle again, so for
one period after it each quota admits its burst once more.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_rates",
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("tat_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("subject", name="quota_rates_pkey"),
    )


def downgrade() -> None:
    op.drop_table("quota_rates")
