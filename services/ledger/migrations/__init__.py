"""The ledger's tables under Alembic: `SCHEMA`, which `tiergen migrate --service ledger` and the
ledger's stores hand to `services.runtime.migrations`.

Revisions (versions/) hold frozen DDL, never imports of the stores, so that an old revision
still builds what it built when it was written. Databases from before Alembic recorded their
version in `schema_migrations`; at their newest hand-written version (1) they are adopted by
stamping revision 0001, which builds exactly that.
"""

from __future__ import annotations

from pathlib import Path

from services.runtime.migrations import Schema

__all__ = ["SCHEMA"]

SCHEMA = Schema("ledger", Path(__file__).parent, legacy_versions={1: "0001"})
