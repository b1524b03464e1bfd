"""The router's gRPC edge: translates messages to the domain and back; nothing else.

Every call acts for an `Owner`: the tenant of the caller's credential (bound by the access gate
before the handler runs, never read from the request) and the request's account id, checked
before anything else.

The domain names the fields of its own requests (`prompt`, `tier`, `size`, ...); the edge maps
them to the field paths of the message it serves (`spec.prompt` in a Generate, `resolution` in
a Promote), so a refusal points at what the caller sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import grpc
import structlog
from google.protobuf import timestamp_pb2
from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.router.access.admin import ApiKeyAdmin
from services.router.access.principal import current_principal
from services.router.downstream.ports import AccountBalance, Accounts, GrantKind, LedgerEntry
from services.router.jobs.model import Job, JobFilter, JobKind, JobStatus, Owner, UpscaleMethod
from services.router.operations.events import (
    BatchAccepted,
    BatchEvent,
    JobFinished,
    JobProgressed,
)
from services.router.operations.orchestrator import Orchestrator, Submission
from services.router.operations.planning import EditRequest, Handover, UpscaleRequest
from services.router.routing.catalogue import AspectRatio, Fidelity, Stage
from services.router.routing.policy import Decision, RouteRequest
from services.router.webhooks.admin import WebhookAdmin
from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.identifiers import (
    require_account_id,
    require_idempotency_key,
    require_plain_text,
)
from services.runtime.resolution_proto import (
    aspect_ratio_from_proto,
    aspect_ratio_to_proto,
    size_from_proto,
    size_to_proto,
)
from services.runtime.tracing import current_trace_id

__all__ = ["RouterServicer"]

_audit = structlog.get_logger("tiergen.audit")

#: Longest reason of a Grant, in characters: it is kept in the account's history for good.
MAX_GRANT_REASON_CHARS = 500

_FORMATS = {
    common_pb2.IMAGE_FORMAT_UNSPECIFIED: "png",
    common_pb2.IMAGE_FORMAT_PNG: "png",
    common_pb2.IMAGE_FORMAT_JPEG: "jpeg",
    common_pb2.IMAGE_FORMAT_WEBP: "webp",
}
_FORMAT_OF_MEDIA = {
    "image/png": common_pb2.IMAGE_FORMAT_PNG,
    "image/jpeg": common_pb2.IMAGE_FORMAT_JPEG,
    "image/webp": common_pb2.IMAGE_FORMAT_WEBP,
}
_METHODS = {
    common_pb2.UPSCALE_METHOD_UNSPECIFIED: UpscaleMethod.LANCZOS,
    common_pb2.UPSCALE_METHOD_LANCZOS: UpscaleMethod.LANCZOS,
    common_pb2.UPSCALE_METHOD_BICUBIC: UpscaleMethod.BICUBIC,
    common_pb2.UPSCALE_METHOD_ENHANCE: UpscaleMethod.ENHANCE,
}
_METHODS_BACK = {
    UpscaleMethod.LANCZOS: common_pb2.UPSCALE_METHOD_LANCZOS,
    UpscaleMethod.BICUBIC: common_pb2.UPSCALE_METHOD_BICUBIC,
    UpscaleMethod.ENHANCE: common_pb2.UPSCALE_METHOD_ENHANCE,
}
_FIDELITIES = {
    router_pb2.FIDELITY_UNSPECIFIED: Fidelity.UNSPECIFIED,
    router_pb2.FIDELITY_DRAFT: Fidelity.DRAFT,
    router_pb2.FIDELITY_BALANCED: Fidelity.BALANCED,
    router_pb2.FIDELITY_HIGH: Fidelity.HIGH,
}
_STAGES = {
    Stage.EXPLORE: common_pb2.STAGE_EXPLORE,
    Stage.VALIDATE: common_pb2.STAGE_VALIDATE,
    Stage.REFINE: common_pb2.STAGE_REFINE,
    Stage.ENHANCE: common_pb2.STAGE_ENHANCE,
}
_KINDS = {
    JobKind.GENERATE: router_pb2.JOB_KIND_GENERATE,
    JobKind.PROMOTE: router_pb2.JOB_KIND_PROMOTE,
    JobKind.UPSCALE: router_pb2.JOB_KIND_UPSCALE,
    JobKind.EDIT: router_pb2.JOB_KIND_EDIT,
}
_STATUSES = {
    JobStatus.QUEUED: router_pb2.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: router_pb2.JOB_STATUS_RUNNING,
    JobStatus.SUCCEEDED: router_pb2.JOB_STATUS_SUCCEEDED,
    JobStatus.FAILED: router_pb2.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: router_pb2.JOB_STATUS_CANCELLED,
}
_GRANT_KINDS = {
    ledger_pb2.GRANT_KIND_UNSPECIFIED: GrantKind.PURCHASE,
    ledger_pb2.GRANT_KIND_PURCHASE: GrantKind.PURCHASE,
    ledger_pb2.GRANT_KIND_ADJUSTMENT: GrantKind.ADJUSTMENT,
}
_STAGES_BACK = {int(value): stage for stage, value in _STAGES.items()}
_KINDS_BACK = {int(value): kind for kind, value in _KINDS.items()}
_STATUSES_BACK = {int(value): status for status, value in _STATUSES.items()}

#: Where the domain's fields of a generation are in a GenerationSpec (Quote and Generate). A
#: size not offered points at the resolution as a whole, as it always has.
_SPEC_FIELDS = {
    "prompt": "spec.prompt",
    "tier": "spec.tier",
    "n": "spec.n",
    "stage": "spec.stage",
    "size": "spec.resolution",
    "aspect_ratio": "spec.resolution.aspect_ratio",
}
#: Where the domain's fields of a handover are in a PromoteRequest.
_PROMOTE_FIELDS = {"size": "resolution", "aspect_ratio": "resolution.aspect_ratio"}


@contextlib.contextmanager
def _fields_of(paths: Mapping[str, str]) -> Iterator[None]:
    """Re-raises the domain's InvalidArgument with its fields as `paths` places them in the
    request being served; fields already given as paths are left as they are."""
    try:
        yield
    except InvalidArgument as error:
        raise InvalidArgument(
            error.message,
            violations=[
                FieldViolation(paths.get(v.field, v.field), v.description) for v in error.violations
            ],
            reason=error.reason,
            metadata=error.metadata,
        ) from None


def _owner(account_id: str) -> Owner:
    """The owner a call acts for: its caller's tenant, and its well-formed account id."""
    return Owner(current_principal().tenant, require_account_id(account_id))


