"""Orchestration: route a request, hold its credits, run the work, store the assets, settle.

Every batch follows one path. The credits are held before any work starts; each job renders
(or upscales), its image is stored content-addressed, and the job is marked succeeded; once every
job is final, the hold is captured for the jobs delivered and the rest returned, or released
whole when nothing was delivered. A caller that cancels or goes away stops the batch the same
way: unfinished jobs are cancelled and only delivered images are charged.

A batch is leased to the router process running it, which renews the lease while it runs. A
batch whose router died is claimed by another (or by the next start), which fails its
unfinished jobs and settles its hold the same way, with the same ledger idempotency keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import secrets
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import structlog
from opentelemetry import trace
from PIL import Image as PILImage
from prometheus_client import Counter

from services.router.assets.store import AssetRef, AssetStore, check_asset_id
from services.router.downstream.ports import (
    CreditLedger,
    Image,
    ProgressSink,
    Renderer,
    RenderOrder,
    UpscaleOrder,
    Upscaler,
)
from services.router.jobs.model import (
    Batch,
    BatchRecord,
    HoldState,
    Job,
    JobFilter,
    JobKind,
    JobPage,
    JobStatus,
    JobStore,
    Lease,
    NewJob,
    UpscaleMethod,
)
from services.router.routing.admission import Admission
from services.router.routing.catalogue import AspectRatio, ImageSize, Stage
from services.router.routing.drift import style_drift
from services.router.routing.policy import (
    MAX_PROMPT_CHARS,
    Decision,
    Quote,
    RouteRequest,
    RoutingPolicy,
    insufficient_credits,
)
from services.runtime import errors
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, TiergenError
from services.runtime.identifiers import (
    require_account_id,
    require_id,
    require_idempotency_key,
    require_plain_text,
)
from services.runtime.interceptors import outliving_the_caller
from services.runtime.tracing import current_trace_id

__all__ = [
    "BatchAccepted",
    "EditRequest",
    "Handover",
    "JobFinished",
    "JobProgressed",
    "Router",
    "RouterEvent",
    "RouterLimits",
    "UpscaleRequest",
]

_log = structlog.get_logger("tiergen.router")

_JOBS = Counter(
    "tiergen_router_jobs_total",
    "Jobs that reached a final state, by kind, tier (empty for upscales) and status.",
    ["kind", "tier", "status"],
)
_CAPTURED = Counter(
    "tiergen_router_credits_captured_total", "Credits captured for delivered images."
)
_RECOVERED = Counter(
    "tiergen_router_batches_recovered_total",
    "Batches taken over from a router that stopped while running them.",
)


def _count_final(job: Job) -> None:
    _JOBS.labels(job.kind.value, job.tier or "", job.status.value).inc()


_tracer = trace.get_tracer("tiergen.router")

#: Strength of the parent's image in a handover when the caller gives none.
DEFAULT_HANDOVER_STRENGTH = 0.6
#: Upscale factors: 1 to 4 in steps of 0.5.
UPSCALE_FACTORS = tuple(1.0 + 0.5 * step for step in range(7))
_SEED_LIMIT = 2**63  # seeds are stored as signed 64-bit integers
_STORE_REASONS = frozenset({"JOB_FINAL", "ILLEGAL_TRANSITION"})
#: Renewals per lease: a lease survives two renewals in a row going astray.
_RENEWALS_PER_LEASE = 3
#: Abandoned batches claimed per statement; recovery claims again until fewer come back.
_CLAIM_LIMIT = 50
#: Share of the shutdown grace that running batches get to finish; the rest lets the ones
#: ended early settle and tell their callers.
_DRAIN_SHARE = 0.8


@dataclass(frozen=True)
class BatchAccepted:
    """First event of every call that creates work: the batch, its jobs and its decision."""

    record: BatchRecord


@dataclass(frozen=True)
class JobProgressed:
    """A job moved on."""

    job_id: str
    stage: str
    fraction: float


@dataclass(frozen=True)
class JobFinished:
    """A job reached a final state."""

    job: Job


RouterEvent = BatchAccepted | JobProgressed | JobFinished


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
class RouterLimits:
    """Operational limits of the orchestration."""

    #: How long a hold lives if no router settles it: the ledger then returns the credits by
    #: itself. Also how old a batch written without a lease (by a router older than leases)
    #: must be before it counts as abandoned.
    hold_ttl_seconds: int = 900
    #: How long a batch stays its router's without a renewal; renewed every third of it.
    lease_seconds: float = 30.0
    #: How often `watch_abandoned` looks for batches whose router is gone.
    claim_interval_seconds: float = 10.0
    #: Jobs of one batch running at once; the generator queues and limits the rest.
    parallel_jobs: int = 4
    #: Longest side of an upscale's output.
    max_upscale_side: int = 8192
    #: How often a replayed call looks for the original call's progress.
    replay_poll_seconds: float = 0.2
    #: Largest in-painting mask accepted in one message.
    max_mask_bytes: int = 4 * 1024 * 1024
    #: Progress of a job reaches the caller at most this often, its latest stage only, and
    #: not at all once the job has finished; 0 sends every progress event as it happens.
    progress_interval_seconds: float = 0.2


@dataclass(frozen=True)
class Delivery:
    """What a job's work produced: the image, its drift from the parent, and, when a fallback
    tier rendered it, that tier and why."""

    image: Image
    drift: float | None = None
    fallback_tier: str | None = None
    fallback_reason: str = ""


Work = Callable[[Job, ProgressSink], Awaitable[Delivery]]


def _refused_before_work(error: TiergenError | None) -> bool:
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


def _shutting_down() -> errors.Unavailable:
    return errors.Unavailable(
        "the router is stopping: nothing undelivered was charged; retry with the same"
        " idempotency key (another replica takes it)",
        retry_after=1.0,
        reason="SHUTTING_DOWN",
    )


#: Fields of a request that are facts of its transport or of the moment, not of what the
#: caller asked for: a retry under another deadline, or with another balance, is the same
#: request.
_CIRCUMSTANCES = ("deadline_seconds", "available")


def _fingerprint(operation: str, account_id: str, request: Any, **extra: Any) -> str:
    """Identifies what the caller asked for, so an idempotency key reused for a different
    request is caught and a retry of the same one is not."""
    asked = {k: v for k, v in asdict(request).items() if k not in _CIRCUMSTANCES}
    document = json.dumps(
        {"operation": operation, "account_id": account_id, "request": asked, **extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(document.encode()).hexdigest()


def _require_succeeded(job: Job, action: str) -> None:
    if job.status is not JobStatus.SUCCEEDED or job.asset is None:
        raise FailedPrecondition(
            f"job {job.job_id} is {job.status.value}; only a succeeded job can be {action}",
            reason="JOB_NOT_SUCCEEDED",
            metadata={"job_id": job.job_id, "status": job.status.value},
        )


def _derived_seed(account_id: str, key: str) -> int:
    # A retry with the same key renders the same images without the caller choosing a seed.
    digest = hashlib.sha256(f"{account_id}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _check_mask(data: bytes, width: int, height: int) -> None:
    """InvalidArgument unless `data` is a whole image of `width` x `height` that selects some
    region (white = render again, black = keep).

    The header's size is checked before the pixels are decoded, so a small file claiming a huge
    image is refused unread; then every pixel is decoded, so a truncated file is refused too.
    """
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            if image.size != (width, height):
                raise InvalidArgument(
                    f"the mask is {image.size[0]}x{image.size[1]}; it must be the job's"
                    f" {width}x{height}",
                    field="mask",
                    reason="MASK_SIZE_MISMATCH",
                )
            image.load()
            selected = image.convert("L").getbbox()
    except (OSError, PILImage.DecompressionBombError, ValueError, SyntaxError):
        raise InvalidArgument(
            "the mask is not a whole image (unreadable or truncated); send a PNG (white = render"
            " again, black = keep)",
            field="mask",
            reason="MASK_NOT_AN_IMAGE",
        ) from None
    if selected is None:
        raise InvalidArgument(
            "the mask is black everywhere, so it selects nothing to edit; paint the region to"
            " render again white",
            field="mask",
            reason="MASK_EMPTY",
        )


def job_error(job: Job) -> TiergenError:
    """The error a failed job recorded, as the domain error a caller receives."""
    if job.error is None:
        return errors.Internal(f"job {job.job_id} failed without a recorded error")
    cls = errors.error_class(job.error.code)
    return cls(job.error.message, reason=job.error.reason, metadata={"job_id": job.job_id})


def _refusal(error: FailedPrecondition, decision: Decision | None) -> FailedPrecondition:
    """The ledger's refusal of a hold, told as the routing decision it refuses when there is one
    (the tier, and the shortfall next to the available and required credits)."""
    available = error.metadata.get("available", "")
    if decision is None or error.reason != "INSUFFICIENT_CREDITS" or not available.isdigit():
        return error
    return insufficient_credits(decision, int(available))


@contextlib.contextmanager
def _step(name: str, **attributes: Any) -> Iterator[None]:
    """A span for one domain step, with `tiergen.*` attributes."""
    with _tracer.start_as_current_span(
        name, attributes={f"tiergen.{k}": v for k, v in attributes.items() if v is not None}
    ):
        yield


class _BatchEvents:
    """A running batch's events on their way to the caller, progress coalesced.

    A job's progress waits up to `interval` seconds, replaced by any newer progress of the same
    job meanwhile, and is dropped once the job finishes: the final job says more. A batch of
    quick jobs then streams its jobs alone, and a long one a few progress events a second.
    """

    def __init__(self, emit: Callable[[RouterEvent | None], None], interval: float) -> None:
        self._emit = emit
        self._interval = interval
        self._pending: dict[str, JobProgressed] = {}
        self._flush_handle: asyncio.TimerHandle | None = None

    def progress(self, job_id: str, stage: str, fraction: float) -> None:
        event = JobProgressed(job_id, stage, fraction)
        if self._interval <= 0:
            self._emit(event)
            return
        self._pending[job_id] = event
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def finished(self, job: Job) -> None:
        self._pending.pop(job.job_id, None)
        self._emit(JobFinished(job))

    def close(self) -> None:
        """Drops what is still pending; every job has finished."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        for event in pending.values():
            self._emit(event)


