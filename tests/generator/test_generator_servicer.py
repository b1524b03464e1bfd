"""The generator over real gRPC: tiers, renders streamed both ways, bad input, admission, health."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import pytest_asyncio
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc

from services.generator.renderer import RenderSpec, render
from services.generator.server import SERVICE_NAME, create_server
from services.generator.settings import GeneratorSettings
from services.generator.tiers import Quality
from services.runtime.chunks import CHUNK_BYTES, image_info, split
from services.runtime.resolution import MAX_PROMPT_CHARS
from services.runtime.settings import ConfigError
from tests.log_lines import rpc_lines
from tests.rich_errors import bad_fields, details
from tests.tls import session_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

T = TypeVar("T")

PROMPT = 'a lighthouse on a cliff at sunset, "OPEN"'
K1, K2, K4 = common_pb2.IMAGE_SIZE_1K, common_pb2.IMAGE_SIZE_2K, common_pb2.IMAGE_SIZE_4K
SQUARE = common_pb2.ASPECT_RATIO_1_1
ALL_RATIOS = [
    common_pb2.ASPECT_RATIO_1_1,
    common_pb2.ASPECT_RATIO_3_2,
    common_pb2.ASPECT_RATIO_2_3,
    common_pb2.ASPECT_RATIO_4_3,
    common_pb2.ASPECT_RATIO_3_4,
    common_pb2.ASPECT_RATIO_16_9,
    common_pb2.ASPECT_RATIO_9_16,
    common_pb2.ASPECT_RATIO_21_9,
]

#: A tier that takes one render and queues none, slow enough (a detailed 2K picture, about a
#: second) to be caught in flight, and a fast tier beside it.
BUSY_TIERS_TOML = """\
[limits]
max_reference_bytes = 4000

[tiers.solo]
backend = "builtin"
quality = "high"
sizes = ["1K", "2K"]
max_reference_images = 1
max_concurrency = 1
queue_limit = 0
expected_latency_seconds = { "1K" = 0.4, "2K" = 1.5 }