def _stage_to_proto(stage: Stage) -> common_pb2.Stage:
    return _STAGES[stage]


def _stage_from_proto(value: int) -> Stage | None:
    """Explore for STAGE_UNSPECIFIED; None for a value this router does not know."""
    if value == common_pb2.STAGE_UNSPECIFIED:
        return Stage.EXPLORE
    return _STAGES_BACK.get(value)


def _enum(table: dict[Any, Any], value: int, field: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"{field} has an unknown value {value}", field=field) from None


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def job_message(job: Job, children: tuple[Job, ...] = ()) -> router_pb2.Job:
    """The protobuf form of a job."""
    message = router_pb2.Job(
        job_id=job.job_id,
        batch_id=job.batch_id,
        account_id=job.owner.account_id,
        kind=_KINDS[job.kind],
        status=_STATUSES[job.status],
        tier=job.tier,
        stage=_stage_to_proto(job.stage),
        prompt=job.prompt,
        seed=job.seed,
        variation=job.variation,
        resolution=common_pb2.Resolution(
            size=size_to_proto(job.size) if job.size is not None else None,
            aspect_ratio=aspect_ratio_to_proto(job.aspect_ratio),
        ),
        width=job.width,
        height=job.height,
        quoted_cost=job.quoted_cost,
        cost=job.cost,
        parent_job_id=job.parent_job_id or "",
        child_job_ids=[child.job_id for child in children],
        reasons=list(job.reasons),
        strength=job.strength or 0.0,
        upscale_factor=job.upscale_factor or 0.0,
        create_time=_timestamp(job.create_time),
        start_time=_timestamp(job.start_time),
        finish_time=_timestamp(job.finish_time),
        trace_id=job.trace_id,
        shortlisted=job.shortlisted,
    )
    if job.drift is not None:
        message.drift = job.drift
    if job.upscale_method is not None:
        message.upscale_method = _METHODS_BACK[job.upscale_method]
    if job.asset is not None:
        info = job.asset.info
        message.asset.CopyFrom(
            common_pb2.AssetRef(
                asset_id=job.asset.asset_id,
                info=common_pb2.ImageInfo(
                    width=info.width,
                    height=info.height,
                    format=_FORMAT_OF_MEDIA.get(
                        info.media_type, common_pb2.IMAGE_FORMAT_UNSPECIFIED
                    ),
                    media_type=info.media_type,
                    size_bytes=info.size_bytes,
                    sha256=job.asset.asset_id,
                ),
            )
        )
    if job.error is not None:
        message.error.CopyFrom(
            router_pb2.JobError(
                code=job.error.code, reason=job.error.reason, message=job.error.message
            )
        )
    return message


