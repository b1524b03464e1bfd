"""gRPC adapters of the router's ports: ledger, generator and upscaler clients.

Every ledger request carries the owner's tenant next to its account (a settlement, the tenant of
the batch's owner), so the ledger keeps each tenant's accounts, holds and keys apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC

import grpc
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from tiergen.upscaler.v1 import upscaler_pb2, upscaler_pb2_grpc

from services.router.downstream.ports import (
    AccountBalance,
    AccountGrant,
    CreditGrant,
    GrantKind,
    Image,
    LedgerEntry,
    ProgressSink,
    RenderOrder,
    Reservation,
    UpscaleOrder,
)
from services.router.jobs.model import Owner
from services.router.routing.catalogue import ImageSize, TierCatalogue, TierSpec
from services.runtime.chunks import ChunkAssembler, image_info, split
from services.runtime.errors import Internal
from services.runtime.fairshare import Urgency
from services.runtime.resolution_proto import (
    aspect_ratio_from_proto,
    aspect_ratio_to_proto,
    size_from_proto,
    size_to_proto,
)
from services.runtime.status import from_rpc_error

__all__ = [
    "GENERATOR_SERVICE",
    "LEDGER_SERVICE",
    "UPSCALER_SERVICE",
    "GrpcLedger",
    "GrpcRenderer",
    "GrpcUpscaler",
]

LEDGER_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
GENERATOR_SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
UPSCALER_SERVICE = upscaler_pb2.DESCRIPTOR.services_by_name["UpscalerService"].full_name

_FORMATS = {
    "png": common_pb2.IMAGE_FORMAT_PNG,
    "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
    "webp": common_pb2.IMAGE_FORMAT_WEBP,
}
_METHODS = {
    "lanczos": common_pb2.UPSCALE_METHOD_LANCZOS,
    "bicubic": common_pb2.UPSCALE_METHOD_BICUBIC,
    "enhance": common_pb2.UPSCALE_METHOD_ENHANCE,
}
_URGENCIES = {
    Urgency.INTERACTIVE: common_pb2.URGENCY_INTERACTIVE,
    Urgency.BULK: common_pb2.URGENCY_BULK,
}
_GRANT_KINDS = {
    GrantKind.PURCHASE: ledger_pb2.GRANT_KIND_PURCHASE,
    GrantKind.ADJUSTMENT: ledger_pb2.GRANT_KIND_ADJUSTMENT,
}


class GrpcLedger:
    """The ledger over gRPC; its errors come back as the same domain errors."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        self._timeout = timeout

    async def available(self, owner: Owner) -> int:
        return (await self.balance(owner)).available

    async def balance(self, owner: Owner) -> AccountBalance:
        request = ledger_pb2.GetBalanceRequest(tenant=owner.tenant, account_id=owner.account_id)
        try:
            reply = await self._stub.GetBalance(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return _balance(reply.balance, owner)

    async def open_account(self, owner: Owner, idempotency_key: str) -> AccountGrant:
        request = ledger_pb2.OpenAccountRequest(
            tenant=owner.tenant, account_id=owner.account_id, idempotency_key=idempotency_key
        )
        try:
            reply = await self._stub.OpenAccount(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return AccountGrant(
            _balance(reply.balance, owner), reply.granted, reply.replayed, _outcome(reply.outcome)
        )

    async def check_in(self, owner: Owner, idempotency_key: str) -> AccountGrant:
        request = ledger_pb2.CheckInRequest(
            tenant=owner.tenant, account_id=owner.account_id, idempotency_key=idempotency_key
        )
        try:
            reply = await self._stub.CheckIn(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return AccountGrant(
            _balance(reply.balance, owner),
            reply.granted,
            reply.replayed,
            _outcome(reply.outcome),
            iso_week=reply.iso_week,
            cap_reached=reply.cap_reached,
        )

    async def grant(
        self, owner: Owner, amount: int, kind: GrantKind, reason: str, idempotency_key: str
    ) -> CreditGrant:
        request = ledger_pb2.GrantRequest(
            tenant=owner.tenant,
            account_id=owner.account_id,
            amount=amount,
            kind=_GRANT_KINDS[kind],
            reason=reason,
            idempotency_key=idempotency_key,
        )
        try:
            reply = await self._stub.Grant(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return CreditGrant(
            _entry(reply.entry, owner), _balance(reply.balance, owner), reply.replayed
        )

    async def reserve(
        self, owner: Owner, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> Reservation:
        request = ledger_pb2.ReserveRequest(
            tenant=owner.tenant,
            account_id=owner.account_id,
            amount=amount,
            idempotency_key=idempotency_key,
            memo=memo,
            ttl_seconds=ttl_seconds,
        )
        try:
            reply = await self._stub.Reserve(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        available = reply.balance.available if reply.HasField("balance") else None
        return Reservation(str(reply.hold.hold_id), available)

    async def capture(self, owner: Owner, hold_id: str, amount: int, idempotency_key: str) -> None:
        request = ledger_pb2.CaptureRequest(
            tenant=owner.tenant, hold_id=hold_id, amount=amount, idempotency_key=idempotency_key
        )
        try:
            await self._stub.Capture(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def release(self, owner: Owner, hold_id: str, idempotency_key: str) -> None:
        request = ledger_pb2.ReleaseRequest(
            tenant=owner.tenant, hold_id=hold_id, idempotency_key=idempotency_key
        )
        try:
            await self._stub.Release(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None


def _balance(message: ledger_pb2.Balance, owner: Owner) -> AccountBalance:
    """A balance the ledger answered for the owner the call named."""
    return AccountBalance(
        owner=owner,
        available=message.available,
        held=message.held,
        total=message.total,
        promotional_granted=message.promotional_granted,
        promotional_cap=message.promotional_cap,
        purchased=message.purchased,
        consumed=message.consumed,
    )


def _entry(message: ledger_pb2.Entry, owner: Owner) -> LedgerEntry:
    """A history entry the ledger answered for the owner the call named."""
    return LedgerEntry(
        entry_id=message.entry_id,
        owner=owner,
        kind=ledger_pb2.EntryKind.Name(message.kind).removeprefix("ENTRY_KIND_").lower(),
        available_delta=message.available_delta,
        held_delta=message.held_delta,
        available_after=message.available_after,
        held_after=message.held_after,
        hold_id=message.hold_id,
        memo=message.memo,
        create_time=message.create_time.ToDatetime(tzinfo=UTC),
    )


def _outcome(value: int) -> str:
    """The ledger's GrantOutcome without its prefix, lower-case ("granted", "already_open")."""
    return ledger_pb2.GrantOutcome.Name(value).removeprefix("GRANT_OUTCOME_").lower()


async def _receive_image(
    responses: AsyncIterator[generator_pb2.RenderResponse]
    | AsyncIterator[upscaler_pb2.UpscaleResponse],
    progress: ProgressSink,
    limit: int,
) -> Image:
    """Reads progress, then the result's info, then its chunks, from a Render or Upscale stream."""
    assembler: ChunkAssembler | None = None
    info = common_pb2.ImageInfo()
    drift: float | None = None
    async for message in responses:
        kind = message.WhichOneof("payload")
        if kind == "progress":
            progress(message.progress.stage, message.progress.fraction)
        elif kind == "result":
            info = message.result.image
            if isinstance(message, generator_pb2.RenderResponse) and message.result.HasField(
                "drift"
            ):
                drift = message.result.drift
            assembler = ChunkAssembler("image", limit, expected=info)
        elif kind == "chunk":
            if assembler is None:
                raise Internal("image bytes arrived before the result's info")
            assembler.add(message.chunk)
    if assembler is None:
        raise Internal("the stream ended without a result")
    data = assembler.finish()
    return Image(data, info.width, info.height, info.media_type, assembler.sha256, drift)


class GrpcRenderer:
    """The generator over gRPC: the reference image goes up in chunks, the result comes down."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float, max_image_bytes: int) -> None:
        self._stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        self._timeout = timeout
        self._limit = max_image_bytes

    async def tiers(self) -> TierCatalogue:
        """The generator's catalogue, capacities included, from one ListTiers call."""
        try:
            reply = await self._stub.ListTiers(
                generator_pb2.ListTiersRequest(), timeout=min(self._timeout, 5.0)
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        names = [tier.name for tier in reply.tiers]
        if len(set(names)) != len(names) or not all(names):
            raise Internal(f"the generator's ListTiers names tiers {names!r}: empty or repeated")
        return TierCatalogue(tuple(_tier(tier) for tier in reply.tiers))

    async def render(self, order: RenderOrder, progress: ProgressSink) -> Image:
        spec = generator_pb2.RenderSpec(
            tier=order.tier,
            resolution=common_pb2.Resolution(
                size=size_to_proto(order.size),
                aspect_ratio=aspect_ratio_to_proto(order.aspect_ratio),
            ),
            prompt=order.prompt,
            seed=order.seed,
            strength=order.strength,
            request_id=order.request_id,
            tenant=order.owner.tenant if order.owner else "",
            account_id=order.owner.account_id if order.owner else "",
            urgency=_URGENCIES[order.urgency],
        )
        if order.reference is not None:
            spec.reference.CopyFrom(
                image_info(
                    order.reference, 0, 0, common_pb2.IMAGE_FORMAT_PNG, order.reference_sha256
                )
            )
        if order.mask is not None:
            spec.mask.CopyFrom(
                image_info(order.mask, 0, 0, common_pb2.IMAGE_FORMAT_PNG, order.mask_sha256)
            )

        def requests() -> list[generator_pb2.RenderRequest]:
            messages = [generator_pb2.RenderRequest(spec=spec)]
            if order.reference is not None:
                messages += [
                    generator_pb2.RenderRequest(reference_chunk=c) for c in split(order.reference)
                ]
            if order.mask is not None:
                messages += [generator_pb2.RenderRequest(mask_chunk=c) for c in split(order.mask)]
            return messages

        try:
            call = self._stub.Render(iter(requests()), timeout=self._timeout)
            return await _receive_image(call, progress, self._limit)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None


def _tier(message: generator_pb2.Tier) -> TierSpec:
    """One tier of a ListTiers answer. Sizes and aspect ratios this router does not know (a
    newer generator's) are left out: it could neither price nor request them."""
    if len(message.expected_latency_ms) != len(message.sizes):
        raise Internal(
            f"the generator's tier {message.name!r} lists {len(message.sizes)} sizes but"
            f" {len(message.expected_latency_ms)} latencies"
        )
    latencies: dict[ImageSize, float] = {}
    for value, milliseconds in zip(message.sizes, message.expected_latency_ms, strict=True):
        size = size_from_proto(value)
        if size is not None:
            latencies[size] = milliseconds / 1000
    if not latencies:
        raise Internal(f"the generator's tier {message.name!r} offers no size this router knows")
    ratios = [aspect_ratio_from_proto(value) for value in message.aspect_ratios]
    return TierSpec(
        name=message.name,
        sizes=tuple(latencies),
        expected_latency_seconds=latencies,
        aspect_ratios=tuple(ratio for ratio in ratios if ratio is not None),
        inpainting=message.inpainting,
        text_rendering=message.text_rendering,
        max_reference_images=message.max_reference_images,
        max_concurrency=message.max_concurrency,
        queue_limit=message.queue_limit,
    )


class GrpcUpscaler:
    """The upscaler over gRPC, streamed both ways."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float, max_image_bytes: int) -> None:
        self._stub = upscaler_pb2_grpc.UpscalerServiceStub(channel)
        self._timeout = timeout
        self._limit = max_image_bytes

    async def upscale(self, order: UpscaleOrder, progress: ProgressSink) -> Image:
        spec = upscaler_pb2.UpscaleSpec(
            factor=order.factor,
            method=_METHODS[order.method],
            output_format=_FORMATS[order.output_format],
            quality=order.quality,
            input_size_bytes=len(order.data),
            request_id=order.request_id,
            tenant=order.owner.tenant if order.owner else "",
            account_id=order.owner.account_id if order.owner else "",
            urgency=_URGENCIES[order.urgency],
        )
        messages = [upscaler_pb2.UpscaleRequest(spec=spec)]
        messages += [upscaler_pb2.UpscaleRequest(chunk=c) for c in split(order.data)]
        try:
            call = self._stub.Upscale(iter(messages), timeout=self._timeout)
            return await _receive_image(call, progress, self._limit)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
