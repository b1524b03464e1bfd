"""`tiergen ledger verify`: checks every invariant of a ledger database and says which hold.

One run covers every tenant; a violation names each account it concerns as `tenant/account`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from services.ledger.ledger import Ledger
from services.ledger.model import InvariantCheck
from services.ledger.settings import DEFAULT_DSN, LedgerSettings
from services.runtime.errors import Internal, TiergenError
from services.runtime.migrations import redact
from services.runtime.settings import ConfigError

__all__ = ["EXIT_UNREADABLE", "EXIT_VIOLATED", "add_ledger_commands", "verify_command"]

#: Exit status when at least one invariant is violated.
EXIT_VIOLATED = 1
#: Exit status when the database cannot be opened or read.
EXIT_UNREADABLE = 2
_DSN_VARIABLE = "TIERGEN_LEDGER_DSN"


def verify_command(dsn: str | None, data_dir: Path | None) -> int:
    """Verify the ledger at `dsn` or in `data_dir`; print each invariant; the exit status.

    With neither, the ledger service's own setting applies (TIERGEN_LEDGER_DSN, or the
    `tiergen up` default). Overdue holds are returned first, as the sweeper would.
    """
    environ = dict(os.environ)
    if data_dir is not None:
        environ[_DSN_VARIABLE] = f"sqlite:///{data_dir / 'ledger.db'}"
    elif dsn is not None:
        environ[_DSN_VARIABLE] = dsn
    dsn = environ.setdefault(_DSN_VARIABLE, DEFAULT_DSN)
    try:
        # The service's other settings (database timeouts above all) apply here too.
        settings = LedgerSettings.from_env(environ)
        checks = asyncio.run(_verify(settings))
    except (ConfigError, TiergenError) as error:
        print(f"tiergen ledger verify: {error}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(f"ledger at {redact(dsn)}")
    for check in checks:
        print(f"{'OK' if check.ok else 'FAILED':<7} {check.name}: {check.detail}")
    failed = sum(not check.ok for check in checks)
    print(f"{len(checks)} invariants checked, {failed} failed")
    return EXIT_VIOLATED if failed else 0


def add_ledger_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register `ledger verify [--dsn DSN | --data-dir DIR]` under the `tiergen` command."""
    ledger = commands.add_parser("ledger", help="inspect the ledger's database")
    actions = ledger.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")
    verify = actions.add_parser(
        "verify",
        help="check every invariant of the ledger database, every tenant's accounts; exit 1 if"
        " one is violated",
    )
    where = verify.add_mutually_exclusive_group()
    where.add_argument(
        "--dsn",
        metavar="DSN",
        help="sqlite:///PATH or postgresql://... (default: $TIERGEN_LEDGER_DSN)",
    )
    where.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="a `tiergen up` data directory (its ledger.db)",
    )
    verify.set_defaults(handler=_verify_handler)


def _verify_handler(options: argparse.Namespace) -> None:
    status = verify_command(options.dsn, options.data_dir)
    if status:
        raise SystemExit(status)


async def _verify(settings: LedgerSettings) -> list[InvariantCheck]:
    path = settings.sqlite_path
    # Opening creates a missing SQLite file; a mistyped path must not verify an empty ledger.
    if path is not None and not path.is_file():
        raise ConfigError(f"no ledger database at {path}")
    ledger = await Ledger.open(settings)
    try:
        try:
            return await ledger.verify()
        except Internal as error:
            # A database broken badly enough refuses the sweep's writes; what is broken is
            # still worth showing.
            print(f"the expiry sweep failed ({error}); checking without it", file=sys.stderr)
            return await ledger.verify(sweep=False)
    finally:
        await ledger.close()
