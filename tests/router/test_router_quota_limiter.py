"""The quota limiter at the router's domain: what each refusal says, which level refuses, what a
refused call gives back, and how the calls a router admitted but has not recorded yet count
against concurrent jobs. Clocks are set by hand and stores gated by events: counted, not timed.

The first half runs the limiter over an in-memory store; the second runs the `Orchestrator`
over the real job store (SQLite) and quota store, with in-memory ledger and renderer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
from prometheus_client import REGISTRY

from services.router.downstream.ports import Reservation
from services.router.jobs.model import JobStatus, Owner
from services.router.jobs.sql_store import SqlJobStore
from services.router.operations.events import BatchAccepted
from services.router.operations.orchestrator import Orchestrator
from services.router.quotas.limiter import QuotaLimiter, reload_on_change
from services.router.quotas.rates import Draw
from services.router.quotas.store import QuotaAsk, SqlQuotaStore, Verdict, judge
from services.router.quotas.table import QuotaTable
from services.router.routing.catalogue import ImageSize
from services.router.routing.policy import RouteRequest
from services.router.routing.toml_source import TomlSource
from services.runtime.errors import FailedPrecondition, ResourceExhausted
from tests.router.fakes import (
    MemoryAssetStore,
    MemoryLedger,
    PictureRenderer,
    PictureUpscaler,
    default_policy,
    finished,
)

ALICE = Owner("acme", "alice")
BOB = Owner("acme", "bob")
CAROL = Owner("acme", "carol")
DAN_AT_GLOBEX = Owner("globex", "dan")


def table(text: str) -> QuotaTable:
    return QuotaTable.parse(TomlSource(text, "quotas.toml"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class MemoryQuotaStore:
    """The store's contract in a dict, judged by the same rule; `unfinished` jobs per owner."""

    def __init__(self) -> None:
        self.tats: dict[str, int] = {}
        self.unfinished: dict[Owner, int] = {}
        self.takes = 0
        self.given_back: list[str] = []

    async def take(self, ask: QuotaAsk, now_us: int) -> Verdict:
        self.takes += 1
        bases = {d.subject: max(self.tats.get(d.subject, 0), now_us) for d in ask.draws}
        counts = (0, 0)
        if ask.jobs is not None:
            tenant = sum(n for o, n in self.unfinished.items() if o.tenant == ask.owner.tenant)
            counts = (tenant, self.unfinished.get(ask.owner, 0))
        admitted = judge(ask, bases, now_us, counts)
        if admitted:
            for draw in ask.draws:
                self.tats[draw.subject] = bases[draw.subject] + draw.increment_us
        return Verdict(admitted, bases, *counts)

    async def give_back(self, draws: Sequence[Draw]) -> None:
        for draw in draws:
            self.given_back.append(draw.subject)
            self.tats[draw.subject] -= draw.increment_us

    async def sweep(self, before_us: int) -> int:
        return 0


def limiter_of(text: str) -> tuple[QuotaLimiter, MemoryQuotaStore, Clock]:
    store, clock = MemoryQuotaStore(), Clock()
    return QuotaLimiter(table(text), store, clock=clock), store, clock


async def admits(limiter: QuotaLimiter, owner: Owner, images: int = 1) -> bool:
    try:
        async with limiter.admit(owner, images):
            return True
    except ResourceExhausted as refusal:
        assert refusal.reason == "QUOTA_EXCEEDED"
        return False


def refusals(tenant: str, level: str, quota: str) -> float:
    labels = {"tenant": tenant, "level": level, "quota": quota}
    return REGISTRY.get_sample_value("tiergen_router_quota_refusals_total", labels) or 0.0


async def test_without_quotas_nothing_is_asked() -> None:
    limiter = QuotaLimiter()
    await limiter.admit_quote(ALICE)
    async with limiter.admit(ALICE, 64):
        pass
    limited, store, _ = limiter_of("[tenants.globex.account]\nrequests_per_second = 1\n")
    async with limited.admit(ALICE, 8):
        pass
    assert store.takes == 0, "a tenant without quotas costs no store call"


