"""The `tiergen` command: run the suite locally, run the demo, and call a running router."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import runpy
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2

from services.cli.backup import add_backup_command
from services.cli.credentials import (
    API_KEY_VARIABLE,
    DEV_KEY_FILE,
    DEV_TENANT,
    CredentialError,
    add_transport_arguments,
    resolve_api_key,
    resolve_security,
)
from services.cli.demo import DEFAULT_PROMPT, DemoFailed, run_demo
from services.cli.json_output import message_document
from services.cli.keys import KeyCommandError, add_keys_commands
from services.cli.ledger import add_ledger_commands, ledger_address
from services.cli.load import LoadError, LoadPlan, parse_mix, run_load
from services.cli.load import summary as load_summary
from services.cli.load_tenants import parse_tenants
from services.cli.migrate import add_migrate_command, migrate_local_postgres
from services.cli.progress import progress_view, ticking
from services.cli.router_client import RouterAddressError, RouterClient, new_key, router_target
from services.cli.suite import REPLICA_PORT_STEP, SERVICES, Suite, SuiteError
from services.cli.supervision import parse_replicas
from services.cli.unreachable import LEDGER, ROUTER, Dialled, connection_failure
from services.cli.webhooks import WebhookCommandError, add_webhooks_commands
from services.runtime.credentials import BearerToken
from services.runtime.errors import TiergenError
from services.runtime.logging import configure_logging
from services.runtime.metrics import build_labels
from services.runtime.settings import ChannelSecurity, ConfigError
from services.runtime.status import from_rpc_error
from services.runtime.tracing import configure_tracing

__all__ = ["main"]

SIZES = {
    "1K": common_pb2.IMAGE_SIZE_1K,
    "2K": common_pb2.IMAGE_SIZE_2K,
    "4K": common_pb2.IMAGE_SIZE_4K,
}


def _choices(enum: Any, prefix: str, separator: str = "_") -> dict[str, Any]:
    """Command-line names of a protobuf enum's values, for example "explore" for STAGE_EXPLORE."""
    return {
        name.removeprefix(prefix).lower().replace("_", separator): value
        for name, value in enum.items()
        if not name.endswith("_UNSPECIFIED")
    }


ASPECTS = _choices(common_pb2.AspectRatio, "ASPECT_RATIO_", ":")
STAGES = _choices(common_pb2.Stage, "STAGE_")
METHODS = _choices(common_pb2.UpscaleMethod, "UPSCALE_METHOD_")
FORMATS = _choices(common_pb2.ImageFormat, "IMAGE_FORMAT_")
FIDELITIES = _choices(router_pb2.Fidelity, "FIDELITY_")
STATUSES = _choices(router_pb2.JobStatus, "JOB_STATUS_")
BENCHMARKS = ("render", "upscale", "ledger", "router", "fairness", "ratelimit")
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class CommandError(RuntimeError):
    """A failure reported as one line on stderr with a non-zero exit."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _emit(options: argparse.Namespace, document: Any, human: str) -> None:
    if options.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print(human)


def _token(options: argparse.Namespace) -> BearerToken:
    """The key a client command sends: --api-key, TIERGEN_API_KEY, or --data-dir's dev key."""
    return resolve_api_key(options.api_key, options.data_dir)


def _security(options: argparse.Namespace) -> ChannelSecurity:
    """How a client command calls: --ca-file, --cert-file, --key-file, --insecure, their
    variables, or --data-dir's certificates."""
    return resolve_security(
        ca_file=options.ca_file,
        cert_file=options.cert_file,
        key_file=options.key_file,
        insecure=options.insecure,
        data_dir=options.data_dir,
    )


def _client(options: argparse.Namespace) -> RouterClient:
    return RouterClient(options.router, _token(options), _security(options))


def _message_dict(message: Any) -> dict[str, Any]:
    return message_document(message)


