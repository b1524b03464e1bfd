"""`tiergen migrate`: what it applies and prints per service, what `--check` answers and exits
with, and that no password of a DSN is ever printed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services.cli import migrate
from services.cli.main import main
from services.cli.migrate import EXIT_BEHIND, EXIT_FAILED, MigratedService, migrate_local_postgres
from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.runtime.migrations import current, head, upgrade
from tests.postgres import fresh_schema, with_search_path

LEGACY_LEDGER = Path(__file__).parents[1] / "ledger" / "fixtures" / "legacy_ledger_sqlite.sql"
PLANTED = "planted-pa55word"


def tiergen(*args: str) -> int:
    """`tiergen ARGS` in this process; its exit status."""
    try:
        return main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _legacy_ledger(path: Path) -> str:
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_LEDGER.read_text())
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_dsn():
    with fresh_schema("cli_migrate", "the migrate command's PostgreSQL tests") as name:
        yield with_search_path(name)


def _ledger_revisions(scratch: Path) -> list[str]:
    """Every revision of the ledger's schema, oldest first: what a new database is given."""
    return upgrade(LEDGER_SCHEMA, f"sqlite:///{scratch / 'revisions.db'}")


def _applied(revisions: list[str]) -> str:
    """How `tiergen migrate` tells that it applied `revisions`."""
    return f"applied {', '.join(revisions)}" if revisions else "nothing to apply"


def _with_password(dsn: str) -> str:
    planted = dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PLANTED}@", 1)
    assert PLANTED in planted
    return planted


def test_every_service_listed_migrates_a_new_database(tmp_path, capsys):
    for name in migrate.SERVICES:
        dsn = f"sqlite:///{tmp_path / f'{name}.db'}"

        assert tiergen("migrate", "--service", name, "--dsn", dsn) == 0

        out = capsys.readouterr().out
        assert out.startswith(f"{name}: applied "), out
        assert out.rstrip().endswith(f"({dsn})")


def test_without_a_service_both_databases_named_by_their_variables(tmp_path, capsys, monkeypatch):
    ledger, router = f"sqlite:///{tmp_path / 'ledger.db'}", f"sqlite:///{tmp_path / 'router.db'}"
    monkeypatch.setenv("TIERGEN_LEDGER_DSN", ledger)
    monkeypatch.setenv("TIERGEN_ROUTER_DSN", router)

    assert tiergen("migrate") == 0
    first = capsys.readouterr().out.splitlines()
    assert tiergen("migrate") == 0
    again = capsys.readouterr().out.splitlines()

    assert [line.split(":")[0] for line in first] == ["ledger", "router"]
    newest = head(LEDGER_SCHEMA)
    every = _applied(_ledger_revisions(tmp_path))
    assert first[0] == f"ledger: {every}; at revision {newest} ({ledger})"
    assert again[0] == f"ledger: nothing to apply; at revision {head(LEDGER_SCHEMA)} ({ledger})"
    assert again[1].startswith("router: nothing to apply; at revision ")


def test_check_exits_1_on_a_database_behind_and_0_once_migrated(tmp_path, capsys):
    dsn = _legacy_ledger(tmp_path / "ledger.db")

    assert tiergen("migrate", "--service", "ledger", "--dsn", dsn, "--check") == EXIT_BEHIND
    behind = capsys.readouterr().out.splitlines()
    # Nothing applied: the database is still as the hand-written migrations left it.
    assert current(LEDGER_SCHEMA, dsn) is None
    assert tiergen("migrate", "--service", "ledger", "--dsn", dsn) == 0
    applied = capsys.readouterr().out
    assert tiergen("migrate", "--service", "ledger", "--dsn", dsn, "--check") == 0
    current_line = capsys.readouterr().out.splitlines()

    assert len(behind) == 1
    assert behind[0].startswith("ledger: the ledger database ")
    assert "predates Alembic" in behind[0]
    assert f"tiergen migrate --service ledger --dsn {dsn}" in behind[0]
    # Adopted as the first revision, which it is, and brought up from there.
    later = _applied(_ledger_revisions(tmp_path)[1:])
    assert applied.startswith(f"ledger: {later}; at revision")
    assert current_line == [f"ledger: current at revision {head(LEDGER_SCHEMA)} ({dsn})"]


def test_check_looks_without_making_a_missing_sqlite_file(tmp_path, capsys):
    path = tmp_path / "ledger.db"

    status = tiergen("migrate", "--service", "ledger", "--dsn", f"sqlite:///{path}", "--check")

    assert status == EXIT_BEHIND
    assert "has no schema revision" in capsys.readouterr().out
    assert not path.exists()


