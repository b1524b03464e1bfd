"""The migration runner on a small schema of its own: what it applies and reports, how it adopts
a database made before Alembic, what it refuses and how it says so, and that a migration that
fails changes nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.runtime.errors import Unavailable
from services.runtime.migrations import (
    Schema,
    SchemaNotCurrent,
    current,
    head,
    redact,
    require_current,
    sqlalchemy_url,
    upgrade,
)
from services.runtime.settings import ConfigError
from tests.postgres import fresh_schema, with_search_path

PLANTED = "planted-pa55word"

ENV = """
from alembic import context

context.configure(
    connection=context.config.attributes["connection"],
    version_table=context.config.attributes["version_table"],
)
with context.begin_transaction():
    context.run_migrations()
"""

REVISION = """
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    for statement in {statements!r}:
        op.get_bind().exec_driver_sql(statement)
"""

#: (revision, the revision before it, its statements), in order: a small history to migrate.
THINGS = ("a1", None, ("CREATE TABLE things (thing_id INTEGER PRIMARY KEY, name TEXT NOT NULL)",))
COLOUR = ("a2", "a1", ("ALTER TABLE things ADD COLUMN colour TEXT",))
#: A revision that does some of its work, then fails.
BROKEN = ("a3", "a2", ("CREATE TABLE halfway (x INTEGER)", "CREATE TABLE things (x INTEGER)"))


def make_schema(
    directory: Path,
    revisions: Sequence[tuple[str, str | None, tuple[str, ...]]],
    name: str = "sample",
    **options: Any,
) -> Schema:
    """A Schema whose scripts, in `directory`, hold `revisions`."""
    (directory / "versions").mkdir(parents=True)
    (directory / "env.py").write_text(ENV)
    for revision, down, statements in revisions:
        text = REVISION.format(revision=revision, down=down, statements=statements)
        (directory / "versions" / f"{revision}_{name}.py").write_text(text)
    return Schema(name, directory, **options)


class Database:
    def __init__(self, kind: str, dsn: str) -> None:
        self.kind = kind
        self.dsn = dsn

    def raw(self, statement: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.dsn.removeprefix("sqlite:///"), isolation_level=None)
            try:
                return [tuple(row) for row in db.execute(statement)]
            finally:
                db.close()
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            cursor = pg.execute(statement.encode())
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def tables(self) -> list[str]:
        if self.kind == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        else:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        return [row[0] for row in self.raw(sql)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A new, empty database on each dialect in turn."""
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite:///{tmp_path / 'sample.db'}")
        return
    with fresh_schema("runtime_migrations", "the migration runner's PostgreSQL tests") as name:
        yield Database("postgres", with_search_path(name))


class TestUrls:
    @pytest.mark.parametrize(
        ("dsn", "url"),
        [
            ("sqlite:///relative/ledger.db", "sqlite:///relative/ledger.db"),
            ("sqlite:////abs/ledger.db", "sqlite:////abs/ledger.db"),
            ("postgresql://u@db:5432/ledger", "postgresql+psycopg://u@db:5432/ledger"),
            ("postgres://u@db/ledger", "postgresql+psycopg://u@db/ledger"),
            (
                "postgresql://u@db/test?options=-csearch_path%3Dledger_x",
                "postgresql+psycopg://u@db/test?options=-csearch_path%3Dledger_x",
            ),
        ],
    )
    def test_service_dsns_become_sqlalchemy_urls(self, dsn: str, url: str) -> None:
        assert sqlalchemy_url(dsn) == url

    def test_a_sqlite_path_under_home_is_expanded(self) -> None:
        assert sqlalchemy_url("sqlite:///~/ledger.db") == f"sqlite:///{Path.home()}/ledger.db"

    @pytest.mark.parametrize("dsn", ["mysql://u:" + PLANTED + "@db/x", "sqlite:///", ""])
    def test_other_dsns_are_refused_without_their_password(self, dsn: str) -> None:
        with pytest.raises(ConfigError, match="expected sqlite:///PATH or postgresql://") as error:
            sqlalchemy_url(dsn)
        assert PLANTED not in str(error.value)

    @pytest.mark.parametrize(
        ("dsn", "shown"),
        [
            (f"postgresql://u:{PLANTED}@db:5432/x", "postgresql://u:***@db:5432/x"),
            (f"postgresql://u@db/x?password={PLANTED}&a=b", "postgresql://u@db/x?password=***&a=b"),
            (
                "postgresql://u@db/x?options=-csearch_path%3Ds",
                "postgresql://u@db/x?options=-csearch_path%3Ds",
            ),
            ("sqlite:////abs/ledger.db", "sqlite:////abs/ledger.db"),
        ],
    )
    def test_a_shown_dsn_has_no_password(self, dsn: str, shown: str) -> None:
        assert redact(dsn) == shown


