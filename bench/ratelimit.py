"""Benchmarks the quotas' exactness across router replicas: two router processes over one
PostgreSQL database, one tenant limited to N requests per second, offered 5N for 20 s across
both; how many calls per second the limiter lets through, against N.

Run from the repository root: `python -m bench.ratelimit --json` (or `tiergen bench ratelimit
--json`). One run starts, on loopback and with TLS as a deployment serves it (`bench.processes`):
a ledger (SQLite), a generator whose tiers are all on the zero-cost `instant` backend, an
upscaler, and two routers sharing a fresh schema of the PostgreSQL server at `--dsn` (migrated
as `tiergen migrate` would, dropped at the end) with a quota file giving tenant `bench`
`requests_per_second = N` (`--limit`, 20). The client sends Generates of one nano 1K image,
open-loop: one every 1/(5N) s whatever the answers, alternating between the routers, from 16
funded accounts, for the warm-up (`--warmup`, 2 s, which draws the quota's burst down), the
measured window (`--seconds`, 20) and one second more, so that the window is loaded from end
to end. It counts the calls answered within the window (a refusal or an accepted batch is
answered moments after the limiter decides, whatever queueing came before it) that the limiter
let through: every answer but RESOURCE_EXHAUSTED / QUOTA_EXCEEDED. A call let through that
then fails for another reason is counted and reported apart (`ratelimit_errors`); one that
timed out is counted as neither (`ratelimit_timed_out`).

A limiter kept per replica would let through about 2N; GCRA on the shared database lets
through N, give or take one call per window (docs/architecture.md). Target: accepted within 5%
of the limit. Every process is stopped at the end, also on failure, Ctrl-C or SIGTERM, and a
run is bounded in time (`--seconds` + `--warmup` + 3 minutes for starting and stopping).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from bench.processes import ProcessGroup, ServerProcess, report
from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.router.access.keys import KeyStore
from services.router.access.scopes import Scope
from services.router.jobs.migrations import SCHEMA
from services.runtime.credentials import BearerToken
from services.runtime.migrations import upgrade
from services.runtime.status import from_rpc_error

__all__ = ["main", "run", "summary"]

TENANT = "bench"
REPLICAS = 2
ACCOUNTS = 16
#: Offered load, as a multiple of the limit.
OFFERED_RATIO = 5
#: Accepted calls per second may differ from the limit by at most this share.
TARGET_TOLERANCE = 0.05
#: The issue's own: N requests per second, offered 5N for 20 s.
DEFAULT_LIMIT = 20.0
DEFAULT_SECONDS = 20.0
DEFAULT_WARMUP = 2.0
DEFAULT_DSN = os.environ.get(
    "TIERGEN_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
_SCOPES = (Scope.IMAGES_WRITE, Scope.ACCOUNTS_WRITE, Scope.CREDITS_GRANT)
_CALL_TIMEOUT = 10.0
#: Starting and stopping the processes, beyond the warm-up and the measurement.
_SETUP_SECONDS = 180.0
#: Load offered after the window, so that its last moments are as loaded as the rest.
_TAIL_SECONDS = 1.0
_SPEC = router_pb2.GenerationSpec(
    prompt="a lighthouse at dusk, rate limit benchmark",
    tier="nano",
    stage=common_pb2.STAGE_EXPLORE,
    resolution=common_pb2.Resolution(
        size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
    ),
    n=1,
)


@dataclass
class _Tally:
    """What the calls answered within the measured window came to."""

    sent: int = 0
    accepted: int = 0
    refused: int = 0
    accepted_by_replica: list[int] = field(default_factory=lambda: [0] * REPLICAS)
    #: Calls the limiter let through that then failed, by reason.
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Calls that timed out: whether the limiter let them through is not known.
    unknown: int = 0


@contextlib.contextmanager
def _schema(server_dsn: str) -> Iterator[str]:
    """A fresh schema on the PostgreSQL server, migrated; its DSN. Dropped on the way out."""
    name = f"bench_ratelimit_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
    try:
        separator = "&" if "?" in server_dsn else "?"
        dsn = f"{server_dsn}{separator}options=-csearch_path%3D{name}"
        upgrade(SCHEMA, dsn)
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _spawn_backends(processes: ProcessGroup) -> list[ServerProcess]:
    data = processes.run_dir
    tiers = data / "tiers.toml"
    text = DEFAULT_CATALOGUE_TOML.replace('backend = "builtin"', 'backend = "instant"')
    if 'backend = "instant"' not in text:
        raise RuntimeError("the default tier catalogue names no builtin backend to replace")
    tiers.write_text(text)
    return [
        processes.spawn(
            "ledger",
            "services.ledger",
            {
                **processes.tls_env("ledger"),
                "TIERGEN_LEDGER_DSN": f"sqlite:///{data / 'ledger.db'}",
            },
        ),
        processes.spawn(
            "generator",
            "services.generator",
            {
                **processes.tls_env("generator"),
                "TIERGEN_GENERATOR_TIERS_FILE": str(tiers),
                "TIERGEN_GENERATOR_WORKERS": "1",
            },
        ),
        processes.spawn(
            "upscaler",
            "services.upscaler",
            {**processes.tls_env("upscaler"), "TIERGEN_UPSCALER_WORKERS": "1"},
        ),
    ]


def _spawn_router(
    processes: ProcessGroup, index: int, dsn: str, quotas: Path, backends: list[ServerProcess]
) -> ServerProcess:
    ledger, generator, upscaler = (p.address for p in backends)
    return processes.spawn(
        f"router-{index}",
        "services.router",
        {
            **processes.tls_env("router"),
            "TIERGEN_ROUTER_DSN": dsn,
            "TIERGEN_ROUTER_DB_POOL_SIZE": "4",
            "TIERGEN_ROUTER_ASSETS_DIR": str(processes.run_dir / "assets"),
            "TIERGEN_ROUTER_QUOTAS_FILE": str(quotas),
            "LEDGER_ADDR": ledger,
            "GENERATOR_ADDR": generator,
            "UPSCALER_ADDR": upscaler,
        },
    )


async def _issue_key(dsn: str) -> BearerToken:
    store = await KeyStore.open(dsn, pool_size=1)
    try:
        issued = await store.create(TENANT, _SCOPES, name="bench ratelimit")
    finally:
        await store.close()
    return BearerToken(issued.secret)


def _account(index: int) -> str:
    return f"bench-ratelimit-{index}"


async def _fund(stub: router_pb2_grpc.RouterServiceStub, metadata: Any) -> None:
    for index in range(ACCOUNTS):
        account_id = _account(index)
        await stub.OpenAccount(
            router_pb2.OpenAccountRequest(account_id=account_id, idempotency_key="open"),
            timeout=_CALL_TIMEOUT,
            metadata=metadata,
        )
        await stub.Grant(
            router_pb2.GrantRequest(
                account_id=account_id,
                amount=10**9,
                kind=ledger_pb2.GRANT_KIND_PURCHASE,
                reason="benchmark",
                idempotency_key="fund",
            ),
            timeout=_CALL_TIMEOUT,
            metadata=metadata,
        )


async def _routing(stub: router_pb2_grpc.RouterServiceStub, metadata: Any) -> None:
    """Waits until a router knows the generator's tiers (a Quote, which counts one request)."""
    give_up = time.monotonic() + 60
    while True:
        try:
            await stub.Quote(
                router_pb2.QuoteRequest(account_id=_account(0), spec=_SPEC),
                timeout=_CALL_TIMEOUT,
                metadata=metadata,
            )
            return
        except grpc.aio.AioRpcError as error:
            if from_rpc_error(error).reason == "QUOTA_EXCEEDED":
                return
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class _Answer:
    """One Generate's fate: which replica, when it was sent and when its first answer came
    (the batch, or the refusal: moments after the limiter decided), and what it was:
    "accepted", "refused" (over the quota), or the reason it failed."""

    replica: int
    sent_at: float
    answered_at: float
    outcome: str


