"""Tests of the job tables' migrations, on SQLite and on PostgreSQL: a database today's routers
left is upgraded with every row kept and read back as before (in the default tenant); whatever
the path, the migrated tables are `jobs.schema`'s; and how each store meets a schema that is not
current."""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from services.router.jobs.migrations import SCHEMA
from services.router.jobs.model import JobKind, JobStatus, NewJob, Owner
from services.router.jobs.schema import metadata
from services.router.jobs.sql_store import SqlJobStore
from services.router.webhooks.schedule import RetryPolicy
from services.router.webhooks.signing import Signer, signature_headers
from services.router.webhooks.store import WebhookStore
from services.runtime.errors import NotFound
from services.runtime.identifiers import DEFAULT_TENANT
from services.runtime.migrations import current, head, upgrade
from services.runtime.settings import ConfigError
from tests.postgres import Schemas, require_postgres, with_search_path
from tests.webhook_receiver import verify_signature

FIXTURES = Path(__file__).parent / "fixtures"
_POLICY = RetryPolicy(base_seconds=1.0, max_delay_seconds=60.0, period_seconds=600.0)
#: The job sequence of the legacy databases: the last job made (then forgotten) had this seq.
LEGACY_LAST_SEQ = 9


@pytest.fixture(scope="module")
def postgres_schemas() -> Iterator[Schemas]:
    schemas = Schemas(require_postgres("the job migration tests"), "router_migrations")
    yield schemas
    schemas.drop_all()


