"""`tiergen load --tenants` against a running suite: tenants start together, each with its own
key, clients and spec, and the report gives each tenant's figures and the totals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.cli.load import LoadPlan, TenantLoad, run_load
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
    with Suite(tmp_path_factory.mktemp("load-tenants") / "data") as running:
        yield running


async def test_each_tenant_runs_its_own_part_and_is_reported_apart(suite: Suite) -> None:
    standard = router_pb2.GenerationSpec()
    standard.CopyFrom(NANO_1K)
    standard.tier, standard.n = "standard", 2
    plan = LoadPlan(
        router=suite.router,
        spec=NANO_1K,
        security=suite.client_security,
        duration_seconds=120,
        max_requests=4,
        credits=1000,
        # The suite has one key (the dev tenant's); the names label the report.
        tenants=(
            TenantLoad("sketches", suite.api_key, clients=2),
            TenantLoad("batches", suite.api_key, clients=1, spec=standard),
        ),
    )

    report = await run_load(plan)

    sketches, batches = report["tenants"]["sketches"], report["tenants"]["batches"]
    assert (sketches["clients"], batches["clients"]) == (2, 1)
    assert (sketches["requests"], batches["requests"]) == (4, 4)
    assert (report["requests"], report["ok"], report["clients"]) == (8, 8, 3)
    # Standard batches of two cost more than nano sketches of one.
    assert batches["credits_spent"] > sketches["credits_spent"] > 0
    assert report["credits_spent"] == batches["credits_spent"] + sketches["credits_spent"]


def test_the_command_takes_tenants_inline(suite: Suite) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TIERGEN_API_KEY"}
    env["LOAD_KEY"] = suite.api_key.secret
    done = subprocess.run(
        [
            sys.executable, "-m", "services.cli.main", "load",
            "--router", suite.router, "--ca-file", str(suite.pki.ca_file),
            "--tenants", "first=env:LOAD_KEY:1,second=env:LOAD_KEY:1",
            "--requests", "2", "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["tenants"]) == {"first", "second"}
    assert report["requests"] == 4 and report["errors"] == 0