async def _call(
    stub: router_pb2_grpc.RouterServiceStub, metadata: Any, account: str, key: str, replica: int
) -> _Answer:
    loop = asyncio.get_running_loop()
    sent_at = loop.time()
    answered_at: float | None = None
    outcome = "accepted"
    request = router_pb2.GenerateRequest(account_id=account, idempotency_key=key, spec=_SPEC)
    try:
        async for _ in stub.Generate(request, timeout=_CALL_TIMEOUT, metadata=metadata):
            if answered_at is None:
                answered_at = loop.time()
    except grpc.aio.AioRpcError as error:
        reason = from_rpc_error(error).reason
        outcome = "refused" if reason == "QUOTA_EXCEEDED" else reason or error.code().name
    return _Answer(replica, sent_at, answered_at or loop.time(), outcome)


async def _offer(
    stubs: Sequence[router_pb2_grpc.RouterServiceStub],
    metadata: Any,
    rate: float,
    seconds: float,
) -> list[_Answer]:
    """Sends Generates open-loop at `rate` per second for `seconds`, alternating replicas;
    their answers."""
    loop = asyncio.get_running_loop()
    run_id = uuid.uuid4().hex[:8]
    calls: list[asyncio.Task[_Answer]] = []
    start = loop.time()
    index = 0
    while (due := start + index / rate) < start + seconds:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        replica = index % len(stubs)
        account = _account(index % ACCOUNTS)
        calls.append(
            asyncio.create_task(
                _call(stubs[replica], metadata, account, f"{run_id}-{index}", replica)
            )
        )
        index += 1
    return list(await asyncio.gather(*calls))


