"""The generator's gRPC edge: translates messages to the domain and back, and streams images.

One `Render` call, as the server sees it:

1. The first message carries the spec. A reference image or mask the spec announces (an
   `ImageInfo` with its size or checksum) follows as `reference_chunk` / `mask_chunk` messages,
   assembled in order, within the catalogue's reference limit, and checked against the
   announcement when the client half-closes.
2. The whole request is validated (tier, size, prompt, seed, strength, reference, mask) before
   it queues, so a bad request never takes a place.
3. It takes a place in its tier's queue, or is refused with RESOURCE_EXHAUSTED: `QUEUE_FULL`
   with a RetryInfo of the tier's expected latency and a QuotaFailure naming the tier, or
   `WAIT_EXCEEDS_DEADLINE` with a RetryInfo of the expected wait when it could not start before
   the caller's deadline. The spec's `tenant`, `account_id` and `urgency` (set by the router)
   decide its turn (`services.generator.scheduling`); a waiting render may be shed for more
   urgent work or for a tenant under its share (RESOURCE_EXHAUSTED `SHED`).
4. Progress: "queued" (0.0) once placed, "rendering" (0.1) when it gets a worker and goes to
   the tier's backend (the worker pool, or an HTTP provider), "done" (1.0) when the image is
   back. The renderer's own stages are not forwarded: a callback cannot cross into a worker
   process cheaply, and even a 4K render takes only seconds.
5. `result`, then the PNG in 1 MiB chunks. A provider's failure arrives as the status its
   domain error maps to (docs/providers.md lists them).

When the call ends early (cancelled, deadline passed, client gone) its place in the tier is
given back at once. A render a worker has already started runs to the end in the background
(the renderer has no stopping points) and its image is dropped; one still waiting for a worker
is withdrawn. A provider's request is abandoned and its connection closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeAlias, TypeVar

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2

from services.generator.drift import style_drift
from services.generator.picture import Backend, Picture
from services.generator.scheduling import (
    BuiltinBackend,
    RenderScheduler,
    observe_render,
    timed_turn,
)
from services.generator.tiers import RenderRequest, Tier, TierCatalogue, validate_request
from services.runtime.chunks import ChunkAssembler, drain, image_info, split
from services.runtime.errors import FieldViolation, InvalidArgument, TiergenError
from services.runtime.fairshare import FairShareSettings, Requester, Turn, Urgency
from services.runtime.resolution import AspectRatio, ImageSize, Resolution
from services.runtime.resolution_proto import (
    aspect_ratio_from_proto,
    aspect_ratio_to_proto,
    size_from_proto,
    size_to_proto,
)

__all__ = ["GeneratorServicer"]

_tracer = trace.get_tracer("tiergen.generator")

_RenderContext: TypeAlias = (
    "grpc.aio.ServicerContext[generator_pb2.RenderRequest, generator_pb2.RenderResponse]"
)

_SPEC_FIELD = "spec"

_Value = TypeVar("_Value", ImageSize, AspectRatio)

#: The domain takes a list of references; this contract carries one, called `reference`.
_CONTRACT_FIELDS = {"references": "reference", "references[0]": "reference"}
#: Rendered images up to this size are hashed on the event loop (under 0.1 ms at 64 KiB).
_HASH_ON_LOOP_BYTES = 64 * 1024
#: Longest tenant or account id accepted: the router's own limits are far below it.
_MOST_ID_CHARS = 256
#: The contract's urgency, as the queues know it; unspecified is bulk.
_URGENCIES = {common_pb2.URGENCY_INTERACTIVE: Urgency.INTERACTIVE}


class GeneratorServicer:
    """`tiergen.generator.v1.GeneratorService` over a tier catalogue and its tiers' backends."""

    def __init__(
        self,
        catalogue: TierCatalogue,
        backends: Mapping[str, Backend],
        fair_share: FairShareSettings | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._backends = {tier.name: backends[tier.backend] for tier in catalogue}
        self._scheduler = RenderScheduler(catalogue, backends, fair_share)

    async def ListTiers(
        self, request: generator_pb2.ListTiersRequest, context: Any
    ) -> generator_pb2.ListTiersResponse:
        return generator_pb2.ListTiersResponse(tiers=[_tier(tier) for tier in self._catalogue])

    async def Render(
        self,
        request_iterator: AsyncIterator[generator_pb2.RenderRequest],
        context: _RenderContext,
    ) -> AsyncIterator[generator_pb2.RenderResponse]:
        requests = aiter(request_iterator)
        try:
            request, requester = await self._receive(requests)
        except TiergenError:
            await drain(requests, self._catalogue.reference_limits.max_bytes)
            raise
        # Checking a reference or mask reads all of its (up to 64 MiB of) bytes: off the event
        # loop. Without one, validation is a few field checks, cheaper than a thread hop.
        if request.references or request.mask is not None:
            tier = await asyncio.to_thread(self._validate, request)
        else:
            tier = self._validate(request)
        structlog.contextvars.bind_contextvars(tier=tier.name, backend=tier.backend)
        size = request.resolution.size
        remaining = context.time_remaining()
        with self._scheduler.admit(tier, size, requester, remaining) as ticket:
            yield _progress("queued", 0.0)
            async with timed_turn(ticket) as turn:
                yield _progress("rendering", 0.1)
                started = time.perf_counter()
                picture = await self._render(tier, request, turn)
                observe_render(tier.name, time.perf_counter() - started)
        # Hashing a large image takes milliseconds: off the event loop. A small one hashes in
        # less time than the hop would take.
        if len(picture.image) > _HASH_ON_LOOP_BYTES:
            info = await asyncio.to_thread(
                image_info,
                picture.image,
                picture.width,
                picture.height,
                common_pb2.IMAGE_FORMAT_PNG,
            )
        else:
            info = image_info(
                picture.image, picture.width, picture.height, common_pb2.IMAGE_FORMAT_PNG
            )
        drift = picture.drift
        if drift is None and request.references:
            # A provider's image: decoded here, where rendering's CPU is budgeted.
            drift = await asyncio.to_thread(style_drift, request.references[0], picture.image)
        yield _progress("done", 1.0)
        yield generator_pb2.RenderResponse(
            result=generator_pb2.RenderResult(
                image=info,
                tier=tier.name,
                backend=tier.backend,
                seed=request.seed,
                render_ms=round(picture.seconds * 1000),
                drift=drift,
            )
        )
        for chunk in split(picture.image):
            yield generator_pb2.RenderResponse(chunk=chunk)

    async def _render(self, tier: Tier, request: RenderRequest, turn: Turn) -> Picture:
        """Renders `request` on the tier's backend (the built-in one on `turn`'s worker), in a
        span."""
        span = _tracer.start_span(
            "render",
            attributes={
                "tiergen.tier": tier.name,
                "tiergen.backend": tier.backend,
                "tiergen.width": request.resolution.width,
                "tiergen.height": request.resolution.height,
                # A uint64 seed does not fit an integer attribute (int64).
                "tiergen.seed": str(request.seed),
            },
        )
        backend = self._backends[tier.name]
        try:
            if isinstance(backend, BuiltinBackend):
                return await backend.render_on(turn, tier, request)
            return await backend.render(tier, request)
        except BaseException as error:
            span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
            raise
        finally:
            span.end()

    async def _receive(
        self, requests: AsyncIterator[generator_pb2.RenderRequest]
    ) -> tuple[RenderRequest, Requester]:
        """The spec of the first message and the images it announces, as a domain request, and
        whom it is for."""
        first = await anext(requests, None)
        if first is None:
            raise InvalidArgument(
                "the request stream is empty: send the spec first",
                field=_SPEC_FIELD,
                reason="SPEC_MISSING",
            )
        if first.WhichOneof("payload") != "spec":
            raise InvalidArgument(
                "the first message must carry the spec; send reference and mask chunks after it",
                field=_SPEC_FIELD,
                reason="SPEC_MISSING",
            )
        spec = first.spec
        if spec.request_id:
            structlog.contextvars.bind_contextvars(request_id=spec.request_id)
        resolution = self._resolution(spec)
        requester = _requester(spec)
        limit = self._catalogue.reference_limits.max_bytes
        # Keyed by the oneof case that carries each image's chunks.
        images: dict[str, ChunkAssembler | None] = {
            "reference_chunk": (
                ChunkAssembler("reference", limit, expected=spec.reference)
                if _announced(spec.reference)
                else None
            ),
            "mask_chunk": (
                ChunkAssembler("mask", limit, expected=spec.mask) if _announced(spec.mask) else None
            ),
        }
        async for message in requests:
            kind = message.WhichOneof("payload")
            if kind == "spec":
                raise InvalidArgument(
                    "a second spec arrived; send the spec once, as the first message",
                    field=_SPEC_FIELD,
                    reason="SPEC_REPEATED",
                )
            if kind is None:
                raise InvalidArgument(
                    "a message after the spec carries nothing; each must carry a chunk",
                    field="payload",
                )
            assembler = images[kind]
            if assembler is None:
                image = kind.removesuffix("_chunk")
                raise InvalidArgument(
                    f"{kind} arrived but the spec announces no {image}; set spec.{image} to the"
                    " image's size_bytes and sha256 before sending its chunks",
                    field=kind,
                    reason="UNANNOUNCED_CHUNK",
                )
            assembler.add(getattr(message, kind))
        # Off the event loop: finishing hashes the whole image.
        reference, mask = [
            None if assembler is None else await asyncio.to_thread(assembler.finish)
            for assembler in images.values()
        ]
        request = RenderRequest(
            tier=spec.tier,
            prompt=spec.prompt,
            seed=spec.seed,
            resolution=resolution,
            references=() if reference is None else (reference,),
            strength=spec.strength,
            mask=mask,
        )
        return request, requester

    def _resolution(self, spec: generator_pb2.RenderSpec) -> Resolution:
        """The requested size: unspecified is the tier's smallest, and the ratio square."""
        size_number = spec.resolution.size
        ratio_number = spec.resolution.aspect_ratio
        if size_number == common_pb2.IMAGE_SIZE_UNSPECIFIED:
            tier = next((tier for tier in self._catalogue if tier.name == spec.tier), None)
            # An unknown tier is refused by validation, which reports every bad field at once.
            size = ImageSize.K1 if tier is None else tier.smallest_size
        else:
            size = _known(size_from_proto(size_number), size_number, "resolution.size")
        if ratio_number == common_pb2.ASPECT_RATIO_UNSPECIFIED:
            ratio = AspectRatio.R1_1
        else:
            ratio = _known(
                aspect_ratio_from_proto(ratio_number), ratio_number, "resolution.aspect_ratio"
            )
        return Resolution(size, ratio)

    def _validate(self, request: RenderRequest) -> Tier:
        """The tier to render on; InvalidArgument naming the contract's fields otherwise."""
        try:
            return validate_request(self._catalogue, request)
        except InvalidArgument as error:
            raise InvalidArgument(
                error.message,
                violations=[
                    FieldViolation(_CONTRACT_FIELDS.get(v.field, v.field), v.description)
                    for v in error.violations
                ],
                reason=error.reason,
                metadata=error.metadata,
            ) from None


def _requester(spec: generator_pb2.RenderSpec) -> Requester:
    """Whom the render is for, as the router says; bulk work of tenant "" when it says nothing."""
    for field, value in (("tenant", spec.tenant), ("account_id", spec.account_id)):
        if len(value) > _MOST_ID_CHARS:
            raise InvalidArgument(
                f"{field} is {len(value)} characters; at most {_MOST_ID_CHARS}", field=field
            )
    if spec.tenant:
        structlog.contextvars.bind_contextvars(tenant=spec.tenant)
    urgency = _URGENCIES.get(spec.urgency, Urgency.BULK)
    return Requester(spec.tenant, spec.account_id, urgency)


def _announced(info: common_pb2.ImageInfo) -> bool:
    """Whether an image announcement is present: chunks of it will follow."""
    return info.size_bytes != 0 or bool(info.sha256)


def _known(value: _Value | None, number: int, field: str) -> _Value:
    """`value`, the domain's reading of enum `number`; InvalidArgument when it has none."""
    if value is None:
        raise InvalidArgument(f"{field} has an unknown value {number}", field=field)
    return value


def _progress(stage: str, fraction: float) -> generator_pb2.RenderResponse:
    return generator_pb2.RenderResponse(
        progress=common_pb2.Progress(stage=stage, fraction=fraction)
    )


def _tier(tier: Tier) -> generator_pb2.Tier:
    return generator_pb2.Tier(
        name=tier.name,
        display_name=tier.display_name,
        backend=tier.backend,
        sizes=[size_to_proto(size) for size in tier.sizes],
        aspect_ratios=[aspect_ratio_to_proto(ratio) for ratio in tier.aspect_ratios],
        max_reference_images=tier.capabilities.max_reference_images,
        text_rendering=tier.capabilities.text_rendering,
        inpainting=tier.capabilities.inpainting,
        max_concurrency=tier.max_concurrency,
        queue_limit=tier.queue_limit,
        expected_latency_ms=[
            round(tier.expected_latency_seconds[size] * 1000) for size in tier.sizes
        ],
    )
