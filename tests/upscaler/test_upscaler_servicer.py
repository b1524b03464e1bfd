"""The upscaler over real gRPC: streams both ways, bad input, admission, cancellation, health."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from PIL import Image, ImageDraw
from tiergen.common.v1 import common_pb2
from tiergen.upscaler.v1 import upscaler_pb2, upscaler_pb2_grpc

from services.runtime.chunks import CHUNK_BYTES, split
from services.upscaler.pipeline import OutputFormat, UpscaleMethod, UpscaleSpec, upscale_image
from services.upscaler.server import SERVICE_NAME, create_server
from services.upscaler.settings import UpscalerSettings
from tests.rich_errors import details
from tests.start_failures import refused_start
from tests.tls import session_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_INPUT_BYTES = 8 * 1024 * 1024
SHARED = UpscalerSettings(
    workers=2,
    queue_limit=8,
    max_input_bytes=MAX_INPUT_BYTES,
    server=session_pki().server("upscaler"),
)
#: Far longer than a small request takes on a free worker (under 0.1 s), and less than half of
#: what the slow job would still need if its worker kept running it (over 10 s).
FREED_WITHIN_SECONDS = 4.0
PNG, JPEG, WEBP = (
    common_pb2.IMAGE_FORMAT_PNG,
    common_pb2.IMAGE_FORMAT_JPEG,
    common_pb2.IMAGE_FORMAT_WEBP,
)
#: Several chunks of input, so a refusal arrives while the client is still sending.
LARGE_INPUT = bytes(6 * CHUNK_BYTES)
PIL_FORMATS = {PNG: "PNG", JPEG: "JPEG", WEBP: "WEBP"}
DOMAIN_FORMATS = {PNG: OutputFormat.PNG, JPEG: OutputFormat.JPEG, WEBP: OutputFormat.WEBP}


def encoded(image: Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def picture(width: int = 48, height: int = 32, mode: str = "RGB") -> Image.Image:
    """A small deterministic image with flat areas, hard edges and noise."""
    rng = np.random.default_rng(11)
    image = Image.fromarray(rng.integers(60, 120, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 4, height // 4, width // 2, height - 4), fill=(220, 40, 40))
    draw.line((0, height - 1, width - 1, 0), fill=(250, 250, 250), width=2)
    return image.convert(mode)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming `width` x `height` RGB, followed by a scrap of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@cache
def slow_input() -> bytes:
    """A 22 kB PNG whose 4x `enhance` in 64 px tiles is 16384 tiles and over 10 s of work."""
    gradient = Image.linear_gradient("L").resize((2048, 2048))
    turned = gradient.transpose(Image.Transpose.ROTATE_90)
    return encoded(Image.merge("RGBA", [gradient, turned, gradient, turned]))


def spec_message(factor: float = 2.0, **fields: Any) -> upscaler_pb2.UpscaleRequest:
    return upscaler_pb2.UpscaleRequest(spec=upscaler_pb2.UpscaleSpec(factor=factor, **fields))


def chunk_messages(data: bytes) -> list[upscaler_pb2.UpscaleRequest]:
    return [upscaler_pb2.UpscaleRequest(chunk=chunk) for chunk in split(data)]


def request(data: bytes, factor: float = 2.0, **fields: Any) -> list[upscaler_pb2.UpscaleRequest]:
    return [spec_message(factor, **fields), *chunk_messages(data)]


@dataclass
class Reply:
    """Everything one Upscale call streamed back, in order."""

    messages: list[upscaler_pb2.UpscaleResponse]
    data: bytes = field(init=False)
    result: upscaler_pb2.UpscaleResult = field(init=False)

    def __post_init__(self) -> None:
        results = [m.result for m in self.messages if m.WhichOneof("payload") == "result"]
        assert len(results) == 1
        self.result = results[0]
        self.data = b"".join(c.data for c in self.chunks)

    @property
    def kinds(self) -> list[str]:
        return [str(m.WhichOneof("payload")) for m in self.messages]

    @property
    def progress(self) -> list[common_pb2.Progress]:
        return [m.progress for m in self.messages if m.WhichOneof("payload") == "progress"]

    @property
    def chunks(self) -> list[common_pb2.ImageChunk]:
        return [m.chunk for m in self.messages if m.WhichOneof("payload") == "chunk"]

    def image(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image


async def upscale(
    stub: Any, messages: Iterable[upscaler_pb2.UpscaleRequest], deadline: float = 30.0
) -> Reply:
    call = stub.Upscale(iter(messages), timeout=deadline)
    return Reply([message async for message in call])


async def refusal(
    stub: Any, messages: Iterable[upscaler_pb2.UpscaleRequest]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upscale(stub, messages)
    return caught.value


def assert_invalid(error: grpc.aio.AioRpcError, field_path: str, reason: str | None = None) -> str:
    """Check `error` is INVALID_ARGUMENT naming `field_path` (and `reason`); returns its message."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    found = details(error)
    bad = found[error_details_pb2.BadRequest]
    assert [violation.field for violation in bad.field_violations] == [field_path]
    if reason is not None:
        assert found[error_details_pb2.ErrorInfo].reason == reason
    message = error.details()
    assert message
    return message


