"""The ledger's schema under Alembic: a database the hand-written migrations made is adopted and
reads back row for row, in the default tenant once tenants came (0002), a new database has
exactly its schema, and PostgreSQL refuses a schema that is not current, naming the command that
fixes it."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory

from services.ledger.ledger import Ledger
from services.ledger.migrations import SCHEMA
from services.ledger.model import GrantKind
from services.ledger.settings import LedgerSettings
from services.runtime.identifiers import DEFAULT_TENANT
from services.runtime.migrations import SchemaNotCurrent, current, head, upgrade
from tests.ledger.conftest import ManualClock
from tests.postgres import Schemas, with_search_path
from tests.start_failures import refused_start
from tests.tls import session_pki

FIXTURES = Path(__file__).parent / "fixtures"
#: The revision a database of the hand-written migrations' version 1 is adopted at.
ADOPTED = "0001"
#: The revision that gave every row a tenant.
TENANTS = "0002"
ACCOUNTS = ("alice", "bob", "carol")
#: The tables the ledger reads, with the order that lists their rows the same way each time.
TABLES = {
    "accounts": "account_id",
    "holds": "hold_id",
    "entries": "account_id, sequence",
    "idempotency_records": "scope, idempotency_key",
}


class Database:
    """One ledger database, with raw access behind the ledger's back."""

    def __init__(self, kind: str, dsn: str) -> None:
        self.kind = kind
        self.dsn = dsn

    def load(self, script: Path) -> None:
        text = script.read_text()
        if self.kind == "sqlite":
            with sqlite3.connect(self._path()) as db:
                db.executescript(text)
            return
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(text.encode())

    def raw(self, statement: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self._path(), isolation_level=None)
            try:
                return [tuple(row) for row in db.execute(statement)]
            finally:
                db.close()
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            cursor = pg.execute(statement.encode())
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of the ledger's tables, by column name (SQLite and PostgreSQL place a column
        added later differently)."""
        return {
            table: self._named(f"SELECT * FROM {table} ORDER BY {order}")
            for table, order in TABLES.items()
        }

    def _named(self, statement: str) -> list[dict[str, Any]]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self._path(), isolation_level=None)
            try:
                cursor = db.execute(statement)
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor]
            finally:
                db.close()
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            cursor = pg.execute(statement.encode())
            assert cursor.description is not None
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def open(self, clock: ManualClock | None = None) -> Ledger:
        return await Ledger.open(LedgerSettings(dsn=self.dsn, pool_size=2), clock)

    def _path(self) -> Path:
        path = LedgerSettings(dsn=self.dsn).sqlite_path
        assert path is not None
        return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A new, empty database on each dialect in turn."""
    if request.param == "sqlite":
        return Database("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
    schemas: Schemas = request.getfixturevalue("postgres_schemas")
    return Database("postgres", with_search_path(schemas.create()))


@pytest.fixture
def legacy(database: Database) -> Database:
    """The database as the hand-written migrations of today's stores left it, rows and all."""
    database.load(FIXTURES / f"legacy_ledger_{database.kind}.sql")
    return database


def _expected(kind: str) -> dict[str, Any]:
    """What the ledger read back before tenants, each balance, entry and hold now in the
    default tenant."""
    expected: dict[str, Any] = json.loads((FIXTURES / f"legacy_ledger_{kind}.json").read_text())
    for balance in expected["balances"].values():
        balance["tenant"] = DEFAULT_TENANT
    for entries in expected["entries"].values():
        for entry in entries:
            entry["tenant"] = DEFAULT_TENANT
    for hold in expected["holds"].values():
        hold["tenant"] = DEFAULT_TENANT
    return expected


def _in_default_tenant(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {
        table: [{**row, "tenant": DEFAULT_TENANT} for row in found] for table, found in rows.items()
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _after(revision: str) -> list[str]:
    """The revisions after `revision`, oldest first, as `upgrade` reports them."""
    applied_from_empty = _all_revisions()
    return applied_from_empty[applied_from_empty.index(revision) + 1 :]


def _all_revisions() -> list[str]:
    scripts = ScriptDirectory(str(SCHEMA.script_location))
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]


class TestLegacyDatabases:
    """Databases made by today's stores, before Alembic, with rows in them."""

    async def test_every_row_reads_back_as_before_in_the_default_tenant(
        self, legacy: Database
    ) -> None:
        expected = _expected(legacy.kind)
        before = legacy.rows()

        assert upgrade(SCHEMA, legacy.dsn) == _after(ADOPTED) == [TENANTS]

        rows = legacy.rows()
        assert rows == _in_default_tenant(before)
        assert all(rows.values())  # the comparison saw rows of every table
        clock = ManualClock(datetime.fromisoformat(expected["finished"]))
        ledger = await legacy.open(clock)
        try:
            for account in ACCOUNTS:
                balance = await ledger.get_balance(DEFAULT_TENANT, account)
                assert _plain(asdict(balance)) == expected["balances"][account]
                page = await ledger.list_entries(DEFAULT_TENANT, account)
                entries = [_plain(asdict(entry)) for entry in page.entries]
                assert entries == expected["entries"][account]
            for hold_id, hold in expected["holds"].items():
                assert _plain(asdict(await ledger.get_hold(DEFAULT_TENANT, hold_id))) == hold
            # The idempotency records came along: a retried reserve is answered, not re-run.
            retried = await ledger.reserve(
                DEFAULT_TENANT, "alice", 50, "hold-open", ttl_seconds=86_400, memo="explore x25"
            )
            assert retried.replayed
            assert retried.hold.hold_id == expected["replays"]["hold-open"]
            assert retried.balance.tenant == DEFAULT_TENANT
            assert all(check.ok for check in await ledger.verify(sweep=False))
        finally:
            await ledger.close()
        assert legacy.rows() == rows

    async def test_another_tenant_starts_beside_the_default_one(self, legacy: Database) -> None:
        expected = _expected(legacy.kind)
        upgrade(SCHEMA, legacy.dsn)
        ledger = await legacy.open(ManualClock(datetime.fromisoformat(expected["finished"])))
        try:
            opened = await ledger.open_account("globex", "alice", "open-alice")
            # The key of a default-tenant hold is globex's own to use.
            reserved = await ledger.reserve(
                "globex", "alice", 50, "hold-open", ttl_seconds=86_400, memo="explore x25"
            )
            await ledger.grant("globex", "alice", 9, GrantKind.PURCHASE, "pack", "buy-alice")
            default_alice = await ledger.get_balance(DEFAULT_TENANT, "alice")
            checks = await ledger.verify(sweep=False)
        finally:
            await ledger.close()

        assert opened.granted == 400
        assert not reserved.replayed
        assert reserved.hold.hold_id != expected["replays"]["hold-open"]
        assert (reserved.balance.tenant, reserved.balance.available) == ("globex", 350)
        assert _plain(asdict(default_alice)) == expected["balances"]["alice"]
        assert [check.name for check in checks if not check.ok] == []

    def test_a_row_that_names_no_tenant_is_refused(self, legacy: Database) -> None:
        upgrade(SCHEMA, legacy.dsn)
        # No default tenant in the schema: a write that forgot it fails, not lands in `default`.
        refused = (
            sqlite3.IntegrityError if legacy.kind == "sqlite" else psycopg.errors.NotNullViolation
        )

        with pytest.raises(refused):
            legacy.raw(
                "INSERT INTO idempotency_records (scope, idempotency_key, fingerprint, outcome,"
                " created_at_us) VALUES ('account:alice', 'k', 'f', '{}', 0)"
            )

    async def test_the_legacy_version_is_adopted_not_rerun(self, legacy: Database) -> None:
        upgrade(SCHEMA, legacy.dsn)

        assert current(SCHEMA, legacy.dsn) == head(SCHEMA)
        assert legacy.raw(f"SELECT version_num FROM {SCHEMA.version_table}") == [(head(SCHEMA),)]
        # Left in place for a replica of the previous release that restarts mid-rollout.
        assert legacy.raw("SELECT version FROM schema_migrations") == [(1,)]

    async def test_sqlite_is_adopted_at_open_with_no_step_of_its_own(self, tmp_path: Path) -> None:
        legacy = Database("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
        legacy.load(FIXTURES / "legacy_ledger_sqlite.sql")
        expected = _expected("sqlite")

        ledger = await legacy.open(ManualClock(datetime.fromisoformat(expected["finished"])))
        try:
            balance = await ledger.get_balance(DEFAULT_TENANT, "alice")
        finally:
            await ledger.close()

        assert _plain(asdict(balance)) == expected["balances"]["alice"]
        assert current(SCHEMA, legacy.dsn) == head(SCHEMA)

    @pytest.mark.postgres
    async def test_postgres_is_refused_until_migrated(
        self, postgres_schemas: Schemas, clock: ManualClock
    ) -> None:
        legacy = Database("postgres", with_search_path(postgres_schemas.create()))
        legacy.load(FIXTURES / "legacy_ledger_postgres.sql")

        with pytest.raises(SchemaNotCurrent, match=r"predates Alembic.*tiergen migrate"):
            await legacy.open(clock)

        upgrade(SCHEMA, legacy.dsn)
        await (await legacy.open(clock)).close()


class TestNewDatabases:
    def test_a_new_database_upgrades_to_head(self, database: Database) -> None:
        assert current(SCHEMA, database.dsn) is None

        applied = upgrade(SCHEMA, database.dsn)

        assert applied == _all_revisions()
        assert applied[-1] == head(SCHEMA)
        assert current(SCHEMA, database.dsn) == head(SCHEMA)
        assert upgrade(SCHEMA, database.dsn) == []

    def test_a_new_database_has_the_schema_the_hand_written_migrations_made(
        self, database: Database, tmp_path: Path, request: pytest.FixtureRequest
    ) -> None:
        upgrade(SCHEMA, database.dsn)
        if database.kind == "sqlite":
            made_before = Database("sqlite", f"sqlite:///{tmp_path / 'legacy.db'}")
        else:
            made_before = Database(
                "postgres", with_search_path(request.getfixturevalue("postgres_schemas").create())
            )
        made_before.load(FIXTURES / f"legacy_ledger_{database.kind}.sql")
        upgrade(SCHEMA, made_before.dsn)

        assert _shape(database) == _shape(made_before)
        assert _shape(database)  # the comparison saw the schema, not two empty lists


def _shape(database: Database) -> list[tuple[Any, ...]]:
    """Every table, column, constraint, index, trigger and function of the ledger's schema,
    as the database describes them; the version tables left out."""
    if database.kind == "sqlite":
        return database.raw(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE tbl_name NOT IN ('schema_migrations', 'alembic_version_ledger')"
            " ORDER BY type, name"
        )
    versions = "('schema_migrations', 'alembic_version_ledger')"
    return [
        *database.raw(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
            " column_default FROM information_schema.columns"
            f" WHERE table_schema = current_schema() AND table_name NOT IN {versions}"
            " ORDER BY table_name, ordinal_position"
        ),
        *database.raw(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = current_schema()::regnamespace"
            f" AND conrelid::regclass::text NOT IN {versions} ORDER BY 1, 2"
        ),
        *database.raw(
            "SELECT tablename, indexname, replace(indexdef, current_schema() || '.', '')"
            f" FROM pg_indexes WHERE schemaname = current_schema() AND tablename NOT IN {versions}"
            " ORDER BY 1, 2"
        ),
        *database.raw(
            "SELECT tgrelid::regclass::text, tgname,"
            " replace(pg_get_triggerdef(oid), current_schema() || '.', '') FROM pg_trigger"
            " WHERE NOT tgisinternal AND tgrelid IN"
            " (SELECT oid FROM pg_class WHERE relnamespace = current_schema()::regnamespace)"
            " ORDER BY 1, 2"
        ),
        *database.raw(
            "SELECT proname, replace(pg_get_functiondef(oid), current_schema() || '.', '')"
            " FROM pg_proc WHERE pronamespace = current_schema()::regnamespace ORDER BY 1"
        ),
    ]


class TestCurrency:
    """How each store meets a schema that is not this ledger's."""

    async def test_sqlite_is_upgraded_once_at_open(self, tmp_path: Path, clock: ManualClock):
        database = Database("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
        for _ in range(2):
            await (await database.open(clock)).close()

        assert database.raw(f"SELECT version_num FROM {SCHEMA.version_table}") == [(head(SCHEMA),)]

    async def test_sqlite_from_a_later_release_is_refused(
        self, tmp_path: Path, clock: ManualClock
    ) -> None:
        database = Database("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
        await (await database.open(clock)).close()
        database.raw(f"UPDATE {SCHEMA.version_table} SET version_num = 'from_a_later_release'")

        with pytest.raises(SchemaNotCurrent, match="from_a_later_release, newer than this code"):
            await database.open(clock)

    @pytest.mark.postgres
    async def test_postgres_that_is_not_current_is_refused_naming_the_command(
        self, postgres_schemas: Schemas, clock: ManualClock
    ) -> None:
        database = Database("postgres", with_search_path(postgres_schemas.create()))

        with pytest.raises(SchemaNotCurrent) as refused:
            await database.open(clock)

        message = str(refused.value)
        assert "\n" not in message
        assert f"no schema revision, expected {head(SCHEMA)}" in message
        assert "run `tiergen migrate --service ledger --dsn " in message
        # Refused, not migrated: the replicas leave the schema to the operator.
        assert current(SCHEMA, database.dsn) is None
        assert database.raw("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")[
            0
        ] == (0,)

    @pytest.mark.postgres
    async def test_postgres_from_a_later_release_is_refused(
        self, postgres_schemas: Schemas, clock: ManualClock
    ) -> None:
        database = Database("postgres", with_search_path(postgres_schemas.create()))
        upgrade(SCHEMA, database.dsn)
        database.raw(f"UPDATE {SCHEMA.version_table} SET version_num = 'from_a_later_release'")

        with pytest.raises(SchemaNotCurrent, match="newer than this code knows"):
            await database.open(clock)

    @pytest.mark.postgres
    async def test_the_service_exits_with_one_line_naming_the_command(
        self, postgres_schemas: Schemas
    ) -> None:
        schema = postgres_schemas.create()
        planted = "planted-pa55word"
        dsn = with_search_path(schema).replace("postgres@", f"postgres:{planted}@", 1)
        assert planted in dsn
        line, output = refused_start(
            "services.ledger",
            {
                **os.environ,
                **session_pki().env("ledger"),
                "TIERGEN_LEDGER_DSN": dsn,
                "TIERGEN_PORT": "0",
            },
        )
        assert line["error"].startswith("the ledger database"), line
        assert "tiergen migrate --service ledger" in line["error"]
        assert planted not in output
