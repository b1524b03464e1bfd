"""`tiergen backup`: a consistent copy of a service's SQLite database, taken while it serves.

A SQLite store runs in WAL mode, so its recent transactions live in `<name>.db-wal` until a
checkpoint folds them into the file: copying the `.db` file of a live database loses them, or
catches a page half-written. This command copies through SQLite's online backup API instead,
which reads one consistent snapshot (the service goes on writing meanwhile), and the copy is a
single self-contained file (rollback journal, not WAL) checked with `PRAGMA integrity_check`
before it gets its name, so a file at the destination is always a whole, sound backup. An
existing file is never overwritten.

PostgreSQL databases are backed up with `pg_dump --format=custom` (docs/deploy.md, "Backup and
restore"); this command refuses them rather than half-doing the job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.cli.migrate import EXIT_FAILED, SERVICES
from services.runtime.settings import ConfigError, Env

__all__ = ["Backup", "BackupFailed", "add_backup_command", "backup_command", "backup_sqlite"]

_SQLITE_PREFIX = "sqlite:///"


class BackupFailed(Exception):
    """The backup could not be taken; the message says why, and nothing was left behind."""


@dataclass(frozen=True)
class Backup:
    """What a backup holds."""

    path: Path
    pages: int
    #: The schema revision recorded in the copy, None when it has no version table.
    revision: str | None


def backup_sqlite(source: Path, destination: Path, version_table: str) -> Backup:
    """Copy the SQLite database at `source` to `destination` (which must not exist) through
    the online backup API, leaving nothing at `destination` unless the copy is sound."""
    if not source.is_file():
        # Opening would make an empty database there, and back that up.
        raise BackupFailed(f"no database at {source}")
    if destination.exists():
        raise BackupFailed(f"{destination} exists; a backup never overwrites a file")
    if not destination.parent.is_dir():
        raise BackupFailed(f"no directory {destination.parent} to write the backup in")
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        # mode=rw: a database that vanished meanwhile is an error, not a new empty file.
        existing = f"{source.resolve().as_uri()}?mode=rw"
        with (
            contextlib.closing(sqlite3.connect(existing, uri=True)) as reader,
            contextlib.closing(sqlite3.connect(partial)) as copy,
        ):
            reader.backup(copy)
            # One file: the copy took the source's WAL mode with its header.
            copy.execute("PRAGMA journal_mode = DELETE")
            verdict = [row[0] for row in copy.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                raise BackupFailed(f"the copy of {source} fails its integrity check: {verdict}")
            pages = int(copy.execute("PRAGMA page_count").fetchone()[0])
            revision = _revision(copy, version_table)
        _fsync(partial)
        # Refuses to replace a file that appeared meanwhile, where a rename would not.
        os.link(partial, destination)
        _fsync(destination.parent)
    except sqlite3.Error as error:
        raise BackupFailed(f"cannot back up {source}: {error}") from None
    except FileExistsError:
        raise BackupFailed(f"{destination} exists; a backup never overwrites a file") from None
    except OSError as error:
        raise BackupFailed(f"cannot write {destination}: {error.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)
    return Backup(destination, pages, revision)


def backup_command(
    service: str, dsn: str | None, destination: Path, *, environ: Mapping[str, str]
) -> int:
    """Back up `service`'s database (`dsn`, or its variable in `environ`) to `destination`;
    one line on stdout, or the failure on stderr; the exit status."""
    variable = SERVICES[service].dsn_variable
    try:
        target = dsn if dsn is not None else Env(environ).secret(variable) or ""
    except ConfigError as error:
        return _fail(f"{service}: {error}")
    if not target:
        return _fail(f"{service}: no database named: set {variable}, or pass --dsn DSN")
    if not target.startswith(_SQLITE_PREFIX) or target == _SQLITE_PREFIX:
        # The DSN may carry a password: not repeated here.
        return _fail(
            f"{service}: `tiergen backup` copies SQLite databases; back up PostgreSQL with"
            ' `pg_dump --format=custom` (docs/deploy.md, "Backup and restore")'
        )
    source = Path(target.removeprefix(_SQLITE_PREFIX)).expanduser()
    try:
        backup = backup_sqlite(source, destination, f"alembic_version_{service}")
    except BackupFailed as error:
        return _fail(f"{service}: {error}")
    at = f"at revision {backup.revision}" if backup.revision else "with no schema revision"
    print(
        f"{service}: backed up {source} to {backup.path} ({backup.pages} pages, {at});"
        " integrity ok",
        flush=True,
    )
    return 0


def add_backup_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `backup --service NAME [--dsn DSN] --out FILE` under the `tiergen` command."""
    help_text = "copy a service's SQLite database while it serves, consistently, to a new file"
    backup = commands.add_parser("backup", help=help_text, description=help_text)
    backup.add_argument("--service", choices=sorted(SERVICES), required=True)
    backup.add_argument(
        "--dsn",
        metavar="DSN",
        help="sqlite:///PATH of the database (default: the service's TIERGEN_<SERVICE>_DSN)",
    )
    backup.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the backup; must not exist"
    )

    def handler(options: argparse.Namespace) -> None:
        status = backup_command(options.service, options.dsn, options.out, environ=os.environ)
        if status:
            raise SystemExit(status)

    backup.set_defaults(handler=handler)


def _revision(connection: sqlite3.Connection, version_table: str) -> str | None:
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (version_table,)
    ).fetchone()
    if found is None:
        return None
    row = connection.execute(f'SELECT version_num FROM "{version_table}"').fetchone()
    return None if row is None else str(row[0])


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fail(message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    return EXIT_FAILED
