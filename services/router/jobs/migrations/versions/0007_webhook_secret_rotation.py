"""Rotating a webhook endpoint's signing secret (`RotateWebhookSecret`): the secret a rotation
replaced, and until when it still signs deliveries beside the new one.

Two nullable columns at the end of `webhooks`, so that no row is copied or rewritten:
PostgreSQL 11 and later, and SQLite alike, add them by changing the table's definition only.
Existing endpoints read as never rotated, and go on signing with their one secret.

Routers of the previous release keep working on the upgraded table (they never read the new
columns) but sign with the current secret only, so upgrade the database first, then the
routers, and rotate once every router is upgraded. A downgrade drops the columns: an old secret
still within its grace stops signing at once.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None


def upgrade() -> None:
    op.add_column("webhooks", sa.Column("previous_secret", sa.Text))
    op.add_column("webhooks", sa.Column("previous_secret_expire_us", sa.BigInteger))


def downgrade() -> None:
    # SQLite 3.35 and later drop a column in place.
    op.drop_column("webhooks", "previous_secret_expire_us")
    op.drop_column("webhooks", "previous_secret")