[tiers.quick]
backend = "builtin"
quality = "low"
sizes = ["1K"]
max_concurrency = 2
queue_limit = 4
expected_latency_seconds = { "1K" = 0.05 }
"""
#: How long a test waits for a place the server gives back in the background; far longer than
#: the background render holding the worker needs.
FREED_WITHIN_SECONDS = 20.0


def settings(tiers_file: Path | None = None, workers: int = 2) -> GeneratorSettings:
    return GeneratorSettings(
        server=session_pki().server("generator"), tiers_file=tiers_file, workers=workers
    )


@contextlib.asynccontextmanager
async def serving(generator_settings: GeneratorSettings) -> AsyncIterator[grpc.aio.Channel]:
    server, port = await create_server(generator_settings)
    await server.start()
    channel = session_pki().channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(0)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """One server with the embedded catalogue for every test that leaves no state behind."""
    async with serving(settings()) as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def busy_channel(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[grpc.aio.Channel]:
    """A server whose `solo` tier is full with one render, and whose reference limit is tiny."""
    path = tmp_path_factory.mktemp("tiers") / "tiers.toml"
    path.write_text(BUSY_TIERS_TOML)
    async with serving(settings(path)) as opened:
        yield opened


def stub_for(channel: grpc.aio.Channel) -> Any:
    return generator_pb2_grpc.GeneratorServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Any:
    return stub_for(channel)


def spec(
    tier: str = "nano",
    size: int = K1,
    aspect_ratio: int = SQUARE,
    prompt: str = PROMPT,
    seed: int = 7,
    **fields: Any,
) -> generator_pb2.RenderSpec:
    return generator_pb2.RenderSpec(
        tier=tier,
        resolution=common_pb2.Resolution(size=size, aspect_ratio=aspect_ratio),  # type: ignore[arg-type]
        prompt=prompt,
        seed=seed,
        **fields,
    )


def announce(data: bytes) -> common_pb2.ImageInfo:
    return image_info(data, 0, 0, common_pb2.IMAGE_FORMAT_PNG)


def messages(
    render_spec: generator_pb2.RenderSpec,
    reference: bytes | None = None,
    mask: bytes | None = None,
) -> list[generator_pb2.RenderRequest]:
    """The spec, announcing `reference` and `mask`, then their chunks."""
    if reference is not None:
        render_spec.reference.CopyFrom(announce(reference))
    if mask is not None:
        render_spec.mask.CopyFrom(announce(mask))
    sent = [generator_pb2.RenderRequest(spec=render_spec)]
    sent += [generator_pb2.RenderRequest(reference_chunk=c) for c in split(reference or b"")]
    sent += [generator_pb2.RenderRequest(mask_chunk=c) for c in split(mask or b"")]
    return sent


@dataclass
class Rendering:
    stages: list[tuple[str, float]]
    result: generator_pb2.RenderResult
    chunks: list[common_pb2.ImageChunk]

    @property
    def image(self) -> bytes:
        return b"".join(chunk.data for chunk in self.chunks)


async def render_call(
    stub: Any, sent: Sequence[generator_pb2.RenderRequest], deadline: float = 60.0
) -> Rendering:
    stages: list[tuple[str, float]] = []
    result = None
    chunks: list[common_pb2.ImageChunk] = []
    async for message in stub.Render(iter(sent), timeout=deadline):
        kind = message.WhichOneof("payload")
        if kind == "progress":
            assert result is None, "progress after the result"
            stages.append((message.progress.stage, round(message.progress.fraction, 3)))
        elif kind == "result":
            assert result is None, "a second result"
            result = message.result
        else:
            assert result is not None, "image bytes before the result"
            chunks.append(message.chunk)
    assert result is not None
    return Rendering(stages, result, chunks)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def reference_picture(width: int = 256, height: int = 256) -> bytes:
    """Red above, blue below: a layout and colours no prompt would give."""
    image = Image.new("RGB", (width, height), (220, 30, 30))
    image.paste((20, 40, 230), (0, height // 2, width, height))
    return png(image)


async def test_list_tiers_describes_the_catalogue(stub: Any) -> None:
    reply = await stub.ListTiers(generator_pb2.ListTiersRequest())
    tiers = {tier.name: tier for tier in reply.tiers}
    assert [tier.name for tier in reply.tiers] == ["nano", "standard", "pro"]
    nano, standard, pro = tiers["nano"], tiers["standard"], tiers["pro"]
    assert list(nano.sizes) == [K1]
    assert list(standard.sizes) == [K1, K2]
    assert list(pro.sizes) == [K1, K2, K4]
    assert all(list(tier.aspect_ratios) == ALL_RATIOS for tier in reply.tiers)
    assert list(nano.expected_latency_ms) == [50]
    assert list(standard.expected_latency_ms) == [200, 600]
    assert list(pro.expected_latency_ms) == [350, 1000, 4000]
    assert (nano.display_name, nano.backend) == ("Nano", "builtin")
    assert [t.max_reference_images for t in reply.tiers] == [1, 4, 8]
    assert [t.text_rendering for t in reply.tiers] == [False, True, True]
    assert [t.inpainting for t in reply.tiers] == [False, True, True]
    assert [(t.max_concurrency, t.queue_limit) for t in reply.tiers] == [(2, 64), (2, 16), (1, 8)]


@pytest.mark.parametrize(
    ("tier", "size", "aspect_ratio", "width", "height"),
    [
        ("nano", K1, common_pb2.ASPECT_RATIO_16_9, 1376, 768),
        ("standard", K1, common_pb2.ASPECT_RATIO_3_2, 1264, 848),
        # Unspecified: the tier's smallest size, square.
        ("pro", common_pb2.IMAGE_SIZE_UNSPECIFIED, common_pb2.ASPECT_RATIO_UNSPECIFIED, 1024, 1024),
    ],
)
async def test_renders_come_at_the_asked_size_and_repeat_byte_for_byte(
    stub: Any,
    spans: InMemorySpanExporter,
    tier: str,
    size: int,
    aspect_ratio: int,
    width: int,
    height: int,
) -> None:
    first = await render_call(stub, messages(spec(tier, size, aspect_ratio, request_id="job_1")))
    second = await render_call(stub, messages(spec(tier, size, aspect_ratio, request_id="job_2")))

    assert first.image == second.image
    assert first.stages == [("queued", 0.0), ("rendering", 0.1), ("done", 1.0)]
    result = first.result
    assert (result.tier, result.backend, result.seed) == (tier, "builtin", 7)
    assert result.render_ms >= 0
    info = result.image
    assert (info.width, info.height) == (width, height)
    assert (info.format, info.media_type) == (common_pb2.IMAGE_FORMAT_PNG, "image/png")
    assert info.size_bytes == len(first.image)
    assert info.sha256 == hashlib.sha256(first.image).hexdigest()
    with Image.open(io.BytesIO(first.image)) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", (width, height))

    finished = spans.get_finished_spans()
    rendered = [s for s in finished if s.name == "render"]
    assert len(rendered) == 2
    servers = {s.context.span_id: s for s in finished if s.kind is SpanKind.SERVER}
    assert rendered[0].parent is not None
    assert servers[rendered[0].parent.span_id].name.endswith("GeneratorService/Render")
    assert dict(rendered[0].attributes or {}) == {
        "tiergen.tier": tier,
        "tiergen.backend": "builtin",
        "tiergen.width": width,
        "tiergen.height": height,
        "tiergen.seed": "7",
    }


async def test_the_log_line_carries_the_request_id_and_tier(stub: Any) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await render_call(stub, messages(spec(request_id="job_42")))
        (line,) = await rpc_lines(logs, 1)
    assert (line["code"], line["request_id"], line["tier"]) == ("OK", "job_42", "nano")


async def test_the_bytes_are_the_renderers_own(stub: Any) -> None:
    """The service adds nothing: its image is what the renderer paints in this process."""
    rendering = await render_call(stub, messages(spec("standard", seed=99)))
    expected = render(RenderSpec(PROMPT, 99, 1024, 1024, Quality.MEDIUM, draw_text=True))
    assert rendering.image == expected.image


async def test_a_different_seed_gives_a_different_picture(stub: Any) -> None:
    first = await render_call(stub, messages(spec(seed=1)))
    second = await render_call(stub, messages(spec(seed=2)))
    assert first.image != second.image


@pytest.mark.slow
async def test_a_pro_4k_render_arrives_in_many_chunks(stub: Any) -> None:
    rendering = await render_call(stub, messages(spec("pro", K4, seed=3)))
    info = rendering.result.image
    assert (info.width, info.height) == (4096, 4096)
    assert info.size_bytes > 4 * CHUNK_BYTES
    assert len(rendering.chunks) == -(-info.size_bytes // CHUNK_BYTES)
    assert [c.offset for c in rendering.chunks] == [
        i * CHUNK_BYTES for i in range(len(rendering.chunks))
    ]
    assert all(len(c.data) <= CHUNK_BYTES for c in rendering.chunks)
    assert hashlib.sha256(rendering.image).hexdigest() == info.sha256
    with Image.open(io.BytesIO(rendering.image)) as decoded:
        assert decoded.size == (4096, 4096)


async def test_a_reference_steers_by_its_strength(stub: Any) -> None:
    reference = reference_picture()
    plain = await render_call(stub, messages(spec()))
    ignored = await render_call(stub, messages(spec(strength=0.0), reference))
    kept = await render_call(stub, messages(spec(strength=1.0), reference))
    assert ignored.image == plain.image
    assert kept.image != plain.image
    with Image.open(io.BytesIO(kept.image)) as decoded:
        top = decoded.convert("RGB").getpixel((512, 100))
        bottom = decoded.convert("RGB").getpixel((512, 900))
    # At strength 1 the reference's layout is kept: red above, blue below.
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > top[2] and bottom[2] > bottom[0]


async def test_a_reference_may_announce_only_its_checksum(stub: Any) -> None:
    reference = reference_picture()
    announced = spec(strength=1.0)
    announced.reference.sha256 = hashlib.sha256(reference).hexdigest()
    sent = [generator_pb2.RenderRequest(spec=announced)]
    sent += [generator_pb2.RenderRequest(reference_chunk=c) for c in split(reference, 1000)]
    by_checksum = await render_call(stub, sent)
    by_both = await render_call(stub, messages(spec(strength=1.0), reference))
    assert by_checksum.image == by_both.image


async def test_inpainting_changes_only_the_masked_region(stub: Any) -> None:
    source = Image.new("RGB", (1024, 1024), (10, 120, 30))
    mask = Image.new("L", (1024, 1024), 0)
    mask.paste(255, (0, 0, 1024, 512))
    rendering = await render_call(stub, messages(spec("standard"), png(source), png(mask)))
    with Image.open(io.BytesIO(rendering.image)) as decoded:
        picture = decoded.convert("RGB")
        assert picture.getpixel((512, 900)) == (10, 120, 30)
        assert picture.getpixel((512, 100)) != (10, 120, 30)


def _over_long_prompt() -> str:
    return "x" * (MAX_PROMPT_CHARS + 1)


def _image_bytes(size: tuple[int, int]) -> bytes:
    return png(Image.new("L", size, 255))


def _chunks_first() -> list[generator_pb2.RenderRequest]:
    return [generator_pb2.RenderRequest(reference_chunk=c) for c in split(reference_picture())]


def _second_spec() -> list[generator_pb2.RenderRequest]:
    return [generator_pb2.RenderRequest(spec=spec()), generator_pb2.RenderRequest(spec=spec())]


def _unannounced(kind: str) -> list[generator_pb2.RenderRequest]:
    chunk = common_pb2.ImageChunk(offset=0, data=reference_picture())
    unannounced = generator_pb2.RenderRequest()
    getattr(unannounced, kind).CopyFrom(chunk)
    return [generator_pb2.RenderRequest(spec=spec()), unannounced]


def _announced_not_sent() -> list[generator_pb2.RenderRequest]:
    announced = spec(strength=0.5)
    announced.reference.CopyFrom(announce(reference_picture()))
    return [generator_pb2.RenderRequest(spec=announced)]


def _stopped_mid_image() -> list[generator_pb2.RenderRequest]:
    reference = reference_picture()
    sent = messages(spec(strength=0.5), reference)
    sent[1].reference_chunk.data = sent[1].reference_chunk.data[:100]
    return sent


def _wrong_checksum() -> list[generator_pb2.RenderRequest]:
    sent = messages(spec(strength=0.5), reference_picture())
    sent[0].spec.reference.sha256 = "0" * 64
    return sent


def _out_of_order() -> list[generator_pb2.RenderRequest]:
    reference = reference_picture()
    announced = spec(strength=0.5)
    announced.reference.CopyFrom(announce(reference))
    chunks = list(split(reference, 500))
    chunks[0], chunks[1] = chunks[1], chunks[0]
    return [generator_pb2.RenderRequest(spec=announced)] + [
        generator_pb2.RenderRequest(reference_chunk=c) for c in chunks
    ]


def _over_the_limit() -> list[generator_pb2.RenderRequest]:
    announced = spec(strength=0.5)
    announced.reference.size_bytes = 64 * 1024 * 1024 + 1
    return [generator_pb2.RenderRequest(spec=announced)]


BAD_REQUESTS: dict[str, tuple[Any, str]] = {
    "unknown tier": (lambda: messages(spec("ultra")), "tier"),
    "size the tier does not offer": (lambda: messages(spec("nano", K2)), "resolution"),
    "unknown size value": (lambda: messages(spec(size=9)), "resolution.size"),
    "unknown aspect ratio value": (
        lambda: messages(spec(aspect_ratio=42)),
        "resolution.aspect_ratio",
    ),
    "empty prompt": (lambda: messages(spec(prompt="")), "prompt"),
    "blank prompt": (lambda: messages(spec(prompt="   ")), "prompt"),
    "prompt of 2001 characters": (lambda: messages(spec(prompt=_over_long_prompt())), "prompt"),
    "strength below 0": (lambda: messages(spec(strength=-0.1)), "strength"),
    "strength above 1": (lambda: messages(spec(strength=1.1)), "strength"),
    "reference not an image": (
        lambda: messages(spec(strength=0.5), b"this is not an image"),
        "reference",
    ),
    "reference announced but not sent": (_announced_not_sent, "reference"),
    "reference stopped mid-image": (_stopped_mid_image, "reference"),
    "reference with a wrong checksum": (_wrong_checksum, "reference"),
    "reference chunks out of order": (_out_of_order, "reference"),
    "reference announced over the limit": (_over_the_limit, "reference"),
    "reference chunks without an announcement": (
        lambda: _unannounced("reference_chunk"),
        "reference_chunk",
    ),
    "mask chunks without an announcement": (lambda: _unannounced("mask_chunk"), "mask_chunk"),
    "mask on a tier without in-painting": (
        lambda: messages(spec("nano"), _image_bytes((1024, 1024)), _image_bytes((1024, 1024))),
        "mask",
    ),
    "mask of another size than the image": (
        lambda: messages(spec("standard"), _image_bytes((1024, 1024)), _image_bytes((512, 512))),
        "mask",
    ),
    "mask without the image to edit": (
        lambda: messages(spec("standard"), None, _image_bytes((1024, 1024))),
        "mask",
    ),
    "chunks before the spec": (_chunks_first, "spec"),
    "a second spec": (_second_spec, "spec"),
    "an empty message": (
        lambda: [generator_pb2.RenderRequest(spec=spec()), generator_pb2.RenderRequest()],
        "payload",
    ),
    "empty stream": (lambda: [], "spec"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_input_is_invalid_argument_naming_the_field(stub: Any, case: str) -> None:
    build, field = BAD_REQUESTS[case]
    call = stub.Render(iter(build()), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            pytest.fail(f"a bad request got a response: {message}")
    assert field in bad_fields(caught.value)


async def test_every_bad_field_is_named_at_once(stub: Any) -> None:
    call = stub.Render(iter(messages(spec("nano", K4, prompt="", strength=2.0))), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            pytest.fail(f"a bad request got a response: {message}")
    assert sorted(bad_fields(caught.value)) == ["prompt", "resolution", "strength"]


async def test_a_reference_streamed_past_the_limit_is_refused(
    busy_channel: grpc.aio.Channel,
) -> None:
    announced = spec("solo", strength=0.5)
    announced.reference.sha256 = "0" * 64  # announced without a size, so only the bytes tell
    sent = [generator_pb2.RenderRequest(spec=announced)]
    sent += [generator_pb2.RenderRequest(reference_chunk=c) for c in split(bytes(6000), 1000)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await render_call(stub_for(busy_channel), sent)
    assert bad_fields(caught.value) == ["reference"]
    assert "limit of 4000 bytes" in (caught.value.details() or "")


async def while_full(attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`, retried while its tier is full: the server gives places back asynchronously,
    so a place a test's previous call held may still be taken for a moment."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + FREED_WITHIN_SECONDS
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or loop.time() > give_up:
                raise
        await asyncio.sleep(0.05)


async def start_in_flight(stub: Any) -> Any:
    """Starts a slow `solo` render and returns its call once it holds the tier's only place."""

    async def attempt() -> Any:
        call = stub.Render(iter(messages(spec("solo", K2, seed=5))))
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF
            if message.progress.stage == "rendering":
                return call

    return await while_full(attempt)