def _job_line(job: router_pb2.Job, path: Path | None = None) -> str:
    status = router_pb2.JobStatus.Name(job.status).removeprefix("JOB_STATUS_").lower()
    what = job.tier or f"upscale x{job.upscale_factor:g}"
    size = f"{job.width}x{job.height}"
    line = f"{job.job_id}  {status:<9} {what:<10} {size}  cost {job.cost}  seed {job.seed}"
    if job.parent_job_id:
        line += f"  parent {job.parent_job_id}"
    if job.HasField("drift"):
        line += f"  drift {job.drift:.3f}"
    if job.error.message:
        line += f"  error {job.error.code}: {job.error.message}"
    if path is not None:
        line += f"  -> {path}"
    return line


def _resolution(options: argparse.Namespace) -> common_pb2.Resolution:
    return common_pb2.Resolution(
        size=SIZES[options.size] if options.size else common_pb2.IMAGE_SIZE_UNSPECIFIED,
        aspect_ratio=ASPECTS[options.aspect]
        if options.aspect
        else common_pb2.ASPECT_RATIO_UNSPECIFIED,
    )


def _spec(options: argparse.Namespace) -> router_pb2.GenerationSpec:
    spec = router_pb2.GenerationSpec(
        prompt=options.prompt,
        tier=options.tier,
        stage=STAGES[options.stage] if options.stage else common_pb2.STAGE_UNSPECIFIED,
        resolution=_resolution(options),
        n=options.n,
        allow_downgrade=options.allow_downgrade,
        fidelity=FIDELITIES[options.fidelity]
        if options.fidelity
        else router_pb2.FIDELITY_UNSPECIFIED,
    )
    if options.seed is not None:
        spec.seed = options.seed
    return spec


async def _save(
    client: RouterClient, account: str, jobs: Sequence[router_pb2.Job], out: Path | None
) -> list[Path | None]:
    paths: list[Path | None] = []
    for job in jobs:
        if out is None or job.status != router_pb2.JOB_STATUS_SUCCEEDED:
            paths.append(None)
            continue
        path = out / f"{job.job_id}.{_EXTENSIONS.get(job.asset.info.media_type, 'bin')}"
        await client.download(account, job.asset.asset_id, path)
        paths.append(path)
    return paths


async def _report_jobs(
    client: RouterClient,
    options: argparse.Namespace,
    jobs: Sequence[router_pb2.Job],
    extra: dict[str, Any],
) -> None:
    paths = await _save(client, options.account, jobs, options.out)
    document = {
        **extra,
        "jobs": [
            {**_message_dict(job), "path": str(path) if path else None}
            for job, path in zip(jobs, paths, strict=True)
        ],
    }
    _emit(
        options,
        document,
        "\n".join(_job_line(job, path) for job, path in zip(jobs, paths, strict=True)),
    )
    if any(job.status != router_pb2.JOB_STATUS_SUCCEEDED for job in jobs):
        raise CommandError("some jobs did not succeed")


async def _generate(options: argparse.Namespace) -> None:
    async with _client(options) as client:
        async with ticking(progress_view(sys.stderr, quiet=options.quiet)) as view:
            batch, jobs = await client.generate(
                options.account, _spec(options), options.key or new_key("cli-generate"), view
            )
        await _report_jobs(
            client,
            options,
            jobs,
            {"batch_id": batch.batch_id, "decision": _message_dict(batch.decision)},
        )


async def _quote(options: argparse.Namespace) -> None:
    async with _client(options) as client:
        reply = await client.quote(options.account, _spec(options))
    d = reply.decision
    human = [
        f"{d.n} x {d.tier} {d.width}x{d.height}: {d.total_cost} credits ({d.unit_cost} each)",
        f"available {reply.available}"
        + ("" if reply.affordable else f", short by {reply.shortfall}"),
        *(f"  - {reason}" for reason in d.reasons),
    ]
    _emit(options, _message_dict(reply), "\n".join(human))


