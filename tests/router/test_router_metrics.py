"""The metrics contract (docs/metrics.md) on a running suite: after real calls through the four
real servers, the router's and the generator's `/metrics` endpoints, scraped over HTTP, show
every name with its labels and figures that follow the calls.

The suite runs in this process, so its services share one registry: the router's endpoint also
shows the ledger's and the upscaler's figures, which is how they are read here.
"""

from __future__ import annotations

import os
import platform
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from tiergen.router.v1 import router_pb2

from tests.router.conftest import MAIN_TENANT, InProcessSuite, running_suite
from tests.tls import session_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

Labels = frozenset[tuple[str, str]]

LEDGER = "tiergen.ledger.v1.LedgerService"
GENERATOR = "tiergen.generator.v1.GeneratorService"
ROUTER = "tiergen.router.v1.RouterService"
SQUARE_1K = common_pb2.Resolution(
    size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
)

#: Every name of the contract the services export, with the labels each sample carries
#: (histograms: the labels of their `_count`).
CONTRACT: dict[str, set[str]] = {
    "grpc_server_started_total": {"grpc_service", "grpc_method", "grpc_type"},
    "grpc_server_handled_total": {"grpc_service", "grpc_method", "grpc_type", "grpc_code"},
    "grpc_server_handling_seconds_count": {"grpc_service", "grpc_method", "grpc_type"},
    "grpc_client_started_total": {"grpc_service", "grpc_method", "grpc_type"},
    "grpc_client_handled_total": {"grpc_service", "grpc_method", "grpc_type", "grpc_code"},
    "grpc_client_handling_seconds_count": {"grpc_service", "grpc_method", "grpc_type"},
    "tiergen_build_info": {"service", "version", "commit", "python", "grpcio"},
    "tiergen_tls_certificate_expiry_timestamp_seconds": {"role"},
    "process_cpu_seconds_total": set(),
    "process_resident_memory_bytes": set(),
    "process_start_time_seconds": set(),
    "tiergen_worker_cpu_seconds_total": {"worker"},
    "tiergen_worker_resident_memory_bytes": {"worker"},
    "tiergen_router_breaker_state": {"backend"},
    "tiergen_router_images_total": {"tenant", "tier"},
    "tiergen_router_credits_captured_total": {"tenant", "tier"},
    "tiergen_router_jobs_total": {"kind", "tier", "status"},
    "tiergen_router_quota_refusals_total": {"tenant", "level", "quota"},
    "tiergen_router_webhook_deliveries_total": {"outcome"},
    "tiergen_router_webhook_outbox_age_seconds": set(),
    "tiergen_router_webhooks_paused_total": set(),
    "tiergen_router_batches_recovered_total": set(),
    "tiergen_db_pool_connections": {"store", "state"},
    "tiergen_db_pool_waiting": {"store"},
    "tiergen_ledger_holds_open": set(),
    "tiergen_ledger_holds_expired_total": set(),
    "tiergen_ledger_credits_total": {"kind"},
    "tiergen_generator_render_seconds_count": {"tier"},
    "tiergen_generator_queue_wait_seconds_count": {"tier", "urgency"},
    "tiergen_generator_renders": {"tier", "state"},
    "tiergen_generator_expected_wait_seconds": {"tier", "urgency"},
    "tiergen_generator_refused_total": {"tier", "urgency", "reason"},
    "tiergen_upscaler_upscale_seconds_count": {"factor"},
    "tiergen_upscaler_queue_wait_seconds_count": {"urgency"},
    "tiergen_upscaler_jobs": set(),
    "tiergen_upscaler_expected_wait_seconds": {"urgency"},
    "tiergen_upscaler_refused_total": {"urgency", "reason"},
}
#: Labelled counters of events the calls here do not cause: their families are declared, with
#: no samples until a first event.
UNTIL_AN_EVENT = {
    "tiergen_router_quota_refusals_total",
    "tiergen_router_webhook_deliveries_total",
    "tiergen_generator_refused_total",
    "tiergen_upscaler_refused_total",
}


