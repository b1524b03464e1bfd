"""`tiergen ledger`: the operator's commands on the ledger.

`verify` checks every invariant of a ledger database and says which hold; one run covers every
tenant, and a violation names each account it concerns as `tenant/account`. It reads the
database directly.

`grant`, `balance` and `entries` call a running ledger over mutual TLS with the operator's
certificate (identity `spiffe://tiergen/admin`, which the ledger admits to Grant and its reads
only: see `services.ledger.callers`). With `--data-dir` of a `tiergen up` they find its
ledger's address (`run/ledger.addr`) and its `tls/cli.crt`; elsewhere `--ledger` (LEDGER_ADDR)
and `--ca-file`, `--cert-file`, `--key-file` say where and as whom.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.cli.credentials import CredentialError, add_transport_arguments, resolve_security
from services.cli.json_output import message_document
from services.cli.verify_push import PUSHGATEWAY_VARIABLE, PushError, push_verify_result
from services.ledger.ledger import Ledger
from services.ledger.model import InvariantCheck
from services.ledger.settings import LedgerSettings
from services.runtime.channels import open_channel
from services.runtime.errors import Internal, TiergenError
from services.runtime.migrations import redact
from services.runtime.settings import ConfigError

__all__ = [
    "EXIT_UNREADABLE",
    "EXIT_VIOLATED",
    "add_ledger_commands",
    "ledger_address",
    "verify_command",
]

#: Exit status when at least one invariant is violated.
EXIT_VIOLATED = 1
#: Exit status when the database cannot be opened or read.
EXIT_UNREADABLE = 2
_DSN_VARIABLE = "TIERGEN_LEDGER_DSN"


def verify_command(
    dsn: str | None, data_dir: Path | None, *, pushgateway: str | None = None
) -> int:
    """Verify the ledger at `dsn` or in `data_dir`; print each invariant; the exit status.

    With neither, the ledger service's own setting applies (TIERGEN_LEDGER_DSN, or the
    `tiergen up` default). Overdue holds are returned first, as the sweeper would. With
    `pushgateway`, the result also goes to that Prometheus Pushgateway (`verify_push`); the
    exit status stays the verification's.
    """
    environ = dict(os.environ)
    if data_dir is not None:
        dsn = f"sqlite:///{data_dir / 'ledger.db'}"
    if dsn is not None:
        environ.pop(f"{_DSN_VARIABLE}_FILE", None)
        environ[_DSN_VARIABLE] = dsn
    try:
        # The service's other settings (database timeouts above all) apply here too, and its
        # database is TIERGEN_LEDGER_DSN, TIERGEN_LEDGER_DSN_FILE or the `tiergen up` default.
        settings = LedgerSettings.from_env(environ)
        checks = asyncio.run(_verify(settings))
    except (ConfigError, TiergenError) as error:
        print(f"tiergen ledger verify: {error}", file=sys.stderr)
        _push(pushgateway, None)
        return EXIT_UNREADABLE
    print(f"ledger at {redact(settings.dsn)}")
    for check in checks:
        print(f"{'OK' if check.ok else 'FAILED':<7} {check.name}: {check.detail}")
    failed = sum(not check.ok for check in checks)
    print(f"{len(checks)} invariants checked, {failed} failed")
    _push(pushgateway, failed)
    return EXIT_VIOLATED if failed else 0


def _push(pushgateway: str | None, violations: int | None) -> None:
    if not pushgateway:
        return
    try:
        push_verify_result(pushgateway, violations)
    except PushError as error:
        print(f"tiergen ledger verify: {error}", file=sys.stderr)


def add_ledger_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register `ledger verify [--dsn DSN | --data-dir DIR]` and `ledger grant|balance|entries`
    under the `tiergen` command."""
    ledger = commands.add_parser(
        "ledger", help="inspect the ledger's database; grant credits and read balances as admin"
    )
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
    verify.add_argument(
        "--pushgateway",
        metavar="URL",
        default=os.environ.get(PUSHGATEWAY_VARIABLE),
        help="also push the result to this Prometheus Pushgateway, job tiergen-ledger-verify"
        f" (default: ${PUSHGATEWAY_VARIABLE}; none: no push)",
    )
    verify.set_defaults(handler=_verify_handler)

    running = argparse.ArgumentParser(add_help=False)
    running.add_argument(
        "--ledger",
        metavar="HOST:PORT",
        help=f"the ledger (env {_LEDGER_VARIABLE}; default: the one --data-dir's `tiergen up`"
        " runs, else 127.0.0.1:50053)",
    )
    running.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="a `tiergen up` data directory"
    )
    running.add_argument(
        "--tenant", default="default", help="the account's tenant (default: default)"
    )
    running.add_argument("--account", required=True, help="the account id")
    running.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_transport_arguments(running)

    grant = actions.add_parser(
        "grant", parents=[running], help="add credits to an account (admin identity)"
    )
    grant.add_argument("--amount", type=int, required=True, help="credits, at least 1")
    grant.add_argument("--kind", choices=sorted(_GRANT_KINDS), default="adjustment")
    grant.add_argument("--reason", required=True, help="why, kept in the ledger's history")
    grant.add_argument(
        "--key", help="idempotency key (default: a fresh one; repeat one to make a retry safe)"
    )
    grant.set_defaults(handler=lambda options: asyncio.run(_grant(options)))
    balance = actions.add_parser(
        "balance", parents=[running], help="an account's balance (admin identity)"
    )
    balance.set_defaults(handler=lambda options: asyncio.run(_balance(options)))
    entries = actions.add_parser(
        "entries", parents=[running], help="an account's newest history entries (admin identity)"
    )
    entries.add_argument("--limit", type=int, default=50, help="entries at most (default 50)")
    entries.set_defaults(handler=lambda options: asyncio.run(_entries(options)))