def decision_message(decision: Decision) -> router_pb2.Decision:
    return router_pb2.Decision(
        tier=decision.tier,
        resolution=common_pb2.Resolution(
            size=size_to_proto(decision.size),
            aspect_ratio=aspect_ratio_to_proto(decision.aspect_ratio),
        ),
        width=decision.width,
        height=decision.height,
        unit_cost=decision.unit_cost,
        n=decision.n,
        total_cost=decision.total_cost,
        reasons=list(decision.reasons),
        downgraded=decision.downgraded,
    )


def _route_request(spec: router_pb2.GenerationSpec, deadline: float | None) -> RouteRequest:
    stage = _stage_from_proto(spec.stage)
    if stage is None:
        raise InvalidArgument(f"spec.stage has an unknown value {spec.stage}", field="spec.stage")
    ratio = _aspect_ratio(spec.resolution.aspect_ratio)
    if ratio is None:
        raise InvalidArgument(
            f"spec.resolution.aspect_ratio has an unknown value {spec.resolution.aspect_ratio}",
            field="spec.resolution.aspect_ratio",
        )
    size = size_from_proto(spec.resolution.size)
    if size is None and spec.resolution.size:
        raise InvalidArgument(
            f"spec.resolution.size has an unknown value {spec.resolution.size}",
            field="spec.resolution.size",
        )
    return RouteRequest(
        prompt=spec.prompt,
        tier=spec.tier,
        stage=stage,
        size=size,
        aspect_ratio=ratio,
        n=spec.n,
        fidelity=_enum(_FIDELITIES, spec.fidelity, "spec.fidelity"),
        allow_downgrade=spec.allow_downgrade,
        deadline_seconds=deadline,
    )


def _aspect_ratio(value: int) -> AspectRatio | None:
    """Square for ASPECT_RATIO_UNSPECIFIED; None for a value this router does not know."""
    if value == common_pb2.ASPECT_RATIO_UNSPECIFIED:
        return AspectRatio.R1_1
    return aspect_ratio_from_proto(value)


def _submission(request: Any) -> Submission:
    """How a Generate, Promote, Upscale or Edit wants its batch run."""
    return Submission(detach=request.detach, webhook_id=request.webhook_id or None)