@contextlib.asynccontextmanager
async def serving(settings: UpscalerSettings) -> AsyncIterator[grpc.aio.Channel]:
    """A started server for `settings` and a channel to it; stopped on exit."""
    server, port = await create_server(settings)
    await server.start()
    channel = session_pki().channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(0)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """One server for every test that leaves no state behind."""
    async with serving(SHARED) as opened:
        yield opened


def stub_for(channel: grpc.aio.Channel) -> Any:
    return upscaler_pb2_grpc.UpscalerServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Any:
    return stub_for(channel)


def one_worker(queue_limit: int) -> UpscalerSettings:
    """One worker with small tiles, so the slow job checks in often."""
    return UpscalerSettings(
        workers=1,
        queue_limit=queue_limit,
        tile_size=64,
        server=session_pki().server("upscaler"),
    )


def slow_request() -> list[upscaler_pb2.UpscaleRequest]:
    return request(slow_input(), 4.0, method=common_pb2.UPSCALE_METHOD_ENHANCE)


async def start_slow(stub: Any) -> Any:
    """Start the slow job and return its call once its worker is upscaling."""
    call = stub.Upscale(iter(slow_request()))
    while True:
        message = await call.read()
        assert message is not grpc.aio.EOF
        if message.progress.stage == "upscaling":
            return call


async def read_to_the_end(call: Any) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass


def worker_pids() -> set[int]:
    """Pool worker processes among this process's children."""
    found = set()
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                found.add(int(pid))
    return found


# Round trips.


@pytest.mark.parametrize("factor", [2.0, 4.0])
@pytest.mark.parametrize("output_format", [PNG, JPEG, WEBP], ids=["png", "jpeg", "webp"])
async def test_round_trip(stub: Any, factor: float, output_format: common_pb2.ImageFormat) -> None:
    data = encoded(picture(48, 32))

    reply = await upscale(stub, request(data, factor, output_format=output_format))

    info = reply.result.image
    size = (int(48 * factor), int(32 * factor))
    assert (info.width, info.height) == size
    assert (reply.result.input_width, reply.result.input_height) == (48, 32)
    assert info.format == output_format
    assert info.media_type == f"image/{PIL_FORMATS[output_format].lower()}"
    assert info.size_bytes == len(reply.data)
    assert info.sha256 == hashlib.sha256(reply.data).hexdigest()
    image = reply.image()
    assert (image.size, image.format) == (size, PIL_FORMATS[output_format])
    # The same bytes the pipeline gives in-process: the edge adds and loses nothing.
    spec = UpscaleSpec(factor=factor, output_format=DOMAIN_FORMATS[output_format])
    assert info.sha256 == upscale_image(data, spec, SHARED.pipeline()).sha256


@pytest.mark.parametrize("input_format", ["JPEG", "WEBP", "GIF", "BMP"])
async def test_the_input_format_is_detected_from_the_bytes(stub: Any, input_format: str) -> None:
    reply = await upscale(stub, request(encoded(picture(40, 30), input_format)))

    assert (reply.result.image.width, reply.result.image.height) == (80, 60)
    assert reply.image().format == "PNG"


