"""The router's job tables under Alembic: `SCHEMA`, which `tiergen migrate --service router` and
the job store hand to `services.runtime.migrations`.

The revisions (versions/) are frozen copies of what they change, never imports of
`jobs.schema`, so that an old revision still builds what it built when it was written; a test
(tests/router/test_router_migrations.py) checks that the newest one builds `jobs.schema`.
Databases from before Alembic recorded their version in a table of their own, which the
SQLite store and the PostgreSQL store named differently; at their newest hand-written version
(3) they are adopted by stamping the baseline revision, which built exactly that.
"""

from __future__ import annotations

from pathlib import Path

from services.runtime.migrations import Schema

__all__ = ["SCHEMA"]

SCHEMA = Schema(
    "router",
    Path(__file__).parent,
    legacy_table="schema_migrations",
    legacy_versions={3: "0001"},
    # The PostgreSQL store's own name, so that the ledger's tables could share its schema.
    legacy_tables={"postgresql": "job_schema_migrations"},
)