class TestUpgrade:
    def test_a_new_database_gets_every_revision_in_order(self, database, tmp_path) -> None:
        schema = make_schema(tmp_path / "scripts", [THINGS, COLOUR])
        assert current(schema, database.dsn) is None

        assert upgrade(schema, database.dsn) == ["a1", "a2"]

        assert current(schema, database.dsn) == head(schema) == "a2"
        assert database.raw("SELECT version_num FROM alembic_version_sample") == [("a2",)]
        assert upgrade(schema, database.dsn) == []

    def test_a_database_behind_gets_only_what_it_lacks(self, database, tmp_path) -> None:
        upgrade(make_schema(tmp_path / "older", [THINGS]), database.dsn)
        database.raw("INSERT INTO things (thing_id, name) VALUES (1, 'kept')")

        assert upgrade(make_schema(tmp_path / "newer", [THINGS, COLOUR]), database.dsn) == ["a2"]

        assert database.raw("SELECT thing_id, name, colour FROM things") == [(1, "kept", None)]

    def test_a_failing_revision_leaves_the_database_as_it_was(self, database, tmp_path) -> None:
        schema = make_schema(tmp_path / "scripts", [THINGS, COLOUR, BROKEN])

        with pytest.raises(Exception, match="things"):
            upgrade(schema, database.dsn)

        # Not even the revisions before the broken one: all of an upgrade, or none of it.
        assert database.tables() == []
        assert current(schema, database.dsn) is None

    def test_two_upgrades_at_once_apply_each_revision_once(self, database, tmp_path) -> None:
        schema = make_schema(tmp_path / "scripts", [THINGS, COLOUR])
        start = threading.Barrier(2)
        results: list[list[str]] = []

        def run() -> None:
            start.wait()
            results.append(upgrade(schema, database.dsn))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert sorted(results) == [[], ["a1", "a2"]]
        assert current(schema, database.dsn) == "a2"

    @pytest.mark.postgres
    def test_each_service_keeps_its_own_version_table_in_one_schema(self, tmp_path) -> None:
        with fresh_schema("runtime_migrations", "the runner's shared schema test") as name:
            database = Database("postgres", with_search_path(name))
            one = make_schema(tmp_path / "one", [THINGS], name="one")
            other = ("b1", None, ("CREATE TABLE others (other_id INTEGER PRIMARY KEY)",))
            two = make_schema(tmp_path / "two", [other], name="two")

            assert upgrade(one, database.dsn) == ["a1"]
            assert upgrade(two, database.dsn) == ["b1"]

            assert (current(one, database.dsn), current(two, database.dsn)) == ("a1", "b1")
            versions = ["alembic_version_one", "alembic_version_two"]
            assert database.tables() == [*versions, "others", "things"]


