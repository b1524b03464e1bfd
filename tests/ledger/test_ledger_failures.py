"""Database trouble: Unavailable when unreachable, Aborted when a conflict outlasts retries."""

from __future__ import annotations

import psycopg
import pytest

from services.ledger.ledger import Ledger
from services.ledger.settings import LedgerSettings
from services.runtime.errors import Aborted, Unavailable
from tests.ledger.conftest import TENANT


async def test_a_sqlite_path_that_is_a_directory_is_unavailable(tmp_path, clock):
    with pytest.raises(Unavailable, match="cannot open the ledger database"):
        await Ledger.open(LedgerSettings(dsn=f"sqlite:///{tmp_path}"), clock)


async def test_a_sqlite_path_under_a_file_is_unavailable(tmp_path, clock):
    (tmp_path / "file").write_text("not a directory")

    with pytest.raises(Unavailable):
        await Ledger.open(LedgerSettings(dsn=f"sqlite:///{tmp_path}/file/ledger.db"), clock)


async def test_an_unreachable_postgres_server_is_unavailable(clock):
    settings = LedgerSettings(
        dsn="postgresql://postgres@127.0.0.1:1/test?connect_timeout=1", db_timeout_seconds=0.5
    )

    with pytest.raises(Unavailable, match="cannot connect"):
        await Ledger.open(settings, clock)


async def test_a_closed_ledger_is_unavailable(harness):
    ledger = await harness.open()
    await ledger.open_account(TENANT, "alice", "open")
    await ledger.close()

    with pytest.raises(Unavailable):
        await ledger.get_balance(TENANT, "alice")
    with pytest.raises(Unavailable):
        await ledger.reserve(TENANT, "alice", 5, "job")


async def test_a_lock_held_past_the_lock_timeout_ends_in_aborted(harness):
    ledger = await harness.open(lock_timeout_seconds=0.02)
    await ledger.open_account(TENANT, "alice", "open")

    async with harness.account_locked("alice"):
        with pytest.raises(Aborted):
            await ledger.reserve(TENANT, "alice", 5, "job")
        assert (await ledger.get_balance(TENANT, "alice")).available == 400

    reserved = await ledger.reserve(TENANT, "alice", 5, "job")
    assert not reserved.replayed


@pytest.mark.postgres
async def test_commands_survive_the_server_dropping_their_connections(
    postgres_harness, postgres_dsn
):
    harness = postgres_harness
    ledger = await harness.open()
    await ledger.open_account(TENANT, "alice", "open")

    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (harness.application_name,),
        )
        row = await cursor.fetchone()

    assert row is not None and row[0] >= 1
    assert (await ledger.reserve(TENANT, "alice", 5, "job")).balance.held == 5