@dataclass
class Database:
    """One empty job database, as an operator and a router reach it."""

    kind: str
    #: What `tiergen migrate` and the router are given.
    dsn: str
    path: Path | None = None
    #: PostgreSQL only: where its schema came from, for more of them.
    schemas: Any = None

    @property
    def url(self) -> str:
        """The database as SQLAlchemy names it."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def load(self, script: Path) -> None:
        """Run an SQL script on the database, behind every store's back."""
        text = script.read_text()
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                db.executescript(text)
            return
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(text.encode())

    def raw(self, statement: str) -> list[tuple[Any, ...]]:
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
                return [tuple(row) for row in db.execute(statement)]
        with psycopg.connect(self.dsn, autocommit=True) as db:
            cursor = db.execute(statement.encode())
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    async def open(self) -> SqlJobStore:
        """The router's store: SQLite upgrades itself; PostgreSQL needs `tiergen migrate`."""
        if self.path is not None:
            return await SqlJobStore.open_sqlite(self.path)
        return await SqlJobStore.open_postgres(self.dsn, pool_size=2)

    def migrate(self) -> None:
        """What `tiergen migrate --service router` does, or, on SQLite, opening the store."""
        upgrade(SCHEMA, self.dsn)

    def migrate_to(self, revision: str, *, down: bool = False) -> None:
        """Bring the database up (or `down`) to `revision`, as that release's operator would."""
        engine = sa.create_engine(self.url)
        try:
            with engine.begin() as connection:
                config = Config()
                config.set_main_option("script_location", str(SCHEMA.script_location))
                config.attributes["connection"] = connection
                config.attributes["version_table"] = SCHEMA.version_table
                (command.downgrade if down else command.upgrade)(config, revision)
        finally:
            engine.dispose()

    def insert(self, table: str, row: dict[str, Any]) -> None:
        """Insert one row of test constants behind every store's back."""
        values = ", ".join("NULL" if v is None else repr(v) for v in row.values())
        self.raw(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({values})")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"
        return Database("sqlite", f"sqlite:///{path}", path)
    schemas = request.getfixturevalue("postgres_schemas")
    return Database("postgres", with_search_path(schemas.create()), schemas=schemas)


@pytest.fixture
async def legacy(database: Database) -> AsyncIterator[Database]:
    """The database as today's hand-written job store left it (schema version 3), with rows."""
    database.load(FIXTURES / f"legacy_jobs_{database.kind}.sql")
    yield database


def _job_row(**changes: Any) -> dict[str, Any]:
    """The columns of a queued job in batch "b" of account "a" that a row of `jobs` must have."""
    return {
        "job_id": f"j{changes.get('seed', '')}{len(changes)}",
        "batch_id": "b",
        "account_id": "a",
        "kind": "generate",
        "status": "queued",
        "tier": "nano",
        "stage": "explore",
        "prompt": "p",
        "seed": "7",
        "variation": 0,
        "aspect_ratio": "1:1",
        "width": 1,
        "height": 1,
        "quoted_cost": 2,
        "reasons": "[]",
        "create_us": 1,
        "trace_id": "",
        **changes,
    }


def _in_default_tenant(expected: dict[str, Any]) -> dict[str, Any]:
    """A batch record as the legacy fixture wrote it (before tenants), as it reads now: its
    batch and jobs owned by the account in the default tenant."""

    def owned(record: dict[str, Any]) -> dict[str, Any]:
        owner = {"tenant": DEFAULT_TENANT, "account_id": record["account_id"]}
        return {**{k: v for k, v in record.items() if k != "account_id"}, "owner": owner}

    return {
        **expected,
        # Attached, naming no webhook, as every batch before detached ones reads now.
        "batch": {**owned(expected["batch"]), "detached": False, "webhook_id": None},
        "jobs": [owned(job) for job in expected["jobs"]],
    }


def _plain(value: Any) -> Any:
    """`value` as tests/router/fixtures/make_legacy_jobs.py (commit 3577bea) wrote it in JSON."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class TestLegacyDatabases:
    """A database of today's routers, upgraded: every row kept, read back as before."""

    async def test_every_row_reads_back_as_before(self, legacy: Database) -> None:
        expected = json.loads((FIXTURES / f"legacy_jobs_{legacy.kind}.json").read_text())
        if legacy.kind == "postgres":
            legacy.migrate()
        store = await legacy.open()
        try:
            for batch in expected["batches"]:
                owner = Owner(DEFAULT_TENANT, batch["batch"]["account_id"])
                record = await store.batch(owner, batch["batch"]["batch_id"])
                assert _plain(record) == _in_default_tenant(batch)
            first = Owner(DEFAULT_TENANT, "acct-1")
            page = await store.list(first, page_size=2)
            assert [job.job_id for job in page.jobs] == expected["first_page"]["job_ids"]
            # A page token handed out before the upgrade goes on where it left off.
            token = expected["first_page"]["next_page_token"]
            assert page.next_page_token == token
            rest = await store.list(first, page_size=10, page_token=token)
            assert len(rest.jobs) == 4 and not rest.next_page_token
        finally:
            await store.close()
        counted = legacy.raw("SELECT count(*) FROM jobs") + legacy.raw(
            "SELECT count(*) FROM batches"
        )
        assert counted == [(8,), (5,)]

    async def test_a_forgotten_jobs_seq_is_never_reused(self, legacy: Database) -> None:
        if legacy.kind == "postgres":
            legacy.migrate()
        store = await legacy.open()
        try:
            record = await store.create_batch(
                owner=Owner(DEFAULT_TENANT, "acct-3"),
                idempotency_key="after-upgrade",
                fingerprint="fp",
                jobs=[NewJob(JobKind.GENERATE, "a harbour", 1, 1024, 1024, 2)],
            )
        finally:
            await store.close()
        (job_id,) = (job.job_id for job in record.jobs)
        assert legacy.raw(f"SELECT seq FROM jobs WHERE job_id = '{job_id}'") == [
            (LEGACY_LAST_SEQ + 1,)
        ]

    @pytest.mark.postgres
    async def test_beside_the_ledgers_legacy_tables(self, postgres_schemas: Schemas) -> None:
        # The PostgreSQL stores named their version tables apart so that they could share a
        # schema: the ledger's version is not the router's.
        database = Database("postgres", with_search_path(postgres_schemas.create()))
        database.load(FIXTURES / "legacy_jobs_postgres.sql")
        database.raw(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at_us BIGINT NOT NULL)"
        )
        database.raw("INSERT INTO schema_migrations VALUES (1, 'the ledger', 0)")
        database.migrate()
        assert current(SCHEMA, database.dsn) == head(SCHEMA)
        assert database.raw("SELECT count(*) FROM jobs") == [(8,)]

    async def test_the_legacy_version_is_adopted_not_rerun(self, legacy: Database) -> None:
        legacy.migrate()
        assert legacy.raw(f"SELECT version_num FROM {SCHEMA.version_table}") == [(head(SCHEMA),)]