class TestLegacyDatabases:
    """Databases whose version a hand-written runner kept in a table of its own."""

    @staticmethod
    def _legacy(database: Database, version: int, table: str = "schema_migrations") -> None:
        database.raw(THINGS[2][0])
        database.raw(f"CREATE TABLE {table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        database.raw(f"INSERT INTO {table} VALUES ({version}, 'things')")

    def test_the_matching_revision_is_stamped_then_the_rest_applied(self, database, tmp_path):
        self._legacy(database, 1)
        schema = make_schema(tmp_path / "scripts", [THINGS, COLOUR], legacy_versions={1: "a1"})

        assert upgrade(schema, database.dsn) == ["a2"]

        assert current(schema, database.dsn) == "a2"
        assert database.raw("SELECT version FROM schema_migrations") == [(1,)]

    def test_a_version_no_revision_matches_is_refused_and_left_alone(self, database, tmp_path):
        self._legacy(database, 7)
        schema = make_schema(tmp_path / "scripts", [THINGS, COLOUR], legacy_versions={1: "a1"})

        with pytest.raises(SchemaNotCurrent, match="version 7 in schema_migrations, which this"):
            upgrade(schema, database.dsn)

        assert sorted(database.tables()) == ["schema_migrations", "things"]

    def test_a_dialect_may_name_its_legacy_table_otherwise(self, database, tmp_path):
        kind = "sqlite" if database.kind == "sqlite" else "postgresql"
        self._legacy(database, 3, table="job_versions")
        schema = make_schema(
            tmp_path / "scripts",
            [THINGS, COLOUR],
            legacy_versions={3: "a1"},
            legacy_tables={kind: "job_versions"},
        )

        assert upgrade(schema, database.dsn) == ["a2"]


class TestRequireCurrent:
    def test_a_current_database_passes(self, database, tmp_path) -> None:
        schema = make_schema(tmp_path / "scripts", [THINGS, COLOUR])
        upgrade(schema, database.dsn)

        require_current(schema, database.dsn)

    def test_a_database_behind_names_both_revisions_and_the_command(self, database, tmp_path):
        upgrade(make_schema(tmp_path / "older", [THINGS]), database.dsn)
        schema = make_schema(tmp_path / "newer", [THINGS, COLOUR])

        with pytest.raises(SchemaNotCurrent) as refused:
            require_current(schema, database.dsn)

        message = str(refused.value)
        assert isinstance(refused.value, ConfigError)
        assert "\n" not in message
        assert f"the sample database {redact(database.dsn)} is at revision a1, expected a2" in (
            message
        )
        assert "run `tiergen migrate --service sample --dsn " in message

    def test_a_database_newer_than_the_code_is_refused(self, database, tmp_path) -> None:
        upgrade(make_schema(tmp_path / "newer", [THINGS, COLOUR]), database.dsn)
        schema = make_schema(tmp_path / "older", [THINGS])

        with pytest.raises(SchemaNotCurrent, match="at revision a2, newer than this code knows"):
            require_current(schema, database.dsn)
        with pytest.raises(SchemaNotCurrent, match="newer than this code knows"):
            upgrade(schema, database.dsn)

    def test_an_empty_database_is_refused_and_left_empty(self, database, tmp_path) -> None:
        schema = make_schema(tmp_path / "scripts", [THINGS])

        with pytest.raises(SchemaNotCurrent, match="has no schema revision, expected a1"):
            require_current(schema, database.dsn)

        assert database.tables() == []

    @pytest.mark.postgres
    def test_a_planted_password_is_never_in_the_message(self, tmp_path) -> None:
        schema = make_schema(tmp_path / "scripts", [THINGS])
        with fresh_schema("runtime_migrations", "the runner's password test") as name:
            dsn = with_search_path(name).replace("postgres@", f"postgres:{PLANTED}@", 1)
            assert PLANTED in dsn

            with pytest.raises(SchemaNotCurrent) as refused:
                require_current(schema, dsn)
            with pytest.raises(SchemaNotCurrent) as refused_too:
                require_current(schema, f"{with_search_path(name)}&password={PLANTED}")

        for error in (refused.value, refused_too.value):
            assert PLANTED not in str(error)
            assert "***" in str(error)

    def test_an_unreachable_database_is_unavailable_without_its_password(self, tmp_path) -> None:
        schema = make_schema(tmp_path / "scripts", [THINGS])
        dsn = f"postgresql://u:{PLANTED}@127.0.0.1:1/test?connect_timeout=1"

        for attempt in (require_current, upgrade, current):
            with pytest.raises(Unavailable, match="cannot connect to the sample database") as error:
                attempt(schema, dsn)
            assert PLANTED not in str(error.value)
