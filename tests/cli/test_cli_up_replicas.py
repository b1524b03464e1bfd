"""`tiergen up` as a supervisor: a service that exits is started again with backoff, replicas
over one PostgreSQL behind client-side round robin survive a router and a ledger killed under
`tiergen load`, and nothing is lost or charged twice; no service outlives `tiergen up`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import grpc
import psycopg
import pytest
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.cli.credentials import CredentialError, resolve_api_key
from services.cli.ledger import ledger_address
from services.cli.load import LoadPlan, run_load, summary
from services.cli.main import main
from services.cli.pki import LocalPki
from services.cli.router_client import RouterClient, new_key
from services.cli.supervision import RestartPolicy, parse_replicas
from services.runtime.channels import dial_target, open_channel
from services.runtime.settings import ConfigError, Env
from tests.postgres import POSTGRES_DSN, fresh_schema, with_search_path

_ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
#: A lost router's batches are claimed by the other within a few seconds, not half a minute.
_FAST_RECOVERY = {
    "TIERGEN_ROUTER_LEASE_SECONDS": "2",
    "TIERGEN_ROUTER_DB_TIMEOUT_SECONDS": "1",
    "TIERGEN_ROUTER_CLAIM_INTERVAL_SECONDS": "0.3",
}


def _environ(**extra: str) -> dict[str, str]:
    """This environment without any TIERGEN_ setting, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIERGEN_")}, **extra}


def _children(pid: int) -> dict[str, int]:
    """The services `tiergen up` (process `pid`) runs now, by module: {"services.router": ...};
    a second process of a module is keyed with its pid."""
    found: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # a thread that ended since the listing: it started no one
        for child in children:
            try:
                words = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            module = words[-2].decode() if len(words) > 1 else ""
            found[module if module not in found else f"{module}#{child}"] = int(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for(what: str, check: Any, timeout: float = 60.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what}")


@dataclass
class Up:
    """A running `tiergen up`: its process, the addresses it printed, and its stderr lines."""

    process: subprocess.Popen[str]
    addresses: dict[str, str]
    stderr_path: Path
    data_dir: Path
    #: Every service process seen, which the fixture kills if a test left one running.
    seen: set[int]

    def children(self) -> dict[str, int]:
        found = _children(self.process.pid)
        self.seen.update(found.values())
        return found

    def lines(self) -> list[dict[str, Any]]:
        """Its structured stderr lines so far."""
        found = []
        for line in self.stderr_path.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Any]:
    """Starts `tiergen up` with the arguments given; stops it (and anything it left) after."""
    running: list[Up] = []

    def start(*arguments: str, **env: str) -> Up:
        data_dir = tmp_path / "data"
        stderr_path = tmp_path / "up.stderr"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir),
                 "--port-base", "0", *arguments],
                env=_environ(**env),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )  # fmt: skip
        assert process.stdout is not None
        addresses = {}
        for _ in range(4):
            name, _, address = process.stdout.readline().strip().partition(" ")
            assert address, f"tiergen up did not start: {stderr_path.read_text()[-3000:]}"
            addresses[name] = address
        up = Up(process, addresses, stderr_path, data_dir, set())
        running.append(up)
        up.children()
        return up

    yield start
    for up in running:
        if up.process.poll() is None:
            up.children()
            up.process.send_signal(signal.SIGINT)
            up.process.wait(60)
        if up.process.stdout is not None:
            up.process.stdout.close()
        for pid in up.seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# Arguments and addresses ---------------------------------------------------------------------


def test_replicas_are_counted_per_service_and_bad_ones_are_named() -> None:
    services = ("ledger", "generator", "upscaler", "router")
    assert parse_replicas("router=2, ledger=3", services) == {"router": 2, "ledger": 3}
    refusals = {
        "router": "--replicas takes SERVICE=COUNT entries, not 'router'",
        "cache=2": "--replicas: unknown service 'cache'; expected ledger, generator, upscaler,"
        " router",
        "router=0": "--replicas router=0: expected a whole number from 1 to 9",
        "router=two": "--replicas router=two: expected a whole number from 1 to 9",
        "router=10": "--replicas router=10: expected a whole number from 1 to 9",
        "router=2,router=3": "--replicas: router is given twice",
    }
    for text, message in refusals.items():
        with pytest.raises(ValueError) as refused:
            parse_replicas(text, services)
        assert str(refused.value) == message