def _autogenerate_differences(url: str) -> list[Any]:
    """What Alembic's autogenerate finds between `jobs.schema` and the database at `url`."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_name": lambda name, kind, _: (
                        kind != "table" or name in metadata.tables
                    ),
                },
            )
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    # SQLite has no identity columns: the AUTOINCREMENT standing in for `jobs.seq`'s is compared
    # by `_shape`. (Alembic's hook for judging server defaults cannot take PostgreSQL's
    # reflected identity, sqlalchemy/alembic#775, so the difference is dropped here.)
    return [
        difference
        for difference in differences
        if not (
            engine.dialect.name == "sqlite"
            and isinstance(difference, list)
            and difference[0][0] == "modify_default"
            and difference[0][2:4] == ("jobs", "seq")
        )
    ]


def _columns(url: str, table: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(sa.inspect(connection).get_columns(table))
    finally:
        engine.dispose()


def _shape(url: str) -> dict[str, Any]:
    """Every table of `jobs.schema` as the database at `url` describes it, constraints and
    partial indexes included (autogenerate compares neither CHECKs nor index predicates)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            shape: dict[str, Any] = {}
            for table in metadata.tables:
                shape[table] = {
                    "columns": [
                        (c["name"], str(c["type"]), c["nullable"], c["default"])
                        for c in inspector.get_columns(table)
                    ],
                    "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
                    "unique": sorted(
                        (u["name"], tuple(u["column_names"]))
                        for u in inspector.get_unique_constraints(table)
                    ),
                    "foreign keys": sorted(
                        (f["name"] or "", tuple(f["constrained_columns"]), f["referred_table"])
                        for f in inspector.get_foreign_keys(table)
                    ),
                    "indexes": sorted(
                        (
                            i["name"],
                            tuple(i["column_names"]),
                            i["unique"],
                            sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()),
                        )
                        for i in inspector.get_indexes(table)
                    ),
                    "checks": sorted(
                        (c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)
                    ),
                }
                if connection.dialect.name == "sqlite":
                    sql = connection.exec_driver_sql(
                        "SELECT sql FROM sqlite_master WHERE name = ?", (table,)
                    ).scalar_one()
                    shape[table]["autoincrement"] = "AUTOINCREMENT" in sql
    finally:
        engine.dispose()
    return shape


@pytest.fixture
def reference(database: Database, tmp_path: Path) -> str:
    """A database of the same kind made straight from `jobs.schema`: what a migrated one must
    look like."""
    if database.kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'reference.db'}"
    else:
        url = Database("postgres", with_search_path(database.schemas.create())).url
    engine = sa.create_engine(url)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
    return url


class TestOneSchema:
    """Whatever path a database took, its tables are the ones `jobs.schema` declares."""

    def test_a_new_database(self, database: Database, reference: str) -> None:
        database.migrate()
        assert _autogenerate_differences(database.url) == []
        assert _shape(database.url) == _shape(reference)

    def test_an_upgraded_legacy_database(self, legacy: Database, reference: str) -> None:
        legacy.migrate()
        assert _autogenerate_differences(legacy.url) == []
        assert _shape(legacy.url) == _shape(reference)