async def _promote(options: argparse.Namespace) -> None:
    request = router_pb2.PromoteRequest(
        account_id=options.account,
        idempotency_key=options.key or new_key("cli-promote"),
        job_id=options.job,
        tier=options.tier,
        resolution=_resolution(options),
        prompt=options.prompt or "",
        prompt_addition=options.prompt_addition or "",
    )
    if options.strength is not None:
        request.strength = options.strength
    if options.seed is not None:
        request.seed = options.seed
    async with _client(options) as client:
        async with ticking(progress_view(sys.stderr, quiet=options.quiet)) as view:
            job = await client.promote(request, view)
        await _report_jobs(client, options, [job], {})


async def _upscale(options: argparse.Namespace) -> None:
    request = router_pb2.UpscaleRequest(
        account_id=options.account,
        idempotency_key=options.key or new_key("cli-upscale"),
        job_id=options.job,
        factor=options.factor,
        method=METHODS[options.method],
        output_format=FORMATS[options.format],
        quality=options.quality,
    )
    async with _client(options) as client:
        async with ticking(progress_view(sys.stderr, quiet=options.quiet)) as view:
            job = await client.upscale(request, view)
        await _report_jobs(client, options, [job], {})


def _balance_line(balance: Any) -> str:
    return (
        f"{balance.account_id}: {balance.available} available, {balance.held} held, "
        f"promotional {balance.promotional_granted}/{balance.promotional_cap}"
    )


async def _balance(options: argparse.Namespace) -> None:
    async with _client(options) as client:
        balance = await client.balance(options.account)
    _emit(options, _message_dict(balance), _balance_line(balance))


async def _open(options: argparse.Namespace) -> None:
    async with _client(options) as client:
        reply = await client.open_account(options.account)
    _emit(
        options, _message_dict(reply), f"{_balance_line(reply.balance)} (granted {reply.granted})"
    )


async def _checkin(options: argparse.Namespace) -> None:
    async with _client(options) as client:
        reply = await client.check_in(options.account, options.key or new_key("cli-checkin"))
    already = reply.outcome == ledger_pb2.GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK
    note = " (already checked in this week)" if already else ""
    _emit(
        options,
        _message_dict(reply),
        f"{reply.iso_week}: +{reply.granted}{note}; {_balance_line(reply.balance)}",
    )


async def _jobs(options: argparse.Namespace) -> None:
    async with _client(options) as client:
        if options.job:
            job = await client.get_job(options.account, options.job)
            children = f"\n  children: {', '.join(job.child_job_ids)}" if job.child_job_ids else ""
            _emit(options, _message_dict(job), _job_line(job) + children)
            return
        request = router_pb2.ListJobsRequest(
            account_id=options.account,
            stage=STAGES[options.stage] if options.stage else common_pb2.STAGE_UNSPECIFIED,
            tier=options.tier or "",
            status=STATUSES[options.status]
            if options.status
            else router_pb2.JOB_STATUS_UNSPECIFIED,
            batch_id=options.batch or "",
            page_size=options.limit,
        )
        reply = await client.list_jobs(request)
    human = "\n".join(_job_line(job) for job in reply.jobs) or "no jobs"
    _emit(options, _message_dict(reply), human)


async def _cancel(options: argparse.Namespace) -> None:
    async with _client(options) as client:
        jobs = await client.cancel(options.account, options.job)
    _emit(
        options, {"jobs": [_message_dict(j) for j in jobs]}, "\n".join(_job_line(j) for j in jobs)
    )


def _demo(options: argparse.Namespace) -> None:
    sink = _say

    def run(router: str, token: BearerToken, security: ChannelSecurity) -> dict[str, Any]:
        return asyncio.run(
            run_demo(
                router,
                options.out,
                sink,
                token=token,
                security=security,
                prompt=options.prompt,
                account=options.account,
                pick=options.pick,
            )
        )

    if options.router or options.data_dir:
        # Pointed at a running suite: --router's, or the one `tiergen up --data-dir` started.
        router = options.router or os.environ.get("TIERGEN_ROUTER", "127.0.0.1:50051")
        document = run(router, _token(options), _security(options))
    else:
        _migrate_local()
        with tempfile.TemporaryDirectory(prefix="tiergen-demo-") as data_dir:
            sink(f"starting a fresh suite in {data_dir}")
            with Suite(Path(data_dir)) as suite:
                for name, address in suite.addresses.items():
                    sink(f"{name} {address}")
                document = run(suite.router, suite.api_key, suite.client_security)
    if options.json:
        print(json.dumps(document, indent=2))
        return
    for job in document["jobs"]:
        size = f"{job['width']}x{job['height']}"
        kind, tier = job["kind"], job["tier"] or "-"
        print(f"{kind:<9} {tier:<9} {size:<10} cost {job['cost']:<3} {job['path']}")
    for step in document["balances"]:
        print(f"balance after {step['step']:<13} {step['available']}")