async def test_a_refusal_names_the_quota_and_when_a_retry_fits() -> None:
    limiter, _, clock = limiter_of("[defaults.account]\nrequests_per_second = 2\n")
    before = refusals("acme", "account", "requests_per_second")
    await limiter.admit_quote(ALICE)
    clock.now += 0.1
    await limiter.admit_quote(ALICE)
    with pytest.raises(ResourceExhausted) as caught:
        await limiter.admit_quote(ALICE)
    refusal = caught.value
    assert refusal.reason == "QUOTA_EXCEEDED"
    ((subject, description),) = [(v.subject, v.description) for v in refusal.violations]
    assert subject == "account:acme/alice:requests_per_second"
    assert (
        description == "account acme/alice may make 2 requests per second; the next fits in 0.4 s"
    )
    # Two at once from idle, then one every 0.5 s: the next at 0.5 s, 0.4 s from now.
    assert refusal.retry_after == 0.4
    assert refusal.metadata == {
        "subject": subject,
        "quota": "requests_per_second",
        "level": "account",
        "limit": "2",
    }
    assert "nothing was held, charged or recorded" in refusal.message
    assert refusals("acme", "account", "requests_per_second") == before + 1
    clock.now += 0.4
    await limiter.admit_quote(ALICE)


async def test_accounts_share_their_tenants_quota() -> None:
    limiter, _, _ = limiter_of(
        "[defaults.tenant]\nimages_per_minute = 3\n[defaults.account]\nimages_per_minute = 2\n"
    )
    assert await admits(limiter, ALICE, 2)
    with pytest.raises(ResourceExhausted) as by_account:
        async with limiter.admit(ALICE, 1):
            pass
    assert [v.subject for v in by_account.value.violations] == [
        "account:acme/alice:images_per_minute"
    ]
    assert by_account.value.retry_after == 30.0
    assert await admits(limiter, BOB)
    with pytest.raises(ResourceExhausted) as by_tenant:
        async with limiter.admit(CAROL, 1):
            pass
    assert [v.subject for v in by_tenant.value.violations] == ["tenant:acme:images_per_minute"]
    assert by_tenant.value.violations[0].description == (
        "tenant acme may start 3 images per minute; this call's 1 fit in 20 s"
    )
    # Another tenant has quotas of its own.
    assert await admits(limiter, DAN_AT_GLOBEX, 2)


async def test_an_override_lifts_a_default_for_its_tenant_only() -> None:
    limiter, _, _ = limiter_of(
        "[defaults.account]\nimages_per_minute = 1\n"
        '[tenants.globex.account]\nimages_per_minute = "unlimited"\n'
    )
    assert [await admits(limiter, ALICE) for _ in range(3)] == [True, False, False]
    assert all([await admits(limiter, DAN_AT_GLOBEX, 64) for _ in range(3)])


async def test_a_named_accounts_override_is_its_own() -> None:
    limiter, _, _ = limiter_of(
        "[defaults.tenant]\nimages_per_minute = 10\n"
        "[defaults.account]\nimages_per_minute = 1\n"
        "[tenants.acme.accounts.bob]\nimages_per_minute = 4\n"
    )
    assert [await admits(limiter, BOB) for _ in range(5)] == [True] * 4 + [False]
    assert [await admits(limiter, ALICE) for _ in range(2)] == [True, False]
    # The tenant's quota still binds the named account: 5 of acme's 10 are drawn.
    assert await admits(limiter, CAROL)
    assert await admits(limiter, DAN_AT_GLOBEX)


async def test_a_call_wider_than_the_quota_waits_for_it_to_be_unused() -> None:
    limiter, _, clock = limiter_of("[defaults.account]\nimages_per_minute = 60\n")
    assert await admits(limiter, ALICE, 1)
    with pytest.raises(ResourceExhausted) as caught:
        async with limiter.admit(ALICE, 64):
            pass
    assert caught.value.retry_after == 1.0
    assert "this call's 64 are more than that and start once the quota is unused" in (
        caught.value.violations[0].description
    )
    clock.now += 1
    assert await admits(limiter, ALICE, 64)


async def test_a_quote_counts_as_a_request_and_draws_no_images() -> None:
    limiter, store, _ = limiter_of(
        "[defaults.account]\nrequests_per_second = 3\nimages_per_minute = 1\nconcurrent_jobs = 1\n"
    )
    store.unfinished[ALICE] = 5
    for _ in range(3):
        await limiter.admit_quote(ALICE)
    with pytest.raises(ResourceExhausted) as caught:
        await limiter.admit_quote(ALICE)
    assert [v.subject for v in caught.value.violations] == [
        "account:acme/alice:requests_per_second"
    ]
    assert "account:acme/alice:images_per_minute" not in store.tats