def test_check_of_both_services_exits_1_when_either_is_behind(tmp_path, capsys, monkeypatch):
    ledger, router = f"sqlite:///{tmp_path / 'ledger.db'}", f"sqlite:///{tmp_path / 'router.db'}"
    monkeypatch.setenv("TIERGEN_LEDGER_DSN", ledger)
    monkeypatch.setenv("TIERGEN_ROUTER_DSN", router)
    upgrade(LEDGER_SCHEMA, ledger)

    assert tiergen("migrate", "--check") == EXIT_BEHIND
    lines = capsys.readouterr().out.splitlines()

    assert lines[0].startswith("ledger: current at revision")
    assert lines[1].startswith("router: the router database")
    assert "tiergen migrate --service router" in lines[1]


@pytest.mark.postgres
def test_postgres_behind_then_migrated_then_current(postgres_dsn, capsys, tmp_path):
    dsn = _with_password(postgres_dsn)
    where = ("--service", "ledger", "--dsn", dsn)

    assert tiergen("migrate", *where, "--check") == EXIT_BEHIND
    assert tiergen("migrate", *where) == 0
    assert tiergen("migrate", *where, "--check") == 0
    out, err = capsys.readouterr()

    lines = out.splitlines()
    assert "no schema revision" in lines[0]
    assert lines[1].startswith(f"ledger: {_applied(_ledger_revisions(tmp_path))}; ")
    assert lines[2].startswith("ledger: current at revision")
    assert all("postgres:***@" in line for line in lines)
    assert PLANTED not in out + err


@pytest.mark.postgres
def test_a_password_given_as_a_parameter_is_never_printed(postgres_dsn, capsys):
    dsn = f"{postgres_dsn}&password={PLANTED}"

    assert tiergen("migrate", "--service", "ledger", "--dsn", dsn, "--check") == EXIT_BEHIND
    assert tiergen("migrate", "--service", "ledger", "--dsn", dsn) == 0
    out, err = capsys.readouterr()

    assert "password=***" in out
    assert PLANTED not in out + err


def test_an_unreachable_database_is_one_line_without_its_password(capsys):
    dsn = f"postgresql://postgres:{PLANTED}@127.0.0.1:1/test?connect_timeout=1"

    assert tiergen("migrate", "--service", "ledger", "--dsn", dsn) == EXIT_FAILED
    out, err = capsys.readouterr()

    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(
        "ledger: cannot connect to the ledger database postgresql://postgres:***@"
    )
    assert PLANTED not in err


def test_unavailable_router_migrations_are_reported_and_the_ledger_still_migrates(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(
        migrate.SERVICES,
        "router",
        MigratedService("services.router.jobs.no_such_module:SCHEMA", "TIERGEN_ROUTER_DSN"),
    )
    monkeypatch.setenv("TIERGEN_LEDGER_DSN", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("TIERGEN_ROUTER_DSN", f"sqlite:///{tmp_path / 'router.db'}")

    assert tiergen("migrate") == EXIT_FAILED
    out, err = capsys.readouterr()

    assert out.startswith("ledger: applied ")
    assert err.startswith("router: the router's migrations are unavailable: cannot load ")
    assert not (tmp_path / "router.db").exists()


def test_a_service_whose_database_is_not_named_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("TIERGEN_ROUTER_DSN", raising=False)

    assert tiergen("migrate", "--service", "router") == EXIT_FAILED

    assert (
        "set TIERGEN_ROUTER_DSN (or TIERGEN_ROUTER_DSN_FILE), or pass --service router --dsn DSN"
        in capsys.readouterr().err
    )


def test_a_dsn_needs_the_service_it_belongs_to(capsys):
    assert tiergen("migrate", "--dsn", "sqlite:///x.db") == 2

    assert "--dsn names one database: give --service too" in capsys.readouterr().err


@pytest.mark.postgres
def test_the_local_suite_migrates_the_postgres_databases_it_is_given(postgres_dsn, tmp_path):
    said: list[str] = []
    sqlite = tmp_path / "router.db"
    environ = {"TIERGEN_LEDGER_DSN": postgres_dsn, "TIERGEN_ROUTER_DSN": f"sqlite:///{sqlite}"}

    migrate_local_postgres(environ, said.append)
    migrate_local_postgres(environ, said.append)

    assert current(LEDGER_SCHEMA, postgres_dsn) == head(LEDGER_SCHEMA)
    every = _applied(_ledger_revisions(tmp_path))
    assert said == [f"ledger: {every} to {postgres_dsn}"]
    # A SQLite file is its store's to upgrade when the service opens it.
    assert not sqlite.exists()
