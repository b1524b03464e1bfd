"""Planning: what a Generate, Promote, Upscale or Edit will do, before anything is held.

A plan names its jobs (with their prices), the routing decision, the tier whose places it takes,
and the work each job does; `services.router.operations.batches` runs every plan the same way.
Planning reads (the parent job, its image, the balance when a downgrade may need it) but never
writes: a request refused here changed nothing. A parent job is looked up as the owner's, so a
job of another account or tenant is NotFound, as a missing one. Its checks are the policy's
(`services.router.routing`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import structlog

from services.router.assets.store import AssetStore
from services.router.downstream.ports import (
    CreditLedger,
    Image,
    ProgressSink,
    Renderer,
    RenderOrder,
    UpscaleOrder,
    Upscaler,
)
from services.router.jobs.model import Job, JobKind, JobStatus, NewJob, Owner, UpscaleMethod
from services.router.jobs.store import JobStore
from services.router.operations.telemetry import step
from services.router.routing import checks
from services.router.routing.catalogue import AspectRatio, ImageSize, Stage
from services.router.routing.policy import Decision, RouteRequest, RoutingPolicy
from services.router.routing.urgency import render_urgency, urgency_of
from services.runtime import errors
from services.runtime.errors import FailedPrecondition, InvalidArgument, TiergenError
from services.runtime.tracing import current_trace_id

__all__ = [
    "Delivery",
    "EditRequest",
    "Handover",
    "Plan",
    "Planner",
    "UpscaleRequest",
    "Work",
    "fingerprint",
    "refused_before_work",
]

_log = structlog.get_logger("tiergen.router")

_SEED_LIMIT = 2**63  # seeds are stored as signed 64-bit integers
#: Fields of a request that are facts of its transport or of the moment, not of what the
#: caller asked for: a retry under another deadline, or with another balance, is the same
#: request.
_CIRCUMSTANCES = ("deadline_seconds", "available")


@dataclass(frozen=True)
class Handover:
    """A promote: hand a succeeded job to a higher tier, its image travelling as the reference.

    `aspect_ratio` None keeps the parent's; `strength` and `seed` None keep the defaults
    (0.6 and the parent's seed).
    """

    job_id: str
    tier: str
    size: ImageSize | None = None
    aspect_ratio: AspectRatio | None = None
    prompt: str = ""
    prompt_addition: str = ""
    strength: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class UpscaleRequest:
    """An upscale of a succeeded job's image; `factor` 0 means 2."""

    job_id: str
    factor: float = 2.0
    method: UpscaleMethod = UpscaleMethod.LANCZOS
    output_format: str = "png"
    quality: int = 0


@dataclass(frozen=True)
class EditRequest:
    """An in-painting edit: re-render the region white in `mask` of a succeeded job's image."""

    job_id: str
    mask: bytes
    prompt: str = ""
    seed: int | None = None


@dataclass(frozen=True)
class Delivery:
    """What a job's work produced: the image, its drift from the parent, and, when a fallback
    tier rendered it, that tier and why."""

    image: Image
    drift: float | None = None
    fallback_tier: str | None = None
    fallback_reason: str = ""


Work = Callable[[Job, ProgressSink], Awaitable[Delivery]]


@dataclass(frozen=True)
class Plan:
    """What one call will do: its jobs, the decision that priced them, the tier whose places it
    takes (None for an upscale), and the work each job does."""

    jobs: list[NewJob]
    decision: Decision | None
    tier: str | None
    work: Work


def fingerprint(operation: str, owner: Owner, request: Any, **extra: Any) -> str:
    """Identifies what the caller asked for, so an idempotency key reused for a different
    request is caught and a retry of the same one is not.

    The tenant is left out: keys are the owner's already, and so a retry of a request made
    before tenants (in the default tenant) still matches the batch it made.
    """
    asked = {k: v for k, v in asdict(request).items() if k not in _CIRCUMSTANCES}
    document = json.dumps(
        {"operation": operation, "account_id": owner.account_id, "request": asked, **extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(document.encode()).hexdigest()


def refused_before_work(error: TiergenError | None) -> bool:
    """Whether a job that failed with `error` was refused before any work was done for it: then
    the refusal is not its idempotency key's answer, and a retry with the key runs anew.

    Overload and an unreachable backend refuse before rendering; a stopping router ends jobs
    before they deliver. A timeout is not among them: the backend may have rendered (and
    billed) the image. For the same reason only these make another tier worth a fallback.
    """
    if error is None:
        return False
    if isinstance(error, errors.ResourceExhausted):
        return True
    return isinstance(error, errors.Unavailable) and error.metadata.get("ambiguous") != "true"


def _derived_seed(owner: Owner, key: str) -> int:
    # A retry with the same key renders the same images without the caller choosing a seed.
    # Without the tenant, as before tenants: a seed is no secret, only repeatable.
    digest = hashlib.sha256(f"{owner.account_id}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _require_succeeded(job: Job, action: str) -> None:
    if job.status is not JobStatus.SUCCEEDED or job.asset is None:
        raise FailedPrecondition(
            f"job {job.job_id} is {job.status.value}; only a succeeded job can be {action}",
            reason="JOB_NOT_SUCCEEDED",
            metadata={"job_id": job.job_id, "status": job.status.value},
        )


class Planner:
    """Makes the plan of each operation from the current policy and what the stores hold."""

    def __init__(
        self,
        *,
        policy: Callable[[], RoutingPolicy],
        jobs: JobStore,
        assets: AssetStore,
        ledger: CreditLedger,
        renderer: Renderer,
        upscaler: Upscaler,
        max_upscale_side: int,
    ) -> None:
        self._policy = policy
        self._jobs = jobs
        self._assets = assets
        self._ledger = ledger
        self._renderer = renderer
        self._upscaler = upscaler
        self._max_upscale_side = max_upscale_side

    async def generate(
        self, owner: Owner, key: str, request: RouteRequest, seed: int | None
    ) -> Plan:
        """`request.n` variations; variation i renders with seed + i."""
        policy = self._policy()
        # The balance matters only to a request that may be downgraded to fit it; any other
        # learns that it is unaffordable from the hold's refusal.
        available = await self._ledger.available(owner) if request.allow_downgrade else None
        with step("route", account_id=owner.account_id, stage=request.stage.value):
            decision = policy.decide(replace(request, available=available))
        base = _derived_seed(owner, key) if seed is None else seed
        trace_id = current_trace_id()
        new_jobs = [
            NewJob(
                kind=JobKind.GENERATE,
                prompt=request.prompt,
                seed=(base + index) % _SEED_LIMIT,
                width=decision.width,
                height=decision.height,
                quoted_cost=decision.unit_cost,
                tier=decision.tier,
                stage=request.stage,
                size=decision.size,
                aspect_ratio=decision.aspect_ratio,
                variation=index,
                reasons=decision.reasons,
                trace_id=trace_id,
            )
            for index in range(decision.n)
        ]
        automatic = request.tier in ("", "auto")
        urgency = render_urgency(policy.catalogue, request.stage, decision.tier, decision.size)

        async def render(job: Job, progress: ProgressSink) -> Delivery:
            order = RenderOrder(
                tier=decision.tier,
                size=decision.size,
                aspect_ratio=decision.aspect_ratio,
                prompt=job.prompt,
                seed=job.seed,
                request_id=job.job_id,
                owner=job.owner,
                urgency=urgency,
            )
            try:
                return Delivery(await self._renderer.render(order, progress))
            except TiergenError as error:
                lower = policy.fallback_for(decision.tier, decision.size, decision.aspect_ratio)
                if not automatic or lower is None or not refused_before_work(error):
                    raise
                _log.warning(
                    "tier failed; falling back",
                    job_id=job.job_id,
                    tier=decision.tier,
                    fallback=lower,
                    reason=error.reason,
                )
                image = await self._renderer.render(replace(order, tier=lower), progress)
                why = f"{decision.tier} failed ({error.reason}); rendered on {lower} by policy"
                return Delivery(image, fallback_tier=lower, fallback_reason=why)

        return Plan(new_jobs, decision, decision.tier, render)

    async def promote(self, owner: Owner, handover: Handover) -> Plan:
        """The owner's parent job rendered again on a higher tier, its image as the reference."""
        parent = await self._jobs.get(owner, handover.job_id)
        _require_succeeded(parent, "promoted")
        strength = checks.handover_strength(handover.strength)
        prompt = checks.check_prompt(
            (handover.prompt or parent.prompt) + handover.prompt_addition, "the promoted prompt"
        )
        # No balance read: an unaffordable promote learns it from the hold's refusal.
        with step("route", account_id=owner.account_id, stage=Stage.REFINE.value):
            decision = self._policy().promotion(
                parent.tier,
                handover.tier,
                handover.size,
                handover.aspect_ratio or parent.aspect_ratio,
            )
        assert parent.asset is not None  # checked by _require_succeeded
        parent_asset_id = parent.asset.asset_id  # the reference's SHA-256
        reference = await self._assets.read(parent_asset_id)
        seed = parent.seed if handover.seed is None else handover.seed
        new_job = NewJob(
            kind=JobKind.PROMOTE,
            prompt=prompt,
            seed=seed,
            width=decision.width,
            height=decision.height,
            quoted_cost=decision.unit_cost,
            tier=decision.tier,
            stage=Stage.REFINE,
            size=decision.size,
            aspect_ratio=decision.aspect_ratio,
            parent_job_id=parent.job_id,
            reasons=decision.reasons,
            strength=strength,
            trace_id=current_trace_id(),
        )

        async def render(job: Job, progress: ProgressSink) -> Delivery:
            order = RenderOrder(
                tier=decision.tier,
                size=decision.size,
                aspect_ratio=decision.aspect_ratio,
                prompt=prompt,
                seed=seed,
                request_id=job.job_id,
                reference=reference,
                strength=strength,
                reference_sha256=parent_asset_id,
                owner=job.owner,
                urgency=urgency_of(job.stage, None),
            )
            return await self._render_from(order, progress)

        return Plan([new_job], decision, decision.tier, render)

    async def upscale(self, owner: Owner, request: UpscaleRequest) -> Plan:
        """The owner's parent job's image enlarged by `request.factor` (already defaulted)."""
        parent = await self._jobs.get(owner, request.job_id)
        _require_succeeded(parent, "upscaled")
        factor = request.factor
        width, height = checks.check_upscale(
            factor, parent.width, parent.height, self._max_upscale_side
        )
        price = self._policy().prices.upscale_price(width, height)
        new_job = NewJob(
            kind=JobKind.UPSCALE,
            prompt=parent.prompt,
            seed=parent.seed,
            width=width,
            height=height,
            quoted_cost=price,
            stage=Stage.ENHANCE,
            aspect_ratio=parent.aspect_ratio,
            parent_job_id=parent.job_id,
            reasons=(f"upscale {factor:g}x with {request.method.value} to {width}x{height}",),
            upscale_factor=factor,
            upscale_method=request.method,
            trace_id=current_trace_id(),
        )
        assert parent.asset is not None  # checked by _require_succeeded
        source = await self._assets.read(parent.asset.asset_id)

        async def enlarge(job: Job, progress: ProgressSink) -> Delivery:
            order = UpscaleOrder(
                data=source,
                factor=factor,
                method=request.method.value,
                output_format=request.output_format,
                quality=request.quality,
                request_id=job.job_id,
                owner=job.owner,
                urgency=urgency_of(job.stage, None),
            )
            with step("upscale", job_id=job.job_id, factor=factor):
                return Delivery(await self._upscaler.upscale(order, progress))

        return Plan([new_job], None, None, enlarge)

    async def edit(self, owner: Owner, request: EditRequest, mask_sha256: str) -> Plan:
        """The masked region of the owner's parent job's image rendered again, on its tier and
        size; `mask_sha256` is the mask's digest, taken once for the request's fingerprint."""
        parent = await self._jobs.get(owner, request.job_id)
        _require_succeeded(parent, "edited")
        policy = self._policy()
        if not parent.tier or parent.size is None:
            raise InvalidArgument(
                f"job {parent.job_id} was not rendered by a tier (an upscale); edit the job it "
                "was made from",
                field="job_id",
                reason="PARENT_NOT_EDITABLE",
            )
        # The generator's catalogue as it is now: its tier may have lost in-painting since.
        tier = policy.edit_tier(parent.tier, parent.size, parent.aspect_ratio)
        await asyncio.to_thread(checks.check_mask, request.mask, parent.width, parent.height)
        prompt = checks.check_prompt(request.prompt or parent.prompt)
        seed = parent.seed if request.seed is None else request.seed
        size = parent.size
        new_job = NewJob(
            kind=JobKind.EDIT,
            prompt=prompt,
            seed=seed,
            width=parent.width,
            height=parent.height,
            quoted_cost=policy.prices.price(tier.name, size),
            tier=tier.name,
            stage=Stage.REFINE,
            size=size,
            aspect_ratio=parent.aspect_ratio,
            parent_job_id=parent.job_id,
            reasons=(f"in-paint a region on {tier.name} at {size.value}",),
            trace_id=current_trace_id(),
        )
        assert parent.asset is not None  # checked by _require_succeeded
        source = await self._assets.read(parent.asset.asset_id)

        async def inpaint(job: Job, progress: ProgressSink) -> Delivery:
            order = RenderOrder(
                tier=tier.name,
                size=size,
                aspect_ratio=parent.aspect_ratio,
                prompt=prompt,
                seed=seed,
                request_id=job.job_id,
                reference=source,
                mask=request.mask,
                reference_sha256=parent.asset.asset_id if parent.asset else "",
                mask_sha256=mask_sha256,
                owner=job.owner,
                urgency=urgency_of(job.stage, None),
            )
            return await self._render_from(order, progress)

        return Plan([new_job], None, tier.name, inpaint)

    async def _render_from(self, order: RenderOrder, progress: ProgressSink) -> Delivery:
        """Renders a job made from a parent's image; the generator says how far it drifted."""
        image = await self._renderer.render(order, progress)
        return Delivery(image, image.drift)
