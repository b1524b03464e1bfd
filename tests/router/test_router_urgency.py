"""The router tells the generator and upscaler whose each job is and how interactive it is: the
rule (stage and the tier's latency at the size), the orders the domain makes, and the fields its
gRPC clients send."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc
from tiergen.upscaler.v1 import upscaler_pb2, upscaler_pb2_grpc

from services.router.downstream.grpc_clients import GrpcRenderer, GrpcUpscaler
from services.router.downstream.ports import RenderOrder, UpscaleOrder
from services.router.jobs.model import Owner
from services.router.operations.planning import Handover, UpscaleRequest
from services.router.routing.catalogue import AspectRatio, ImageSize, Stage
from services.router.routing.policy import RouteRequest
from services.router.routing.urgency import render_urgency, urgency_of
from services.runtime.fairshare import Urgency
from tests.router.fakes import RouterDomain, finished
from tests.router.generator_tiers import reported_tiers

INTERACTIVE, BULK = Urgency.INTERACTIVE, Urgency.BULK


@pytest.mark.parametrize(
    ("stage", "tier", "size", "expected"),
    [
        (Stage.EXPLORE, "nano", ImageSize.K1, INTERACTIVE),
        (Stage.VALIDATE, "standard", ImageSize.K1, INTERACTIVE),
        (Stage.EXPLORE, "pro", ImageSize.K1, INTERACTIVE),
        (Stage.EXPLORE, "standard", ImageSize.K2, BULK),
        (Stage.REFINE, "nano", ImageSize.K1, BULK),
        (Stage.REFINE, "pro", ImageSize.K4, BULK),
        (Stage.EXPLORE, "no-such-tier", ImageSize.K1, BULK),
    ],
)
def test_interactive_is_a_sketch_someone_waits_for(
    stage: Stage, tier: str, size: ImageSize, expected: Urgency
) -> None:
    assert render_urgency(reported_tiers(), stage, tier, size) is expected


def test_work_that_is_not_a_render_is_bulk() -> None:
    assert urgency_of(Stage.ENHANCE, None) is BULK
    assert urgency_of(Stage.EXPLORE, None) is BULK
    assert urgency_of(Stage.EXPLORE, 0.5) is INTERACTIVE
    assert urgency_of(Stage.EXPLORE, 0.51) is BULK


async def test_every_order_names_its_owner_and_urgency() -> None:
    domain = RouterDomain.build()
    account = domain.ledger.open("sketcher")
    sketch = RouteRequest(prompt="a fox in snow", tier="nano", size=ImageSize.K1)
    _, (parent,) = await finished(domain.router.generate(account, "sketch", sketch))
    refine = RouteRequest(prompt="a fox in snow", tier="pro", size=ImageSize.K2, stage=Stage.REFINE)
    await finished(domain.router.generate(account, "refine", refine))
    await finished(domain.router.promote(account, "promote", Handover(parent.job_id, "standard")))
    await finished(domain.router.upscale(account, "upscale", UpscaleRequest(parent.job_id)))

    renders = domain.renderer.orders
    assert [(order.tier, order.urgency) for order in renders] == [
        ("nano", INTERACTIVE),
        ("pro", BULK),
        ("standard", BULK),
    ]
    assert {order.owner for order in renders} == {account}
    (upscale,) = domain.upscaler.orders
    assert (upscale.owner, upscale.urgency) == (account, BULK)


class _Recorder:
    """A generator and an upscaler that keep the first message of each call and answer with a
    tiny image."""

    def __init__(self) -> None:
        self.render_specs: list[generator_pb2.RenderSpec] = []
        self.upscale_specs: list[upscaler_pb2.UpscaleSpec] = []
        buffer = io.BytesIO()
        Image.new("RGB", (2, 2)).save(buffer, "PNG")
        self.image = buffer.getvalue()

    def _answer(self, message: Any) -> list[Any]:
        info = common_pb2.ImageInfo(width=2, height=2, size_bytes=len(self.image))
        chunk = common_pb2.ImageChunk(offset=0, data=self.image)
        if message is generator_pb2.RenderResponse:
            return [message(result=generator_pb2.RenderResult(image=info)), message(chunk=chunk)]
        return [message(result=upscaler_pb2.UpscaleResult(image=info)), message(chunk=chunk)]

    async def Render(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if request.WhichOneof("payload") == "spec":
                self.render_specs.append(request.spec)
        for answer in self._answer(generator_pb2.RenderResponse):
            yield answer

    async def ListTiers(self, request: Any, context: Any) -> Any:
        return generator_pb2.ListTiersResponse()

    async def Upscale(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if request.WhichOneof("payload") == "spec":
                self.upscale_specs.append(request.spec)
        for answer in self._answer(upscaler_pb2.UpscaleResponse):
            yield answer


async def test_the_grpc_clients_send_tenant_account_and_urgency() -> None:
    recorder = _Recorder()
    server = grpc.aio.server()
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(recorder, server)  # type: ignore[no-untyped-call]
    upscaler_pb2_grpc.add_UpscalerServiceServicer_to_server(recorder, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    owner = Owner("acme", "user-7")
    try:
        await GrpcRenderer(channel, 10, 1 << 20).render(
            RenderOrder(
                "nano",
                ImageSize.K1,
                AspectRatio.R1_1,
                "a fox",
                1,
                "job-1",
                owner=owner,
                urgency=INTERACTIVE,
            ),
            lambda _stage, _fraction: None,
        )
        await GrpcUpscaler(channel, 10, 1 << 20).upscale(
            UpscaleOrder(recorder.image, 2.0, "lanczos", "png", 0, "job-2", owner=owner),
            lambda _stage, _fraction: None,
        )
        # An order that names no owner (a caller before tenants) sends the tenant "" as bulk.
        await GrpcRenderer(channel, 10, 1 << 20).render(
            RenderOrder("nano", ImageSize.K1, AspectRatio.R1_1, "a fox", 1, "job-3"),
            lambda _stage, _fraction: None,
        )
    finally:
        await channel.close()
        await server.stop(0)

    first, anonymous = recorder.render_specs
    assert (first.tenant, first.account_id, first.urgency) == (
        "acme",
        "user-7",
        common_pb2.URGENCY_INTERACTIVE,
    )
    assert (anonymous.tenant, anonymous.urgency) == ("", common_pb2.URGENCY_BULK)
    (upscale,) = recorder.upscale_specs
    assert (upscale.tenant, upscale.account_id, upscale.urgency) == (
        "acme",
        "user-7",
        common_pb2.URGENCY_BULK,
    )
