"""`tiergen ledger verify --pushgateway`: the result reaches a Pushgateway (here a loopback HTTP
server that records every request) as the alerts read it; the exit status stays the run's."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.cli.ledger import EXIT_UNREADABLE, EXIT_VIOLATED, add_ledger_commands
from services.cli.verify_push import PushError, push_verify_result
from services.ledger.ledger import Ledger
from services.ledger.model import GrantKind, SystemClock
from services.ledger.settings import LedgerSettings
from tests.ledger.conftest import TENANT

LAST_RUN = "tiergen_ledger_verify_last_run_timestamp_seconds"
LAST_SUCCESS = "tiergen_ledger_verify_last_success_timestamp_seconds"
VIOLATIONS = "tiergen_ledger_verify_violations"
GROUP = "/metrics/job/tiergen-ledger-verify"


@dataclass(frozen=True)
class Push:
    method: str
    path: str
    #: {metric name: value} from the pushed text exposition.
    values: dict[str, float]


class Pushgateway:
    """A loopback HTTP server that answers 200 (or `status`) and records what is pushed."""

    def __init__(self) -> None:
        self.pushes: list[Push] = []
        self.status = 200
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                values = {
                    sample.name: sample.value
                    for family in text_string_to_metric_families(body)
                    for sample in family.samples
                }
                gateway.pushes.append(Push(self.command, self.path, values))
                self.send_response(gateway.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _record

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    gateway = Pushgateway()
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
async def ledger_dsn(tmp_path: Path) -> str:
    """A SQLite ledger after some traffic, with no ledger holding it open."""
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = await Ledger.open(LedgerSettings(dsn=dsn), SystemClock())
    try:
        await ledger.open_account(TENANT, "alice", "open")
        await ledger.grant(TENANT, "alice", 50, GrantKind.PURCHASE, "order 1", "buy")
        await ledger.reserve(TENANT, "alice", 15, "open-hold")
    finally:
        await ledger.close()
    return dsn


def run(*arguments: str) -> int:
    """`tiergen ledger verify ARGUMENTS` as the command line runs it; its exit status."""
    parser = argparse.ArgumentParser(prog="tiergen")
    add_ledger_commands(parser.add_subparsers(dest="command", required=True))
    options = parser.parse_args(["ledger", "verify", *arguments])
    try:
        options.handler(options)
    except SystemExit as exited:
        return int(exited.code or 0)
    return 0


async def test_a_clean_ledger_pushes_no_violations_and_both_timestamps(ledger_dsn, pushgateway):
    status = await asyncio.to_thread(run, "--dsn", ledger_dsn, "--pushgateway", pushgateway.url)

    assert status == 0
    (push,) = pushgateway.pushes
    # PUT: a passing run replaces the job's whole group.
    assert (push.method, push.path) == ("PUT", GROUP)
    assert push.values[VIOLATIONS] == 0
    assert push.values[LAST_SUCCESS] == push.values[LAST_RUN] > 0


async def test_a_corrupt_ledger_pushes_its_violations_and_keeps_the_last_success(
    ledger_dsn, pushgateway
):
    assert await asyncio.to_thread(run, "--dsn", ledger_dsn, "--pushgateway", pushgateway.url) == 0
    path = LedgerSettings(dsn=ledger_dsn).sqlite_path
    assert path is not None
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE accounts SET available = available + 5")

    status = await asyncio.to_thread(run, "--dsn", ledger_dsn, "--pushgateway", pushgateway.url)

    assert status == EXIT_VIOLATED
    passed, failed = pushgateway.pushes
    # POST: only the metrics pushed are replaced, so the earlier success keeps its time.
    assert (failed.method, failed.path) == ("POST", GROUP)
    assert failed.values[VIOLATIONS] == 3
    assert LAST_SUCCESS not in failed.values
    assert failed.values[LAST_RUN] >= passed.values[LAST_SUCCESS]


async def test_the_url_comes_from_the_environment(ledger_dsn, pushgateway, monkeypatch):
    monkeypatch.setenv("TIERGEN_PUSHGATEWAY_URL", pushgateway.url)

    assert await asyncio.to_thread(run, "--dsn", ledger_dsn) == 0

    assert [push.values[VIOLATIONS] for push in pushgateway.pushes] == [0]


async def test_an_unreadable_ledger_pushes_only_its_run(tmp_path, pushgateway, capsys):
    status = await asyncio.to_thread(
        run, "--data-dir", str(tmp_path / "nowhere"), "--pushgateway", pushgateway.url
    )

    assert status == EXIT_UNREADABLE
    (push,) = pushgateway.pushes
    assert push.method == "POST"
    assert set(push.values) == {LAST_RUN}


async def test_a_refused_push_is_one_line_and_keeps_the_exit_status(
    ledger_dsn, pushgateway, capsys
):
    pushgateway.status = 400

    assert await asyncio.to_thread(run, "--dsn", ledger_dsn, "--pushgateway", pushgateway.url) == 0

    err = capsys.readouterr().err
    assert err == (
        f"tiergen ledger verify: could not push to the Pushgateway at {pushgateway.url}:"
        " Bad Request\n"
    )


def test_without_a_url_nothing_is_pushed(monkeypatch):
    monkeypatch.delenv("TIERGEN_PUSHGATEWAY_URL", raising=False)
    parser = argparse.ArgumentParser(prog="tiergen")
    add_ledger_commands(parser.add_subparsers(dest="command", required=True))

    assert parser.parse_args(["ledger", "verify"]).pushgateway is None


def test_an_unreachable_pushgateway_names_its_address():
    refused = r"^could not push to the Pushgateway at http://127\.0\.0\.1:1: "
    with pytest.raises(PushError, match=refused):
        push_verify_result("http://127.0.0.1:1", 0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("127.0.0.1:9091", "the Pushgateway URL must be http(s)://HOST[:PORT], not 127.0.0.1:9091"),
        (
            "http://user:s3cret@127.0.0.1:9091",
            "the Pushgateway URL must not carry credentials: http://***@127.0.0.1:9091",
        ),
    ],
)
def test_a_bad_url_is_refused_without_showing_a_password(url, expected):
    with pytest.raises(PushError) as refused:
        push_verify_result(url, 0)

    assert str(refused.value) == expected