async def test_unspecified_method_and_format_mean_lanczos_and_png(stub: Any) -> None:
    reply = await upscale(stub, request(encoded(picture())))

    assert reply.result.method == common_pb2.UPSCALE_METHOD_LANCZOS
    assert reply.result.image.format == PNG
    assert reply.result.process_ms >= 0


async def test_methods_are_mapped_both_ways(stub: Any) -> None:
    data = encoded(picture())
    replies = {
        method: await upscale(stub, request(data, method=method))
        for method in (common_pb2.UPSCALE_METHOD_BICUBIC, common_pb2.UPSCALE_METHOD_ENHANCE)
    }

    for method, reply in replies.items():
        assert reply.result.method == method
    enhanced = replies[common_pb2.UPSCALE_METHOD_ENHANCE].result.image.sha256
    spec = UpscaleSpec(factor=2, method=UpscaleMethod.ENHANCE)
    assert enhanced == upscale_image(data, spec, SHARED.pipeline()).sha256


@pytest.mark.parametrize("output_format", [PNG, WEBP], ids=["png", "webp"])
async def test_alpha_is_kept(stub: Any, output_format: common_pb2.ImageFormat) -> None:
    image = picture(40, 30, "RGBA")
    image.putpixel((0, 0), (255, 0, 0, 0))
    data = encoded(image)

    reply = await upscale(stub, request(data, output_format=output_format, quality=100))

    out = reply.image()
    assert out.mode == "RGBA"
    assert out.getchannel("A").getpixel((0, 0)) == 0
    assert out.getchannel("A").getpixel((60, 40)) == 255


async def test_alpha_is_flattened_for_jpeg(stub: Any) -> None:
    image = Image.new("RGBA", (40, 30), (0, 0, 0, 0))

    reply = await upscale(stub, request(encoded(image), output_format=JPEG))

    out = reply.image()
    assert out.mode == "RGB"
    assert all(channel >= 250 for channel in out.getpixel((40, 30)))  # type: ignore[union-attr]


async def test_progress_then_result_then_chunks(stub: Any) -> None:
    reply = await upscale(stub, request(encoded(picture(300, 200)), 4.0))

    kinds = reply.kinds
    first_result = kinds.index("result")
    assert set(kinds[:first_result]) == {"progress"}
    assert set(kinds[first_result + 1 :]) == {"chunk"}
    stages = [progress.stage for progress in reply.progress]
    assert stages[0] == "queued"
    assert stages[-1] == "done"
    order = ["queued", "decoding", "upscaling", "encoding", "done"]
    assert [order.index(stage) for stage in stages] == sorted(order.index(s) for s in stages)
    fractions = [progress.fraction for progress in reply.progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0


async def test_a_large_output_arrives_in_ordered_chunks(stub: Any) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "JPEG", quality=95)

    reply = await upscale(stub, request(data, 2.0, output_format=PNG))

    assert reply.result.image.size_bytes > 4 * CHUNK_BYTES
    assert len(reply.chunks) > 4
    offsets = [chunk.offset for chunk in reply.chunks]
    assert offsets == [i * CHUNK_BYTES for i in range(len(offsets))]
    assert all(len(chunk.data) <= CHUNK_BYTES for chunk in reply.chunks)
    assert reply.result.image.sha256 == hashlib.sha256(reply.data).hexdigest()
    assert reply.image().size == (2000, 2000)


async def test_the_upscale_span(stub: Any, spans: InMemorySpanExporter) -> None:
    await upscale(stub, request(encoded(picture()), 2.5, request_id="req-7"))

    finished = spans.get_finished_spans()
    (span,) = [s for s in finished if s.name == "upscale"]
    assert dict(span.attributes or {}) == {
        "tiergen.factor": 2.5,
        "tiergen.method": "lanczos",
        "tiergen.width": 120,
        "tiergen.height": 80,
    }
    (server,) = [s for s in finished if s.kind is SpanKind.SERVER]
    assert span.parent is not None and span.parent.span_id == server.context.span_id


async def test_health_serves_the_service_name(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))

    assert SERVICE_NAME == "tiergen.upscaler.v1.UpscalerService"
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# The request stream itself is wrong.


async def test_no_spec_first(stub: Any) -> None:
    error = await refusal(stub, chunk_messages(LARGE_INPUT))

    message = assert_invalid(error, "spec", "SPEC_MISSING")
    assert "the first message must carry the spec" in message