_LEDGER_VARIABLE = "LEDGER_ADDR"
_GRANT_KINDS = {
    "purchase": ledger_pb2.GRANT_KIND_PURCHASE,
    "adjustment": ledger_pb2.GRANT_KIND_ADJUSTMENT,
}
_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name


def ledger_address(options: argparse.Namespace) -> str:
    """The ledger `tiergen ledger grant|balance|entries` call: --ledger, else the ones of
    --data-dir (every replica `tiergen up` runs there, balanced round robin), else LEDGER_ADDR,
    else the default port on loopback."""
    if options.ledger:
        return str(options.ledger)
    if options.data_dir is not None:
        run = options.data_dir / "run"
        # ledger.addr, then ledger-2.addr, ledger-3.addr... for `--replicas ledger=N`.
        numbers = {path: path.stem.removeprefix("ledger-") for path in run.glob("ledger-*.addr")}
        replicas = sorted(
            (path for path, number in numbers.items() if number.isdigit()),
            key=lambda path: int(numbers[path]),
        )
        try:
            return ",".join(path.read_text().strip() for path in [run / "ledger.addr", *replicas])
        except OSError:
            raise CredentialError(
                f"no running ledger found in {options.data_dir}: start `tiergen up --data-dir"
                f" {options.data_dir}`, or give --ledger HOST:PORT"
            ) from None
    return os.environ.get(_LEDGER_VARIABLE) or "127.0.0.1:50053"


def _ledger_channel(options: argparse.Namespace) -> grpc.aio.Channel:
    security = resolve_security(
        ca_file=options.ca_file,
        cert_file=options.cert_file,
        key_file=options.key_file,
        insecure=options.insecure,
        data_dir=options.data_dir,
    )
    return open_channel(
        ledger_address(options), security=security, services=[_SERVICE], default_timeout=30
    )


def _show(options: argparse.Namespace, message: Any, human: str) -> None:
    if options.json:
        document = message_document(message)
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(human)


def _balance_line(balance: ledger_pb2.Balance) -> str:
    return (
        f"{balance.tenant}/{balance.account_id}: {balance.available} available,"
        f" {balance.held} held, promotional {balance.promotional_granted}/"
        f"{balance.promotional_cap}, purchased {balance.purchased}, consumed {balance.consumed}"
    )


async def _grant(options: argparse.Namespace) -> None:
    request = ledger_pb2.GrantRequest(
        tenant=options.tenant,
        account_id=options.account,
        amount=options.amount,
        kind=_GRANT_KINDS[options.kind],
        reason=options.reason,
        idempotency_key=options.key or f"cli-grant-{uuid.uuid4().hex}",
    )
    async with _ledger_channel(options) as channel:
        reply = await ledger_pb2_grpc.LedgerServiceStub(channel).Grant(request)
    note = " (a replay: nothing granted again)" if reply.replayed else ""
    _show(options, reply, f"+{reply.entry.available_delta}{note}; {_balance_line(reply.balance)}")


async def _balance(options: argparse.Namespace) -> None:
    request = ledger_pb2.GetBalanceRequest(tenant=options.tenant, account_id=options.account)
    async with _ledger_channel(options) as channel:
        reply = await ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance(request)
    _show(options, reply, _balance_line(reply.balance))


def _kind(kind: int) -> str:
    return ledger_pb2.EntryKind.Name(kind).removeprefix("ENTRY_KIND_").lower()


async def _entries(options: argparse.Namespace) -> None:
    request = ledger_pb2.ListEntriesRequest(
        tenant=options.tenant, account_id=options.account, page_size=options.limit
    )
    async with _ledger_channel(options) as channel:
        reply = await ledger_pb2_grpc.LedgerServiceStub(channel).ListEntries(request)
    lines = [
        f"{entry.create_time.ToJsonString()}  {_kind(entry.kind):<12}"
        f" available {entry.available_delta:+} -> {entry.available_after},"
        f" held {entry.held_delta:+} -> {entry.held_after}  {entry.memo}"
        for entry in reply.entries
    ]
    _show(options, reply, "\n".join(lines) or "no entries")


def _verify_handler(options: argparse.Namespace) -> None:
    status = verify_command(options.dsn, options.data_dir, pushgateway=options.pushgateway)
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