async def test_a_full_tier_is_resource_exhausted_with_retry_info(
    busy_channel: grpc.aio.Channel,
) -> None:
    stub = stub_for(busy_channel)
    in_flight = await start_in_flight(stub)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await render_call(stub, messages(spec("solo", K2)))
        # Another tier is not affected by the full one.
        quick = await render_call(stub, messages(spec("quick")))
        assert quick.result.tier == "quick"
    finally:
        in_flight.cancel()
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details(error)
    assert found[error_details_pb2.ErrorInfo].reason == "QUEUE_FULL"
    assert found[error_details_pb2.ErrorInfo].metadata["tier"] == "solo"
    # The tier's expected latency at the size asked for.
    assert found[error_details_pb2.RetryInfo].retry_delay.ToTimedelta().total_seconds() == 1.5
    (violation,) = found[error_details_pb2.QuotaFailure].violations
    assert violation.subject == "tier:solo"
    assert "1 render(s) running and 0 waiting" in violation.description


async def test_a_cancelled_render_gives_its_place_back(busy_channel: grpc.aio.Channel) -> None:
    stub = stub_for(busy_channel)
    in_flight = await start_in_flight(stub)
    in_flight.cancel()
    rendering = await while_full(lambda: render_call(stub, messages(spec("solo", K1))))
    assert rendering.result.image.width == 1024


