"""The ledger's schema as the stores' hand-written migrations left it at version 1: accounts,
holds, append-only entries and idempotency records.

A frozen copy of the DDL each store ran (SQLite's STRICT tables and triggers, PostgreSQL's rules),
so that a database made before Alembic, adopted at this revision, and a new one are the same.
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SQLITE = (
    """CREATE TABLE accounts (
                account_id TEXT PRIMARY KEY,
                available INTEGER NOT NULL CHECK (available >= 0),
                held INTEGER NOT NULL CHECK (held >= 0),
                promotional_granted INTEGER NOT NULL CHECK (promotional_granted >= 0),
                purchased INTEGER NOT NULL CHECK (purchased >= 0),
                adjusted INTEGER NOT NULL CHECK (adjusted >= 0),
                consumed INTEGER NOT NULL CHECK (consumed >= 0),
                last_sequence INTEGER NOT NULL CHECK (last_sequence >= 0),
                opened_at_us INTEGER NOT NULL
            ) STRICT""",
    """CREATE TABLE holds (
                hold_id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL REFERENCES accounts (account_id),
                amount INTEGER NOT NULL CHECK (amount > 0),
                captured_amount INTEGER NOT NULL
                    CHECK (captured_amount >= 0 AND captured_amount <= amount),
                status TEXT NOT NULL CHECK (status IN ('open', 'captured', 'released', 'expired')),
                memo TEXT NOT NULL,
                created_at_us INTEGER NOT NULL,
                expires_at_us INTEGER NOT NULL,
                resolved_at_us INTEGER
            ) STRICT""",
    "CREATE INDEX holds_open_by_account ON holds (account_id, expires_at_us) WHERE status = 'open'",
    "CREATE INDEX holds_open_by_expiry ON holds (expires_at_us) WHERE status = 'open'",
    """CREATE TABLE entries (
                account_id TEXT NOT NULL REFERENCES accounts (account_id),
                sequence INTEGER NOT NULL CHECK (sequence > 0),
                kind TEXT NOT NULL,
                amount INTEGER NOT NULL CHECK (amount > 0),
                source TEXT NOT NULL,
                destination TEXT NOT NULL CHECK (destination <> source),
                hold_id TEXT REFERENCES holds (hold_id),
                memo TEXT NOT NULL,
                created_at_us INTEGER NOT NULL,
                available_after INTEGER NOT NULL,
                held_after INTEGER NOT NULL,
                PRIMARY KEY (account_id, sequence)
            ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX entries_by_time ON entries (account_id, created_at_us)",
    """CREATE TRIGGER entries_refuse_update BEFORE UPDATE ON entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
    """CREATE TRIGGER entries_refuse_delete BEFORE DELETE ON entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
    """CREATE TABLE idempotency_records (
                scope TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                outcome TEXT NOT NULL,
                created_at_us INTEGER NOT NULL,
                PRIMARY KEY (scope, idempotency_key)
            ) STRICT, WITHOUT ROWID""",
)

POSTGRESQL = (
    """CREATE TABLE accounts (
                account_id TEXT PRIMARY KEY,
                available BIGINT NOT NULL CHECK (available >= 0),
                held BIGINT NOT NULL CHECK (held >= 0),
                promotional_granted BIGINT NOT NULL CHECK (promotional_granted >= 0),
                purchased BIGINT NOT NULL CHECK (purchased >= 0),
                adjusted BIGINT NOT NULL CHECK (adjusted >= 0),
                consumed BIGINT NOT NULL CHECK (consumed >= 0),
                last_sequence BIGINT NOT NULL CHECK (last_sequence >= 0),
                opened_at_us BIGINT NOT NULL
            )""",
    """CREATE TABLE holds (
                hold_id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL REFERENCES accounts (account_id),
                amount BIGINT NOT NULL CHECK (amount > 0),
                captured_amount BIGINT NOT NULL
                    CHECK (captured_amount >= 0 AND captured_amount <= amount),
                status TEXT NOT NULL CHECK (status IN ('open', 'captured', 'released', 'expired')),
                memo TEXT NOT NULL,
                created_at_us BIGINT NOT NULL,
                expires_at_us BIGINT NOT NULL,
                resolved_at_us BIGINT
            )""",
    "CREATE INDEX holds_open_by_account ON holds (account_id, expires_at_us) WHERE status = 'open'",
    "CREATE INDEX holds_open_by_expiry ON holds (expires_at_us) WHERE status = 'open'",
    """CREATE TABLE entries (
                account_id TEXT NOT NULL REFERENCES accounts (account_id),
                sequence BIGINT NOT NULL CHECK (sequence > 0),
                kind TEXT NOT NULL,
                amount BIGINT NOT NULL CHECK (amount > 0),
                source TEXT NOT NULL,
                destination TEXT NOT NULL CHECK (destination <> source),
                hold_id TEXT REFERENCES holds (hold_id),
                memo TEXT NOT NULL,
                created_at_us BIGINT NOT NULL,
                available_after BIGINT NOT NULL,
                held_after BIGINT NOT NULL,
                PRIMARY KEY (account_id, sequence)
            )""",
    "CREATE INDEX entries_by_time ON entries (account_id, created_at_us)",
    """CREATE FUNCTION ledger_entries_refuse_change() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'ledger entries are append-only'
                    USING ERRCODE = 'integrity_constraint_violation';
            END
            $$""",
    """CREATE TRIGGER entries_refuse_update_or_delete BEFORE UPDATE OR DELETE ON entries
            FOR EACH ROW EXECUTE FUNCTION ledger_entries_refuse_change()""",
    """CREATE TRIGGER entries_refuse_truncate BEFORE TRUNCATE ON entries
            FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change()""",
    """CREATE TABLE idempotency_records (
                scope TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                outcome TEXT NOT NULL,
                created_at_us BIGINT NOT NULL,
                PRIMARY KEY (scope, idempotency_key)
            )""",
)


def upgrade() -> None:
    bind = op.get_bind()
    # Run as written: the driver sees each statement untouched (no bind-parameter parsing).
    for statement in {"sqlite": SQLITE, "postgresql": POSTGRESQL}[bind.dialect.name]:
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    raise NotImplementedError("the ledger's history is append-only; restore a backup instead")