def _deadline(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """The caller's deadline as routing weighs it: none for a detached call, whose work does
    not wait for its caller."""
    return None if request.detach else context.time_remaining()


def _batch_message(event: BatchAccepted) -> router_pb2.Batch:
    record = event.record
    batch = router_pb2.Batch(
        batch_id=record.batch.batch_id,
        jobs=[job_message(job) for job in record.jobs],
        replayed=record.replayed,
        detached=record.batch.detached,
        webhook_id=record.batch.webhook_id or "",
    )
    if record.batch.decision is not None:
        batch.decision.CopyFrom(decision_message(record.batch.decision))
    return batch


def _progress(event: JobProgressed) -> router_pb2.JobProgress:
    return router_pb2.JobProgress(
        job_id=event.job_id,
        progress=common_pb2.Progress(stage=event.stage, fraction=event.fraction),
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """RouterService over the router's operations; balance calls are forwarded to the ledger."""

    def __init__(
        self,
        router: Orchestrator,
        accounts: Accounts,
        *,
        keys: ApiKeyAdmin,
        webhooks: WebhookAdmin,
    ) -> None:
        self._router = router
        self._accounts = accounts
        self._keys = keys
        self._webhooks = webhooks

    async def Quote(
        self, request: router_pb2.QuoteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.QuoteResponse:
        owner = _owner(request.account_id)
        with _fields_of(_SPEC_FIELDS):
            quote = await self._router.quote(
                owner, _route_request(request.spec, context.time_remaining())
            )
        available = quote.available or 0
        return router_pb2.QuoteResponse(
            decision=decision_message(quote.decision),
            available=available,
            affordable=quote.affordable,
            shortfall=quote.shortfall,
        )

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        owner = _owner(request.account_id)
        route = _route_request(request.spec, _deadline(request, context))
        seed = request.spec.seed if request.spec.HasField("seed") else None
        events = self._router.generate(
            owner, request.idempotency_key, route, seed, _submission(request)
        )
        async with contextlib.aclosing(events):
            with _fields_of(_SPEC_FIELDS):
                async for event in events:
                    if isinstance(event, BatchAccepted):
                        yield router_pb2.GenerateResponse(batch=_batch_message(event))
                    elif isinstance(event, JobProgressed):
                        yield router_pb2.GenerateResponse(progress=_progress(event))
                    else:
                        yield router_pb2.GenerateResponse(job=job_message(event.job))

    async def _single(
        self,
        events: AsyncGenerator[BatchEvent, None],
        response: Callable[..., Any],
    ) -> AsyncIterator[Any]:
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, BatchAccepted):
                    yield response(accepted=job_message(event.record.jobs[0]))
                elif isinstance(event, JobProgressed):
                    yield response(progress=_progress(event))
                elif isinstance(event, JobFinished):
                    yield response(job=job_message(event.job))

    async def Promote(
        self, request: router_pb2.PromoteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.PromoteResponse]:
        owner = _owner(request.account_id)
        size = size_from_proto(request.resolution.size)
        if size is None and request.resolution.size:
            raise InvalidArgument(
                f"resolution.size has an unknown value {request.resolution.size}",
                field="resolution.size",
            )
        ratio = aspect_ratio_from_proto(request.resolution.aspect_ratio)
        if ratio is None and request.resolution.aspect_ratio:
            raise InvalidArgument(
                f"resolution.aspect_ratio has an unknown value {request.resolution.aspect_ratio}",
                field="resolution.aspect_ratio",
            )
        if not request.job_id:
            raise InvalidArgument("job_id is required: the job to promote", field="job_id")
        handover = Handover(
            job_id=request.job_id,
            tier=request.tier,
            size=size,
            aspect_ratio=ratio,
            prompt=request.prompt,
            prompt_addition=request.prompt_addition,
            strength=request.strength if request.HasField("strength") else None,
            seed=request.seed if request.HasField("seed") else None,
        )
        events = self._router.promote(
            owner, request.idempotency_key, handover, _submission(request)
        )
        with _fields_of(_PROMOTE_FIELDS):
            async for message in self._single(events, router_pb2.PromoteResponse):
                yield message

    async def Upscale(
        self, request: router_pb2.UpscaleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.UpscaleResponse]:
        owner = _owner(request.account_id)
        if not request.job_id:
            raise InvalidArgument("job_id is required: the job to upscale", field="job_id")
        if not 0 <= request.quality <= 100:
            raise InvalidArgument(
                f"quality {request.quality} is outside 1-100 (0 means the server default)",
                field="quality",
            )
        upscale = UpscaleRequest(
            job_id=request.job_id,
            factor=request.factor,
            method=_enum(_METHODS, request.method, "method"),
            output_format=_enum(_FORMATS, request.output_format, "output_format"),
            quality=request.quality,
        )
        events = self._router.upscale(owner, request.idempotency_key, upscale, _submission(request))
        async for message in self._single(events, router_pb2.UpscaleResponse):
            yield message

    async def Edit(
        self, request: router_pb2.EditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.EditResponse]:
        owner = _owner(request.account_id)
        if not request.job_id:
            raise InvalidArgument("job_id is required: the job to edit", field="job_id")
        edit = EditRequest(
            job_id=request.job_id,
            mask=request.mask,
            prompt=request.prompt,
            seed=request.seed if request.HasField("seed") else None,
        )
        events = self._router.edit(owner, request.idempotency_key, edit, _submission(request))
        async for message in self._single(events, router_pb2.EditResponse):
            yield message

    async def SetShortlist(
        self, request: router_pb2.SetShortlistRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.SetShortlistResponse:
        job = await self._router.set_shortlisted(
            _owner(request.account_id), request.job_id, request.shortlisted
        )
        return router_pb2.SetShortlistResponse(job=job_message(job))

    async def GetJob(
        self, request: router_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.GetJobResponse:
        job, children = await self._router.get_job(_owner(request.account_id), request.job_id)
        return router_pb2.GetJobResponse(job=job_message(job, children))

    async def ListJobs(
        self, request: router_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.ListJobsResponse:
        owner = _owner(request.account_id)
        stage = _stage_from_proto(request.stage) if request.stage else None
        if stage is None and request.stage:
            raise InvalidArgument(f"stage has an unknown value {request.stage}", field="stage")
        filters = JobFilter(
            stage=stage,
            tier=request.tier or None,
            status=_enum(_STATUSES_BACK, request.status, "status") if request.status else None,
            kind=_enum(_KINDS_BACK, request.kind, "kind") if request.kind else None,
            batch_id=request.batch_id or None,
            parent_job_id=request.parent_job_id or None,
            shortlisted=request.shortlisted if request.HasField("shortlisted") else None,
        )
        page = await self._router.list_jobs(owner, filters, request.page_size, request.page_token)
        return router_pb2.ListJobsResponse(
            jobs=[job_message(job) for job in page.jobs], next_page_token=page.next_page_token
        )

    async def CancelJob(
        self, request: router_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.CancelJobResponse:
        jobs = await self._router.cancel(
            _owner(request.account_id), job_id=request.job_id, batch_id=request.batch_id
        )
        return router_pb2.CancelJobResponse(jobs=[job_message(job) for job in jobs])

    async def GetAsset(
        self, request: router_pb2.GetAssetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.GetAssetResponse]:
        asset, chunks = await self._router.open_asset(_owner(request.account_id), request.asset_id)
        info = asset.info
        yield router_pb2.GetAssetResponse(
            info=common_pb2.ImageInfo(
                width=info.width,
                height=info.height,
                format=_FORMAT_OF_MEDIA.get(info.media_type, common_pb2.IMAGE_FORMAT_UNSPECIFIED),
                media_type=info.media_type,
                size_bytes=info.size_bytes,
                sha256=asset.asset_id,
            )
        )
        offset = 0
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for data in chunks:
                yield router_pb2.GetAssetResponse(
                    chunk=common_pb2.ImageChunk(offset=offset, data=data)
                )
                offset += len(data)

    # Forwarded to the ledger for callers that only know the router.

    async def OpenAccount(
        self, request: router_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.OpenAccountResponse:
        grant = await self._accounts.open_account(
            _owner(request.account_id), request.idempotency_key
        )
        return router_pb2.OpenAccountResponse(
            balance=_balance_message(grant.balance),
            granted=grant.granted,
            replayed=grant.replayed,
            outcome=_grant_outcome(grant.outcome),
        )

    async def GetBalance(
        self, request: router_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.GetBalanceResponse:
        balance = await self._accounts.balance(_owner(request.account_id))
        return router_pb2.GetBalanceResponse(balance=_balance_message(balance))

    async def CheckIn(
        self, request: router_pb2.CheckInRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.CheckInResponse:
        grant = await self._accounts.check_in(_owner(request.account_id), request.idempotency_key)
        return router_pb2.CheckInResponse(
            balance=_balance_message(grant.balance),
            granted=grant.granted,
            iso_week=grant.iso_week,
            cap_reached=grant.cap_reached,
            replayed=grant.replayed,
            outcome=_grant_outcome(grant.outcome),
        )

    async def Grant(
        self, request: router_pb2.GrantRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.GrantResponse:
        owner = _owner(request.account_id)
        if request.amount <= 0:
            raise InvalidArgument(
                f"amount {request.amount} is not positive: grant at least 1 credit",
                field="amount",
            )
        kind: GrantKind = _enum(_GRANT_KINDS, request.kind, "kind")
        reason = _grant_reason(request.reason)
        key = require_idempotency_key(request.idempotency_key)
        grant = await self._accounts.grant(owner, request.amount, kind, reason, key)
        # A replay is audited too, marked so: whoever sums the grants counts each once.
        _audit.info(
            "audit",
            action="credits.granted",
            tenant=owner.tenant,
            credential=current_principal().credential,
            account_id=owner.account_id,
            amount=request.amount,
            kind=kind.value,
            replayed=grant.replayed,
            trace_id=current_trace_id(),
        )
        return router_pb2.GrantResponse(
            entry=_entry_message(grant.entry),
            balance=_balance_message(grant.balance),
            replayed=grant.replayed,
        )

    # The caller's tenant's API keys (services.router.access.admin).

    async def CreateApiKey(
        self, request: router_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.CreateApiKeyResponse:
        return await self._keys.CreateApiKey(request)

    async def ListApiKeys(
        self, request: router_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.ListApiKeysResponse:
        return await self._keys.ListApiKeys(request)

    async def RotateApiKey(
        self, request: router_pb2.RotateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.RotateApiKeyResponse:
        return await self._keys.RotateApiKey(request)

    async def RevokeApiKey(
        self, request: router_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.RevokeApiKeyResponse:
        return await self._keys.RevokeApiKey(request)

    # The caller's tenant's webhook endpoints (services.router.webhooks.admin).

    async def CreateWebhook(
        self, request: router_pb2.CreateWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.CreateWebhookResponse:
        return await self._webhooks.CreateWebhook(request)

    async def ListWebhooks(
        self, request: router_pb2.ListWebhooksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.ListWebhooksResponse:
        return await self._webhooks.ListWebhooks(request)

    async def UpdateWebhook(
        self, request: router_pb2.UpdateWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.UpdateWebhookResponse:
        return await self._webhooks.UpdateWebhook(request)

    async def DeleteWebhook(
        self, request: router_pb2.DeleteWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.DeleteWebhookResponse:
        return await self._webhooks.DeleteWebhook(request)

    async def RotateWebhookSecret(
        self,
        request: router_pb2.RotateWebhookSecretRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.RotateWebhookSecretResponse:
        return await self._webhooks.RotateWebhookSecret(request)

    async def ListWebhookDeliveries(
        self,
        request: router_pb2.ListWebhookDeliveriesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> router_pb2.ListWebhookDeliveriesResponse:
        return await self._webhooks.ListWebhookDeliveries(request)


def _grant_reason(reason: str) -> str:
    """A Grant's reason: required, plain text, at most `MAX_GRANT_REASON_CHARS` characters."""
    if not reason.strip():
        raise InvalidArgument(
            "reason is required: why the credits are granted (an order or ticket number)",
            field="reason",
        )
    if len(reason) > MAX_GRANT_REASON_CHARS:
        raise InvalidArgument(
            f"reason is {len(reason)} characters; the limit is {MAX_GRANT_REASON_CHARS}",
            field="reason",
        )
    return require_plain_text(reason, "reason")


def _entry_message(entry: LedgerEntry) -> ledger_pb2.Entry:
    return ledger_pb2.Entry(
        entry_id=entry.entry_id,
        account_id=entry.owner.account_id,
        tenant=entry.owner.tenant,
        kind=f"ENTRY_KIND_{entry.kind.upper()}",
        available_delta=entry.available_delta,
        held_delta=entry.held_delta,
        available_after=entry.available_after,
        held_after=entry.held_after,
        hold_id=entry.hold_id,
        memo=entry.memo,
        create_time=_timestamp(entry.create_time),
    )


def _balance_message(balance: AccountBalance) -> ledger_pb2.Balance:
    return ledger_pb2.Balance(
        account_id=balance.owner.account_id,
        tenant=balance.owner.tenant,
        available=balance.available,
        held=balance.held,
        total=balance.total,
        promotional_granted=balance.promotional_granted,
        promotional_cap=balance.promotional_cap,
        purchased=balance.purchased,
        consumed=balance.consumed,
    )


def _grant_outcome(outcome: str) -> Any:
    return ledger_pb2.GrantOutcome.Value(f"GRANT_OUTCOME_{outcome.upper()}")