def _migrate_local() -> None:
    """The local suite's PostgreSQL databases, if it is given any, brought up to date: its
    services refuse one that is not (SQLite files are upgraded by their stores)."""
    try:
        migrate_local_postgres(os.environ, _say)
    except (ConfigError, TiergenError) as error:
        raise CommandError(str(error)) from None


def _up(options: argparse.Namespace) -> None:
    stop = False

    def request_stop(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    try:
        replicas = parse_replicas(options.replicas, SERVICES) if options.replicas else {}
    except ValueError as error:
        raise CommandError(str(error)) from None
    if options.postgres is not None and not options.postgres.startswith(
        ("postgresql://", "postgres://")
    ):
        raise CommandError("--postgres takes a postgresql://user@host:port/database DSN")
    suite = Suite(
        options.data_dir.resolve(),
        host=options.host,
        port_base=options.port_base,
        metrics_port_base=options.metrics_port_base,
        replicas=replicas,
        postgres=options.postgres,
        assets_url=options.assets,
        bound_to_parent=True,
        say=_say,
    )
    suite.check()
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    if options.postgres is None:
        _migrate_local()
    try:
        addresses = suite.start()
        # Restarts are structured lines on stderr (JSON off a terminal), as the services' are.
        configure_logging("up")
        for name in ("router", "generator", "ledger", "upscaler"):
            print(f"{name} {addresses[name]}", flush=True)
        dev_key = suite.dev_key
        what = "made" if dev_key.created else "kept"
        _say(
            f"API key of tenant {DEV_TENANT} (every scope) {what} in {dev_key.path}; client"
            f" commands read it with --data-dir {options.data_dir}"
        )
        made = "made" if suite.certificates_made else "kept"
        _say(
            f"TLS on every port: CA and certificates {made} in {suite.pki.directory}; client"
            f" commands trust {suite.pki.ca_file.name} with --data-dir {options.data_dir}"
        )
        if options.metrics_port_base is not None:
            first = options.metrics_port_base
            _say(f"metrics at http://{options.host}:{first}..{first + 3}/metrics, in that order")
        if suite.s3_endpoint is not None:
            _say(
                f"assets in {options.assets} on a local S3-compatible server at {suite.s3_endpoint}"
            )
        _say(
            f"logs in {options.data_dir / 'logs'}; a service that exits is started again;"
            " Ctrl-C stops the suite"
        )
        while not stop:
            suite.supervise()
            time.sleep(0.1)
    finally:
        codes = suite.stop()
        _say("stopped: " + ", ".join(f"{name} exit {code}" for name, code in codes.items()))


async def _load(options: argparse.Namespace) -> None:
    if not 0 <= options.max_error_rate <= 1:
        raise CommandError("--max-error-rate is a share of the requests, from 0 to 1")
    try:
        plan = LoadPlan(
            router=router_target(options.router),
            spec=_spec(options),
            # With --tenants each tenant brings its own key.
            token=None if options.tenants else _token(options),
            tenants=parse_tenants(options.tenants, _spec(options)) if options.tenants else (),
            clients=options.clients,
            duration_seconds=options.duration,
            max_requests=options.requests,
            rate=options.rate,
            mix=parse_mix(options.mix),
            promote_tier=options.promote_tier,
            security=_security(options),
            timeout_seconds=options.timeout,
            credits=options.credits,
            account_prefix=options.account_prefix,
        )
        report = await run_load(plan, _say)
    except LoadError as error:
        raise CommandError(str(error)) from None
    _emit(options, report, load_summary(report))
    if report["error_rate"] > options.max_error_rate:
        raise CommandError(
            f"{report['errors']} of {report['requests']} requests failed, more than"
            f" --max-error-rate {options.max_error_rate:g}"
        )


def _serve(options: argparse.Namespace) -> None:
    runpy.run_module(f"services.{options.service}", run_name="__main__")


def _bench(options: argparse.Namespace) -> None:
    sys.argv = [f"tiergen bench {options.name}", *options.arguments]
    runpy.run_module(f"bench.{options.name}", run_name="__main__")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiergen", description="Tiered image generation: run the suite and call it."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=_version(),
        help="print the version, the commit (TIERGEN_COMMIT) and the Python and grpcio versions",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def credential_arguments(sub: argparse.ArgumentParser, data_dir_help: str) -> None:
        sub.add_argument(
            "--api-key",
            metavar="KEY",
            help=f"the API key every call carries (env {API_KEY_VARIABLE}, which, unlike an"
            " option, other users cannot see in the process list)",
        )
        sub.add_argument("--data-dir", type=Path, metavar="DIR", help=data_dir_help)
        add_transport_arguments(sub)

    key_from_data_dir = (
        f"a `tiergen up` data directory: with no --api-key nor {API_KEY_VARIABLE}, its"
        f" {DEV_KEY_FILE} is the key, and its tls/ca.crt the CA"
    )

    def client_command(
        name: str,
        help_text: str,
        handler: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--router",
            default=os.environ.get("TIERGEN_ROUTER", "127.0.0.1:50051"),
            help="router address (env TIERGEN_ROUTER)",
        )
        sub.add_argument(
            "--account",
            default=os.environ.get("TIERGEN_ACCOUNT"),
            required="TIERGEN_ACCOUNT" not in os.environ,
            help="account id (env TIERGEN_ACCOUNT)",
        )
        sub.add_argument("--json", action="store_true", help="print JSON on stdout")
        credential_arguments(sub, key_from_data_dir)
        sub.set_defaults(handler=lambda options: asyncio.run(handler(options)))
        return sub

    def spec_arguments(sub: argparse.ArgumentParser, prompt: str | None = None) -> None:
        sub.add_argument("--prompt", required=prompt is None, default=prompt)
        sub.add_argument("--tier", default="auto", help="nano, standard, pro, or auto (default)")
        sub.add_argument(
            "--stage", choices=sorted(STAGES), help="creative stage for automatic routing"
        )
        sub.add_argument("--size", choices=sorted(SIZES))
        sub.add_argument("--aspect", choices=sorted(ASPECTS))
        sub.add_argument("-n", type=int, default=1, help="variations, 1-64")
        sub.add_argument("--seed", type=int)
        sub.add_argument("--fidelity", choices=sorted(FIDELITIES))
        sub.add_argument("--allow-downgrade", action="store_true")

    def job_output(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--out", type=Path, help="directory to download the images into")
        sub.add_argument("--key", help="idempotency key (default: a fresh one)")
        sub.add_argument("--quiet", action="store_true", help="no progress on stderr")

    up = commands.add_parser("up", help="start the four services on loopback until Ctrl-C")
    up.add_argument("--data-dir", type=Path, default=Path("tiergen-data"))
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--port-base",
        type=int,
        default=50051,
        help="router port; the others follow (0: any free ports)",
    )
    up.add_argument(
        "--metrics-port-base",
        type=int,
        help="serve Prometheus metrics: the router's port; the others follow (default: none)",
    )
    up.add_argument(
        "--replicas",
        metavar="SERVICE=N,...",
        help="run N processes of a service, e.g. router=2,ledger=2, each on its own port (the"
        f" first's + {REPLICA_PORT_STEP} per replica), balanced round robin by their callers;"
        " the ledger's and router's need --postgres",
    )
    up.add_argument(
        "--postgres",
        metavar="DSN",
        help="one PostgreSQL database for the ledger and the router, migrated before they start"
        " (default: SQLite files in the data directory, or TIERGEN_LEDGER_DSN/TIERGEN_ROUTER_DSN)",
    )
    up.add_argument(
        "--assets",
        metavar="s3://BUCKET/PREFIX",
        help="keep assets in this S3 bucket: at TIERGEN_ROUTER_S3_ENDPOINT_URL when set, else on"
        " a local S3-compatible server (moto's) that lasts as long as the suite",
    )
    up.set_defaults(handler=_up)

    demo = commands.add_parser(
        "demo", help="run explore -> promote -> upscale -> check-in end to end"
    )
    demo.add_argument("--out", type=Path, required=True, help="directory for the images")
    demo.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    demo.add_argument("--router", help="use this running router instead of starting a fresh suite")
    credential_arguments(
        demo,
        "use the running suite of this `tiergen up` data directory (its router at --router,"
        f" else $TIERGEN_ROUTER or 127.0.0.1:50051), with its {DEV_KEY_FILE} unless a key is"
        " given",
    )
    demo.add_argument("--prompt", default=DEFAULT_PROMPT)
    demo.add_argument("--account")
    demo.add_argument(
        "--pick", type=int, default=0, help="which explored variation to promote (from 0)"
    )
    demo.set_defaults(handler=_demo)

    generate = client_command("generate", "generate images", _generate)
    spec_arguments(generate)
    job_output(generate)

    quote = client_command("quote", "price a generation without charging", _quote)
    spec_arguments(quote)

    promote = client_command("promote", "hand a job over to a higher tier", _promote)
    promote.add_argument("--job", required=True)
    promote.add_argument("--tier", required=True)
    promote.add_argument("--size", choices=sorted(SIZES))
    promote.add_argument("--aspect", choices=sorted(ASPECTS))
    promote.add_argument("--prompt", help="replace the parent's prompt")
    promote.add_argument("--prompt-addition", help="append to the prompt")
    promote.add_argument("--strength", type=float)
    promote.add_argument("--seed", type=int)
    job_output(promote)

    upscale = client_command("upscale", "upscale a job's image", _upscale)
    upscale.add_argument("--job", required=True)
    upscale.add_argument("--factor", type=float, default=2.0)
    upscale.add_argument("--method", choices=sorted(METHODS), default="lanczos")
    upscale.add_argument("--format", choices=sorted(FORMATS), default="png")
    upscale.add_argument("--quality", type=int, default=0)
    job_output(upscale)

    client_command("open", "open an account (sign-up bonus once)", _open)
    client_command("balance", "show an account's balance", _balance)
    checkin = client_command("checkin", "weekly check-in", _checkin)
    checkin.add_argument("--key")

    jobs = client_command("jobs", "list jobs, or show one with --job", _jobs)
    jobs.add_argument("--job")
    jobs.add_argument("--stage", choices=sorted(STAGES))
    jobs.add_argument("--tier")
    jobs.add_argument("--status", choices=sorted(STATUSES))
    jobs.add_argument("--batch")
    jobs.add_argument("--limit", type=int, default=50)

    cancel = client_command("cancel", "cancel a job", _cancel)
    cancel.add_argument("--job", required=True)

    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(handler=_serve)

    load = commands.add_parser(
        "load",
        help="load-test a running router and report throughput, latencies and errors",
        description="Load-test a running router: concurrent clients, each on an account of its"
        " own, loop over a mix of operations until the duration or the request count is"
        " reached; the report gives throughput, latency percentiles and errors by gRPC code.",
    )
    load.add_argument(
        "--router",
        default=os.environ.get("TIERGEN_ROUTER", "127.0.0.1:50051"),
        help="router address (env TIERGEN_ROUTER)",
    )
    load.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    load.add_argument("--duration", type=float, default=30.0, help="seconds at most (default 30)")
    load.add_argument("--requests", type=int, default=1000, help="requests at most (default 1000)")
    load.add_argument(
        "--rate", type=float, help="requests per second across all clients (default: flat out)"
    )
    load.add_argument(
        "--mix",
        default="generate=1",
        help="operations and their weights, e.g. generate=8,quote=1,promote=1",
    )
    load.add_argument("--promote-tier", default="standard", help="tier promotes go to")
    load.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    load.add_argument(
        "--credits",
        type=int,
        default=0,
        help="credits granted to each account, through the router (the key needs credits:grant)",
    )
    load.add_argument("--account-prefix", default="load", help="prefix of the accounts' ids")
    load.add_argument(
        "--tenants",
        metavar="TENANTS",
        help="load as several tenants at once, each with its own key: a TOML file of"
        " [tenants.NAME] tables (key_file or key_env, clients, rate, tier, stage, size, n, ...)"
        " or NAME=@KEY_FILE[:CLIENTS],NAME=env:VARIABLE[:CLIENTS]; see README",
    )
    load.add_argument(
        "--max-error-rate",
        type=float,
        default=1.0,
        help="exit 1 when more than this share of requests failed (default 1: never)",
    )
    load.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    credential_arguments(load, key_from_data_dir)
    spec_arguments(load, prompt="a lighthouse at dusk, load test")
    load.set_defaults(stage="explore", handler=lambda options: asyncio.run(_load(options)))

    add_keys_commands(commands)
    add_webhooks_commands(commands)
    add_ledger_commands(commands)
    add_migrate_command(commands)
    add_backup_command(commands)

    bench = commands.add_parser("bench", help="run a benchmark and print its figures")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("arguments", nargs=argparse.REMAINDER, help="passed on, e.g. --json")
    bench.set_defaults(handler=_bench)
    return parser


def _version() -> str:
    """`tiergen --version`: the package's version, the commit when known, Python and grpcio."""
    labels = build_labels("cli")
    commit = "" if labels["commit"] == "unknown" else f" (commit {labels['commit']})"
    return (
        f"tiergen {labels['version']}{commit} python {labels['python']} grpcio {labels['grpcio']}"
    )


def _dialled(options: argparse.Namespace) -> tuple[Dialled, str]:
    """The service a client command dialled, and its address as it dialled it."""
    if options.command == "ledger":
        try:
            return LEDGER, ledger_address(options)
        except CredentialError:
            return LEDGER, str(options.data_dir)
    given = getattr(options, "router", None) or os.environ.get("TIERGEN_ROUTER", "")
    try:
        return ROUTER, router_target(given)
    except RouterAddressError:
        return ROUTER, given


def _describe(error: grpc.aio.AioRpcError) -> str:
    domain = from_rpc_error(error)
    facts = " ".join(f"{k}={v}" for k, v in sorted(domain.metadata.items()))
    fields = "; ".join(
        f"{v.field}: {v.description}"
        for v in getattr(domain, "violations", [])
        if hasattr(v, "field")
    )
    parts = [f"{error.code().name}: {error.details()}"]
    if domain.reason and domain.reason != error.code().name:
        parts.append(f"[{domain.reason}{' ' + facts if facts else ''}]")
    if fields and fields not in (error.details() or ""):
        parts.append(f"({fields})")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    # Client commands trace too: their spans are the roots of the suite's traces.
    untraced = ("up", "serve", "bench", "migrate")
    provider = configure_tracing("cli") if options.command not in untraced else None
    try:
        options.handler(options)
    except grpc.aio.AioRpcError as error:
        insecure = bool(getattr(options, "insecure", False)) or os.environ.get(
            "TIERGEN_INSECURE", ""
        ).strip().lower() in ("1", "true", "yes", "on")
        dialled, address = _dialled(options)
        unreachable = connection_failure(error, address, insecure=insecure, dialled=dialled)
        _say(f"tiergen: {unreachable or _describe(error)}")
        return 1
    except (
        CommandError,
        RouterAddressError,
        ConfigError,
        CredentialError,
        KeyCommandError,
        WebhookCommandError,
        SuiteError,
        DemoFailed,
    ) as error:
        _say(f"tiergen: {error}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if provider is not None:
            provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
