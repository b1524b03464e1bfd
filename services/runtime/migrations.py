"""Versioned schema migrations (Alembic) for every database-backed service: upgrade, check, refuse.

Each service describes its migrations with a `Schema`: the directory of its Alembic scripts
(`env.py`, `versions/`) and the version table of its databases, `alembic_version_<name>`. The
tables are per service because on PostgreSQL the ledger's and the router's tables may share one
database and schema, and Alembic's single default `alembic_version` would mix their histories.

Who upgrades a database:

- SQLite, the embedded default (`tiergen up`, `make demo`, tests): the store upgrades at open.
  One process owns the file, so nothing else would, and no command needs a step of its own.
- PostgreSQL, shared by replicas: a store only checks (`require_current`) and refuses a schema
  that is behind, or newer than its code, with one line naming `tiergen migrate`. Upgrading is an
  operator's step before a rollout, so that replicas of two releases never race to change the
  schema under each other. Tests that make a fresh PostgreSQL schema call `upgrade` on it
  first, as the operator would, so the services run their production path there too.

Databases made before Alembic recorded their version in a table of their own
(`Schema.legacy_table`); `upgrade` adopts one by stamping the revision that builds the same
schema (`Schema.legacy_versions`) and goes on from there. The legacy table is left in place:
a replica of the previous release restarting mid-rollout still finds its version there.

An upgrade runs in one transaction: the adoption, every revision and the version stamps
(`BEGIN IMMEDIATE` on SQLite; on PostgreSQL under an advisory lock, with transactional DDL), so
a migration that fails leaves the database as it was, and two runs at once apply each revision
once. What that costs: a revision cannot use a statement PostgreSQL refuses inside a
transaction (`CREATE INDEX CONCURRENTLY`); such a change needs a revision run on its own.
Opening a current database costs one read of its version table; Alembic's environment is loaded
only when there is something to apply. SQLAlchemy and Alembic are imported when a database is
first looked at, not with this module: the stores import it, and so every `tiergen` command
would otherwise pay the quarter of a second their import takes.

On SQLite the runner's connections leave `foreign_keys` off (SQLite's default, and a pragma no
transaction may change), so a revision may rebuild a table (Alembic's batch mode) without its
references getting in the way; such a revision checks them itself (`PRAGMA foreign_key_check`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shlex
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from services.runtime.errors import Unavailable
from services.runtime.settings import ConfigError

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import Connection, Engine

__all__ = [
    "Schema",
    "SchemaNotCurrent",
    "current",
    "head",
    "redact",
    "require_current",
    "sqlalchemy_url",
    "upgrade",
]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg://")
#: Query parameters of a DSN that may carry a secret, masked wherever a DSN is shown.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
_MASK = "***"
#: The first key of the advisory lock that serialises migrations on PostgreSQL ("tg").
_LOCK_CLASS = 0x7467

# Alembic announces each of its plugins at INFO when it is first imported, which is in the
# middle of a service's start: lines about Alembic's insides, not about the service.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

#: Alembic's `context` is one module-level proxy: two environments run at once in one process
#: (a ledger and a router opening their SQLite files in a test) would trample each other's.
_ENVIRONMENT_LOCK = threading.Lock()


class SchemaNotCurrent(ConfigError):
    """A database's schema is not the revision this code expects; the message says what to run."""


@dataclass(frozen=True)
class Schema:
    """One service's migrations: where its Alembic scripts are, and how its databases record
    their version."""

    #: "ledger" or "router": names the version table and `tiergen migrate --service`.
    name: str
    #: The directory holding env.py and versions/.
    script_location: Path
    #: The version table of databases made before Alembic.
    legacy_table: str = "schema_migrations"
    #: The newest hand-written version a legacy database had -> the revision equal to it.
    legacy_versions: Mapping[int, str] = field(default_factory=dict)
    #: Dialect -> the legacy version table, where a dialect's store named it otherwise.
    legacy_tables: Mapping[str, str] = field(default_factory=dict)

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"