async def test_an_empty_stream(stub: Any) -> None:
    error = await refusal(stub, [])

    assert "the request stream is empty" in assert_invalid(error, "spec", "SPEC_MISSING")


async def test_a_spec_without_an_image(stub: Any) -> None:
    error = await refusal(stub, [spec_message()])

    assert "no image arrived after the spec" in assert_invalid(error, "chunk.data", "EMPTY_IMAGE")


async def test_a_second_spec(stub: Any) -> None:
    messages = request(encoded(picture()))
    messages.insert(2, spec_message())

    error = await refusal(stub, messages)

    assert "a second spec arrived" in assert_invalid(error, "spec", "SPEC_REPEATED")


async def test_a_message_carrying_nothing(stub: Any) -> None:
    messages = [*request(encoded(picture())), upscaler_pb2.UpscaleRequest()]

    assert_invalid(await refusal(stub, messages), "chunk")


async def test_an_out_of_order_chunk(stub: Any) -> None:
    data = encoded(picture(300, 300))
    chunks = list(split(data, 1000))
    chunks[1], chunks[2] = chunks[2], chunks[1]
    messages = [spec_message(), *(upscaler_pb2.UpscaleRequest(chunk=c) for c in chunks)]

    message = assert_invalid(await refusal(stub, messages), "chunk.data")
    assert "send chunks in order" in message


async def test_a_stream_that_stops_mid_image(stub: Any) -> None:
    data = encoded(picture(300, 300))
    messages = [spec_message(input_size_bytes=len(data)), *chunk_messages(data[:1000])]

    message = assert_invalid(await refusal(stub, messages), "chunk.data")
    assert "the stream stopped mid-image" in message


async def test_announced_input_beyond_the_limit_is_refused_before_any_chunk(stub: Any) -> None:
    error = await refusal(stub, [spec_message(input_size_bytes=MAX_INPUT_BYTES + 1)])

    message = assert_invalid(error, "spec.input_size_bytes", "IMAGE_TOO_LARGE")
    assert f"the largest accepted input is {MAX_INPUT_BYTES} bytes" in message


async def test_a_negative_announced_size(stub: Any) -> None:
    error = await refusal(stub, request(encoded(picture()), input_size_bytes=-5))

    assert_invalid(error, "spec.input_size_bytes")


async def test_chunks_beyond_the_limit(stub: Any) -> None:
    chunks = split(bytes(MAX_INPUT_BYTES + CHUNK_BYTES))
    messages = [spec_message(), *(upscaler_pb2.UpscaleRequest(chunk=c) for c in chunks)]

    message = assert_invalid(await refusal(stub, messages), "chunk.data")
    assert f"exceeds the limit of {MAX_INPUT_BYTES} bytes" in message


# The spec is wrong.


@pytest.mark.parametrize(
    ("fields", "field_path", "reason", "words"),
    [
        ({"factor": 3.3}, "spec.factor", "INVALID_FACTOR", "use 1 to 4 in steps of 0.5"),
        ({"factor": 0.0}, "spec.factor", "INVALID_FACTOR", "factor 0 is not supported"),
        ({"method": 7}, "spec.method", "UNKNOWN_METHOD", "unknown method '7'"),
        ({"output_format": 9}, "spec.output_format", "UNKNOWN_FORMAT", "unknown output format"),
        ({"quality": 101}, "spec.quality", "INVALID_QUALITY", "use 1 to 100"),
    ],
    ids=["factor", "no-factor", "method", "format", "quality"],
)
async def test_a_bad_spec(
    stub: Any, fields: dict[str, Any], field_path: str, reason: str, words: str
) -> None:
    messages = [
        upscaler_pb2.UpscaleRequest(spec=upscaler_pb2.UpscaleSpec(**({"factor": 2.0} | fields))),
        *chunk_messages(LARGE_INPUT),
    ]

    # The spec is refused while most chunks are still on their way.
    assert words in assert_invalid(await refusal(stub, messages), field_path, reason)


async def test_an_output_beyond_the_limit(stub: Any) -> None:
    error = await refusal(stub, request(png_declaring(3000, 3000), 4.0))

    message = assert_invalid(error, "spec.factor", "OUTPUT_TOO_LARGE")
    assert "use a factor of at most 2.5" in message


