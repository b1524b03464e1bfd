"""`tiergen demo`: the pipeline the platform exists for, end to end against one router.

Open an account, explore 8 `nano` variations, pick one, promote it to `standard` at 2K with
the picked image as the reference, upscale that 2x, check in, and record the balance after
every step. Every image is written to the output directory.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from opentelemetry import trace
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.cli.router_client import EventSink, RouterClient, new_key
from services.runtime.credentials import BearerToken
from services.runtime.settings import ChannelSecurity

__all__ = ["DEFAULT_PROMPT", "DemoFailed", "run_demo"]

DEFAULT_PROMPT = (
    'a lighthouse on a rocky coast at sunset, storm clouds, "TIERGEN" on the hull of a boat'
)

_tracer = trace.get_tracer("tiergen.cli")

_KINDS = {
    router_pb2.JOB_KIND_GENERATE: "generate",
    router_pb2.JOB_KIND_PROMOTE: "promote",
    router_pb2.JOB_KIND_UPSCALE: "upscale",
}


class DemoFailed(RuntimeError):
    """A step of the pipeline did not deliver."""


def _require(job: router_pb2.Job, step: str) -> router_pb2.Job:
    if job.status != router_pb2.JOB_STATUS_SUCCEEDED:
        raise DemoFailed(
            f"{step}: job {job.job_id} {router_pb2.JobStatus.Name(job.status)}: {job.error.message}"
        )
    return job


async def run_demo(
    router: str,
    out: Path,
    sink: EventSink,
    *,
    token: BearerToken,
    security: ChannelSecurity,
    prompt: str = DEFAULT_PROMPT,
    account: str | None = None,
    pick: int = 0,
    variations: int = 8,
) -> dict[str, Any]:
    """Runs the pipeline, every call sent with `token`, and returns the document
    `tiergen demo --json` prints.

    The whole pipeline is one trace: every call to the router, and every call the router
    makes to the ledger, generator and upscaler, descends from the `tiergen.demo` span.
    """
    account = account or f"demo-{uuid.uuid4().hex[:12]}"
    with _tracer.start_as_current_span("tiergen.demo", attributes={"tiergen.account_id": account}):
        async with RouterClient(router, token, security) as client:
            return await _pipeline(client, out, sink, prompt, account, pick, variations)


async def _pipeline(
    client: RouterClient,
    out: Path,
    sink: EventSink,
    prompt: str,
    account: str,
    pick: int,
    variations: int,
) -> dict[str, Any]:
    jobs: list[tuple[router_pb2.Job, str, Path]] = []
    balances: list[dict[str, Any]] = []

    async def record(step: str) -> None:
        balance = await client.balance(account)
        balances.append(
            {
                "step": step,
                "available": balance.available,
                "held": balance.held,
                "total": balance.total,
            }
        )
        sink(f"balance after {step}: {balance.available} available, {balance.held} held")

    async def keep(job: router_pb2.Job, name: str) -> None:
        path = out / f"{name}.png"
        sha256 = await client.download(account, job.asset.asset_id, path)
        jobs.append((job, sha256, path))
        sink(f"{name}: {job.width}x{job.height} -> {path}")

    sink(f"opening account {account}")
    await client.open_account(account)
    await record("open_account")

    sink(f"exploring {variations} nano variations of: {prompt}")
    spec = router_pb2.GenerationSpec(
        prompt=prompt,
        tier="nano",
        stage=common_pb2.STAGE_EXPLORE,
        n=variations,
        resolution=common_pb2.Resolution(
            size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
        ),
    )
    _, explored = await client.generate(account, spec, new_key("demo-explore"), sink)
    for index, job in enumerate(explored):
        await keep(_require(job, "explore"), f"explore-{index + 1}")
    await record("explore")
    if not 0 <= pick < len(explored):
        raise DemoFailed(f"--pick {pick} is outside the {len(explored)} variations")
    picked = explored[pick]

    sink(f"promoting {picked.job_id} to standard at 2K")
    promote = router_pb2.PromoteRequest(
        account_id=account,
        idempotency_key=new_key("demo-promote"),
        job_id=picked.job_id,
        tier="standard",
        resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_2K),
        prompt_addition=", golden hour light, fine detail",
    )
    promoted = _require(await client.promote(promote, sink), "promote")
    await keep(promoted, "promote")
    await record("promote")

    sink(f"upscaling {promoted.job_id} 2x")
    upscale = router_pb2.UpscaleRequest(
        account_id=account,
        idempotency_key=new_key("demo-upscale"),
        job_id=promoted.job_id,
        factor=2.0,
        method=common_pb2.UPSCALE_METHOD_LANCZOS,
    )
    upscaled = _require(await client.upscale(upscale, sink), "upscale")
    await keep(upscaled, "upscale")
    await record("upscale")

    checked = await client.check_in(account, new_key("demo-checkin"))
    sink(f"checked in for {checked.iso_week}: +{checked.granted}")
    await record("check_in")

    return {
        "account": account,
        "jobs": [
            {
                "id": job.job_id,
                "kind": _KINDS.get(job.kind, "unknown"),
                "tier": job.tier,
                "width": job.width,
                "height": job.height,
                "cost": job.cost,
                "seed": job.seed,
                "parent_id": job.parent_job_id or None,
                "path": str(path),
                "sha256": sha256,
                "trace_id": job.trace_id,
            }
            for job, sha256, path in jobs
        ],
        "balances": balances,
    }