@dataclass(frozen=True)
class _State:
    """What a database says about its schema."""

    #: The Alembic revision recorded, None when there is no version table (or it is empty).
    revision: str | None
    #: The newest version in the legacy table, when there is one and no Alembic revision.
    legacy_version: int | None
    #: The legacy table read (the schema's, or its dialect's own).
    legacy_table: str = ""


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL of a service DSN: `sqlite:///PATH` as it is, `postgresql://...` and
    `postgres://...` with the psycopg 3 driver named (query options such as
    `?options=-csearch_path%3D<schema>` kept)."""
    if dsn.startswith(_SQLITE_PREFIX) and len(dsn) > len(_SQLITE_PREFIX):
        path = dsn.removeprefix(_SQLITE_PREFIX)
        # As the router's settings read its path; SQLAlchemy would take `~` literally.
        return _SQLITE_PREFIX + str(Path(path).expanduser()) if path.startswith("~") else dsn
    for prefix in _POSTGRES_PREFIXES:
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn.removeprefix(prefix)
    raise ConfigError(f"database {redact(dsn)}: expected sqlite:///PATH or postgresql://...")


def redact(dsn: str) -> str:
    """`dsn` with its password (in the user part or the query) masked, fit for any message."""
    if dsn.startswith("sqlite:"):
        return dsn  # a file path: nothing secret, and urlunsplit would drop a slash
    try:
        parts = urlsplit(dsn)
        if not parts.scheme or not dsn.startswith(f"{parts.scheme}://"):
            # `host=... password=...` or a mistyped URL: nothing tells where a secret would be.
            raise ValueError("not a URL")
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:{_MASK}@{host}"
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key in _SECRET_PARAMETERS for key, _ in pairs):
            masked = [(key, _MASK if key in _SECRET_PARAMETERS else value) for key, value in pairs]
            query = urlencode(masked, safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        # Not a URL this module can take apart: show none of it rather than a secret.
        return "<unparsable DSN>"


def head(schema: Schema) -> str:
    """The newest revision of `schema`'s scripts."""
    revision = _scripts(schema.script_location).get_current_head()
    if revision is None:
        raise ConfigError(f"the {schema.name} migrations at {schema.script_location} are empty")
    return revision


def current(schema: Schema, dsn: str) -> str | None:
    """The revision the database at `dsn` is at; None when it has none (empty, or made before
    Alembic and not adopted yet)."""
    return _observe(schema, dsn).revision


def require_current(schema: Schema, dsn: str) -> None:
    """Return when the database at `dsn` is at this code's newest revision; otherwise raise
    SchemaNotCurrent, naming the database, what it has, what is expected, and what to run."""
    state = _observe(schema, dsn)
    expected = head(schema)
    if state.revision == expected:
        return
    raise SchemaNotCurrent(_mismatch(schema, dsn, state, expected))


def upgrade(schema: Schema, dsn: str) -> list[str]:
    """Bring the database at `dsn` to the newest revision: adopt a database made before Alembic,
    then apply what is missing, all in one transaction. The revisions applied, oldest first."""
    expected = head(schema)
    if _observe(schema, dsn).revision == expected:
        return []
    with _ENVIRONMENT_LOCK, _connected(schema, dsn) as connection, connection.begin():
        _lock(schema, connection)
        return _upgrade_locked(schema, dsn, connection, expected)


def _observe(schema: Schema, dsn: str) -> _State:
    """What the database at `dsn` says about its schema, changing nothing: a SQLite file that
    does not exist is not made by looking at it."""
    url = sqlalchemy_url(dsn)
    if url.startswith(_SQLITE_PREFIX) and not Path(url.removeprefix(_SQLITE_PREFIX)).exists():
        return _State(None, None)
    with _connected(schema, dsn) as connection:
        return _state(schema, dsn, connection)


def _upgrade_locked(schema: Schema, dsn: str, connection: Connection, expected: str) -> list[str]:
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    scripts = _scripts(schema.script_location)
    # Read again under the lock: another run may have finished meanwhile.
    state = _state(schema, dsn, connection)
    start = state.revision
    if start is None and state.legacy_version is not None:
        start = schema.legacy_versions.get(state.legacy_version)
        if start is None:
            raise SchemaNotCurrent(_mismatch(schema, dsn, state, expected))
        context = MigrationContext.configure(
            connection, opts={"version_table": schema.version_table}
        )
        context.stamp(scripts, start)
    if start is not None and not _known(scripts, start):
        raise SchemaNotCurrent(_mismatch(schema, dsn, state, expected))
    pending = [script.revision for script in scripts.iterate_revisions(expected, start)]
    pending.reverse()
    if pending:
        config = Config()
        # Config's values go through configparser interpolation, where % is special.
        config.set_main_option("script_location", str(schema.script_location).replace("%", "%%"))
        config.attributes["connection"] = connection
        config.attributes["version_table"] = schema.version_table
        command.upgrade(config, expected)
    return pending


