"""`tiergen ledger verify`: every invariant printed; non-zero on a violation or a bad database."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from services.cli.ledger import (
    EXIT_UNREADABLE,
    EXIT_VIOLATED,
    add_ledger_commands,
    verify_command,
)
from services.ledger.ledger import Ledger
from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.ledger.model import GrantKind, SystemClock
from services.ledger.settings import LedgerSettings
from services.runtime.migrations import upgrade
from tests.ledger.conftest import TENANT
from tests.postgres import with_search_path

INVARIANTS = [
    "zero_sum",
    "no_negative_available",
    "granted_equals_available_held_consumed",
    "held_equals_open_holds",
    "balances_match_history",
    "running_balances_chain",
    "no_open_hold_past_expiry",
]


@pytest.fixture
async def traded(harness):
    """A ledger database after some traffic, with no ledger holding it open.

    On the wall clock, which the command runs on, so that the open hold is not yet due.
    """
    ledger = await harness.open(SystemClock())
    await ledger.open_account(TENANT, "alice", "open")
    await ledger.grant(TENANT, "alice", 50, GrantKind.PURCHASE, "order 1", "buy")
    hold = (await ledger.reserve(TENANT, "alice", 30, "job")).hold
    await ledger.capture(TENANT, hold.hold_id, 20, "capture")
    await ledger.reserve(TENANT, "alice", 15, "open-hold")
    await ledger.close()
    return harness


def statuses(output: str) -> dict[str, str]:
    """{invariant: OK or FAILED} from the printed lines."""
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("OK", "FAILED"):
            found[rest.strip().split(":")[0]] = status
    return found


async def verify(dsn=None, data_dir=None):
    # verify_command runs its own event loop, as it does under the `tiergen` command.
    return await asyncio.to_thread(verify_command, dsn, data_dir)


async def test_a_consistent_ledger_passes_with_every_invariant_printed(traded, capsys):
    assert await verify(dsn=traded.dsn) == 0

    output = capsys.readouterr().out
    assert statuses(output) == dict.fromkeys(INVARIANTS, "OK")
    assert "7 invariants checked, 0 failed" in output


async def test_a_tampered_ledger_fails_and_names_the_broken_invariants(traded, capsys):
    await traded.execute_raw(
        "UPDATE accounts SET available = available + 5 WHERE account_id = 'alice'"
    )

    assert await verify(dsn=traded.dsn) == EXIT_VIOLATED

    output = capsys.readouterr().out
    failed = sorted(name for name, status in statuses(output).items() if status == "FAILED")
    assert failed == [
        "balances_match_history",
        "granted_equals_available_held_consumed",
        "zero_sum",
    ]
    assert "all books sum to 5" in output
    assert f"{TENANT}/alice" in output
    assert "3 failed" in output


async def test_a_data_directory_names_its_ledger_db(tmp_path, clock, capsys):
    settings = LedgerSettings(dsn=f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = await Ledger.open(settings, clock)
    await ledger.open_account(TENANT, "bob", "open")
    await ledger.close()

    assert await verify(data_dir=tmp_path) == 0
    assert str(tmp_path / "ledger.db") in capsys.readouterr().out


async def test_the_dsn_setting_applies_when_no_database_is_named(traded, monkeypatch, capsys):
    monkeypatch.setenv("TIERGEN_LEDGER_DSN", traded.dsn)

    assert await verify() == 0
    assert "0 failed" in capsys.readouterr().out


async def test_a_missing_data_directory_is_one_line_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nowhere"

    assert await verify(data_dir=missing) == EXIT_UNREADABLE

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"no ledger database at {missing / 'ledger.db'}" in captured.err
    assert not missing.exists()


async def test_a_file_that_is_no_database_cannot_be_opened(tmp_path, capsys):
    (tmp_path / "ledger.db").write_bytes(b"this is not a SQLite database, " * 100)

    assert await verify(data_dir=tmp_path) == EXIT_UNREADABLE
    assert "cannot open the ledger database" in capsys.readouterr().err


async def test_an_unsupported_dsn_is_refused(capsys):
    assert await verify(dsn="mysql://ledger@db/ledger") == EXIT_UNREADABLE
    assert "TIERGEN_LEDGER_DSN" in capsys.readouterr().err


async def test_an_unreachable_postgres_server_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("TIERGEN_LEDGER_DB_TIMEOUT_SECONDS", "0.5")

    status = await verify(dsn="postgresql://postgres@127.0.0.1:1/test?connect_timeout=1")

    assert status == EXIT_UNREADABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "cannot connect" in captured.err


@pytest.mark.postgres
async def test_the_printed_dsn_hides_its_password(postgres_schemas, capsys):
    dsn = with_search_path(postgres_schemas.create())
    upgrade(LEDGER_SCHEMA, dsn)
    with_password = dsn.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    assert with_password != dsn

    assert await verify(dsn=with_password) == 0

    output = capsys.readouterr().out
    assert "s3cret" not in output
    assert "postgres:***@127.0.0.1" in output


@pytest.mark.postgres
async def test_a_password_given_as_a_parameter_is_hidden_too(postgres_schemas, capsys):
    dsn = with_search_path(postgres_schemas.create())
    upgrade(LEDGER_SCHEMA, dsn)

    assert await verify(dsn=f"{dsn}&password=s3cret") == 0

    output = capsys.readouterr().out
    assert "s3cret" not in output
    assert "password=***" in output
    assert "search_path%3Dledger_test_" in output


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiergen")
    add_ledger_commands(parser.add_subparsers(dest="command", required=True))
    return parser


class HourAgoClock:
    """The wall clock an hour back: holds placed on it are long overdue by the wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC) - timedelta(hours=1)


