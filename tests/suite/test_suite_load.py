"""`tiergen load` against a running suite of four real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.cli.load import LoadError, LoadPlan, parse_mix, run_load
from services.cli.router_client import RouterClient
from services.cli.suite import Suite

pytestmark = pytest.mark.slow

NANO_1K = router_pb2.GenerationSpec(
    prompt="a lighthouse at dusk, load test",
    tier="nano",
    stage=common_pb2.STAGE_EXPLORE,
    resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
    n=1,
)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    with Suite(tmp_path_factory.mktemp("load") / "data") as running:
        yield running


#: For the commands that fail before they call a router: a key of the right shape.
UNUSED_KEY = "tgk_00000000_" + "A" * 43


def _tiergen(*arguments: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tiergen load ARGS`, with `api_key` as TIERGEN_API_KEY and no other key around."""
    env = {k: v for k, v in os.environ.items() if k != "TIERGEN_API_KEY"}
    if api_key is not None:
        env["TIERGEN_API_KEY"] = api_key
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "load", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_mix_of_operations_is_sent_counted_and_timed(suite: Suite) -> None:
    plan = LoadPlan(
        router=suite.router,
        spec=NANO_1K,
        clients=3,
        duration_seconds=120,
        max_requests=24,
        mix=parse_mix("generate=2,quote=1,promote=1"),
        token=suite.api_key,
        security=suite.client_security,
        credits=1000,
        seed=7,
    )

    report = await run_load(plan)
    async with RouterClient(suite.router, suite.api_key, suite.client_security) as client:
        funded = await client.balance(f"load-{report['run']}-0")

    assert (report["requests"], report["ok"], report["errors"]) == (24, 24, 0)
    operations = report["operations"]
    assert set(operations) == {"generate", "quote", "promote"}
    assert sum(operation["count"] for operation in operations.values()) == 24
    for operation in operations.values():
        latency = operation["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert (
        operations["generate"]["first_event_ms"]["p50"]
        <= operations["generate"]["latency_ms"]["p50"]
    )
    assert "first_event_ms" not in operations["quote"]
    # Nano 1K costs 2 credits and a standard promote more; quotes cost nothing.
    assert report["credits_spent"] >= 2 * operations["generate"]["ok"] + operations["promote"]["ok"]
    # The grant reached the account through the router, in the key's tenant: more than the
    # 400 sign-up credits are left after spending a few.
    assert funded.available + funded.held > 400


async def test_an_account_that_runs_out_of_credits_shows_as_failed_preconditions(
    suite: Suite,
) -> None:
    pro = router_pb2.GenerationSpec()
    pro.CopyFrom(NANO_1K)
    pro.tier = "pro"
    plan = LoadPlan(
        router=suite.router,
        spec=pro,
        token=suite.api_key,
        security=suite.client_security,
        clients=1,
        duration_seconds=120,
        max_requests=30,
    )

    report = await run_load(plan)

    # 400 sign-up credits buy 26 pro 1K images at 15 each; the other 4 are refused.
    generate = report["operations"]["generate"]
    assert (generate["ok"], generate["errors"]) == (26, {"FAILED_PRECONDITION": 4})
    assert report["credits_spent"] == 26 * 15
    assert report["error_rate"] == pytest.approx(4 / 30, abs=1e-4)


async def test_a_paced_run_sends_no_more_than_its_rate_allows(suite: Suite) -> None:
    plan = LoadPlan(
        router=suite.router,
        spec=NANO_1K,
        clients=2,
        duration_seconds=0.5,
        max_requests=1000,
        rate=20,
        mix={"quote": 1},
        token=suite.api_key,
        security=suite.client_security,
    )

    report = await run_load(plan)

    assert 1 <= report["requests"] <= 10
    assert report["rate"] == 20


def test_the_command_prints_its_report_as_json(suite: Suite) -> None:
    # Pointed at the suite's data directory, the command sends its dev key.
    where = ("--router", suite.router, "--data-dir", str(suite.data_dir))
    done = _tiergen(*where, "--clients", "2", "--requests", "4", "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["requests"], report["errors"]) == (4, 0)
    assert report["operations"]["generate"]["ok"] == 4


def test_the_command_fails_when_too_many_requests_fail(suite: Suite) -> None:
    done = _tiergen(
        "--router", suite.router, "--tier", "pro", "--clients", "1", "--requests", "28",
        "--max-error-rate", "0", "--ca-file", str(suite.pki.ca_file), api_key=suite.api_key.secret,
    )  # fmt: skip

    assert done.returncode == 1
    assert "2 of 28 requests failed, more than --max-error-rate 0" in done.stderr
    assert "errors FAILED_PRECONDITION=2" in done.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--clients", "0"], "clients must be at least 1"),
        (["--mix", "generate=1,render=2"], "unknown operation(s) in the mix: render"),
        (["--mix", "generate"], "mix entries are operation=weight, not 'generate'"),
        (["--credits", "-1"], "credits must be 0 or more"),
        (["--rate", "0"], "rate must be more than 0 requests per second"),
        (["--max-error-rate", "5"], "--max-error-rate is a share of the requests, from 0 to 1"),
    ],
)
def test_a_plan_it_cannot_run_is_refused_with_the_reason(
    arguments: list[str], message: str
) -> None:
    done = _tiergen("--router", "127.0.0.1:9", *arguments, api_key=UNUSED_KEY)

    assert done.returncode == 1
    assert done.stderr.strip().endswith(message)


def test_an_unreachable_router_is_reported_in_one_line() -> None:
    done = _tiergen("--router", "127.0.0.1:9", "--timeout", "2", api_key=UNUSED_KEY)

    assert done.returncode == 1
    assert "cannot open the load's accounts on 127.0.0.1:9: UNAVAILABLE" in done.stderr


def test_plans_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(LoadError, match="duration must be more than 0 seconds"):
        LoadPlan(router="127.0.0.1:9", spec=NANO_1K, duration_seconds=0).check()
    with pytest.raises(LoadError, match="the mix needs weights"):
        LoadPlan(router="127.0.0.1:9", spec=NANO_1K, mix={"quote": 0}).check()


def test_without_a_key_the_command_says_where_one_comes_from() -> None:
    done = _tiergen("--router", "127.0.0.1:9")

    assert done.returncode == 1
    assert done.stderr.startswith("tiergen: no API key: pass --api-key KEY, set TIERGEN_API_KEY")
    assert len(done.stderr.splitlines()) == 1
