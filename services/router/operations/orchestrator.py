"""The router's operations as the gRPC edge calls them: quote, generate, promote, upscale and
edit (each planned, then run as a batch or replayed), reads, cancellation, and the lifecycle of
the running batches.

Every operation acts for an `Owner`, the account of one tenant, which the edge makes from the
caller's credential (the tenant) and the request's well-formed account id; the rest of the
request is checked here, before anything is read or held.

How a call wants its batch run (`Submission`: detached, and the webhook endpoint to tell) is
part of what identifies it only through the endpoint: a retry with the same key, detached or
not, is the same request. A named endpoint must be one of the tenant's (`webhook_exists`),
checked before anything is held; a retry replays without asking again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace

import structlog

from services.router.assets.store import AssetRef, AssetStore, check_asset_id
from services.router.downstream.ports import CreditLedger, Renderer, Upscaler
from services.router.jobs.model import Job, JobFilter, JobPage, Lease, Owner
from services.router.jobs.store import JobStore
from services.router.operations.batches import BatchRunner, Submission
from services.router.operations.events import BatchEvent
from services.router.operations.limits import OperationLimits
from services.router.operations.planning import (
    EditRequest,
    Handover,
    Plan,
    Planner,
    UpscaleRequest,
    fingerprint,
)
from services.router.operations.recovery import Recovery
from services.router.operations.telemetry import step
from services.router.quotas.limiter import QuotaLimiter
from services.router.routing import checks
from services.router.routing.admission import Admission
from services.router.routing.policy import MAX_N, Quote, RouteRequest, RoutingPolicy
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.identifiers import require_id, require_idempotency_key, require_plain_text

__all__ = ["Orchestrator", "Submission", "WebhookExists"]

#: Whether (tenant, webhook id) names an endpoint of that tenant.
WebhookExists = Callable[[str, str], Awaitable[bool]]


class Orchestrator:
    """Routes, charges and runs generations, handovers, upscales and edits; keeps jobs and
    assets; recovers what routers that are gone left unfinished."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        assets: AssetStore,
        ledger: CreditLedger,
        renderer: Renderer,
        upscaler: Upscaler,
        policy: RoutingPolicy,
        limits: OperationLimits | None = None,
        admission: Admission | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        webhook_exists: WebhookExists | None = None,
        quotas: QuotaLimiter | None = None,
    ) -> None:
        self._jobs = jobs
        self._quotas = quotas or QuotaLimiter()
        self._webhook_exists = webhook_exists
        self._assets = assets
        self._ledger = ledger
        self._policy = policy
        limits = limits or OperationLimits()
        self._limits = limits
        self._admission = admission or Admission()
        # The host names the pod in a cluster; the random part tells its processes apart.
        lease = Lease(
            owner=f"{socket.gethostname()}/{secrets.token_hex(8)}", seconds=limits.lease_seconds
        )
        self._planner = Planner(
            policy=lambda: self._policy,
            jobs=jobs,
            assets=assets,
            ledger=ledger,
            renderer=renderer,
            upscaler=upscaler,
            max_upscale_side=limits.max_upscale_side,
        )
        self._batches = BatchRunner(
            jobs=jobs,
            assets=assets,
            ledger=ledger,
            policy=lambda: self._policy,
            admission=self._admission,
            lease=lease,
            limits=limits,
        )
        self._recovery = Recovery(
            jobs=jobs,
            batches=self._batches,
            lease=lease,
            limits=limits,
            sleep=sleep or asyncio.sleep,
        )

    @property
    def policy(self) -> RoutingPolicy:
        return self._policy

    @property
    def admission(self) -> Admission:
        return self._admission

    @property
    def recovery(self) -> Recovery:
        return self._recovery

    def use_policy(self, policy: RoutingPolicy) -> None:
        """Swaps in a reloaded policy; calls already routed keep their decisions."""
        self._policy = policy

    # Quotes and the operations that create work --------------------------------------------

    async def quote(self, owner: Owner, request: RouteRequest) -> Quote:
        require_plain_text(request.prompt, "spec.prompt")
        # A Quote counts against requests per second (services.router.quotas.limiter).
        await self._quotas.admit_quote(owner)
        available = await self._ledger.available(owner)
        with step("route", account_id=owner.account_id, stage=request.stage.value):
            return self._policy.quote(replace(request, available=available))

    async def generate(
        self,
        owner: Owner,
        key: str,
        request: RouteRequest,
        seed: int | None = None,
        submission: Submission | None = None,
    ) -> AsyncGenerator[BatchEvent, None]:
        """Generates `request.n` variations; variation i renders with seed + i."""
        require_idempotency_key(key)
        require_plain_text(request.prompt, "spec.prompt")
        submission = _checked(submission)
        events = self._submit(
            owner,
            key,
            fingerprint("generate", owner, request, seed=seed, **_named(submission)),
            lambda: self._planner.generate(owner, key, request, seed),
            submission,
            images=min(max(request.n, 1), MAX_N),
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def promote(
        self,
        owner: Owner,
        key: str,
        handover: Handover,
        submission: Submission | None = None,
    ) -> AsyncGenerator[BatchEvent, None]:
        """Renders a parent job of the owner again on a higher tier with its image as the
        reference."""
        require_idempotency_key(key)
        require_id(handover.job_id, "job_id")
        require_plain_text(handover.prompt, "prompt")
        require_plain_text(handover.prompt_addition, "prompt_addition")
        submission = _checked(submission)
        structlog.contextvars.bind_contextvars(parent_job_id=handover.job_id)
        events = self._submit(
            owner,
            key,
            fingerprint("promote", owner, handover, **_named(submission)),
            lambda: self._planner.promote(owner, handover),
            submission,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def upscale(
        self,
        owner: Owner,
        key: str,
        request: UpscaleRequest,
        submission: Submission | None = None,
    ) -> AsyncGenerator[BatchEvent, None]:
        """Upscales a succeeded job's image into a new job linked to it."""
        require_idempotency_key(key)
        require_id(request.job_id, "job_id")
        request = replace(request, factor=checks.check_upscale_factor(request.factor or 2.0))
        submission = _checked(submission)
        structlog.contextvars.bind_contextvars(parent_job_id=request.job_id)
        events = self._submit(
            owner,
            key,
            fingerprint("upscale", owner, request, **_named(submission)),
            lambda: self._planner.upscale(owner, request),
            submission,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def edit(
        self,
        owner: Owner,
        key: str,
        request: EditRequest,
        submission: Submission | None = None,
    ) -> AsyncGenerator[BatchEvent, None]:
        """In-paints the masked region of a rendered job on its own tier and size."""
        require_idempotency_key(key)
        require_id(request.job_id, "job_id")
        require_plain_text(request.prompt, "prompt")
        checks.check_mask_bytes(request.mask, self._limits.max_mask_bytes)
        submission = _checked(submission)
        structlog.contextvars.bind_contextvars(parent_job_id=request.job_id)
        mask_sha256 = hashlib.sha256(request.mask).hexdigest()
        events = self._submit(
            owner,
            key,
            fingerprint(
                "edit",
                owner,
                replace(request, mask=b""),
                mask_sha256=mask_sha256,
                **_named(submission),
            ),
            lambda: self._planner.edit(owner, request, mask_sha256),
            submission,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def _submit(
        self,
        owner: Owner,
        key: str,
        request_fingerprint: str,
        plan: Callable[[], Awaitable[Plan]],
        submission: Submission,
        images: int = 1,
    ) -> AsyncGenerator[BatchEvent, None]:
        """The one path of every operation: a retry replays the batch its key made; anything
        else passes its quotas, is planned, then run."""
        structlog.contextvars.bind_contextvars(tenant=owner.tenant, account_id=owner.account_id)
        existing = await self._jobs.find_batch(owner, key)
        async with contextlib.AsyncExitStack() as quota:
            if existing is not None:
                events = self._batches.replay(
                    existing, request_fingerprint, detach=submission.detach
                )
            else:
                # Over a quota: refused here, before anything is held, charged or recorded.
                admitted = await quota.enter_async_context(self._quotas.admit(owner, images))
                await self._require_webhook(owner, submission.webhook_id)
                events = admitted.follow(
                    self._batches.submit(owner, key, request_fingerprint, await plan(), submission)
                )
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event

    async def _require_webhook(self, owner: Owner, webhook_id: str | None) -> None:
        """NotFound unless `webhook_id` (when given) is an endpoint of the owner's tenant."""
        if webhook_id is None:
            return
        if self._webhook_exists is None or not await self._webhook_exists(owner.tenant, webhook_id):
            raise NotFound(f"there is no webhook {webhook_id!r}", reason="WEBHOOK_NOT_FOUND")

    # Reads and cancellation ------------------------------------------------------------------

    async def set_shortlisted(self, owner: Owner, job_id: str, shortlisted: bool) -> Job:
        """Marks or unmarks one of the owner's jobs as shortlisted."""
        require_id(job_id, "job_id")
        return await self._jobs.set_shortlisted(owner, job_id, shortlisted)

    async def get_job(self, owner: Owner, job_id: str) -> tuple[Job, tuple[Job, ...]]:
        """The owner's job and its children (promotes, upscales and edits made from it)."""
        require_id(job_id, "job_id")
        job = await self._jobs.get(owner, job_id)
        return job, await self._jobs.children(owner, job_id)

    async def list_jobs(
        self, owner: Owner, filters: JobFilter, page_size: int, page_token: str
    ) -> JobPage:
        require_id(filters.batch_id or "", "batch_id", required=False)
        require_id(filters.parent_job_id or "", "parent_job_id", required=False)
        return await self._jobs.list(owner, filters, page_size, page_token)

    async def cancel(
        self, owner: Owner, *, job_id: str = "", batch_id: str = ""
    ) -> tuple[Job, ...]:
        """Cancels a job or a batch's unfinished jobs, here or on the replica running them."""
        require_id(job_id, "job_id", required=False)
        require_id(batch_id, "batch_id", required=False)
        if job_id:
            cancelled: tuple[Job, ...] = (await self._jobs.cancel_job(owner, job_id),)
        elif batch_id:
            cancelled = await self._jobs.cancel_batch(owner, batch_id)
        else:
            raise InvalidArgument("name a job_id or a batch_id to cancel", field="target")
        self._batches.cancel_jobs([job.job_id for job in cancelled])
        return cancelled

    async def open_asset(
        self, owner: Owner, asset_id: str
    ) -> tuple[AssetRef, AsyncIterator[bytes]]:
        """An asset's reference and its bytes in chunks; NotFound unless one of the owner's jobs
        made it (another account's or another tenant's is NotFound, as a missing one)."""
        check_asset_id(asset_id)
        if not await self._jobs.has_asset(owner, asset_id):
            raise NotFound(f"asset {asset_id} not found", reason="ASSET_NOT_FOUND")
        return await self._assets.get_info(asset_id), self._assets.read_chunks(asset_id)

    # Lifecycle -------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Takes over the batches of routers that are gone (see `Recovery.recover`)."""
        return await self._recovery.recover()

    async def watch_abandoned(self) -> None:
        await self._recovery.watch_abandoned()

    async def keep_leases(self) -> None:
        await self._recovery.keep_leases()

    async def drain(self, grace: float) -> None:
        """Ends the running batches within `grace` seconds (see `BatchRunner.drain`)."""
        await self._batches.drain(grace)

    async def close(self) -> None:
        """Stops running batches; each settles its hold before this returns."""
        await self._batches.close()


def _checked(submission: Submission | None) -> Submission:
    """The submission, its endpoint id checked as an id; none given is attached, untold."""
    if submission is None:
        return Submission()
    if submission.webhook_id is not None:
        require_id(submission.webhook_id, "webhook_id")
    return submission


def _named(submission: Submission) -> dict[str, str]:
    """What a submission adds to its request's fingerprint: the endpoint it names, if any, so
    that requests made before webhooks keep their fingerprints."""
    return {} if submission.webhook_id is None else {"webhook_id": submission.webhook_id}