def test_restarts_back_off_from_half_a_second_to_thirty_and_start_over_once_stable() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.attempt(0, ran_seconds=1.0) == 1
    assert policy.attempt(3, ran_seconds=1.0) == 4
    assert policy.attempt(3, ran_seconds=60.0) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--replicas", "ledger=2"], "tiergen: --replicas ledger=2 needs a PostgreSQL database"
         " (--postgres DSN): the ledger's replicas share one, and a SQLite file cannot be shared"),
        (["--replicas", "router=2,generator=2"], "tiergen: --replicas router=2 needs a PostgreSQL"
         " database (--postgres DSN): the router's replicas share one, and a SQLite file cannot"
         " be shared"),
        (["--replicas", "web=2"], "tiergen: --replicas: unknown service 'web'; expected ledger,"
         " generator, upscaler, router"),
        (["--replicas", "router=0"], "tiergen: --replicas router=0: expected a whole number from"
         " 1 to 9"),
        (["--postgres", "sqlite:///x.db"], "tiergen: --postgres takes a"
         " postgresql://user@host:port/database DSN"),
        (["--assets", "s3://No_Such"], "tiergen: --assets: TIERGEN_ROUTER_ASSETS_URL="
         "'s3://No_Such': 'No_Such' is not a bucket name (3 to 63 lower-case letters, digits,"
         " dots and hyphens)"),
    ],
)  # fmt: skip
def test_bad_flags_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    data_dir = tmp_path / "data"
    assert main(["up", "--data-dir", str(data_dir), *arguments]) == 1
    assert capsys.readouterr().err.strip() == message
    assert not data_dir.exists()


def test_a_list_of_addresses_is_dialled_round_robin_and_checked_against_the_first_host() -> None:
    assert dial_target("127.0.0.1:5001") == ("127.0.0.1:5001", None)
    assert dial_target("127.0.0.1:5001, 127.0.0.1:5002") == (
        "ipv4:127.0.0.1:5001,127.0.0.1:5002",
        "127.0.0.1:5001",
    )
    assert dial_target("[::1]:5001,[::1]:5002") == ("ipv6:[::1]:5001,[::1]:5002", "[::1]:5001")
    assert dial_target("ipv4:127.0.0.1:1,127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", None)
    # Names are resolved, and the certificate is checked against the first one.
    resolved, authority = dial_target("localhost:5001,localhost:5002")
    assert resolved.startswith(("ipv4:", "ipv6:")) and resolved.endswith(":5002")
    assert "localhost" not in resolved and authority == "localhost:5001"
    with pytest.raises(ConfigError) as refused:
        dial_target("127.0.0.1:5001,127.0.0.1")
    assert str(refused.value) == (
        "'127.0.0.1:5001,127.0.0.1': expected host:port entries separated by commas, not"
        " '127.0.0.1'"
    )
    env = Env({"LEDGER_ADDR": "127.0.0.1:1,127.0.0.1:2", "BAD": "127.0.0.1:1,ledger"})
    assert env.address("LEDGER_ADDR") == "127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ConfigError) as refused:
        env.address("BAD")
    assert str(refused.value) == (
        "BAD='127.0.0.1:1,ledger': expected host:port, for example 127.0.0.1:50053, or a"
        " comma-separated list of them"
    )


# Processes -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_crashed_service_is_started_again_with_backoff_and_ctrl_c_stops_everything(
    started: Any,
) -> None:
    # A breaker opened by the calls failing while the generator was away closes again soon.
    up = started(TIERGEN_ROUTER_BREAKER_COOLDOWN_SECONDS="1")
    first = up.children()
    generator = first["services.generator"]

    # Killed twice in a row: the second restart waits twice as long as the first.
    for attempt, delay in ((1, 0.5), (2, 1.0)):
        os.kill(generator, signal.SIGKILL)
        exited = _wait_for("the exit line", lambda n=attempt: up.events(
            "service exited; restarting it")[n - 1:])[0]  # fmt: skip
        assert exited == {
            **exited,
            "service": "generator",
            "signal": "SIGKILL",
            "attempt": attempt,
            "delay_seconds": delay,
            "level": "warning",
        }
        restarted = _wait_for("the restart line", lambda n=attempt: up.events(
            "service restarted")[n - 1:])[0]  # fmt: skip
        assert restarted["service"] == "generator"
        assert restarted["address"] == up.addresses["generator"]
        generator = up.children()["services.generator"]
    # The others were left running, and the router reaches the new generator at its old port.
    now = up.children()
    for module in ("services.router", "services.ledger", "services.upscaler"):
        assert now[module] == first[module]
    # (Once its channel has reconnected: until then the router fails the job, uncharged.)
    _wait_for("an image through the new generator", lambda: _rendered(up), 60.0, every=0.5)

    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(60) == 0
    for pid in now.values():
        assert not _alive(pid)


