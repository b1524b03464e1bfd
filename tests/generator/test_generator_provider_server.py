"""Tiers on HTTP providers through the real generator server: images, failures as gRPC statuses,
retries counted at the fake provider, and API keys kept out of every log line and answer."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
import structlog
from google.rpc import error_details_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc

from services.generator.providers import ApiKey, ProviderSettings
from services.generator.providers.instant import colour_of
from services.generator.server import create_server
from services.generator.settings import GeneratorSettings
from services.runtime.chunks import image_info, split
from tests.generator.fake_providers import FakeGemini, FakeOpenAI, FakeProvider, Mode, colour_for
from tests.rich_errors import details
from tests.tls import session_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIERS = """\
[tiers.vista]
backend = "gemini"
model = "gemini-3-pro-image-preview"
quality = "high"
sizes = ["1K", "2K"]
max_reference_images = 2
text_rendering = true
max_concurrency = 2
queue_limit = 4
expected_latency_seconds = { "1K" = 8, "2K" = 12 }

[tiers.studio]
backend = "openai"
model = "gpt-image-2"
quality = "medium"
sizes = ["1K", "2K"]
max_reference_images = 2
inpainting = true
max_concurrency = 2
queue_limit = 4
expected_latency_seconds = { "1K" = 10, "2K" = 15 }

[tiers.solo]
backend = "openai"
model = "gpt-image-2"
sizes = ["1K"]
max_concurrency = 1
queue_limit = 0
expected_latency_seconds = { "1K" = 10 }

