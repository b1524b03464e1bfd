"""`tiergen migrate`: brings the services' databases to the schema of this release before a
rollout, or checks that they are there (`--check`).

The services are listed by name with the import path of their migrations (a
`services.runtime.migrations.Schema`), resolved only when that service is migrated: a service
whose migrations cannot be imported is reported as such and does not stop the others, and a
new database-backed service is one more line here. The cost is that a wrong path is found when
the command runs, not when it is imported; a test runs it for every service listed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.runtime.errors import TiergenError
from services.runtime.migrations import (
    Schema,
    SchemaNotCurrent,
    head,
    redact,
    require_current,
    upgrade,
)
from services.runtime.settings import ConfigError, Env

__all__ = [
    "EXIT_BEHIND",
    "EXIT_FAILED",
    "SERVICES",
    "add_migrate_command",
    "migrate_command",
    "migrate_local_postgres",
]

#: `--check`: at least one database is not at this release's schema.
EXIT_BEHIND = 1
#: A database could not be reached or migrated, or the command was given too little.
EXIT_FAILED = 2


@dataclass(frozen=True)
class MigratedService:
    """Where a service's migrations are, and the variable that names its database."""

    #: `module:attribute` of its Schema.
    schema: str
    dsn_variable: str


SERVICES: Mapping[str, MigratedService] = {
    "ledger": MigratedService("services.ledger.migrations:SCHEMA", "TIERGEN_LEDGER_DSN"),
    "router": MigratedService("services.router.jobs.migrations:SCHEMA", "TIERGEN_ROUTER_DSN"),
}


class _MigrationsUnavailable(Exception):
    """A service's migrations cannot be imported."""


def migrate_command(
    service: str | None,
    dsn: str | None,
    *,
    check: bool,
    environ: Mapping[str, str],
) -> int:
    """Upgrade (or with `check`, only check) the database of `service`, or of every service;
    one line per service on stdout, failures on stderr; the exit status."""
    status = 0
    for name in [service] if service is not None else list(SERVICES):
        status = max(status, _migrate_one(name, dsn, check=check, environ=environ))
    return status


def _migrate_one(name: str, dsn: str | None, *, check: bool, environ: Mapping[str, str]) -> int:
    variable = SERVICES[name].dsn_variable
    try:
        target = dsn if dsn is not None else Env(environ).secret(variable) or ""
    except ConfigError as error:
        _fail(f"{name}: {error}")
        return EXIT_FAILED
    if not target:
        _fail(
            f"{name}: no database named: set {variable} (or {variable}_FILE), or pass"
            f" --service {name} --dsn DSN"
        )
        return EXIT_FAILED
    try:
        schema = _schema(name)
        if check:
            require_current(schema, target)
            print(f"{name}: current at revision {head(schema)} ({redact(target)})", flush=True)
            return 0
        applied = upgrade(schema, target)
    except SchemaNotCurrent as error:
        if check:
            print(f"{name}: {error}", flush=True)
            return EXIT_BEHIND
        _fail(f"{name}: {error}")
        return EXIT_FAILED
    except (_MigrationsUnavailable, ConfigError, TiergenError) as error:
        _fail(f"{name}: {error}")
        return EXIT_FAILED
    done = f"applied {', '.join(applied)}" if applied else "nothing to apply"
    print(f"{name}: {done}; at revision {head(schema)} ({redact(target)})", flush=True)
    return 0


def migrate_local_postgres(environ: Mapping[str, str], say: Callable[[str], None]) -> None:
    """Upgrade the PostgreSQL databases the local suite's services are given, as `tiergen up`
    and `tiergen demo` run them: the one machine owns the suite, so its command is the
    operator. SQLite files need nothing: each store upgrades its own at open."""
    for name, service in SERVICES.items():
        dsn = Env(environ).secret(service.dsn_variable) or ""
        if not dsn.startswith(("postgresql://", "postgres://")):
            continue
        try:
            applied = upgrade(_schema(name), dsn)
        except _MigrationsUnavailable as error:
            raise ConfigError(str(error)) from None
        if applied:
            say(f"{name}: applied {', '.join(applied)} to {redact(dsn)}")


def add_migrate_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `migrate [--service NAME] [--dsn DSN] [--check]` under the `tiergen` command."""
    help_text = "bring the services' databases to this release's schema, or --check them"
    migrate = commands.add_parser("migrate", help=help_text, description=help_text)
    migrate.add_argument(
        "--service",
        choices=sorted(SERVICES),
        help="only this service's database (default: every service's)",
    )
    migrate.add_argument(
        "--dsn",
        metavar="DSN",
        help="the database of the --service named (default: its TIERGEN_<SERVICE>_DSN)",
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="apply nothing; exit 1 if a database is not at this release's schema",
    )

    def handler(options: argparse.Namespace) -> None:
        if options.dsn is not None and options.service is None:
            migrate.error("--dsn names one database: give --service too")
        status = migrate_command(
            options.service, options.dsn, check=options.check, environ=os.environ
        )
        if status:
            raise SystemExit(status)

    migrate.set_defaults(handler=handler)


def _schema(name: str) -> Schema:
    where = SERVICES[name].schema
    module_name, _, attribute = where.partition(":")
    try:
        schema = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:
        # Whatever stops the import (missing, or broken), the other services still migrate.
        raise _MigrationsUnavailable(
            f"the {name}'s migrations are unavailable: cannot load {where} ({error})"
        ) from error
    if not isinstance(schema, Schema):
        raise _MigrationsUnavailable(
            f"the {name}'s migrations are unavailable: {where} is not a Schema"
        )
    return schema


def _fail(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