def _rendered(up: Up) -> bool:
    """Whether a nano image for a new account, asked of the suite's router, was delivered."""

    async def generate() -> list[Any]:
        client = RouterClient(
            up.addresses["router"],
            resolve_api_key(None, up.data_dir),
            LocalPki(up.data_dir / "tls").client_security(),
        )
        account = new_key("after-a-crash")
        async with client:
            await client.open_account(account)
            spec = router_pb2.GenerationSpec(prompt="after a crash", tier="nano", n=1)
            _batch, jobs = await client.generate(account, spec, account, lambda _line: None)
        return jobs

    try:
        jobs = asyncio.run(generate())
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        return False
    return [job.status for job in jobs] == [router_pb2.JOB_STATUS_SUCCEEDED]


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    with fresh_schema("up_replicas", "tiergen up --replicas") as schema:
        yield with_search_path(schema, POSTGRES_DSN)


async def _serves(address: str, up: Up, account: str) -> int:
    """The balance of `account` read through the router at `address` alone."""
    channel = open_channel(
        address,
        security=LocalPki(up.data_dir / "tls").client_security(),
        services=[_ROUTER_SERVICE],
        token=resolve_api_key(None, up.data_dir),
    )
    try:
        reply = await router_pb2_grpc.RouterServiceStub(channel).GetBalance(
            router_pb2.GetBalanceRequest(account_id=account), timeout=30
        )
    finally:
        await channel.close()
    return int(reply.balance.available)