class TestTenantsUpgrade:
    """A database the previous release left (revision 0002) keeps every row, now the default
    tenant's: reachable by its accounts there, and by no other tenant's namesakes."""

    HERS = Owner(DEFAULT_TENANT, "acct-1")
    NAMESAKE = Owner("tenant-b", "acct-1")
    ASSET_ID = "ab" * 32

    @pytest.fixture
    def previous(self, database: Database) -> Database:
        database.migrate_to("0002")
        batch = {
            "account_id": "acct-1",
            "fingerprint": "fp",
            "hold_state": "captured",
            "hold_id": "hold-1",
            "captured": 2,
            "create_us": 1,
            "owner": "router-gone",
        }
        database.insert("batches", {"batch_id": "bat_1", "idempotency_key": "key-1", **batch})
        database.insert(
            "batches",
            {**batch, "batch_id": "bat_2", "idempotency_key": "key-2", "hold_state": "open"},
        )
        database.insert(
            "jobs",
            _job_row(
                job_id="job_1",
                batch_id="bat_1",
                account_id="acct-1",
                status="succeeded",
                cost=2,
                asset_id=self.ASSET_ID,
                asset_width=1,
                asset_height=1,
                asset_media_type="image/png",
                asset_size_bytes=10,
            ),
        )
        database.insert(
            "jobs",
            _job_row(
                job_id="job_2",
                batch_id="bat_2",
                account_id="acct-1",
                kind="promote",
                parent_job_id="job_1",
                create_us=2,
            ),
        )
        return database

    async def test_rows_are_the_default_tenants_and_stay_reachable(
        self, previous: Database, reference: str
    ) -> None:
        previous.migrate()
        assert previous.raw("SELECT DISTINCT tenant FROM batches") == [(DEFAULT_TENANT,)]
        assert previous.raw("SELECT DISTINCT tenant FROM jobs") == [(DEFAULT_TENANT,)]
        assert _shape(previous.url) == _shape(reference)
        store = await previous.open()
        try:
            parent = await store.get(self.HERS, "job_1")
            assert (parent.owner, parent.status) == (self.HERS, JobStatus.SUCCEEDED)
            (child,) = await store.children(self.HERS, "job_1")
            assert (child.job_id, child.owner) == ("job_2", self.HERS)
            listed = await store.list(self.HERS)
            assert [job.job_id for job in listed.jobs] == ["job_2", "job_1"]
            assert await store.has_asset(self.HERS, self.ASSET_ID)
            found = await store.find_batch(self.HERS, "key-1")
            assert found is not None and found.batch.batch_id == "bat_1"
            assert (await store.batch(self.HERS, "bat_2")).batch.owner == self.HERS

            # The same account id in another tenant is another account.
            with pytest.raises(NotFound):
                await store.get(self.NAMESAKE, "job_1")
            with pytest.raises(NotFound):
                await store.batch(self.NAMESAKE, "bat_2")
            assert (await store.list(self.NAMESAKE)).jobs == ()
            assert not await store.has_asset(self.NAMESAKE, self.ASSET_ID)
            assert await store.find_batch(self.NAMESAKE, "key-1") is None
            # Its keys are its own: the default tenant's key makes another batch there.
            record = await store.create_batch(
                owner=self.NAMESAKE,
                idempotency_key="key-1",
                fingerprint="fp",
                jobs=[NewJob(JobKind.GENERATE, "a harbour", 1, 1024, 1024, 2)],
            )
            assert not record.replayed and record.batch.batch_id != "bat_1"
            (cancelled,) = await store.cancel_batch(self.HERS, "bat_2")
            assert cancelled.status is JobStatus.CANCELLED
        finally:
            await store.close()

    @pytest.mark.postgres
    async def test_a_postgresql_downgrade_refuses_to_merge_tenants(
        self, postgres_schemas: Schemas
    ) -> None:
        database = Database("postgres", with_search_path(postgres_schemas.create()))
        database.migrate_to("0003")
        database.insert(
            "batches",
            {
                "batch_id": "bat_b",
                "tenant": "tenant-b",
                "account_id": "acct-1",
                "idempotency_key": "k",
                "fingerprint": "fp",
                "hold_state": "none",
                "create_us": 1,
            },
        )
        with pytest.raises(RuntimeError, match="merge their accounts"):
            database.migrate_to("0002", down=True)
        assert current(SCHEMA, database.dsn) == "0003"
        database.raw("DELETE FROM batches")
        database.migrate_to("0002", down=True)
        assert current(SCHEMA, database.dsn) == "0002"
        assert "tenant" not in {c["name"] for c in _columns(database.url, "batches")}