async def test_a_refusal_before_the_batch_is_recorded_gives_the_images_back() -> None:
    limiter, store, _ = limiter_of(
        "[defaults.account]\nrequests_per_second = 10\nimages_per_minute = 4\n"
    )
    with pytest.raises(FailedPrecondition):
        async with limiter.admit(ALICE, 4):
            raise FailedPrecondition("insufficient credits", reason="INSUFFICIENT_CREDITS")
    assert store.given_back == ["account:acme/alice:images_per_minute"]
    assert await admits(limiter, ALICE, 4), "the images came back; the request still counted"
    assert not await admits(limiter, ALICE, 1)


async def test_images_of_a_recorded_batch_or_a_caller_gone_stay_drawn() -> None:
    limiter, store, _ = limiter_of("[defaults.account]\nimages_per_minute = 4\n")

    async def events() -> AsyncIterator[str]:
        yield "batch"
        raise FailedPrecondition("the job failed", reason="JOB_FAILED")

    with pytest.raises(FailedPrecondition):
        async with limiter.admit(ALICE, 4) as admitted:
            async for _ in admitted.follow(events()):  # type: ignore[arg-type]
                pass
    assert store.given_back == []
    assert not await admits(limiter, ALICE, 1)

    with pytest.raises(asyncio.CancelledError):
        async with limiter.admit(BOB, 4):
            raise asyncio.CancelledError
    assert store.given_back == []


async def test_calls_admitted_and_not_yet_recorded_count_as_jobs() -> None:
    limiter, store, _ = limiter_of("[defaults.account]\nconcurrent_jobs = 3\n")
    store.unfinished[ALICE] = 1
    async with contextlib.AsyncExitStack() as calls:
        await calls.enter_async_context(limiter.admit(ALICE, 2))
        with pytest.raises(ResourceExhausted) as caught:
            async with limiter.admit(ALICE, 1):
                pass
        (violation,) = caught.value.violations
        assert violation.subject == "account:acme/alice:concurrent_jobs"
        assert violation.description == (
            "account acme/alice may have 3 jobs unfinished at once; 3 are, and this call adds 1"
        )
        assert caught.value.retry_after == 1.0
        assert await admits(limiter, BOB, 3), "another account's place is its own"
    # The first call ended (recorded, then finished, or refused): its place is free.
    assert await admits(limiter, ALICE, 2)