@pytest.mark.slow
async def test_replicas_survive_a_router_and_a_ledger_killed_under_load_and_charge_once(
    started: Any, postgres_dsn: str
) -> None:
    up = started(
        "--replicas", "router=2,ledger=2", "--postgres", postgres_dsn,
        "--assets", "s3://tiergen-up/assets", **_FAST_RECOVERY,
    )  # fmt: skip
    routers = up.addresses["router"].split(",")
    ledgers = up.addresses["ledger"].split(",")
    assert len(routers) == len(set(routers)) == 2
    assert len(ledgers) == len(set(ledgers)) == 2
    children = up.children()
    router_pids = [pid for name, pid in children.items() if name.startswith("services.router")]
    ledger_pids = [pid for name, pid in children.items() if name.startswith("services.ledger")]
    assert len(router_pids) == len(ledger_pids) == 2

    plan = LoadPlan(
        router=up.addresses["router"],
        spec=router_pb2.GenerationSpec(prompt="a lighthouse, failover", tier="standard", n=1),
        token=resolve_api_key(None, up.data_dir),
        security=LocalPki(up.data_dir / "tls").client_security(),
        # Closed loop: every client has a render in flight at almost every moment, and round
        # robin gives each router half of them, so the killed router drops some mid-stream.
        clients=6,
        duration_seconds=4.0,
        max_requests=1000,
        account_prefix="failover",
        timeout_seconds=60.0,
    )
    load = asyncio.create_task(run_load(plan))
    # Once calls are flowing over both routers, one router and one ledger die as in a crash.
    await asyncio.to_thread(_wait_for, "calls on both routers", lambda: _served_on_both(up), 30.0)
    os.kill(router_pids[0], signal.SIGKILL)
    os.kill(ledger_pids[0], signal.SIGKILL)
    report = await load

    # Every call was answered: the ones the dead router dropped were sent again, same key.
    assert report["errors"] == 0, report
    assert report["retried"] >= 1, report
    assert report["ok"] == report["requests"] > 0
    assert f"  {report['retried']} call(s) sent again after UNAVAILABLE, same key" in (
        summary(report).splitlines()
    )
    exits = {line["service"]: line for line in up.events("service exited; restarting it")}
    assert exits.keys() == {"router", "ledger"}, exits
    assert all(line["signal"] == "SIGKILL" and line["attempt"] == 1 for line in exits.values())
    await asyncio.to_thread(
        _wait_for, "both restarts", lambda: len(up.events("service restarted")) == 2
    )
    # The restarted router serves on its old port, and so does the other.
    account = f"failover-{report['run']}-0"
    balances = [await _serves(address, up, account) for address in routers]
    assert balances[0] == balances[1]

    # Nothing lost nor charged twice: every batch a router recorded is settled (the dead
    # router's by the survivor once its 2 s lease ran out), the ledger's invariants hold, and
    # each batch's hold is captured once for exactly the images delivered.
    pattern = f"failover-{report['run']}-%"

    def unsettled_batches() -> int:
        with psycopg.connect(postgres_dsn) as connection:
            (count,) = connection.execute(
                "SELECT count(*) FROM batches WHERE account_id LIKE %s AND hold_state = 'open'",
                (pattern,),
            ).fetchone()  # type: ignore[misc]
        return int(count)

    await asyncio.to_thread(
        _wait_for, "every recorded batch settled", lambda: unsettled_batches() == 0, 60.0, 0.2
    )
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli.main", "ledger", "verify", "--dsn", postgres_dsn],
        env=_environ(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with psycopg.connect(postgres_dsn) as connection:
        delivered, cost = connection.execute(
            "SELECT count(*), coalesce(sum(cost), 0) FROM jobs"
            " WHERE account_id LIKE %s AND status = 'succeeded'",
            (pattern,),
        ).fetchone()  # type: ignore[misc]
        captures = connection.execute(
            "SELECT hold_id, count(*), sum(amount) FROM entries"
            " WHERE account_id LIKE %s AND kind = 'CAPTURE' GROUP BY hold_id",
            (pattern,),
        ).fetchall()
        # A hold still open belongs to no batch: its router was killed between holding the
        # credits and recording the batch, and the ledger returns them when it expires (the
        # call itself was sent again and ran anew on the other router).
        open_holds = connection.execute(
            "SELECT h.hold_id, h.expires_at_us, EXISTS (SELECT 1 FROM batches b"
            " WHERE b.hold_id = h.hold_id) FROM holds h"
            " WHERE h.account_id LIKE %s AND h.status = 'open'",
            (pattern,),
        ).fetchall()
        mismatched = connection.execute(
            "SELECT b.batch_id FROM batches b"
            " LEFT JOIN (SELECT batch_id, sum(cost) AS cost FROM jobs"
            "            WHERE status = 'succeeded' GROUP BY batch_id) j USING (batch_id)"
            " LEFT JOIN (SELECT hold_id, sum(amount) AS amount FROM entries"
            "            WHERE kind = 'CAPTURE' GROUP BY hold_id) e ON e.hold_id = b.hold_id"
            " WHERE b.account_id LIKE %s"
            " AND coalesce(j.cost, 0) <> coalesce(e.amount, 0)",
            (pattern,),
        ).fetchall()
    assert delivered > 0
    assert all(count == 1 for _, count, _ in captures), captures
    assert len(captures) == delivered
    assert sum(amount for _, _, amount in captures) == cost == report["credits_spent"]
    in_a_batch = [hold for hold, _, batched in open_holds if batched]
    assert in_a_batch == [], open_holds
    ttl_us = (900 + 60) * 1_000_000  # TIERGEN_ROUTER_HOLD_TTL_SECONDS' default, and slack
    assert all(expires <= time.time() * 1e6 + ttl_us for _, expires, _ in open_holds)
    assert mismatched == []
    # Both routers kept the images in the bucket of the local S3-compatible server.
    assert _stored_assets(up) >= delivered

    # `tiergen up` killed outright takes every service with it, the restarted ones too.
    survivors = list(up.children().values())
    up.process.send_signal(signal.SIGKILL)
    up.process.wait(10)
    await asyncio.to_thread(
        _wait_for, "the services to go", lambda: not any(_alive(p) for p in survivors), 60.0
    )


def _served_on_both(up: Up) -> bool:
    """Whether both routers have answered a Generate (their logs say so)."""
    logs = [up.data_dir / "logs" / name for name in ("router.log", "router-2.log")]
    return all("RouterService/Generate" in path.read_text() for path in logs)


def _stored_assets(up: Up) -> int:
    """How many objects the local S3-compatible server `tiergen up` said it started holds."""
    said = up.stderr_path.read_text()
    endpoint = said.split("on a local S3-compatible server at ", 1)[1].split()[0]
    client = boto3.session.Session(
        aws_access_key_id="any", aws_secret_access_key="any", region_name="us-east-1"
    ).client("s3", endpoint_url=endpoint)
    try:
        listed = client.list_objects_v2(Bucket="tiergen-up", Prefix="assets/")
    finally:
        client.close()
    return int(listed.get("KeyCount", 0))


def test_the_ledger_commands_balance_over_every_ledger_of_the_data_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name, address in (
        ("ledger", "127.0.0.1:50053"),
        ("ledger-10", "127.0.0.1:50143"),
        ("ledger-2", "127.0.0.1:50063"),
        ("router", "127.0.0.1:50051"),
    ):
        (run / f"{name}.addr").write_text(f"{address}\n")
    options = argparse.Namespace(ledger=None, data_dir=tmp_path)
    assert ledger_address(options) == "127.0.0.1:50053,127.0.0.1:50063,127.0.0.1:50143"
    (run / "ledger.addr").unlink()
    with pytest.raises(CredentialError, match="no running ledger found in"):
        ledger_address(options)