class TestSqliteConstraints:
    """SQLite now refuses, as PostgreSQL always did, rows no router writes."""

    @pytest.fixture
    def db(self, tmp_path: Path) -> Iterator[sqlite3.Connection]:
        path = tmp_path / "jobs.db"
        upgrade(SCHEMA, f"sqlite:///{path}")
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(
                "INSERT INTO batches (batch_id, tenant, account_id, idempotency_key, fingerprint,"
                " hold_state, create_us) VALUES ('b', 't', 'a', 'k', 'f', 'none', 1)"
            )
            yield db

    def _job(self, db: sqlite3.Connection, **changes: Any) -> None:
        row = _job_row(**{"tenant": "t", **changes})
        marks = ", ".join("?" * len(row))
        db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({marks})", tuple(row.values()))

    @pytest.mark.parametrize("seed", ["0", "7", "18446744073709551615", "10000000000000000000"])
    def test_every_uint64_seed_is_taken(self, db: sqlite3.Connection, seed: str) -> None:
        self._job(db, seed=seed)

    @pytest.mark.parametrize(
        "changes",
        [
            {"seed": "18446744073709551616"},
            {"seed": "99999999999999999999"},
            {"seed": "-1"},
            {"seed": "07"},
            {"seed": ""},
            {"seed": "1e3"},
            {"kind": "paint"},
            {"status": "lost"},
            {"width": 0},
            {"quoted_cost": -1},
            {"cost": 3},
            {"drift": 1.5},
            {"shortlisted": 2},
        ],
    )
    def test_rows_no_router_writes_are_refused(
        self, db: sqlite3.Connection, changes: dict[str, Any]
    ) -> None:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            self._job(db, **changes)

    def test_every_job_names_its_tenant(self, db: sqlite3.Connection) -> None:
        with pytest.raises(
            sqlite3.IntegrityError, match=r"NOT NULL constraint failed: jobs\.tenant"
        ):
            self._job(db, tenant=None)

    def test_a_hold_and_its_state_agree(self, db: sqlite3.Connection) -> None:
        with pytest.raises(sqlite3.IntegrityError, match="batches_hold_check"):
            db.execute("UPDATE batches SET hold_state = 'open'")
        with pytest.raises(sqlite3.IntegrityError, match="batches_hold_state_check"):
            # With a hold, so that only this constraint fails: which of two failing
            # constraints SQLite names depends on their order in the rebuilt table.
            db.execute("UPDATE batches SET hold_id = 'h', hold_state = 'lost'")