[tiers.blink]
backend = "instant"
sizes = ["1K", "2K", "4K"]
expected_latency_seconds = { "1K" = 0.01, "2K" = 0.01, "4K" = 0.05 }
"""
PROMPT = "a lighthouse on a cliff at dusk"
K1, K2, K4 = common_pb2.IMAGE_SIZE_1K, common_pb2.IMAGE_SIZE_2K, common_pb2.IMAGE_SIZE_4K
WIDE = common_pb2.ASPECT_RATIO_16_9
#: Longest wait for a provider's answer: short, since the hanging fake never answers.
TIMEOUT_SECONDS = 1.5


def provider(fake: FakeProvider) -> ProviderSettings:
    return ProviderSettings(
        name=fake.name,
        base_url=fake.url,
        api_key=ApiKey(fake.api_key),
        timeout_seconds=TIMEOUT_SECONDS,
        max_attempts=3,
        backoff_seconds=0.01,
        max_backoff_seconds=1.0,
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel(
    tmp_path_factory: pytest.TempPathFactory,
    gemini_server: FakeGemini,
    openai_server: FakeOpenAI,
) -> AsyncIterator[grpc.aio.Channel]:
    path = tmp_path_factory.mktemp("tiers") / "tiers.toml"
    path.write_text(TIERS)
    settings = GeneratorSettings(
        server=session_pki().server("generator"),
        tiers_file=path,
        gemini=provider(gemini_server),
        openai=provider(openai_server),
    )
    server, port = await create_server(settings)
    await server.start()
    opened = session_pki().channel(f"127.0.0.1:{port}")
    try:
        yield opened
    finally:
        await opened.close()
        await server.stop(0)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Any:
    return generator_pb2_grpc.GeneratorServiceStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def fakes(fake_gemini: FakeGemini, fake_openai: FakeOpenAI) -> dict[str, FakeProvider]:
    return {"vista": fake_gemini, "studio": fake_openai, "solo": fake_openai}


def spec(tier: str, size: int = K1, ratio: int = WIDE, **fields: Any) -> generator_pb2.RenderSpec:
    resolution = common_pb2.Resolution(size=size, aspect_ratio=ratio)  # type: ignore[arg-type]
    return generator_pb2.RenderSpec(
        tier=tier, resolution=resolution, prompt=fields.pop("prompt", PROMPT), seed=3, **fields
    )


def messages(
    render_spec: generator_pb2.RenderSpec, reference: bytes | None = None, mask: bytes | None = None
) -> list[generator_pb2.RenderRequest]:
    for image, announcement in ((reference, render_spec.reference), (mask, render_spec.mask)):
        if image is not None:
            announcement.CopyFrom(image_info(image, 0, 0, common_pb2.IMAGE_FORMAT_PNG))
    sent = [generator_pb2.RenderRequest(spec=render_spec)]
    sent += [generator_pb2.RenderRequest(reference_chunk=c) for c in split(reference or b"")]
    sent += [generator_pb2.RenderRequest(mask_chunk=c) for c in split(mask or b"")]
    return sent


@dataclass
class Rendering:
    stages: list[str]
    result: generator_pb2.RenderResult
    image: bytes

    def picture(self) -> Image.Image:
        with Image.open(io.BytesIO(self.image)) as opened:
            assert opened.format == "PNG"
            return opened.convert("RGB")


async def render(
    stub: Any, sent: list[generator_pb2.RenderRequest], deadline: float = 30
) -> Rendering:
    stages: list[str] = []
    result = None
    image = b""
    async for message in stub.Render(iter(sent), timeout=deadline):
        kind = message.WhichOneof("payload")
        if kind == "progress":
            stages.append(message.progress.stage)
        elif kind == "result":
            result = message.result
        else:
            image += message.chunk.data
    assert result is not None
    return Rendering(stages, result, image)


async def refused(stub: Any, sent: list[generator_pb2.RenderRequest]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await render(stub, sent)
    return caught.value


def png(colour: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --- images ---


async def test_list_tiers_names_each_tiers_backend(stub: Any) -> None:
    reply = await stub.ListTiers(generator_pb2.ListTiersRequest())
    assert [(tier.name, tier.backend) for tier in reply.tiers] == [
        ("vista", "gemini"),
        ("studio", "openai"),
        ("solo", "openai"),
        ("blink", "instant"),
    ]


async def test_a_gemini_tier_renders_at_the_contracts_size(
    stub: Any, fake_gemini: FakeGemini, spans: InMemorySpanExporter
) -> None:
    rendering = await render(stub, messages(spec("vista", K2)))
    assert rendering.stages == ["queued", "rendering", "done"]
    result = rendering.result
    assert (result.tier, result.backend, result.seed) == ("vista", "gemini", 3)
    assert (result.image.width, result.image.height) == (2752, 1536)
    assert result.image.size_bytes == len(rendering.image)
    picture = rendering.picture()
    assert picture.size == (2752, 1536)
    assert picture.getpixel((100, 100)) == colour_for(PROMPT)
    (sent,) = fake_gemini.requests
    assert sent.json["generationConfig"]["imageConfig"] == {
        "aspectRatio": "16:9",
        "imageSize": "2K",
    }
    (span,) = [s for s in spans.get_finished_spans() if s.name == "render"]
    assert dict(span.attributes or {})["tiergen.backend"] == "gemini"


async def test_an_openai_tier_is_fitted_to_the_contracts_size(
    stub: Any, fake_openai: FakeOpenAI
) -> None:
    rendering = await render(stub, messages(spec("studio", K2)))
    assert rendering.result.backend == "openai"
    assert rendering.picture().size == (2752, 1536)
    assert rendering.picture().getpixel((1376, 768)) == colour_for(PROMPT)
    (sent,) = fake_openai.requests
    assert (sent.json["size"], sent.json["quality"]) == ("1536x1024", "medium")


async def test_an_openai_inpainting_keeps_the_unmasked_region(
    stub: Any, fake_openai: FakeOpenAI
) -> None:
    source = png((10, 120, 30), (1024, 1024))
    mask = Image.new("L", (1024, 1024), 0)
    mask.paste(255, (0, 0, 1024, 512))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    square = common_pb2.ASPECT_RATIO_1_1
    rendering = await render(
        stub, messages(spec("studio", ratio=square), source, buffer.getvalue())
    )
    picture = rendering.picture()
    assert picture.getpixel((512, 900)) == (10, 120, 30)
    assert picture.getpixel((512, 100)) == colour_for(PROMPT)
    (sent,) = fake_openai.requests
    assert sent.path == "/v1/images/edits"
    assert [name for name, _, _, _ in sent.files] == ["image[]", "mask"]


async def test_the_instant_tier_answers_with_a_solid_colour(stub: Any) -> None:
    rendering = await render(stub, messages(spec("blink", K4)))
    assert rendering.result.backend == "instant"
    picture = rendering.picture()
    assert picture.size == (5504, 3072)
    assert picture.getpixel((0, 0)) == picture.getpixel((5503, 3071)) == colour_of(PROMPT, 3)


# --- failures ---

FAILURES = [
    (Mode.RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED", 3),
    (Mode.SERVER_ERROR, grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE", 3),
    (Mode.HANG, grpc.StatusCode.UNAVAILABLE, "PROVIDER_TIMEOUT", 1),
    (Mode.SAFETY_BLOCK, grpc.StatusCode.FAILED_PRECONDITION, "CONTENT_BLOCKED", 1),
    (Mode.PROMPT_BLOCKED, grpc.StatusCode.FAILED_PRECONDITION, "CONTENT_BLOCKED", 1),
    (Mode.NO_IMAGE, grpc.StatusCode.FAILED_PRECONDITION, "NO_IMAGE", 1),
    (Mode.MALFORMED_BASE64, grpc.StatusCode.UNAVAILABLE, "PROVIDER_BAD_RESPONSE", 1),
    (Mode.NOT_AN_IMAGE, grpc.StatusCode.UNAVAILABLE, "PROVIDER_BAD_RESPONSE", 1),
    (Mode.NOT_JSON, grpc.StatusCode.UNAVAILABLE, "PROVIDER_BAD_RESPONSE", 1),
]


@pytest.mark.parametrize("tier", ["vista", "studio"])
@pytest.mark.parametrize(("mode", "code", "reason", "hits"), FAILURES)
async def test_each_provider_failure_is_its_grpc_status(
    stub: Any,
    fakes: dict[str, FakeProvider],
    tier: str,
    mode: Mode,
    code: grpc.StatusCode,
    reason: str,
    hits: int,
) -> None:
    fake = fakes[tier]
    fake.fail(mode)
    error = await refused(stub, messages(spec(tier)))
    assert error.code() == code, error.details()
    info = details(error)[error_details_pb2.ErrorInfo]
    assert info.reason == reason
    assert info.metadata["provider"] == fake.name
    # Retried only when the provider said to try again: 429 and 5xx.
    assert fake.hits == hits
    ambiguous = info.metadata.get("ambiguous")
    if code is grpc.StatusCode.UNAVAILABLE:
        assert ambiguous == ("true" if mode is Mode.HANG else "false")
    else:
        assert ambiguous is None


async def test_a_rate_limit_carries_the_providers_retry_advice(
    stub: Any, fakes: dict[str, FakeProvider]
) -> None:
    for tier in ("vista", "studio"):
        fake = fakes[tier]
        fake.reset()
        # Past the longest backoff (1 s here): refused at once, with the provider's advice.
        fake.fail(Mode.RATE_LIMITED, retry_after="5")
        error = await refused(stub, messages(spec(tier)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = details(error)[error_details_pb2.RetryInfo]
        assert retry.retry_delay.ToTimedelta().total_seconds() == 5.0
        assert fake.hits == 1


@pytest.mark.parametrize("tier", ["vista", "studio"])
@pytest.mark.parametrize("mode", [Mode.RATE_LIMITED, Mode.SERVER_ERROR])
async def test_a_passing_429_or_5xx_is_retried_to_success(
    stub: Any, fakes: dict[str, FakeProvider], tier: str, mode: Mode
) -> None:
    fake = fakes[tier]
    fake.fail(mode, times=2)
    rendering = await render(stub, messages(spec(tier)))
    assert rendering.picture().size == (1376, 768)
    assert fake.hits == 3


@pytest.mark.parametrize("tier", ["vista", "studio"])
async def test_a_refused_key_is_internal_and_not_retried(
    stub: Any, fakes: dict[str, FakeProvider], tier: str
) -> None:
    fake = fakes[tier]
    expected = fake.api_key
    fake.api_key = "the-key-the-operator-should-have-set"
    try:
        error = await refused(stub, messages(spec(tier)))
    finally:
        fake.api_key = expected
    assert error.code() == grpc.StatusCode.INTERNAL
    assert details(error)[error_details_pb2.ErrorInfo].reason == "PROVIDER_AUTH_FAILED"
    assert f"{fake.name.upper()}_API_KEY" in (error.details() or "")
    assert fake.hits == 1


async def test_bad_input_never_reaches_a_provider(
    stub: Any, fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    reference = png((1, 2, 3), (1376, 768))
    mask = png((255, 255, 255), (1376, 768), mode="RGB")
    cases = {
        "mask": messages(spec("vista"), reference, mask),  # Gemini tiers take no mask
        "resolution": messages(spec("studio", K4)),
        "prompt": messages(spec("studio", prompt="")),
        "strength": messages(spec("vista", strength=1.5)),
    }
    for field, sent in cases.items():
        error = await refused(stub, sent)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = details(error)[error_details_pb2.BadRequest].field_violations
        assert field in [violation.field for violation in violations]
    assert fake_gemini.hits == fake_openai.hits == 0


async def test_a_call_abandoned_while_its_provider_hangs_gives_its_place_back(
    stub: Any, fake_openai: FakeOpenAI
) -> None:
    fake_openai.fail(Mode.HANG)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await render(stub, messages(spec("solo")), deadline=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    fake_openai.reset()
    # `solo` holds one render at once and queues none: this one needs the place back.
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10
    while True:
        try:
            rendering = await render(stub, messages(spec("solo")))
            break
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or loop.time() > give_up:
                raise
            await asyncio.sleep(0.05)
    assert rendering.result.tier == "solo"


# --- keys ---


@pytest.fixture
def logs(
    caplog: pytest.LogCaptureFixture,
) -> Iterator[tuple[list[Any], pytest.LogCaptureFixture]]:
    """Everything logged meanwhile, through structlog and the stdlib (httpx, httpcore)."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        yield captured, caplog


async def test_api_keys_never_reach_a_log_line_or_an_answer(
    stub: Any,
    fakes: dict[str, FakeProvider],
    logs: tuple[list[Any], pytest.LogCaptureFixture],
) -> None:
    answers: list[str] = []
    for tier in ("vista", "studio"):
        fake = fakes[tier]
        answers.append(str(await render(stub, messages(spec(tier)))))
        fake.fail(Mode.SERVER_ERROR)
        error = await refused(stub, messages(spec(tier)))
        answers += [error.details() or "", str(details(error))]
        fake.reset()
        expected, fake.api_key = fake.api_key, "another-key"
        try:
            error = await refused(stub, messages(spec(tier)))
        finally:
            fake.api_key = expected
        answers += [error.details() or "", str(details(error))]
    structured, caplog = logs
    assert any(entry.get("event") == "provider retry" for entry in structured)
    assert any(entry.get("event") == "rpc" for entry in structured)
    assert "HTTP Request: POST" in caplog.text
    written = "\n".join([*map(repr, structured), caplog.text, *answers])
    for fake in set(fakes.values()):
        assert fake.api_key not in written
