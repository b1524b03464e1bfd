"""Tenants: every account, hold, entry and idempotency record belongs to one tenant.

Each table gains a `tenant` column, and every key that named an account names it with its
tenant: accounts are keyed by (tenant, account_id), entries by (tenant, account_id, sequence),
idempotency records by (tenant, scope, idempotency_key). Hold ids stay unique across tenants,
and (tenant, hold_id) is unique too, so that an entry's hold must be of the entry's tenant.
Rows written before tenants belong to the tenant `default`, where a request naming no tenant
finds them. The column has no default: a write that names no tenant fails rather than landing
in `default` unnoticed. That includes a replica of the release before still running once this
has run: its statements name accounts by id alone and could reach another tenant's account of
the same id, so every command of it that writes fails (each writes an entry or a record). Replace
the ledger's replicas right after migrating.

PostgreSQL adds the column in place (with a constant default, which costs no rewrite of the
rows, dropped at once) and swaps the keys. SQLite cannot change a primary key, so each table is
rebuilt and its rows copied; entries keep their append-only triggers, made again on the new
table. The runner leaves SQLite's foreign keys off while it migrates, so the copies are checked
once they are all in place.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ACCOUNT_COLUMNS = (
    "account_id, available, held, promotional_granted, purchased, adjusted, consumed,"
    " last_sequence, opened_at_us"
)
_HOLD_COLUMNS = (
    "hold_id, account_id, amount, captured_amount, status, memo, created_at_us, expires_at_us,"
    " resolved_at_us"
)
_ENTRY_COLUMNS = (
    "account_id, sequence, kind, amount, source, destination, hold_id, memo, created_at_us,"
    " available_after, held_after"
)
_RECORD_COLUMNS = "scope, idempotency_key, fingerprint, outcome, created_at_us"

SQLITE = (
    """CREATE TABLE accounts_0002 (
                tenant TEXT NOT NULL,
                account_id TEXT NOT NULL,
                available INTEGER NOT NULL CHECK (available >= 0),
                held INTEGER NOT NULL CHECK (held >= 0),
                promotional_granted INTEGER NOT NULL CHECK (promotional_granted >= 0),
                purchased INTEGER NOT NULL CHECK (purchased >= 0),
                adjusted INTEGER NOT NULL CHECK (adjusted >= 0),
                consumed INTEGER NOT NULL CHECK (consumed >= 0),
                last_sequence INTEGER NOT NULL CHECK (last_sequence >= 0),
                opened_at_us INTEGER NOT NULL,
                PRIMARY KEY (tenant, account_id)
            ) STRICT""",
    """CREATE TABLE holds_0002 (
                hold_id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                account_id TEXT NOT NULL,
                amount INTEGER NOT NULL CHECK (amount > 0),
                captured_amount INTEGER NOT NULL
                    CHECK (captured_amount >= 0 AND captured_amount <= amount),
                status TEXT NOT NULL CHECK (status IN ('open', 'captured', 'released', 'expired')),
                memo TEXT NOT NULL,
                created_at_us INTEGER NOT NULL,
                expires_at_us INTEGER NOT NULL,
                resolved_at_us INTEGER,
                UNIQUE (tenant, hold_id),
                FOREIGN KEY (tenant, account_id) REFERENCES accounts (tenant, account_id)
            ) STRICT""",
    """CREATE TABLE entries_0002 (
                tenant TEXT NOT NULL,
                account_id TEXT NOT NULL,
                sequence INTEGER NOT NULL CHECK (sequence > 0),
                kind TEXT NOT NULL,
                amount INTEGER NOT NULL CHECK (amount > 0),
                source TEXT NOT NULL,
                destination TEXT NOT NULL CHECK (destination <> source),
                hold_id TEXT,
                memo TEXT NOT NULL,
                created_at_us INTEGER NOT NULL,
                available_after INTEGER NOT NULL,
                held_after INTEGER NOT NULL,
                PRIMARY KEY (tenant, account_id, sequence),
                FOREIGN KEY (tenant, account_id) REFERENCES accounts (tenant, account_id),
                FOREIGN KEY (tenant, hold_id) REFERENCES holds (tenant, hold_id)
            ) STRICT, WITHOUT ROWID""",
    """CREATE TABLE idempotency_records_0002 (
                tenant TEXT NOT NULL,
                scope TEXT NOT NULL,
                idempotency_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                outcome TEXT NOT NULL,
                created_at_us INTEGER NOT NULL,
                PRIMARY KEY (tenant, scope, idempotency_key)
            ) STRICT, WITHOUT ROWID""",
    f"INSERT INTO accounts_0002 (tenant, {_ACCOUNT_COLUMNS})"
    f" SELECT 'default', {_ACCOUNT_COLUMNS} FROM accounts",
    f"INSERT INTO holds_0002 (tenant, {_HOLD_COLUMNS})"
    f" SELECT 'default', {_HOLD_COLUMNS} FROM holds",
    f"INSERT INTO entries_0002 (tenant, {_ENTRY_COLUMNS})"
    f" SELECT 'default', {_ENTRY_COLUMNS} FROM entries",
    f"INSERT INTO idempotency_records_0002 (tenant, {_RECORD_COLUMNS})"
    f" SELECT 'default', {_RECORD_COLUMNS} FROM idempotency_records",
    # Dropping a table drops its indexes and triggers first: the append-only triggers of
    # entries never see the rows go.
    "DROP TABLE entries",
    "DROP TABLE holds",
    "DROP TABLE accounts",
    "DROP TABLE idempotency_records",
    # The new tables already name the final ones in their references; renaming rewrites only
    # references to the name renamed, and none name a `_0002` table.
    "ALTER TABLE accounts_0002 RENAME TO accounts",
    "ALTER TABLE holds_0002 RENAME TO holds",
    "ALTER TABLE entries_0002 RENAME TO entries",
    "ALTER TABLE idempotency_records_0002 RENAME TO idempotency_records",
    "CREATE INDEX holds_open_by_account ON holds (tenant, account_id, expires_at_us)"
    " WHERE status = 'open'",
    "CREATE INDEX holds_open_by_expiry ON holds (expires_at_us) WHERE status = 'open'",
    "CREATE INDEX entries_by_time ON entries (tenant, account_id, created_at_us)",
    """CREATE TRIGGER entries_refuse_update BEFORE UPDATE ON entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
    """CREATE TRIGGER entries_refuse_delete BEFORE DELETE ON entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
)

_TABLES = ("accounts", "holds", "entries", "idempotency_records")

POSTGRESQL = (
    *(
        statement
        for table in _TABLES
        for statement in (
            f"ALTER TABLE {table} ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'",
            f"ALTER TABLE {table} ALTER COLUMN tenant DROP DEFAULT",
        )
    ),
    # The references first: they depend on the keys they name.
    "ALTER TABLE entries DROP CONSTRAINT entries_hold_id_fkey",
    "ALTER TABLE entries DROP CONSTRAINT entries_account_id_fkey",
    "ALTER TABLE holds DROP CONSTRAINT holds_account_id_fkey",
    "ALTER TABLE entries DROP CONSTRAINT entries_pkey",
    "ALTER TABLE accounts DROP CONSTRAINT accounts_pkey",
    "ALTER TABLE idempotency_records DROP CONSTRAINT idempotency_records_pkey",
    "ALTER TABLE accounts ADD CONSTRAINT accounts_pkey PRIMARY KEY (tenant, account_id)",
    "ALTER TABLE holds ADD CONSTRAINT holds_tenant_hold_id_key UNIQUE (tenant, hold_id)",
    """ALTER TABLE holds ADD CONSTRAINT holds_tenant_account_id_fkey
            FOREIGN KEY (tenant, account_id) REFERENCES accounts (tenant, account_id)""",
    "ALTER TABLE entries ADD CONSTRAINT entries_pkey PRIMARY KEY (tenant, account_id, sequence)",
    """ALTER TABLE entries ADD CONSTRAINT entries_tenant_account_id_fkey
            FOREIGN KEY (tenant, account_id) REFERENCES accounts (tenant, account_id)""",
    """ALTER TABLE entries ADD CONSTRAINT entries_tenant_hold_id_fkey
            FOREIGN KEY (tenant, hold_id) REFERENCES holds (tenant, hold_id)""",
    """ALTER TABLE idempotency_records ADD CONSTRAINT idempotency_records_pkey
            PRIMARY KEY (tenant, scope, idempotency_key)""",
    "DROP INDEX holds_open_by_account",
    "CREATE INDEX holds_open_by_account ON holds (tenant, account_id, expires_at_us)"
    " WHERE status = 'open'",
    "DROP INDEX entries_by_time",
    "CREATE INDEX entries_by_time ON entries (tenant, account_id, created_at_us)",
)


def upgrade() -> None:
    bind = op.get_bind()
    # Run as written: the driver sees each statement untouched (no bind-parameter parsing).
    for statement in {"sqlite": SQLITE, "postgresql": POSTGRESQL}[bind.dialect.name]:
        bind.exec_driver_sql(statement)
    if bind.dialect.name == "sqlite":
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the copied ledger tables break their references: {broken[:5]}")


def downgrade() -> None:
    raise NotImplementedError("the ledger's history is append-only; restore a backup instead")
