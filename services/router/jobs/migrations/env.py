"""Alembic's environment for the router's job tables; `services.runtime.migrations` runs it."""

from __future__ import annotations

from alembic import context

from services.router.jobs.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=context.config.attributes["version_table"],
)
with context.begin_transaction():
    context.run_migrations()