class TestCurrency:
    """How each store meets a schema that is not this router's."""

    async def test_sqlite_is_upgraded_once_at_open(self, tmp_path: Path) -> None:
        database = Database("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "jobs.db")
        for _ in range(2):
            await (await database.open()).close()
        assert database.raw(f"SELECT version_num FROM {SCHEMA.version_table}") == [(head(SCHEMA),)]

    async def test_sqlite_from_a_newer_router_is_refused(self, tmp_path: Path) -> None:
        database = Database("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "jobs.db")
        await (await database.open()).close()
        database.raw(f"UPDATE {SCHEMA.version_table} SET version_num = 'from_the_future'")
        with pytest.raises(ConfigError, match="from_the_future"):
            await database.open()

    async def test_a_refused_row_stops_the_sqlite_upgrade_and_changes_nothing(
        self, tmp_path: Path
    ) -> None:
        database = Database("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "jobs.db")
        database.load(FIXTURES / "legacy_jobs_sqlite.sql")
        # A row no router wrote: charged more than it was quoted.
        database.raw("UPDATE jobs SET cost = 99 WHERE seq = 8")
        before = database.raw("SELECT name, sql FROM sqlite_master ORDER BY name")
        with pytest.raises(sa.exc.IntegrityError, match="jobs_cost_check"):
            await database.open()
        assert database.raw("SELECT name, sql FROM sqlite_master ORDER BY name") == before
        assert database.raw("SELECT count(*) FROM jobs") == [(8,)]
        # Mended, it upgrades.
        database.raw("UPDATE jobs SET cost = 0 WHERE seq = 8")
        await (await database.open()).close()

    @pytest.mark.postgres
    async def test_postgres_that_is_not_current_is_refused(self, postgres_schemas: Schemas) -> None:
        dsn = with_search_path(postgres_schemas.create())
        with pytest.raises(ConfigError, match="tiergen migrate"):
            await SqlJobStore.open_postgres(dsn, pool_size=1)
        upgrade(SCHEMA, dsn)
        await (await SqlJobStore.open_postgres(dsn, pool_size=1)).close()


class TestWebhooksUpgrade:
    """Revision 0005 adds the webhook tables and the outbox flags: rows of the previous release
    read as attached batches with nothing to tell, and the downgrade takes only what it added."""

    @pytest.fixture
    def previous(self, database: Database) -> Database:
        database.migrate_to("0004")
        database.insert(
            "batches",
            {
                "batch_id": "bat_1",
                "tenant": "acme",
                "account_id": "acct-1",
                "idempotency_key": "key-1",
                "fingerprint": "fp",
                "hold_state": "captured",
                "hold_id": "hold-1",
                "captured": 2,
                "create_us": 1,
            },
        )
        database.insert(
            "jobs",
            _job_row(job_id="job_1", batch_id="bat_1", account_id="acct-1", tenant="acme"),
        )
        return database

    async def test_rows_read_as_attached_with_nothing_to_tell(self, previous: Database) -> None:
        previous.migrate()
        store = await previous.open()
        try:
            record = await store.batch(Owner("acme", "acct-1"), "bat_1")
        finally:
            await store.close()
        assert (record.batch.detached, record.batch.webhook_id) == (False, None)
        assert previous.raw("SELECT count(*) FROM jobs WHERE event_pending") == [(0,)]
        flags = "SELECT count(*) FROM batches WHERE completion_pending OR credits_low_pending"
        assert previous.raw(flags) == [(0,)]
        assert previous.raw("SELECT count(*) FROM webhooks") == [(0,)]

    def test_the_downgrade_takes_only_what_it_added(self, previous: Database) -> None:
        previous.migrate_to("0005")
        previous.migrate_to("0004", down=True)
        assert previous.raw("SELECT batch_id, captured FROM batches") == [("bat_1", 2)]
        assert previous.raw("SELECT job_id FROM jobs") == [("job_1",)]
        columns = {column["name"] for column in _columns(previous.url, "batches")}
        assert not columns & {"detached", "webhook_id", "completion_pending"}
        previous.migrate()
        assert previous.raw(f"SELECT version_num FROM {SCHEMA.version_table}") == [(head(SCHEMA),)]


class TestSecretRotationUpgrade:
    """Revision 0007 adds the secret a rotation replaces and its grace to `webhooks`: an
    endpoint of the previous release reads as never rotated, its pending delivery is still
    signed with its one secret, and it can be rotated; the downgrade takes only the columns."""

    SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    PAYLOAD = '{"type": "job.succeeded"}'

    @pytest.fixture
    def previous(self, database: Database) -> Database:
        database.migrate_to("0006")
        database.insert(
            "webhooks",
            {
                "webhook_id": "wh_1",
                "tenant": "acme",
                "url": "https://hooks.example.com/h",
                "events": "job.succeeded",
                "description": "",
                "secret": self.SECRET,
                "state": "active",
                "create_us": 1,
                "update_us": 1,
            },
        )
        database.insert(
            "webhook_deliveries",
            {
                "delivery_id": "msg_1",
                "tenant": "acme",
                "webhook_id": "wh_1",
                "event_id": "evt_1",
                "event_type": "job.succeeded",
                "account_id": "acct-1",
                "payload": self.PAYLOAD,
                "state": "pending",
                "create_us": 1,
                "next_attempt_us": 1,
            },
        )
        return database

    async def test_an_endpoint_keeps_signing_with_its_one_secret(self, previous: Database) -> None:
        previous.migrate()
        store = await previous.open()
        try:
            webhooks = WebhookStore(store.database)
            (listed,) = await webhooks.list("acme")
            assert listed.rotation_grace_until is None
            (attempt,) = await webhooks.take_due(_POLICY, limit=10)
            assert (attempt.secret, attempt.previous_secret) == (self.SECRET, None)
            headers = signature_headers(
                Signer(attempt.secret), attempt.delivery_id, int(time.time()), attempt.payload
            )
            assert " " not in headers["webhook-signature"]
            verify_signature(self.SECRET, headers, self.PAYLOAD.encode())
            rotated = await webhooks.rotate_secret("acme", "wh_1", grace_seconds=60)
            assert rotated.webhook.rotation_grace_until is not None
        finally:
            await store.close()
        assert previous.raw("SELECT previous_secret FROM webhooks") == [(self.SECRET,)]

    def test_the_downgrade_takes_only_what_it_added(self, previous: Database) -> None:
        previous.migrate_to("0007")
        previous.migrate_to("0006", down=True)
        assert previous.raw("SELECT webhook_id, secret FROM webhooks") == [("wh_1", self.SECRET)]
        columns = {column["name"] for column in _columns(previous.url, "webhooks")}
        assert not columns & {"previous_secret", "previous_secret_expire_us"}
        previous.migrate()
        assert previous.raw(f"SELECT version_num FROM {SCHEMA.version_table}") == [(head(SCHEMA),)]