def _tally(answers: Sequence[_Answer], start: float, end: float) -> _Tally:
    """The calls answered within [start, end): the limiter decided them then, whatever the
    queueing before it. A call that timed out is counted as neither (its fate is unknown)."""
    tally = _Tally(sent=sum(start <= a.sent_at < end for a in answers))
    for answer in answers:
        if not start <= answer.answered_at < end:
            continue
        if answer.outcome == "refused":
            tally.refused += 1
            continue
        if answer.outcome == "DEADLINE_EXCEEDED":
            tally.unknown += 1
            continue
        tally.accepted += 1
        tally.accepted_by_replica[answer.replica] += 1
        if answer.outcome != "accepted":
            tally.errors[answer.outcome] += 1
    return tally


async def _run(
    processes: ProcessGroup, dsn: str, limit: float, seconds: float, warmup: float
) -> _Tally:
    quotas = processes.run_dir / "quotas.toml"
    quotas.write_text(f"[tenants.{TENANT}.tenant]\nrequests_per_second = {limit}\n")
    token = await _issue_key(dsn)
    metadata = (token.metadata,)
    backends = _spawn_backends(processes)
    await asyncio.gather(*(p.ready() for p in backends))
    routers = [_spawn_router(processes, i, dsn, quotas, backends) for i in range(REPLICAS)]
    await asyncio.gather(*(r.ready() for r in routers))
    async with contextlib.AsyncExitStack() as channels:
        stubs = []
        for router in routers:
            channel = processes.aio_channel(router.address)
            channels.push_async_callback(channel.close)
            stubs.append(router_pb2_grpc.RouterServiceStub(channel))  # type: ignore[no-untyped-call]
        await _fund(stubs[0], metadata)
        for stub in stubs:
            await _routing(stub, metadata)
        # Offered before, through and after the window, so that it is saturated throughout.
        began = asyncio.get_running_loop().time()
        answers = await _offer(
            stubs, metadata, OFFERED_RATIO * limit, warmup + seconds + _TAIL_SECONDS
        )
        return _tally(answers, began + warmup, began + warmup + seconds)