class Scrape:
    """One scrape of an endpoint: its samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, Labels], float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def named(self, name: str) -> dict[Labels, float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == name}

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for found, value in self.named(name).items() if wanted <= found)


async def scrape(port: int | None) -> Scrape:
    assert port
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return Scrape(response.text)


@dataclass
class Metered:
    suite: InProcessSuite
    account: str
    #: The jobs of the Generate made before any test.
    generated: list[router_pb2.Job]

    async def router(self) -> Scrape:
        return await scrape(self.suite.servers["router"].metrics_port)

    async def generator(self) -> Scrape:
        return await scrape(self.suite.servers["generator"].metrics_port)


async def generate(router, account: str, n: int) -> list[router_pb2.Job]:
    request = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=uuid.uuid4().hex,
        spec=router_pb2.GenerationSpec(
            prompt="a lighthouse at dusk", tier="nano", n=n, resolution=SQUARE_1K
        ),
    )
    return [event.job async for event in router.Generate(request) if event.HasField("job")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def metered(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Metered]:
    """A suite with metrics endpoints on the router and the generator, after one Generate of
    two images and one Upscale of the first."""
    endpoint = {"TIERGEN_METRICS_PORT": "0"}
    async with running_suite(tmp_path_factory.mktemp("metered"), endpoint, endpoint) as suite:
        account = await suite.open_account()
        jobs = await generate(suite.router, account, 2)
        request = router_pb2.UpscaleRequest(
            account_id=account, idempotency_key=uuid.uuid4().hex, job_id=jobs[0].job_id, factor=2
        )
        async for _event in suite.router.Upscale(request):
            pass
        yield Metered(suite, account, jobs)


async def test_every_name_of_the_contract_is_exported_with_its_labels(metered):
    router = await metered.router()

    for name, labels in CONTRACT.items():
        family = name.removesuffix("_count").removesuffix("_total")
        assert family in router.families, f"{name} is not exported"
        found = router.named(name)
        assert found or name in UNTIL_AN_EVENT, f"{name} has no samples"
        assert all({key for key, _ in sample} == labels for sample in found), (name, found)


async def test_every_rpc_that_started_was_handled_once_with_its_type(metered):
    before = await metered.router()

    await generate(metered.suite.router, metered.account, 2)

    after = await metered.router()
    for side in ("server", "client"):
        started = after.named(f"grpc_{side}_started_total")
        for labels, count in started.items():
            method = dict(labels)
            if method["grpc_method"] == "ListTiers":
                continue  # the router's catalogue watcher may be asking right now
            handled = f"grpc_{side}_handled_total"
            assert after.value(handled, **method) - before.value(handled, **method) == (
                count - before.value(f"grpc_{side}_started_total", **method)
            ), (side, method)
    types = {
        (dict(labels)["grpc_method"], dict(labels)["grpc_type"])
        for labels in after.named("grpc_server_started_total")
        if dict(labels)["grpc_service"] in (ROUTER, GENERATOR, LEDGER)
    }
    assert {("Generate", "server_stream"), ("Render", "bidi_stream"), ("Reserve", "unary")} <= types


async def test_the_router_counts_its_calls_to_each_backend_by_method_and_code(metered):
    before = await metered.router()

    await generate(metered.suite.router, metered.account, 3)

    after = await metered.router()
    for method, rpc_type, calls in (
        ("Reserve", "unary", 1),
        ("Capture", "unary", 1),
    ):
        labels = {"grpc_service": LEDGER, "grpc_method": method, "grpc_type": rpc_type}
        handled = {**labels, "grpc_code": "OK"}
        assert (
            after.value("grpc_client_started_total", **labels)
            - before.value("grpc_client_started_total", **labels)
            == calls
        ), method
        assert (
            after.value("grpc_client_handled_total", **handled)
            - before.value("grpc_client_handled_total", **handled)
            == calls
        ), method
        assert (
            after.value("grpc_client_handling_seconds_count", **labels)
            - before.value("grpc_client_handling_seconds_count", **labels)
            == calls
        ), method
    render = {"grpc_service": GENERATOR, "grpc_method": "Render", "grpc_type": "bidi_stream"}
    assert (
        after.value("grpc_client_handled_total", **render, grpc_code="OK")
        - before.value("grpc_client_handled_total", **render, grpc_code="OK")
        == 3
    )
    # The dependency watcher's health checks are not calls of the contract.
    assert not after.value("grpc_client_started_total", grpc_service="grpc.health.v1.Health")


async def test_images_and_credits_are_counted_for_the_callers_tenant_and_tier(metered):
    other_tenant = f"t-{uuid.uuid4().hex[:8]}"
    other = await metered.suite.stub_of(other_tenant)
    account = f"acct-{uuid.uuid4().hex[:10]}"
    await other.OpenAccount(
        router_pb2.OpenAccountRequest(account_id=account, idempotency_key=f"open-{account}")
    )
    before = await metered.router()

    jobs = await generate(other, account, 2)

    after = await metered.router()
    assert len(jobs) == 2 and all(job.status == router_pb2.JOB_STATUS_SUCCEEDED for job in jobs)
    theirs = {"tenant": other_tenant, "tier": "nano"}
    ours = {"tenant": MAIN_TENANT, "tier": "nano"}
    assert after.value("tiergen_router_images_total", **theirs) == 2
    assert after.value("tiergen_router_credits_captured_total", **theirs) == sum(
        job.cost for job in jobs
    )
    for name in ("tiergen_router_images_total", "tiergen_router_credits_captured_total"):
        assert after.value(name, **ours) == before.value(name, **ours), name
    # What the suite's first Generate and Upscale delivered, under the suite's own tenant.
    assert after.value("tiergen_router_images_total", **ours) >= len(metered.generated)
    assert after.value("tiergen_router_images_total", tenant=MAIN_TENANT, tier="") >= 1


async def test_each_service_says_what_it_is_built_from(metered):
    router = await metered.router()

    builds = [dict(labels) for labels in router.named("tiergen_build_info")]
    assert {build["service"] for build in builds} >= {"router", "generator", "ledger", "upscaler"}
    for build in builds:
        assert build["version"] == "0.1.0"
        assert build["python"] == platform.python_version()
        assert build["grpcio"] == grpc.__version__
        assert build["commit"] == os.environ.get("TIERGEN_COMMIT", "unknown")
    assert set(router.named("tiergen_build_info").values()) == {1.0}


async def test_certificate_expiry_is_the_presented_certificates(metered):
    router = await metered.router()

    expiry = _not_after("router")
    server = router.value("tiergen_tls_certificate_expiry_timestamp_seconds", role="server")
    client = router.value("tiergen_tls_certificate_expiry_timestamp_seconds", role="client")
    # Every service's certificate comes from the run's CA, made at once with the same lifetime.
    assert abs(server - expiry) < 3600 and abs(client - expiry) < 3600
    assert datetime.fromtimestamp(server, UTC) > datetime.now(UTC) + timedelta(days=1)


async def test_database_pools_are_idle_once_the_calls_are_answered(metered):
    router = await metered.router()

    for store in ("jobs", "ledger"):
        assert router.value("tiergen_db_pool_connections", store=store, state="in_use") == 0
        assert router.value("tiergen_db_pool_connections", store=store, state="idle") >= 1
        assert router.value("tiergen_db_pool_waiting", store=store) == 0


async def test_breakers_of_every_backend_are_closed_while_the_backends_answer(metered):
    router = await metered.router()

    states = {dict(labels)["backend"]: value for labels, value in
              router.named("tiergen_router_breaker_state").items()}  # fmt: skip
    assert {"nano", "upscaler", "ledger"} <= set(states)
    assert states["nano"] == states["upscaler"] == states["ledger"] == 0


async def test_renders_and_upscales_are_timed_and_their_waits_observed(metered):
    generator = await metered.generator()

    assert generator.value("tiergen_generator_render_seconds_count", tier="nano") >= 2
    assert generator.value("tiergen_generator_render_seconds_sum", tier="nano") > 0
    assert generator.value("tiergen_generator_queue_wait_seconds_count", tier="nano") >= 2
    assert generator.value("tiergen_upscaler_upscale_seconds_count", factor="2") >= 1
    assert generator.value("tiergen_upscaler_queue_wait_seconds_count", urgency="bulk") >= 1


async def test_worker_figures_name_the_live_worker_processes(metered):
    generator = await metered.generator()

    cpu = generator.named("tiergen_worker_cpu_seconds_total")
    workers = {dict(labels)["worker"] for labels in cpu}
    children = {pid for pid in os.listdir("/proc") if pid.isdigit() and _parent(pid) == os.getpid()}
    assert workers and workers <= children
    memory = generator.named("tiergen_worker_resident_memory_bytes")
    assert {dict(labels)["worker"] for labels in memory} == workers
    assert all(value > 1_000_000 for value in memory.values())
    assert generator.value("tiergen_worker_cpu_seconds_total") > 0


def _not_after(name: str) -> float:
    """The notAfter of the run's certificate of `name`, as a Unix time."""
    pem = Path(session_pki().local.certificate_file(name)).read_bytes()
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def _parent(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])


async def test_open_holds_are_counted_over_every_tenant(metered):
    channel = session_pki().channel(metered.suite.addresses["ledger"])
    try:
        await _hold_and_release(metered, ledger_pb2_grpc.LedgerServiceStub(channel))
    finally:
        await channel.close()


async def _hold_and_release(metered: Metered, ledger) -> None:
    tenants = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    before = (await metered.router()).value("tiergen_ledger_holds_open")

    holds = []
    for tenant in tenants:
        await ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(account_id="a", idempotency_key="open", tenant=tenant)
        )
        reply = await ledger.Reserve(
            ledger_pb2.ReserveRequest(account_id="a", amount=5, idempotency_key="r", tenant=tenant)
        )
        holds.append((tenant, reply.hold.hold_id))
    held = (await metered.router()).value("tiergen_ledger_holds_open")
    tenant, hold_id = holds[0]
    await ledger.Release(
        ledger_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key="release", tenant=tenant)
    )
    after = (await metered.router()).value("tiergen_ledger_holds_open")

    assert (held - before, after - before) == (2, 1)