async def test_an_overdue_hold_is_returned_before_the_checks(harness, capsys):
    ledger = await harness.open(HourAgoClock())
    await ledger.open_account(TENANT, "alice", "open")
    await ledger.reserve(TENANT, "alice", 40, "job", ttl_seconds=5)
    await ledger.close()

    assert await verify(dsn=harness.dsn) == 0

    assert statuses(capsys.readouterr().out)["no_open_hold_past_expiry"] == "OK"
    assert await harness.execute_raw("SELECT status FROM holds") == [("expired",)]


async def test_a_ledger_too_broken_to_sweep_is_still_checked(harness, capsys):
    ledger = await harness.open(HourAgoClock())
    await ledger.open_account(TENANT, "alice", "open")
    await ledger.reserve(TENANT, "alice", 40, "job", ttl_seconds=5)
    await ledger.close()
    # Returning the overdue hold would now take the account's held credits below zero.
    await harness.execute_raw("UPDATE holds SET amount = amount + 1")

    assert await verify(dsn=harness.dsn) == EXIT_VIOLATED

    captured = capsys.readouterr()
    assert "the expiry sweep failed" in captured.err
    failed = sorted(name for name, ok in statuses(captured.out).items() if ok == "FAILED")
    assert failed == ["held_equals_open_holds", "no_open_hold_past_expiry"]


async def test_the_command_line_exits_with_the_status_of_the_verification(traded, capsys):
    await traded.execute_raw("UPDATE holds SET amount = amount + 1 WHERE status = 'open'")
    options = parser().parse_args(["ledger", "verify", "--dsn", traded.dsn])

    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(options.handler, options)

    assert exited.value.code == EXIT_VIOLATED
    assert statuses(capsys.readouterr().out)["held_equals_open_holds"] == "FAILED"


async def test_the_command_line_returns_quietly_when_every_invariant_holds(traded):
    options = parser().parse_args(["ledger", "verify", "--dsn", traded.dsn])

    assert await asyncio.to_thread(options.handler, options) is None


def test_the_command_line_takes_a_dsn_or_a_data_directory_not_both(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["ledger", "verify", "--dsn", "sqlite:///x.db", "--data-dir", "d"])

    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    options = parser().parse_args(["ledger", "verify", "--data-dir", str(tmp_path)])
    assert (options.dsn, options.data_dir) == (None, tmp_path)
