"""`tiergen load`: drives a running router with concurrent clients and reports what it measured.

For platform engineers who want to see a deployment hold up before they trust it. Each client has
an account of its own (opened through the router, and funded through it when asked) and loops
over a mix of operations: Generate of a spec, Quote of it, Promote of one of its own earlier
images. The run stops by itself at a duration or a number of requests, whichever comes
first, and lets the requests in flight finish.

Every call carries the plan's API key. Funding goes through the router's Grant (the key needs
`credits:grant`), not the ledger: the credits must land in the accounts of the key's tenant,
which only the router knows.

With `tenants`, several tenants load the router at once, each with its own key, clients, pace
and spec (`services.cli.load_tenants` reads them from `--tenants`): one tenant's batches against
another's sketches reproduces the contention the fair share of the generator and upscaler is
for. Their accounts are opened first, then every tenant starts together; the report gives each
tenant's figures and their totals.

A call that fails UNAVAILABLE (its router went away before answering, or in the middle of a
stream) is sent again, with the same idempotency key, up to `retries` times: the router answers
a key it has seen with the batch that key made, so a retry never charges twice, and with
several routers (`--router a,b`, balanced round robin) it lands on one that is up. The report
counts the retries.

Pacing is closed-loop by default: each client sends its next request when the last one ends. With
a rate, requests are scheduled at fixed intervals across all clients and each latency counts from
its scheduled start, so that a stalled server shows up in the latencies instead of hiding behind
fewer requests sent.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import grpc
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.runtime.channels import open_channel
from services.runtime.credentials import BearerToken
from services.runtime.settings import ChannelSecurity

__all__ = [
    "OPERATIONS",
    "LoadError",
    "LoadPlan",
    "TenantLoad",
    "parse_mix",
    "run_load",
    "summary",
]

OPERATIONS = ("generate", "quote", "promote")
_ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
_PERCENTILES = (50, 90, 99)
#: The first retry's delay; each further one waits twice as long, up to `_RETRY_MAX_SECONDS`.
_RETRY_FIRST_SECONDS = 0.1
_RETRY_MAX_SECONDS = 2.0

_T = TypeVar("_T")


class LoadError(RuntimeError):
    """The load could not start, or its plan is not one it can run."""


@dataclass(frozen=True)
class TenantLoad:
    """One tenant of a multi-tenant load: its key, and what it does differently from the plan
    (None: the plan's own clients, rate, spec, mix or credits)."""

    name: str
    token: BearerToken
    clients: int | None = None
    #: Requests per second of this tenant's clients together; None: the plan's.
    rate: float | None = None
    spec: router_pb2.GenerationSpec | None = None
    mix: Mapping[str, int] | None = None
    credits: int | None = None


@dataclass(frozen=True)
class LoadPlan:
    """What to send, how hard, and for how long."""

    router: str
    spec: router_pb2.GenerationSpec
    #: Sent on every call; None only for a router with authentication off (TIERGEN_AUTH=off).
    token: BearerToken | None = None
    #: TLS trusting the system's store unless told otherwise (`--ca-file`, `--data-dir`).
    security: ChannelSecurity = field(default_factory=ChannelSecurity)
    clients: int = 8
    duration_seconds: float = 30.0
    max_requests: int = 1000
    #: Requests per second across all clients; None sends each client's next at once.
    rate: float | None = None
    #: Relative weights of the operations.
    mix: Mapping[str, int] = field(default_factory=lambda: {"generate": 1})
    promote_tier: str = "standard"
    timeout_seconds: float = 60.0
    #: Credits granted to each account through the router's Grant; 0 grants none.
    credits: int = 0
    account_prefix: str = "load"
    seed: int | None = None
    #: Times a call that failed UNAVAILABLE is sent again, with the same idempotency key.
    retries: int = 5
    #: Several tenants at once, each with its own key (the plan's `token` is then not used).
    tenants: tuple[TenantLoad, ...] = ()

    def check(self) -> None:
        """LoadError naming the first setting that cannot be run."""
        if self.clients < 1:
            raise LoadError("clients must be at least 1")
        if not self.duration_seconds > 0:
            raise LoadError("duration must be more than 0 seconds")
        if self.max_requests < 1:
            raise LoadError("requests must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise LoadError("rate must be more than 0 requests per second")
        if not self.timeout_seconds > 0:
            raise LoadError("timeout must be more than 0 seconds")
        unknown = sorted(set(self.mix) - set(OPERATIONS))
        if unknown:
            raise LoadError(f"unknown operation(s) in the mix: {', '.join(unknown)}")
        if any(weight < 0 for weight in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise LoadError("the mix needs weights of 0 or more, at least one above 0")
        if self.credits < 0:
            raise LoadError("credits must be 0 or more")
        if self.retries < 0:
            raise LoadError("retries must be 0 or more")
        names = [tenant.name for tenant in self.tenants]
        if len(set(names)) != len(names):
            raise LoadError(f"a tenant is named twice in {', '.join(names)}")
        for tenant in self.tenants:
            _for_tenant(self, tenant).check()


def parse_mix(text: str) -> dict[str, int]:
    """`generate=8,quote=1,promote=1` as weights; LoadError when it is not that."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, separator, weight = part.strip().partition("=")
        if not separator or not weight.strip().isdigit():
            raise LoadError(f"mix entries are operation=weight, not {part.strip()!r}")
        mix[name.strip()] = int(weight)
    return mix


@dataclass
class _Tally:
    """What one operation measured."""

    latencies_ms: list[float] = field(default_factory=list)
    first_event_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ok: int = 0
    #: Calls sent again after UNAVAILABLE (each counts once per retry).
    retried: int = 0

    @property
    def count(self) -> int:
        return self.ok + sum(self.errors.values())

    def report(self, seconds: float) -> dict[str, Any]:
        report: dict[str, Any] = {
            "count": self.count,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "retried": self.retried,
            "per_second": round(self.count / seconds, 2),
            "latency_ms": _distribution(self.latencies_ms),
        }
        if self.first_event_ms:
            report["first_event_ms"] = _distribution(self.first_event_ms)
        return report


def _distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    figures = {
        f"p{p}": round(ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)], 2)
        for p in _PERCENTILES
    }
    figures["mean"] = round(statistics.fmean(ordered), 2)
    figures["max"] = round(ordered[-1], 2)
    return figures


class _Schedule:
    """Hands out request slots until the run's end or its request budget, paced when asked."""

    def __init__(self, plan: LoadPlan, started: float) -> None:
        self._plan = plan
        self._started = started
        self._ends = started + plan.duration_seconds
        self._issued = 0
        self.behind = 0

    async def next(self) -> float | None:
        """The moment the next request is due (it may be now), or None once the run is over."""
        if self._issued >= self._plan.max_requests or time.monotonic() >= self._ends:
            return None
        if self._plan.rate is None:
            self._issued += 1
            return time.monotonic()
        due = self._started + self._issued / self._plan.rate
        if due >= self._ends:
            return None
        self._issued += 1
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.behind += 1
        return due


@dataclass
class _Client:
    account: str
    random: random.Random
    #: Jobs this client delivered, to promote.
    delivered: list[str] = field(default_factory=list)


async def run_load(
    plan: LoadPlan,
    say: Callable[[str], None] = lambda _line: None,
    start: asyncio.Barrier | None = None,
) -> dict[str, Any]:
    """Runs `plan` against its router; the report `tiergen load --json` prints.

    `start`, when given, is waited at once the accounts are ready: the tenants of one load
    start their clients together.
    """
    plan.check()
    if plan.tenants:
        return await _run_tenants(plan, say)
    run_id = uuid.uuid4().hex[:8]
    chooser = random.Random(plan.seed)
    router_channel = open_channel(
        plan.router,
        security=plan.security,
        services=[_ROUTER_SERVICE],
        default_timeout=plan.timeout_seconds,
        token=plan.token,
    )
    router = router_pb2_grpc.RouterServiceStub(router_channel)
    try:
        clients = [
            _Client(f"{plan.account_prefix}-{run_id}-{n}", random.Random(chooser.random()))
            for n in range(plan.clients)
        ]
        await _open_accounts(plan, router, clients)
        before = await _available(plan, router, clients)
        if start is not None:
            await start.wait()
        say(f"{plan.clients} client(s) on {plan.router}, accounts {plan.account_prefix}-{run_id}-*")
        tallies = {name: _Tally() for name in OPERATIONS if plan.mix.get(name, 0) > 0}
        started = time.monotonic()
        schedule = _Schedule(plan, started)
        await asyncio.gather(
            *(_client_loop(plan, router, client, schedule, tallies) for client in clients)
        )
        seconds = time.monotonic() - started
        after = await _available(plan, router, clients)
    finally:
        await router_channel.close()
    return _report(plan, run_id, seconds, tallies, schedule.behind, before - after)


async def _open_accounts(
    plan: LoadPlan, router: router_pb2_grpc.RouterServiceStub, clients: list[_Client]
) -> None:
    try:
        for client in clients:
            request = router_pb2.OpenAccountRequest(
                account_id=client.account, idempotency_key=f"open-{client.account}"
            )
            opening = partial(router.OpenAccount, request, timeout=min(plan.timeout_seconds, 30))
            await _retrying(plan, opening)
    except grpc.aio.AioRpcError as error:
        raise LoadError(
            f"cannot open the load's accounts on {plan.router}: {error.code().name}:"
            f" {error.details()}"
        ) from None
    if not plan.credits:
        return
    try:
        for client in clients:
            grant = router_pb2.GrantRequest(
                account_id=client.account,
                amount=plan.credits,
                kind=ledger_pb2.GRANT_KIND_ADJUSTMENT,
                reason="load test",
                idempotency_key=f"fund-{client.account}",
            )
            await _retrying(
                plan, partial(router.Grant, grant, timeout=min(plan.timeout_seconds, 30))
            )
    except grpc.aio.AioRpcError as error:
        raise LoadError(
            f"cannot fund the load's accounts on {plan.router}: {error.code().name}:"
            f" {error.details()}"
        ) from None


async def _available(
    plan: LoadPlan, router: router_pb2_grpc.RouterServiceStub, clients: list[_Client]
) -> int:
    total = 0
    for client in clients:
        request = router_pb2.GetBalanceRequest(account_id=client.account)
        reply = await _retrying(plan, partial(router.GetBalance, request, timeout=30))
        total += reply.balance.available + reply.balance.held
    return total


async def _retrying(
    plan: LoadPlan, attempt: Callable[[], Awaitable[_T]], tally: _Tally | None = None
) -> _T:
    """`attempt()`, made again after UNAVAILABLE up to `plan.retries` times, each retry
    counted in `tally`. Every call made this way repeats its request, idempotency key and all,
    so that a retry answers the first call instead of making a second."""
    for retry in range(plan.retries + 1):
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or retry == plan.retries:
                raise
        if tally is not None:
            tally.retried += 1
        await asyncio.sleep(min(_RETRY_FIRST_SECONDS * 2**retry, _RETRY_MAX_SECONDS))
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _client_loop(
    plan: LoadPlan,
    router: router_pb2_grpc.RouterServiceStub,
    client: _Client,
    schedule: _Schedule,
    tallies: dict[str, _Tally],
) -> None:
    names = list(tallies)
    weights = [plan.mix[name] for name in names]
    while (due := await schedule.next()) is not None:
        name = client.random.choices(names, weights)[0]
        if name == "promote" and not client.delivered:
            # Nothing of its own to promote yet: make something first.
            name = "generate" if "generate" in tallies else name
        operation = _OPERATIONS[name]
        tally = tallies[name]
        try:
            first_event = await operation(plan, router, client, tally)
        except grpc.aio.AioRpcError as error:
            tally.errors[error.code().name] += 1
        except _NothingToPromote:
            tally.errors["NOTHING_TO_PROMOTE"] += 1
        else:
            tally.ok += 1
            if first_event is not None:
                tally.first_event_ms.append((first_event - due) * 1000)
        tally.latencies_ms.append((time.monotonic() - due) * 1000)


class _NothingToPromote(Exception):
    """A promote was due but the client has delivered no image yet."""


async def _generate(
    plan: LoadPlan, router: router_pb2_grpc.RouterServiceStub, client: _Client, tally: _Tally
) -> float | None:
    request = router_pb2.GenerateRequest(
        account_id=client.account, idempotency_key=f"load-{uuid.uuid4().hex}", spec=plan.spec
    )
    first_event: list[float] = []

    async def attempt() -> None:
        async for event in router.Generate(request, timeout=plan.timeout_seconds):
            if not first_event:
                first_event.append(time.monotonic())
            # A retry's stream repeats the jobs the first one already reported.
            if (
                event.WhichOneof("event") == "job"
                and event.job.status == router_pb2.JOB_STATUS_SUCCEEDED
                and event.job.job_id not in client.delivered
            ):
                client.delivered.append(event.job.job_id)

    await _retrying(plan, attempt, tally)
    return first_event[0] if first_event else None


async def _quote(
    plan: LoadPlan, router: router_pb2_grpc.RouterServiceStub, client: _Client, tally: _Tally
) -> float | None:
    request = router_pb2.QuoteRequest(account_id=client.account, spec=plan.spec)
    await _retrying(plan, lambda: router.Quote(request, timeout=plan.timeout_seconds), tally)
    return None


async def _promote(
    plan: LoadPlan, router: router_pb2_grpc.RouterServiceStub, client: _Client, tally: _Tally
) -> float | None:
    if not client.delivered:
        raise _NothingToPromote
    request = router_pb2.PromoteRequest(
        account_id=client.account,
        idempotency_key=f"load-{uuid.uuid4().hex}",
        job_id=client.random.choice(client.delivered),
        tier=plan.promote_tier,
    )
    first_event: list[float] = []

    async def attempt() -> None:
        async for _event in router.Promote(request, timeout=plan.timeout_seconds):
            if not first_event:
                first_event.append(time.monotonic())

    await _retrying(plan, attempt, tally)
    return first_event[0] if first_event else None


_OPERATIONS: dict[
    str,
    Callable[
        [LoadPlan, router_pb2_grpc.RouterServiceStub, _Client, _Tally], Awaitable[float | None]
    ],
] = {"generate": _generate, "quote": _quote, "promote": _promote}


def _report(
    plan: LoadPlan,
    run_id: str,
    seconds: float,
    tallies: dict[str, _Tally],
    behind: int,
    credits_spent: int,
) -> dict[str, Any]:
    count = sum(tally.count for tally in tallies.values())
    errors = sum(sum(tally.errors.values()) for tally in tallies.values())
    retried = sum(tally.retried for tally in tallies.values())
    return {
        "router": plan.router,
        "run": run_id,
        "clients": plan.clients,
        "seconds": round(seconds, 3),
        "rate": plan.rate,
        "requests": count,
        "ok": count - errors,
        "errors": errors,
        "error_rate": round(errors / count, 4) if count else 0.0,
        "retried": retried,
        "per_second": round(count / seconds, 2),
        # Requests sent later than scheduled because every client was busy (paced runs).
        "behind_schedule": behind,
        "credits_spent": credits_spent,
        "operations": {name: tally.report(seconds) for name, tally in tallies.items()},
    }


def _for_tenant(plan: LoadPlan, tenant: TenantLoad) -> LoadPlan:
    """The plan one tenant of a multi-tenant load runs."""
    return replace(
        plan,
        tenants=(),
        token=tenant.token,
        clients=plan.clients if tenant.clients is None else tenant.clients,
        rate=plan.rate if tenant.rate is None else tenant.rate,
        spec=plan.spec if tenant.spec is None else tenant.spec,
        mix=plan.mix if tenant.mix is None else tenant.mix,
        credits=plan.credits if tenant.credits is None else tenant.credits,
        account_prefix=f"{plan.account_prefix}-{tenant.name}",
    )


async def _run_tenants(plan: LoadPlan, say: Callable[[str], None]) -> dict[str, Any]:
    """Every tenant's plan at once, started together; each one's report and the totals."""
    start = asyncio.Barrier(len(plan.tenants))

    def said_by(name: str) -> Callable[[str], None]:
        return lambda line: say(f"{name}: {line}")

    reports = await asyncio.gather(
        *(
            run_load(_for_tenant(plan, tenant), said_by(tenant.name), start)
            for tenant in plan.tenants
        )
    )
    by_tenant = {tenant.name: report for tenant, report in zip(plan.tenants, reports, strict=True)}
    count = sum(report["requests"] for report in reports)
    errors = sum(report["errors"] for report in reports)
    seconds = max(report["seconds"] for report in reports)
    return {
        "router": plan.router,
        "seconds": seconds,
        "clients": sum(report["clients"] for report in reports),
        "requests": count,
        "ok": count - errors,
        "errors": errors,
        "error_rate": round(errors / count, 4) if count else 0.0,
        "retried": sum(report["retried"] for report in reports),
        "per_second": round(count / seconds, 2) if seconds else 0.0,
        "behind_schedule": sum(report["behind_schedule"] for report in reports),
        "credits_spent": sum(report["credits_spent"] for report in reports),
        "tenants": by_tenant,
    }


def summary(report: Mapping[str, Any]) -> str:
    """The report as a few human lines."""
    if "tenants" in report:
        lines = [
            f"{len(report['tenants'])} tenants, {report['requests']} requests in"
            f" {report['seconds']} s: {report['ok']} ok, {report['errors']} failed"
        ]
        for name, tenant_report in report["tenants"].items():
            lines.append(f"tenant {name}:")
            lines.extend(f"  {line}" for line in summary(tenant_report).splitlines())
        return "\n".join(lines)
    lines = [
        f"{report['requests']} requests in {report['seconds']} s ({report['per_second']}/s) from"
        f" {report['clients']} client(s): {report['ok']} ok, {report['errors']} failed;"
        f" {report['credits_spent']} credits spent"
    ]
    for name, operation in report["operations"].items():
        latency = operation["latency_ms"] or {}
        line = (
            f"  {name:<9} {operation['count']:>6}  p50 {latency.get('p50', '-')} ms"
            f"  p90 {latency.get('p90', '-')} ms  p99 {latency.get('p99', '-')} ms"
            f"  max {latency.get('max', '-')} ms"
        )
        if operation["errors"]:
            line += "  errors " + ", ".join(f"{k}={v}" for k, v in operation["errors"].items())
        lines.append(line)
    if report.get("retried"):
        lines.append(f"  {report['retried']} call(s) sent again after UNAVAILABLE, same key")
    if report["behind_schedule"]:
        lines.append(f"  {report['behind_schedule']} request(s) left later than scheduled")
    return "\n".join(lines)