# The image is wrong.


def truncated() -> bytes:
    data = encoded(picture(200, 150))
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (truncated, "CORRUPT_IMAGE"),
        (lambda: b"hello, this is not an image", "UNSUPPORTED_IMAGE"),
        (lambda: png_declaring(5000, 5000), "IMAGE_TOO_LARGE"),
        # Between Pillow's bomb warning and its error: refused from the header all the same.
        (lambda: png_declaring(12_000, 12_000), "IMAGE_TOO_LARGE"),
        (lambda: png_declaring(100_000, 100_000), "IMAGE_TOO_LARGE"),
        (animated_gif, "ANIMATED_IMAGE"),
    ],
    ids=["truncated", "not-an-image", "too-large", "bomb", "huge-bomb", "animated"],
)
async def test_a_bad_image(stub: Any, image: Callable[[], bytes], reason: str) -> None:
    error = await refusal(stub, request(image(), 2.0))

    assert_invalid(error, "chunk.data", reason)


async def test_the_service_still_works_after_bad_input(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await upscale(stub, request(truncated()))

    reply = await upscale(stub, request(encoded(picture())))

    assert reply.result.image.width == 96


# Admission, cancellation, deadlines and dead workers.


async def test_a_full_queue_is_resource_exhausted_with_retry_info() -> None:
    async with serving(one_worker(queue_limit=0)) as channel:
        stub = stub_for(channel)
        slow = await start_slow(stub)
        try:
            error = await refusal(stub, request(LARGE_INPUT))
        finally:
            slow.cancel()

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        found = details(error)
        assert found[error_details_pb2.ErrorInfo].reason == "QUEUE_FULL"
        assert found[error_details_pb2.RetryInfo].retry_delay.ToNanoseconds() > 0
        assert "the upscaler is busy" in (error.details() or "")


async def test_a_cancelled_call_frees_its_worker() -> None:
    async with serving(one_worker(queue_limit=1)) as channel:
        stub = stub_for(channel)
        slow = await start_slow(stub)

        slow.cancel()

        # With one worker this waits for it: freed at the slow job's next tile, not its end.
        reply = await upscale(stub, request(encoded(picture())), deadline=FREED_WITHIN_SECONDS)
        assert reply.result.image.width == 96


async def test_a_passed_deadline_frees_the_worker() -> None:
    async with serving(one_worker(queue_limit=1)) as channel:
        stub = stub_for(channel)
        slow = stub.Upscale(iter(slow_request()), timeout=3.0)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_to_the_end(slow)

        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        reply = await upscale(stub, request(encoded(picture())), deadline=FREED_WITHIN_SECONDS)
        assert reply.result.image.width == 96


async def test_a_dead_worker_is_replaced(channel: grpc.aio.Channel) -> None:
    # `channel` starts the shared server first, so its workers are not taken for this one's.
    before = worker_pids()
    async with serving(one_worker(queue_limit=1)) as own:
        (worker,) = worker_pids() - before
        stub = stub_for(own)
        slow = await start_slow(stub)

        os.kill(worker, signal.SIGKILL)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_to_the_end(slow)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert details(caught.value)[error_details_pb2.ErrorInfo].reason == "WORKER_DIED"
        reply = await upscale(stub, request(encoded(picture())))
        assert reply.result.image.width == 96


# Configuration.


async def test_the_server_settings_come_from_the_environment() -> None:
    settings = UpscalerSettings.from_env({"TIERGEN_PORT": "6000", "TIERGEN_HOST": "0.0.0.0"})

    assert (settings.server.service, settings.server.host, settings.server.port) == (
        "upscaler",
        "0.0.0.0",
        6000,
    )
    assert UpscalerSettings.from_env({}).server.port == 50054


async def test_a_bad_setting_stops_the_process_with_one_line() -> None:
    environ = dict(os.environ, TIERGEN_UPSCALER_WORKERS="0", TIERGEN_PORT="0")
    line, _ = refused_start("services.upscaler", environ)
    assert line["error"] == "TIERGEN_UPSCALER_WORKERS=0: must be between 1 and 64"