async def run(
    limit: float,
    seconds: float,
    warmup: float,
    dsn: str = DEFAULT_DSN,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Start the processes, offer the load, stop them; the figures."""
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM stops the benchmark as Ctrl-C does: through the `finally` that stops the servers.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with (
        tempfile.TemporaryDirectory(prefix="bench-ratelimit-", dir=data_dir) as run_dir,
        _schema(dsn) as schema_dsn,
    ):
        processes = ProcessGroup(
            Path(run_dir), {"TIERGEN_LOG_LEVEL": "warning", "OTEL_TRACES_EXPORTER": "none"}
        )
        try:
            async with asyncio.timeout(seconds + warmup + _SETUP_SECONDS):
                tally = await _run(processes, schema_dsn, limit, seconds, warmup)
        finally:
            await asyncio.to_thread(processes.stop)
    return _figures(tally, limit, seconds, warmup)


def _figures(tally: _Tally, limit: float, seconds: float, warmup: float) -> dict[str, Any]:
    accepted_per_s = tally.accepted / seconds
    ratio = accepted_per_s / limit
    return {
        "ratelimit_limit_per_s": limit,
        "ratelimit_offered_per_s": round(tally.sent / seconds, 2),
        "ratelimit_accepted_per_s": round(accepted_per_s, 2),
        "ratelimit_accepted_ratio": round(ratio, 4),
        "ratelimit_accepted_per_replica_per_s": [
            round(count / seconds, 2) for count in tally.accepted_by_replica
        ],
        "ratelimit_sent": tally.sent,
        "ratelimit_accepted": tally.accepted,
        "ratelimit_refused": tally.refused,
        "ratelimit_errors": dict(tally.errors),
        "ratelimit_timed_out": tally.unknown,
        "targets": {
            f"ratelimit_accepted_within_{TARGET_TOLERANCE:.0%}_of_limit": (
                abs(ratio - 1) <= TARGET_TOLERANCE
            ),
        },
        "method": {
            "replicas": REPLICAS,
            "offered_ratio": OFFERED_RATIO,
            "seconds": seconds,
            "warmup_seconds": warmup,
            "rpc": "Generate, one nano 1K image, instant backend",
            "accounts": ACCOUNTS,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }


def summary(figures: dict[str, Any]) -> str:
    """One line of the `ratelimit_*` figures."""
    return (
        f"limit {figures['ratelimit_limit_per_s']:g}/s, offered"
        f" {figures['ratelimit_offered_per_s']:g}/s over {REPLICAS} replicas: accepted"
        f" {figures['ratelimit_accepted_per_s']:g}/s (ratio {figures['ratelimit_accepted_ratio']};"
        f" per replica {figures['ratelimit_accepted_per_replica_per_s']}), errors"
        f" {figures['ratelimit_errors'] or 'none'}"
    )


def _table(figures: dict[str, Any]) -> str:
    lines = [summary(figures)]
    for name, met in figures["targets"].items():
        lines.append(f"{'met' if met else 'MISSED':<7} {name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--limit", type=float, default=DEFAULT_LIMIT, help="requests per second (N)"
    )
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="measured, after the warm-up"
    )
    parser.add_argument(
        "--warmup", type=float, default=DEFAULT_WARMUP, help="offered but not counted"
    )
    parser.add_argument(
        "--dsn", default=DEFAULT_DSN, help="the PostgreSQL server (a schema is made and dropped)"
    )
    parser.add_argument("--data-dir", type=Path, help="where the logs and SQLite files go")
    arguments = parser.parse_args(argv)
    if arguments.limit <= 0 or arguments.seconds <= 0 or arguments.warmup < 0:
        parser.error("--limit and --seconds must be positive, --warmup not negative")
    if arguments.data_dir is not None and not arguments.data_dir.is_dir():
        parser.error(f"--data-dir {arguments.data_dir} is not a directory")
    return report(
        run(
            arguments.limit,
            arguments.seconds,
            arguments.warmup,
            arguments.dsn,
            arguments.data_dir,
        ),
        arguments.json,
        _table,
    )


if __name__ == "__main__":
    sys.exit(main())