def _mismatch(schema: Schema, dsn: str, state: _State, expected: str) -> str:
    """One line: the database, what it has, what this code expects, and what to do."""
    database = f"the {schema.name} database {redact(dsn)}"
    run = f"run `tiergen migrate --service {schema.name} --dsn {shlex.quote(redact(dsn))}`"
    if state.revision is not None:
        if not _known(_scripts(schema.script_location), state.revision):
            return (
                f"{database} is at revision {state.revision}, newer than this code knows "
                f"(its newest is {expected}): run the release that migrated it, or a later one"
            )
        return f"{database} is at revision {state.revision}, expected {expected}: {run}"
    if state.legacy_version is not None:
        adopted = schema.legacy_versions.get(state.legacy_version)
        if adopted is None:
            return (
                f"{database} has version {state.legacy_version} in {state.legacy_table}, "
                f"which this code cannot adopt (it adopts versions "
                f"{', '.join(map(str, sorted(schema.legacy_versions))) or 'none'}), "
                f"expected revision {expected}: run the release that made it first"
            )
        return (
            f"{database} predates Alembic ({state.legacy_table} version "
            f"{state.legacy_version}, revision {adopted}), expected {expected}: {run}"
        )
    return f"{database} has no schema revision, expected {expected}: {run}"


@functools.cache
def _scripts(location: Path) -> ScriptDirectory:
    """The scripts at `location`, read once per process."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(location))


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    from alembic.util.exc import CommandError

    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def _state(schema: Schema, dsn: str, connection: Connection) -> _State:
    import sqlalchemy

    # Read directly rather than through a MigrationContext, which logs its set-up at INFO: a
    # service checks at every start, and those lines would be noise in its log.
    inspector = sqlalchemy.inspect(connection)
    if inspector.has_table(schema.version_table):
        version_table = sqlalchemy.table(schema.version_table, sqlalchemy.column("version_num"))
        revisions = connection.execute(sqlalchemy.select(version_table.c.version_num)).scalars()
        found = sorted(revisions)
        if len(found) > 1:
            # Revisions are one line of history here; branches would need a merge revision.
            raise SchemaNotCurrent(
                f"the {schema.name} database {redact(dsn)} has several revisions at once "
                f"({', '.join(found)}); this code expects one line of history"
            )
        if found:
            return _State(found[0], None)
    legacy_table = schema.legacy_tables.get(connection.dialect.name, schema.legacy_table)
    if not inspector.has_table(legacy_table):
        return _State(None, None)
    table = connection.dialect.identifier_preparer.quote(legacy_table)
    newest = connection.exec_driver_sql(f"SELECT max(version) FROM {table}").scalar()
    return _State(None, None if newest is None else int(newest), legacy_table)


def _lock(schema: Schema, connection: Connection) -> None:
    """Serialise upgrades of one schema: SQLite's BEGIN IMMEDIATE already took the write lock;
    on PostgreSQL an advisory lock per service and schema, released at commit."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(%(class)s, hashtext(coalesce(current_schema(), '')))",
            {"class": _lock_class(schema)},
        )


def _lock_class(schema: Schema) -> int:
    """The advisory lock's first key for `schema`: one per service, stable across processes."""
    return _LOCK_CLASS + zlib.crc32(schema.name.encode()) % 1000


@contextlib.contextmanager
def _connected(schema: Schema, dsn: str) -> Iterator[Connection]:
    """A connection to the database at `dsn`; Unavailable (the DSN redacted) if none can be made."""
    import sqlalchemy

    engine = _engine(dsn)
    try:
        try:
            connection = engine.connect()
        except sqlalchemy.exc.DBAPIError as error:
            raise Unavailable(
                f"cannot connect to the {schema.name} database {redact(dsn)}: "
                f"{_first_line(error.orig)}",
                retry_after=1.0,
            ) from error
        with connection:
            try:
                yield connection
            except sqlalchemy.exc.OperationalError as error:
                # The database, not the migration, failed: locked, gone, out of space.
                raise Unavailable(
                    f"the {schema.name} database {redact(dsn)} cannot be used: "
                    f"{_first_line(error.orig)}",
                    retry_after=1.0,
                ) from error
    finally:
        engine.dispose()


def _engine(dsn: str) -> Engine:
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.pool import NullPool

    url = sqlalchemy_url(dsn)
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        # pysqlite begins transactions on its own, and not before DDL; SQLAlchemy's recipe
        # (https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl)
        # hands them to us, so a migration's DDL is in its transaction, which takes the write
        # lock at once rather than failing to upgrade a read lock later.
        @event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