async def until(check: Callable[[], bool], *, give_up: float = 10.0) -> None:
    """Waits, polling, for `check` to hold; fails if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    while not check():
        assert loop.time() < deadline, "gave up waiting"
        await asyncio.sleep(0.01)


async def test_a_reload_swaps_the_table_and_a_bad_file_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text("[defaults.account]\nrequests_per_second = 1\n")
    limiter, _, _ = limiter_of(path.read_text())
    first = limiter.table
    with structlog.testing.capture_logs() as logs:
        watcher = asyncio.create_task(reload_on_change(limiter, path, 0.01))
        try:
            path.write_text("[defaults.account]\nrequests_per_second = -1\n")
            await until(lambda: any(log["log_level"] == "error" for log in logs))
            (failed,) = [log for log in logs if log["log_level"] == "error"]
            assert failed["event"] == "quota reload failed; the previous quotas stay"
            assert failed["error"].startswith(f"TIERGEN_ROUTER_QUOTAS_FILE={path}:2:")
            assert limiter.table is first
            path.write_text("[defaults.account]\nrequests_per_second = 7\n")
            await until(lambda: limiter.table is not first)
            assert limiter.table.of("acme").account.requests_per_second == 7
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


# The orchestrator over the real job and quota stores ------------------------------------


@dataclass
class GatedLedger(MemoryLedger):
    """A ledger whose holds wait for `gate` while it is set: a call admitted, not recorded."""

    gate: asyncio.Event | None = None
    reserving: asyncio.Event = field(default_factory=asyncio.Event)

    async def reserve(
        self, owner: Owner, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> Reservation:
        if self.gate is not None:
            self.reserving.set()
            await self.gate.wait()
        return await super().reserve(owner, amount, idempotency_key, memo, ttl_seconds)


class Router:
    def __init__(self, jobs: SqlJobStore, quotas: str) -> None:
        self.jobs = jobs
        self.ledger = GatedLedger()
        self.renderer = PictureRenderer()
        self.orchestrator = Orchestrator(
            jobs=jobs,
            assets=MemoryAssetStore(),
            ledger=self.ledger,
            renderer=self.renderer,
            upscaler=PictureUpscaler(),
            policy=default_policy(),
            quotas=QuotaLimiter(table(quotas), SqlQuotaStore(jobs.database)),
        )

    def generate(self, owner: Owner, key: str, n: int = 1) -> AsyncIterator[object]:
        request = RouteRequest(prompt="a lighthouse", tier="nano", size=ImageSize.K1, n=n)
        return self.orchestrator.generate(owner, key, request)


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[SqlJobStore]:
    store = await SqlJobStore.open_sqlite(tmp_path / "router.db")
    try:
        yield store
    finally:
        await store.close()


async def refused(events: AsyncIterator[object]) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        await finished(events)  # type: ignore[arg-type]
    assert caught.value.reason == "QUOTA_EXCEEDED"
    return caught.value


async def test_running_jobs_count_and_the_refused_key_runs_once_they_end(
    jobs: SqlJobStore,
) -> None:
    router = Router(jobs, "[defaults.account]\nconcurrent_jobs = 2\n")
    alice = router.ledger.open("alice", tenant="acme")
    router.renderer.gate = asyncio.Event()
    running = router.generate(alice, "k1", n=2)
    accepted = await anext(running)
    assert isinstance(accepted, BatchAccepted)
    for _ in range(2):
        await router.renderer.entered.get()

    refusal = await refused(router.generate(alice, "k2"))
    assert [v.subject for v in refusal.violations] == ["account:acme/alice:concurrent_jobs"]
    assert router.ledger.balance(alice) == (400 - 4, 4), "the refused call held nothing"
    assert await jobs.find_batch(alice, "k2") is None, "nor recorded anything"

    router.renderer.gate.set()
    async for _ in running:
        pass
    _, (job,) = await finished(router.generate(alice, "k2"))  # type: ignore[arg-type]
    assert job.status is JobStatus.SUCCEEDED


async def test_a_call_not_yet_recorded_holds_its_place(jobs: SqlJobStore) -> None:
    """Without the router's own count, the second call would see no job in the table and run:
    two calls at once would have three jobs under a limit of two."""
    router = Router(jobs, "[defaults.account]\nconcurrent_jobs = 2\n")
    alice = router.ledger.open("alice", tenant="acme")
    router.ledger.gate = asyncio.Event()
    first = asyncio.create_task(finished(router.generate(alice, "k1", n=2)))  # type: ignore[arg-type]
    await router.ledger.reserving.wait()
    assert await jobs.find_batch(alice, "k1") is None
    # (Admitted, it would wait at the ledger's gate: the timeout fails it instead.)
    async with asyncio.timeout(10):
        refusal = await refused(router.generate(alice, "k2"))
    assert "2 are, and this call adds 1" in refusal.violations[0].description
    router.ledger.gate.set()
    _, finals = await first
    assert [job.status for job in finals] == [JobStatus.SUCCEEDED] * 2
    _, (job,) = await finished(router.generate(alice, "k2"))  # type: ignore[arg-type]
    assert job.status is JobStatus.SUCCEEDED


async def test_insufficient_credits_give_the_images_back(jobs: SqlJobStore) -> None:
    router = Router(jobs, "[defaults.account]\nimages_per_minute = 4\n")
    poor = router.ledger.open("poor", credits=3, tenant="acme")
    with pytest.raises(FailedPrecondition):
        await finished(router.generate(poor, "k1", n=4))  # type: ignore[arg-type]
    router.ledger.accounts[poor] = 400
    _, finals = await finished(router.generate(poor, "k1", n=4))  # type: ignore[arg-type]
    assert len(finals) == 4
    await refused(router.generate(poor, "k2"))


async def test_a_replay_is_not_counted(jobs: SqlJobStore) -> None:
    router = Router(jobs, "[defaults.account]\nrequests_per_second = 0.01\n")
    alice = router.ledger.open("alice", tenant="acme")
    record, _ = await finished(router.generate(alice, "k1"))  # type: ignore[arg-type]
    replay, _ = await finished(router.generate(alice, "k1"))  # type: ignore[arg-type]
    assert replay.replayed and replay.batch.batch_id == record.batch.batch_id
    refusal = await refused(router.generate(alice, "k2"))
    assert refusal.retry_after is not None and 99 < refusal.retry_after <= 100