class Router:
    """Routes, charges and runs generations, handovers and upscales; keeps jobs and assets."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        assets: AssetStore,
        ledger: CreditLedger,
        renderer: Renderer,
        upscaler: Upscaler,
        policy: RoutingPolicy,
        limits: RouterLimits = RouterLimits(),
        admission: Admission | None = None,
    ) -> None:
        self._jobs = jobs
        self._admission = admission or Admission()
        #: Set by `drain`: new work is refused and running jobs end as SHUTTING_DOWN.
        self._stopping = False
        self._assets = assets
        self._ledger = ledger
        self._renderer = renderer
        self._upscaler = upscaler
        self._policy = policy
        self._limits = limits
        self._batch_tasks: dict[str, asyncio.Task[None]] = {}
        self._job_tasks: dict[str, asyncio.Task[Job]] = {}
        #: Set while no batch runs here; `drain` waits for it.
        self._idle = asyncio.Event()
        self._idle.set()
        #: Batches claimed from a lost router and being recovered here.
        self._recovering: set[str] = set()
        # The host names the pod in a cluster; the random part tells its processes apart.
        self._lease = Lease(
            owner=f"{socket.gethostname()}/{secrets.token_hex(8)}", seconds=limits.lease_seconds
        )

    @property
    def policy(self) -> RoutingPolicy:
        return self._policy

    @property
    def admission(self) -> Admission:
        return self._admission

    def use_policy(self, policy: RoutingPolicy) -> None:
        """Swaps in a reloaded policy; calls already routed keep their decisions."""
        self._policy = policy

    # Quotes and generations ------------------------------------------------------------

    async def quote(self, account_id: str, request: RouteRequest) -> Quote:
        require_account_id(account_id)
        require_plain_text(request.prompt, "spec.prompt")
        available = await self._ledger.available(account_id)
        with _step("route", account_id=account_id, stage=request.stage.value):
            return self._policy.quote(replace(request, available=available))

    async def generate(
        self, account_id: str, key: str, request: RouteRequest, seed: int | None = None
    ) -> AsyncGenerator[RouterEvent, None]:
        """Generates `request.n` variations; variation i renders with seed + i."""
        require_account_id(account_id)
        require_idempotency_key(key)
        require_plain_text(request.prompt, "spec.prompt")
        structlog.contextvars.bind_contextvars(account_id=account_id)
        fingerprint = _fingerprint("generate", account_id, request, seed=seed)
        existing = await self._jobs.find_batch(account_id, key)
        if existing is not None:
            async for event in self._replay(existing, fingerprint):
                yield event
            return
        # The balance matters only to a request that may be downgraded to fit it; any other
        # learns that it is unaffordable from the hold's refusal.
        available = await self._ledger.available(account_id) if request.allow_downgrade else None
        with _step("route", account_id=account_id, stage=request.stage.value):
            decision = self._policy.decide(replace(request, available=available))
        base = _derived_seed(account_id, key) if seed is None else seed
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

        async def render(job: Job, progress: ProgressSink) -> Delivery:
            order = RenderOrder(
                tier=decision.tier,
                size=decision.size,
                aspect_ratio=decision.aspect_ratio,
                prompt=job.prompt,
                seed=job.seed,
                request_id=job.job_id,
            )
            try:
                return Delivery(await self._renderer.render(order, progress))
            except TiergenError as error:
                lower = self._policy.fallback_for(decision.tier, decision.size)
                if not automatic or lower is None or not _refused_before_work(error):
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

        events = self._start(
            account_id, key, fingerprint, new_jobs, decision, render, decision.tier
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    # Handovers and upscales ------------------------------------------------------------

    async def promote(
        self, account_id: str, key: str, handover: Handover
    ) -> AsyncGenerator[RouterEvent, None]:
        """Renders a parent job again on a higher tier with its image as the reference."""
        require_account_id(account_id)
        require_idempotency_key(key)
        require_id(handover.job_id, "job_id")
        require_plain_text(handover.prompt, "prompt")
        require_plain_text(handover.prompt_addition, "prompt_addition")
        structlog.contextvars.bind_contextvars(account_id=account_id, parent_job_id=handover.job_id)
        fingerprint = _fingerprint("promote", account_id, handover)
        existing = await self._jobs.find_batch(account_id, key)
        if existing is not None:
            async for event in self._replay(existing, fingerprint):
                yield event
            return
        parent = await self._jobs.get(account_id, handover.job_id)
        _require_succeeded(parent, "promoted")
        strength = DEFAULT_HANDOVER_STRENGTH if handover.strength is None else handover.strength
        if not (math.isfinite(strength) and 0.0 <= strength <= 1.0):
            raise InvalidArgument(
                f"strength {strength} is outside 0..1 (0 ignores the parent's image, 1 keeps its "
                "composition)",
                field="strength",
                reason="STRENGTH_OUT_OF_RANGE",
            )
        prompt = (handover.prompt or parent.prompt) + handover.prompt_addition
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(
                f"the promoted prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}",
                field="prompt",
                reason="PROMPT_TOO_LONG",
            )
        # No balance read: an unaffordable promote learns it from the hold's refusal.
        with _step("route", account_id=account_id, stage=Stage.REFINE.value):
            decision = self._policy.promotion(
                parent.tier,
                handover.tier,
                handover.size,
                handover.aspect_ratio or parent.aspect_ratio,
            )
        assert parent.asset is not None  # checked by _require_succeeded
        reference = await self._assets.read(parent.asset.asset_id)
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
            )
            return await self._render_from(reference, order, progress)

        events = self._start(
            account_id, key, fingerprint, [new_job], decision, render, decision.tier
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def upscale(
        self, account_id: str, key: str, request: UpscaleRequest
    ) -> AsyncGenerator[RouterEvent, None]:
        """Upscales a succeeded job's image into a new job linked to it."""
        require_account_id(account_id)
        require_idempotency_key(key)
        require_id(request.job_id, "job_id")
        structlog.contextvars.bind_contextvars(account_id=account_id, parent_job_id=request.job_id)
        factor = request.factor or 2.0
        request = replace(request, factor=factor)
        if factor not in UPSCALE_FACTORS:
            raise InvalidArgument(
                f"factor {factor:g} is not offered; use 1 to 4 in steps of 0.5",
                field="factor",
                reason="FACTOR_NOT_SUPPORTED",
            )
        fingerprint = _fingerprint("upscale", account_id, request)
        existing = await self._jobs.find_batch(account_id, key)
        if existing is not None:
            async for event in self._replay(existing, fingerprint):
                yield event
            return
        parent = await self._jobs.get(account_id, request.job_id)
        _require_succeeded(parent, "upscaled")
        width, height = round(parent.width * factor), round(parent.height * factor)
        limit = self._limits.max_upscale_side
        if max(width, height) > limit:
            raise InvalidArgument(
                f"upscaling {parent.width}x{parent.height} by {factor:g} gives {width}x{height}; "
                f"the longest side may be at most {limit}",
                field="factor",
                reason="OUTPUT_TOO_LARGE",
                metadata={"width": str(width), "height": str(height), "limit": str(limit)},
            )
        price = self._policy.prices.upscale_price(width, height)
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
            )
            with _step("upscale", job_id=job.job_id, factor=factor):
                return Delivery(await self._upscaler.upscale(order, progress))

        events = self._start(account_id, key, fingerprint, [new_job], None, enlarge, None)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def edit(
        self, account_id: str, key: str, request: EditRequest
    ) -> AsyncGenerator[RouterEvent, None]:
        """In-paints the masked region of a rendered job on its own tier and size."""
        require_account_id(account_id)
        require_idempotency_key(key)
        require_id(request.job_id, "job_id")
        require_plain_text(request.prompt, "prompt")
        structlog.contextvars.bind_contextvars(account_id=account_id, parent_job_id=request.job_id)
        if not request.mask:
            raise InvalidArgument(
                "mask is required: an image of the job's size, white where it is rendered again",
                field="mask",
            )
        if len(request.mask) > self._limits.max_mask_bytes:
            raise InvalidArgument(
                f"the mask is {len(request.mask)} bytes; the limit is {self._limits.max_mask_bytes}"
                " (save it as a two-tone PNG)",
                field="mask",
            )
        fingerprint = _fingerprint(
            "edit",
            account_id,
            replace(request, mask=b""),
            mask_sha256=hashlib.sha256(request.mask).hexdigest(),
        )
        existing = await self._jobs.find_batch(account_id, key)
        if existing is not None:
            async for event in self._replay(existing, fingerprint):
                yield event
            return
        parent = await self._jobs.get(account_id, request.job_id)
        _require_succeeded(parent, "edited")
        tier = self._policy.catalogue.find(parent.tier)
        if tier is None or parent.size is None:
            raise InvalidArgument(
                f"job {parent.job_id} was not rendered by a tier (an upscale); edit the job it "
                "was made from",
                field="job_id",
                reason="PARENT_NOT_EDITABLE",
            )
        if not tier.inpainting:
            raise InvalidArgument(
                f"tier {tier.name} cannot in-paint; promote the job to a tier that can, then edit",
                field="job_id",
                reason="TIER_CANNOT_INPAINT",
            )
        await asyncio.to_thread(_check_mask, request.mask, parent.width, parent.height)
        prompt = request.prompt or parent.prompt
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(
                f"the prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}",
                field="prompt",
                reason="PROMPT_TOO_LONG",
            )
        seed = parent.seed if request.seed is None else request.seed
        size = parent.size
        new_job = NewJob(
            kind=JobKind.EDIT,
            prompt=prompt,
            seed=seed,
            width=parent.width,
            height=parent.height,
            quoted_cost=self._policy.prices.price(tier.name, size),
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
            )
            return await self._render_from(source, order, progress)

        events = self._start(account_id, key, fingerprint, [new_job], None, inpaint, tier.name)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def set_shortlisted(self, account_id: str, job_id: str, shortlisted: bool) -> Job:
        """Marks or unmarks one of the account's jobs as shortlisted."""
        require_account_id(account_id)
        require_id(job_id, "job_id")
        return await self._jobs.set_shortlisted(account_id, job_id, shortlisted)

    # Reads and cancellation ------------------------------------------------------------

    async def get_job(self, account_id: str, job_id: str) -> tuple[Job, tuple[Job, ...]]:
        """The job and its children (promotes and upscales made from it)."""
        require_account_id(account_id)
        require_id(job_id, "job_id")
        job = await self._jobs.get(account_id, job_id)
        return job, await self._jobs.children(account_id, job_id)

    async def list_jobs(
        self, account_id: str, filters: JobFilter, page_size: int, page_token: str
    ) -> JobPage:
        require_account_id(account_id)
        require_id(filters.batch_id or "", "batch_id", required=False)
        require_id(filters.parent_job_id or "", "parent_job_id", required=False)
        return await self._jobs.list(account_id, filters, page_size, page_token)

    async def cancel(
        self, account_id: str, *, job_id: str = "", batch_id: str = ""
    ) -> tuple[Job, ...]:
        """Cancels a job or a batch's unfinished jobs, here or on the replica running them."""
        require_account_id(account_id)
        require_id(job_id, "job_id", required=False)
        require_id(batch_id, "batch_id", required=False)
        if job_id:
            cancelled: tuple[Job, ...] = (await self._jobs.cancel_job(account_id, job_id),)
        elif batch_id:
            cancelled = await self._jobs.cancel_batch(account_id, batch_id)
        else:
            raise InvalidArgument("name a job_id or a batch_id to cancel", field="target")
        for job in cancelled:
            task = self._job_tasks.get(job.job_id)
            if task is not None:
                task.cancel()
        return cancelled

    async def open_asset(
        self, account_id: str, asset_id: str
    ) -> tuple[AssetRef, AsyncIterator[bytes]]:
        """An asset's reference and its bytes in chunks; NotFound unless one of its jobs made it."""
        require_account_id(account_id)
        check_asset_id(asset_id)
        if not await self._jobs.has_asset(account_id, asset_id):
            raise NotFound(f"asset {asset_id} not found", reason="ASSET_NOT_FOUND")
        return await self._assets.get_info(asset_id), self._assets.read_chunks(asset_id)

    # Lifecycle -------------------------------------------------------------------------

    async def recover(self) -> int:
        """Takes over the batches of routers that are gone: fails their unfinished jobs and
        settles their holds, charging only what was delivered. Returns how many it took.

        Which routers are gone is the job store's call (`JobStore.claim_abandoned`): over a
        store shared by replicas, those whose leases ran out; over a store one router owns,
        every earlier process. Safe to run on every replica at once: each batch is claimed by
        one, and settling again repeats the ledger's idempotent answer.
        """
        recovered = 0
        while True:
            records = await self._jobs.claim_abandoned(
                self._lease,
                unleased_seconds=self._limits.hold_ttl_seconds,
                limit=_CLAIM_LIMIT,
            )
            for record in records:
                await self._recover_batch(record)
            recovered += len(records)
            if len(records) < _CLAIM_LIMIT:
                return recovered

    async def watch_abandoned(self) -> None:
        """Runs `recover` every claim interval until cancelled; a failure waits for the next."""
        while True:
            await asyncio.sleep(self._limits.claim_interval_seconds)
            try:
                await self.recover()
            except TiergenError as error:
                _log.error("could not recover abandoned batches", error=str(error))

    async def keep_leases(self) -> None:
        """Renews, every third of a lease, the leases of the batches this process is running,
        until cancelled. Cancel it after `close`, so that batches settling there stay leased."""
        while True:
            await asyncio.sleep(self._limits.lease_seconds / _RENEWALS_PER_LEASE)
            running = [*self._batch_tasks, *self._recovering]
            if not running:
                continue
            try:
                renewed = await self._jobs.renew_leases(self._lease, running)
            except TiergenError as error:
                _log.error("could not renew leases", batches=len(running), error=str(error))
                continue
            # A batch that finished meanwhile is still this process's: only a claim takes one.
            lost = sorted(set(running) - renewed)
            if lost:
                _log.error("batches claimed by another router; it recovers them", batch_ids=lost)

    async def drain(self, grace: float) -> None:
        """Stops taking work and lets running batches finish for most of `grace` seconds; then
        ends the rest, their undelivered jobs failed as SHUTTING_DOWN and not charged, while
        their callers are still connected, so that each hears why and that a retry with its
        key is safe. Returns once every batch has settled and answered its caller."""
        self._stopping = True
        tasks = list(self._batch_tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace * _DRAIN_SHARE)
            for task in pending:
                task.cancel()
        # The streams end after their batches: each settles, then tells its caller. A caller
        # that stopped reading cannot hold the stop up beyond the grace.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(grace * (1 - _DRAIN_SHARE), 1.0))

    async def close(self) -> None:
        """Stops running batches; each settles its hold before this returns."""
        tasks = list(self._batch_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # The one path every batch takes ----------------------------------------------------

    async def _render_from(
        self, parent_image: bytes, order: RenderOrder, progress: ProgressSink
    ) -> Delivery:
        """Renders a job made from a parent's image, and measures how far it drifted from it."""
        image = await self._renderer.render(order, progress)
        with _step("drift", job_id=order.request_id):
            drift = await asyncio.to_thread(style_drift, parent_image, image.data)
        return Delivery(image, drift)

    async def _start(
        self,
        account_id: str,
        key: str,
        fingerprint: str,
        new_jobs: list[NewJob],
        decision: Decision | None,
        work: Work,
        tier: str | None,
    ) -> AsyncGenerator[RouterEvent, None]:
        """Admits the batch to its tier, opens it and runs it, or replays it when a racing call
        with the same key won. A refusal here holds no credit and records nothing."""
        if self._stopping:
            raise _shutting_down()
        places = min(len(new_jobs), self._limits.parallel_jobs)
        admitted = (
            self._admission.admit(tier, places) if tier is not None else contextlib.nullcontext()
        )
        with admitted:
            record = await self._open_batch(account_id, key, fingerprint, new_jobs, decision)
            events = (
                self._replay(record, fingerprint) if record.replayed else self._run(record, work)
            )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event

    async def _open_batch(
        self,
        account_id: str,
        key: str,
        fingerprint: str,
        new_jobs: list[NewJob],
        decision: Decision | None,
    ) -> BatchRecord:
        """Holds the credits, then records the batch; releases the hold if recording fails."""
        total = sum(job.quoted_cost for job in new_jobs)
        # One hold per attempt: a batch refused without doing any work is forgotten, and the
        # retry that runs its key again must not get that settled hold back from the ledger.
        # The ledger's key still makes the router's own retries of this Reserve call safe; a
        # hold left by a router that died before recording its batch expires by itself.
        hold_key = f"router:{account_id}:{fingerprint[:24]}:{secrets.token_hex(8)}"
        with _step("reserve", account_id=account_id, cost=total):
            try:
                hold_id = await self._ledger.reserve(
                    account_id,
                    total,
                    hold_key,
                    f"{new_jobs[0].kind.value} x{len(new_jobs)} ({key})",
                    self._limits.hold_ttl_seconds,
                )
            except FailedPrecondition as error:
                raise _refusal(error, decision) from None
        try:
            record = await self._jobs.create_batch(
                account_id=account_id,
                idempotency_key=key,
                fingerprint=fingerprint,
                jobs=new_jobs,
                decision=decision,
                hold_id=hold_id,
                lease=self._lease,
            )
        except BaseException:
            await self._release_unused(hold_id, hold_key)
            raise
        if record.replayed:
            # A racing call with the same key recorded its batch first, with its own hold.
            await self._release_unused(hold_id, hold_key)
        structlog.contextvars.bind_contextvars(batch_id=record.batch.batch_id)
        return record

    async def _release_unused(self, hold_id: str, hold_key: str) -> None:
        with contextlib.suppress(TiergenError), outliving_the_caller():
            await self._ledger.release(hold_id, f"{hold_key}:release")

    async def _recover_batch(self, record: BatchRecord) -> None:
        batch = record.batch
        self._recovering.add(batch.batch_id)
        try:
            for job in record.jobs:
                if job.status.is_final:
                    continue
                with contextlib.suppress(FailedPrecondition):
                    _count_final(
                        await self._jobs.mark_failed(
                            job.job_id,
                            "ABORTED",
                            "ROUTER_LOST",
                            "the router running this job stopped before it finished;"
                            " it was not charged",
                        )
                    )
                _log.warning("failed a job its router left", job_id=job.job_id)
            await self._settle(batch.account_id, batch.batch_id)
        finally:
            self._recovering.discard(batch.batch_id)
        _RECOVERED.inc()
        _log.warning("recovered an abandoned batch", batch_id=batch.batch_id)

    async def _replay(
        self, record: BatchRecord, fingerprint: str
    ) -> AsyncGenerator[RouterEvent, None]:
        """Answers a retry: the original batch, then each job's final state as it arrives."""
        if record.batch.fingerprint != fingerprint:
            raise errors.AlreadyExists(
                "this idempotency key was used for a different request; use a new key",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"batch_id": record.batch.batch_id},
            )
        yield BatchAccepted(replace(record, replayed=True))
        reported: set[str] = set()
        while True:
            try:
                current = await self._jobs.batch(record.batch.account_id, record.batch.batch_id)
            except NotFound:
                # The call that first used the key was refused without doing any work, and its
                # batch forgotten: the key is free again.
                raise errors.Aborted(
                    "the call that first used this idempotency key was refused before doing any"
                    " work; nothing was charged: retry with the same key",
                    reason="ORIGINAL_REFUSED",
                    metadata={"batch_id": record.batch.batch_id},
                ) from None
            for job in current.jobs:
                if job.status.is_final and job.job_id not in reported:
                    reported.add(job.job_id)
                    yield JobFinished(job)
            if len(reported) == len(current.jobs):
                return
            await asyncio.sleep(self._limits.replay_poll_seconds)

    async def _run(self, record: BatchRecord, work: Work) -> AsyncGenerator[RouterEvent, None]:
        """Streams a batch's events while a separate task runs it, so that a caller going
        away cancels the batch instead of abandoning it half-done, from its first event on."""
        events: asyncio.Queue[RouterEvent | None] = asyncio.Queue()
        batch_id = record.batch.batch_id
        started = asyncio.Event()
        failures: dict[str, TiergenError] = {}
        task = asyncio.create_task(
            self._execute(record, work, events.put_nowait, started, failures)
        )
        # The stream ends with the task, even one cancelled (by `close`) before it ran.
        task.add_done_callback(lambda _: events.put_nowait(None))
        self._batch_tasks[batch_id] = task
        self._idle.clear()
        finished: list[Job] = []
        try:
            yield BatchAccepted(record)
            while (event := await events.get()) is not None:
                if isinstance(event, JobFinished):
                    finished.append(event.job)
                yield event
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if not started.is_set():
                # Cancelled before it ran: nothing of the batch started, so it all returns.
                for job in await self._jobs.cancel_batch(record.batch.account_id, batch_id):
                    _count_final(job)
                await self._settle(record.batch.account_id, batch_id)
                if self._stopping:
                    failures.update((job.job_id, _shutting_down()) for job in record.jobs)
            self._batch_tasks.pop(batch_id, None)
            if not self._batch_tasks:
                self._idle.set()
        if any(job.status is JobStatus.SUCCEEDED for job in finished):
            return
        if len(failures) == len(record.jobs) and all(
            _refused_before_work(error) for error in failures.values()
        ):
            # Nothing was done: the refusal is not the key's answer, and a retry runs anew.
            if await self._jobs.forget_batch(batch_id):
                _log.info("forgot a batch refused before any work", batch_id=batch_id)
            raise next(iter(failures.values()))
        failed = [job for job in finished if job.status is JobStatus.FAILED]
        if failed:
            # The error as the backend raised it, with its retry hint and quota details.
            raise failures.get(failed[0].job_id) or job_error(failed[0])

    async def _execute(
        self,
        record: BatchRecord,
        work: Work,
        emit: Callable[[RouterEvent | None], None],
        started: asyncio.Event,
        failures: dict[str, TiergenError],
    ) -> None:
        started.set()
        batch = record.batch
        slots = asyncio.Semaphore(self._limits.parallel_jobs)
        events = _BatchEvents(emit, self._limits.progress_interval_seconds)
        tasks = []
        for job in record.jobs:
            task = asyncio.create_task(self._run_job(job, work, slots, events, failures))
            self._job_tasks[job.job_id] = task
            tasks.append(task)
        outcomes: list[Job | BaseException] = []
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # The caller went away or the router is stopping: wait for every job to record
            # its cancellation, then settle below, charging only what was delivered.
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            events.close()
            for job in record.jobs:
                self._job_tasks.pop(job.job_id, None)
            # Every job's final state is known when each returned one; otherwise read them.
            finals = [o for o in outcomes if isinstance(o, Job)]
            known = batch if len(finals) == len(record.jobs) else None
            try:
                await self._settle(batch.account_id, batch.batch_id, known, tuple(finals))
            finally:
                emit(None)

    async def _run_job(
        self,
        job: Job,
        work: Work,
        slots: asyncio.Semaphore,
        events: _BatchEvents,
        failures: dict[str, TiergenError],
    ) -> Job:
        """Runs one job to its final state; `failures` gets the error of a job that failed."""

        def progress(stage: str, fraction: float) -> None:
            events.progress(job.job_id, stage, fraction)

        try:
            async with slots:
                await self._jobs.mark_running(job.job_id)
                progress("running", 0.0)
                delivery = await work(job, progress)
                image = delivery.image
                with _step("store", job_id=job.job_id):
                    asset = await self._assets.put(
                        image.data,
                        width=image.width,
                        height=image.height,
                        media_type=image.media_type,
                    )
                cost, fallback = job.quoted_cost, None
                if delivery.fallback_tier is not None and job.size is not None:
                    cost = min(cost, self._policy.prices.price(delivery.fallback_tier, job.size))
                    fallback = (delivery.fallback_tier, (*job.reasons, delivery.fallback_reason))
                final = await self._jobs.mark_succeeded(
                    job.job_id, asset, cost, delivery.drift, fallback
                )
        except asyncio.CancelledError:
            if self._stopping:
                # Not the caller's doing: say so, so that it knows a retry is safe.
                failures[job.job_id] = _shutting_down()
                ended = await self._fail(job, failures[job.job_id])
            else:
                with contextlib.suppress(FailedPrecondition):
                    await self._jobs.mark_cancelled(job.job_id)
                ended = await self._jobs.get(job.account_id, job.job_id)
            _count_final(ended)
            events.finished(ended)
            raise
        except FailedPrecondition as error:
            if error.reason not in _STORE_REASONS:
                failures[job.job_id] = error
                final = await self._fail(job, error)
            else:
                # Cancelled by CancelJob while it ran: the image is not delivered or charged.
                final = await self._jobs.get(job.account_id, job.job_id)
        except TiergenError as error:
            failures[job.job_id] = error
            final = await self._fail(job, error)
        except Exception:
            _log.exception("job failed unexpectedly", job_id=job.job_id)
            failures[job.job_id] = errors.Internal(
                f"internal error (trace {current_trace_id() or 'none'})"
            )
            final = await self._fail(job, failures[job.job_id])
        _count_final(final)
        events.finished(final)
        return final

    async def _fail(self, job: Job, error: TiergenError) -> Job:
        _log.warning(
            "job failed",
            job_id=job.job_id,
            code=error.code,
            reason=error.reason,
            error=error.message,
        )
        try:
            return await self._jobs.mark_failed(job.job_id, error.code, error.reason, error.message)
        except FailedPrecondition:
            return await self._jobs.get(job.account_id, job.job_id)

    async def _settle(
        self,
        account_id: str,
        batch_id: str,
        batch: Batch | None = None,
        jobs: tuple[Job, ...] = (),
    ) -> None:
        """Captures the credits of the delivered jobs (the rest returns) or releases them all.

        `batch` and its final `jobs`, when the caller has them, spare reading them back.
        """
        if batch is None:
            record = await self._jobs.batch(account_id, batch_id)
            batch, jobs = record.batch, record.jobs
        hold_id = batch.hold_id
        if hold_id is None or batch.hold_state is not HoldState.OPEN:
            return
        charged = sum(job.cost for job in jobs if job.status is JobStatus.SUCCEEDED)
        # The credits settle even when the caller's deadline has passed: that is often why.
        with outliving_the_caller():
            await self._settle_hold(account_id, batch_id, hold_id, charged)

    async def _settle_hold(
        self, account_id: str, batch_id: str, hold_id: str, charged: int
    ) -> None:
        try:
            if charged:
                with _step("capture", account_id=account_id, cost=charged):
                    await self._ledger.capture(hold_id, charged, f"router:{batch_id}:capture")
                _CAPTURED.inc(charged)
                await self._jobs.settle_hold(batch_id, HoldState.CAPTURED, charged)
            else:
                with _step("release", account_id=account_id):
                    await self._ledger.release(hold_id, f"router:{batch_id}:release")
                await self._jobs.settle_hold(batch_id, HoldState.RELEASED)
        except TiergenError as error:
            if isinstance(error, FailedPrecondition) and error.reason == "HOLD_EXPIRED":
                # The ledger returned the credits itself: nothing was charged, and nothing is
                # left to settle.
                _log.warning("hold expired unsettled", batch_id=batch_id, uncharged=charged)
                await self._jobs.settle_hold(batch_id, HoldState.RELEASED)
                return
            # The hold stays open, and so the batch unfinished: once its lease runs out a
            # router claims it and settles again, or the ledger's expiry returns the credits.
            _log.error(
                "could not settle hold", batch_id=batch_id, hold_id=hold_id, error=str(error)
            )