async def test_a_render_past_its_deadline_gives_its_place_back(
    busy_channel: grpc.aio.Channel,
) -> None:
    stub = stub_for(busy_channel)
    slow = messages(spec("solo", K2, seed=5))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        # A detailed 2K picture takes about a second, far past this deadline.
        await while_full(lambda: render_call(stub, slow, deadline=0.3))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    rendering = await while_full(lambda: render_call(stub, messages(spec("solo", K1))))
    assert rendering.result.image.width == 1024


async def test_a_dead_worker_is_unavailable_then_replaced() -> None:
    before = {child.pid for child in multiprocessing.active_children()}
    async with serving(settings(workers=1)) as opened:
        stub = stub_for(opened)
        workers = [c for c in multiprocessing.active_children() if c.pid not in before]
        assert workers, "the server started no worker process"
        for worker in workers:
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await render_call(stub, messages(spec()))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert details(caught.value)[error_details_pb2.ErrorInfo].reason == "WORKER_DIED"
        rendering = await render_call(stub, messages(spec()))
        assert rendering.result.image.width == 1024


async def test_health_is_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAME == "tiergen.generator.v1.GeneratorService"


async def test_a_bad_tiers_file_stops_the_start_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "tiers.toml"
    path.write_text(BUSY_TIERS_TOML.replace('sizes = ["1K"]', 'sizes = ["8K"]'))
    with pytest.raises(ConfigError) as caught:
        await create_server(settings(path))
    message = str(caught.value)
    assert message.startswith("TIERGEN_GENERATOR_TIERS_FILE: ")
    assert f"{path}: tiers.quick.sizes" in message
    assert "'8K'" in message


async def test_an_upload_refused_midway_still_gets_its_status(stub: Any) -> None:
    # The reference is announced over the limit and refused at once, while the client is still
    # streaming megabytes of it: the client must see INVALID_ARGUMENT, not grpc's INTERNAL.
    chunk = b"\0" * (1 << 20)
    announced = common_pb2.ImageInfo(size_bytes=100 << 20)
    requests = [
        generator_pb2.RenderRequest(spec=spec("nano", reference=announced)),
        *(
            generator_pb2.RenderRequest(
                reference_chunk=common_pb2.ImageChunk(offset=i << 20, data=chunk)
            )
            for i in range(24)
        ),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Render(iter(requests)):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(caught.value) == ["reference"]
