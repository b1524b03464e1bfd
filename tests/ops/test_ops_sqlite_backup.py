"""`tiergen backup` of the SQLite stores, as docs/deploy.md ("Backup and restore") runs it: taken
while the suite serves, restored into a fresh data directory where `tiergen migrate --check`
and `tiergen ledger verify` pass, every row is the original's, and the restored suite serves
the same balances and jobs. And what the command refuses, with nothing left behind."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tiergen.router.v1 import router_pb2

from services.cli.main import main
from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.router.jobs.migrations import SCHEMA as ROUTER_SCHEMA
from services.runtime.migrations import head
from tests.ops.trading import trade
from tests.router.conftest import InProcessSuite, running_suite

PLANTED = "planted-pa55word"


def tiergen(*args: str) -> int:
    """`tiergen ARGS` in this process; its exit status."""
    try:
        return main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)


def rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the SQLite database at `path`, each table's rows sorted."""
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as connection:
        tables = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall()
        return {
            table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for (table,) in tables
        }


async def observed(suite: InProcessSuite) -> tuple[dict[str, tuple[int, int]], list[Any]]:
    """Balances and alice's jobs, as the router answers them."""
    balances = {}
    for account in ("alice", "bob"):
        balance = await suite.balance(account)
        balances[account] = (balance.available, balance.held)
    jobs = await suite.router.ListJobs(router_pb2.ListJobsRequest(account_id="alice"))
    return balances, sorted(jobs.jobs, key=lambda job: job.job_id)


async def test_a_backup_taken_while_serving_restores_and_serves_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live, backups, restored = tmp_path / "live", tmp_path / "backups", tmp_path / "restored"
    backups.mkdir()
    async with running_suite(live, {}, {}) as suite:
        await trade(suite.router, suite.addresses["ledger"])
        before = await observed(suite)
        # Taken while every server is up, their connections open and the WAL not checkpointed.
        for service in ("ledger", "router"):
            status = tiergen(
                "backup",
                "--service",
                service,
                "--dsn",
                f"sqlite:///{live / f'{service}.db'}",
                "--out",
                str(backups / f"{service}.db"),
            )
            assert status == 0
    # The servers log to stdout too; the command's lines are its own.
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith(("ledger: ", "router: "))] == [
        f"{name}: backed up {live / f'{name}.db'} to {backups / f'{name}.db'}"
        f" ({_pages(backups / f'{name}.db')} pages, at revision {head(schema)}); integrity ok"
        for name, schema in (("ledger", LEDGER_SCHEMA), ("router", ROUTER_SCHEMA))
    ]
    # Each backup is one file, and holds every row the stopped originals hold.
    assert sorted(p.name for p in backups.iterdir()) == ["ledger.db", "router.db"]
    for service in ("ledger", "router"):
        assert rows(backups / f"{service}.db") == rows(live / f"{service}.db"), service
    with sqlite3.connect(backups / "ledger.db") as connection:
        statuses = connection.execute("SELECT status FROM holds ORDER BY status").fetchall()
    assert [status for (status,) in statuses] == ["captured", "captured", "open", "released"]

    # The restore: the backups become the databases of a fresh data directory.
    restored.mkdir()
    for service in ("ledger", "router"):
        shutil.copyfile(backups / f"{service}.db", restored / f"{service}.db")
    # The command runs an event loop of its own, as under the `tiergen` command.
    assert await asyncio.to_thread(tiergen, "ledger", "verify", "--data-dir", str(restored)) == 0
    assert (
        tiergen(
            "migrate",
            "--check",
            "--service",
            "ledger",
            "--dsn",
            f"sqlite:///{restored / 'ledger.db'}",
        )
        == 0
    )
    assert (
        tiergen(
            "migrate",
            "--check",
            "--service",
            "router",
            "--dsn",
            f"sqlite:///{restored / 'router.db'}",
        )
        == 0
    )
    async with running_suite(restored, {}, {}) as suite:
        assert await observed(suite) == before
    assert before[0] == {"alice": (400 + 100 - 4 - 10, 10), "bob": (400 - 15, 0)}


def _pages(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("PRAGMA page_count").fetchone()[0])


@pytest.fixture
def ledger_db(tmp_path: Path) -> Path:
    """A small SQLite database standing in for a ledger's."""
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE alembic_version_ledger (version_num TEXT)")
        connection.execute("INSERT INTO alembic_version_ledger VALUES ('0002')")
    return path


def test_a_backup_never_overwrites_a_file(
    ledger_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "backup.db"
    existing.write_text("an older backup")
    status = tiergen(
        "backup", "--service", "ledger", "--dsn", f"sqlite:///{ledger_db}", "--out", str(existing)
    )
    assert status == 2
    assert capsys.readouterr().err == (
        f"ledger: {existing} exists; a backup never overwrites a file\n"
    )
    assert existing.read_text() == "an older backup"


def test_a_missing_database_is_not_made_by_backing_it_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.db"
    out = tmp_path / "backup.db"
    status = tiergen(
        "backup", "--service", "router", "--dsn", f"sqlite:///{missing}", "--out", str(out)
    )
    assert status == 2
    assert capsys.readouterr().err == f"router: no database at {missing}\n"
    assert not missing.exists() and not out.exists()


def test_a_file_that_is_no_database_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "ledger.db"
    garbage.write_bytes(b"not a database at all, but long enough to have a header" * 20)
    out = tmp_path / "out" / "backup.db"
    out.parent.mkdir()
    status = tiergen(
        "backup", "--service", "ledger", "--dsn", f"sqlite:///{garbage}", "--out", str(out)
    )
    assert status == 2
    assert capsys.readouterr().err == (
        f"ledger: cannot back up {garbage}: file is not a database\n"
    )
    assert list(out.parent.iterdir()) == []


def test_postgresql_is_pointed_at_pg_dump_without_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERGEN_LEDGER_DSN", f"postgresql://tiergen:{PLANTED}@db:5432/ledger")
    status = tiergen("backup", "--service", "ledger", "--out", str(tmp_path / "backup.db"))
    assert status == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "ledger: `tiergen backup` copies SQLite databases; back up PostgreSQL with"
        ' `pg_dump --format=custom` (docs/deploy.md, "Backup and restore")\n'
    )
    assert PLANTED not in captured.out + captured.err


def test_without_a_database_named_it_says_which_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERGEN_ROUTER_DSN", raising=False)
    monkeypatch.delenv("TIERGEN_ROUTER_DSN_FILE", raising=False)
    status = tiergen("backup", "--service", "router", "--out", str(tmp_path / "backup.db"))
    assert status == 2
    assert capsys.readouterr().err == (
        "router: no database named: set TIERGEN_ROUTER_DSN, or pass --dsn DSN\n"
    )
