"""Each backend against its fake API, without gRPC: what is sent, what comes back, what fails."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from services.generator.picture import Picture, UnreadableImage, conform, media_type
from services.generator.providers import (
    ApiKey,
    GeminiBackend,
    InstantBackend,
    OpenAIBackend,
    ProviderSettings,
)
from services.generator.providers.gemini import generate_content_body
from services.generator.providers.instant import colour_of
from services.generator.providers.openai import openai_mask, openai_size
from services.generator.tiers import RenderRequest, TierCatalogue, parse_catalogue
from services.runtime.errors import FailedPrecondition, TiergenError, Unavailable
from services.runtime.resolution import AspectRatio, ImageSize, Resolution
from tests.generator.fake_providers import FakeGemini, FakeOpenAI, Mode, colour_for

TIERS = """\
[tiers.vista]
backend = "gemini"
model = "gemini-3-pro-image-preview"
quality = "high"
sizes = ["1K", "2K"]
max_reference_images = 3
text_rendering = true
expected_latency_seconds = { "1K" = 8, "2K" = 12 }

[tiers.studio]
backend = "openai"
model = "gpt-image-2"
quality = "low"
sizes = ["1K", "2K"]
max_reference_images = 2
inpainting = true
expected_latency_seconds = { "1K" = 10, "2K" = 15 }

[tiers.blink]
backend = "instant"
sizes = ["1K", "2K", "4K"]
max_reference_images = 1
expected_latency_seconds = { "1K" = 0.01, "2K" = 0.01, "4K" = 0.05 }
"""
CATALOGUE: TierCatalogue = parse_catalogue(TIERS)
WIDE = Resolution(ImageSize.K1, AspectRatio.R16_9)


def png(colour: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def opened(picture: Picture) -> Image.Image:
    with Image.open(io.BytesIO(picture.image)) as image:
        assert image.format == "PNG"
        assert image.size == (picture.width, picture.height)
        return image.convert("RGB")


def request(tier: str, prompt: str = "a fox in the snow", **fields: object) -> RenderRequest:
    return RenderRequest(tier=tier, prompt=prompt, seed=fields.pop("seed", 7), **fields)  # type: ignore[arg-type]


@pytest.fixture
async def gemini(fake_gemini: FakeGemini) -> AsyncIterator[GeminiBackend]:
    settings = ProviderSettings(
        "gemini", fake_gemini.url, api_key=ApiKey(fake_gemini.api_key), backoff_seconds=0.0
    )
    backend = GeminiBackend.open(settings, connections=2)
    yield backend
    await backend.close()


@pytest.fixture
async def openai(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIBackend]:
    settings = ProviderSettings(
        "openai", fake_openai.url, api_key=ApiKey(fake_openai.api_key), backoff_seconds=0.0
    )
    backend = OpenAIBackend.open(settings, connections=2)
    yield backend
    await backend.close()


# --- pictures ---


def test_a_png_of_the_right_size_passes_through_untouched() -> None:
    encoded = png((1, 2, 3), (64, 32))
    assert conform(encoded, 64, 32) is encoded


def test_another_size_or_format_is_covered_and_centre_cropped() -> None:
    # Left third red, the rest blue: cropping a 3:1 image to 1:1 keeps only the middle.
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", lossless=True)
    fitted = conform(buffer.getvalue(), 50, 50)
    with Image.open(io.BytesIO(fitted)) as result:
        assert (result.format, result.size) == ("PNG", (50, 50))
        assert result.convert("RGB").getpixel((25, 25)) == (0, 0, 255)
    with Image.open(io.BytesIO(conform(jpeg((10, 10)), 40, 20))) as result:
        assert (result.format, result.size) == ("PNG", (40, 20))


def test_bytes_that_are_no_image_do_not_conform() -> None:
    with pytest.raises(UnreadableImage, match="does not decode"):
        conform(b"\x89PNG\r\n\x1a\n broken", 10, 10)


def test_media_types_from_the_first_bytes() -> None:
    webp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(webp, format="WEBP")
    assert media_type(png((0, 0, 0), (4, 4))) == "image/png"
    assert media_type(jpeg((4, 4))) == "image/jpeg"
    assert media_type(webp.getvalue()) == "image/webp"
    with pytest.raises(UnreadableImage):
        media_type(b"GIF89a")


# --- Gemini ---


def test_the_gemini_body_carries_prompt_references_and_image_config() -> None:
    reference = jpeg((32, 32))
    body = json.loads(
        generate_content_body(
            request(
                "vista",
                resolution=Resolution(ImageSize.K2, AspectRatio.R3_4),
                references=(reference,),
                strength=0.4,
            )
        )
    )
    assert body == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "a fox in the snow"},
                    {
                        "inline_data": {
                            "mime_type": "image/jpeg",
                            "data": base64.b64encode(reference).decode(),
                        }
                    },
                ],
            }
        ],
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "3:4", "imageSize": "2K"},
        },
    }
    # Strength 0 means the reference is ignored: it is not sent.
    ignored = json.loads(generate_content_body(request("vista", references=(reference,))))
    assert ignored["contents"][0]["parts"] == [{"text": "a fox in the snow"}]


async def test_gemini_renders_at_the_contracts_size(
    gemini: GeminiBackend, fake_gemini: FakeGemini
) -> None:
    reference = png((200, 10, 10), (64, 64))
    picture = await gemini.render(
        CATALOGUE.tier("vista"),
        request("vista", resolution=WIDE, references=(reference,), strength=1.0),
    )
    image = opened(picture)
    assert image.size == (1376, 768)
    assert image.getpixel((0, 0)) == colour_for("a fox in the snow")
    (sent,) = fake_gemini.requests
    assert sent.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert sent.headers["x-goog-api-key"] == fake_gemini.api_key
    inline = sent.json["contents"][0]["parts"][1]["inline_data"]
    assert base64.b64decode(inline["data"]) == reference


@pytest.mark.parametrize(
    ("mode", "error", "reason", "finish_reason"),
    [
        (Mode.SAFETY_BLOCK, FailedPrecondition, "CONTENT_BLOCKED", "IMAGE_SAFETY"),
        (Mode.PROMPT_BLOCKED, FailedPrecondition, "CONTENT_BLOCKED", "PROHIBITED_CONTENT"),
        (Mode.NO_IMAGE, FailedPrecondition, "NO_IMAGE", "STOP"),
        (Mode.MALFORMED_BASE64, Unavailable, "PROVIDER_BAD_RESPONSE", None),
        (Mode.NOT_AN_IMAGE, Unavailable, "PROVIDER_BAD_RESPONSE", None),
        (Mode.NOT_JSON, Unavailable, "PROVIDER_BAD_RESPONSE", None),
    ],
)
async def test_gemini_answers_without_a_usable_image_are_typed_errors_never_retried(
    gemini: GeminiBackend,
    fake_gemini: FakeGemini,
    mode: Mode,
    error: type[TiergenError],
    reason: str,
    finish_reason: str | None,
) -> None:
    fake_gemini.fail(mode)
    with pytest.raises(error) as caught:
        await gemini.render(CATALOGUE.tier("vista"), request("vista"))
    assert fake_gemini.hits == 1
    assert caught.value.reason == reason
    assert caught.value.metadata.get("finish_reason") == finish_reason
    assert caught.value.metadata["model"] == "gemini-3-pro-image-preview"


async def test_a_thinking_models_drafts_are_passed_over_for_its_final_image(
    gemini: GeminiBackend, fake_gemini: FakeGemini
) -> None:
    fake_gemini.fail(Mode.THINKING)
    picture = await gemini.render(CATALOGUE.tier("vista"), request("vista"))
    assert opened(picture).getpixel((10, 10)) == colour_for("a fox in the snow")


@pytest.mark.parametrize("finish_reason", ["SAFETY", "IMAGE_PROHIBITED_CONTENT", "RECITATION"])
async def test_every_blocking_finish_reason_is_content_blocked(
    gemini: GeminiBackend, fake_gemini: FakeGemini, finish_reason: str
) -> None:
    fake_gemini.fail(Mode.SAFETY_BLOCK)
    fake_gemini.finish_reason = finish_reason
    with pytest.raises(FailedPrecondition) as caught:
        await gemini.render(CATALOGUE.tier("vista"), request("vista"))
    assert (caught.value.reason, caught.value.metadata["finish_reason"]) == (
        "CONTENT_BLOCKED",
        finish_reason,
    )


@pytest.mark.parametrize("finish_reason", ["NO_IMAGE", "IMAGE_OTHER", "MAX_TOKENS"])
async def test_other_finish_reasons_without_an_image_are_no_image(
    gemini: GeminiBackend, fake_gemini: FakeGemini, finish_reason: str
) -> None:
    fake_gemini.fail(Mode.SAFETY_BLOCK)
    fake_gemini.finish_reason = finish_reason
    with pytest.raises(FailedPrecondition) as caught:
        await gemini.render(CATALOGUE.tier("vista"), request("vista"))
    assert caught.value.reason == "NO_IMAGE"


async def test_a_wrong_gemini_key_is_an_auth_failure(fake_gemini: FakeGemini) -> None:
    settings = ProviderSettings("gemini", fake_gemini.url, api_key=ApiKey("gm-wrong-key"))
    backend = GeminiBackend.open(settings, connections=1)
    try:
        with pytest.raises(TiergenError) as caught:
            await backend.render(CATALOGUE.tier("vista"), request("vista"))
    finally:
        await backend.close()
    assert (caught.value.code, caught.value.reason) == ("INTERNAL", "PROVIDER_AUTH_FAILED")
    assert "GEMINI_API_KEY" in caught.value.message


# --- OpenAI ---


@pytest.mark.parametrize(
    ("ratio", "size"),
    [
        (AspectRatio.R1_1, "1024x1024"),
        (AspectRatio.R3_2, "1536x1024"),
        (AspectRatio.R4_3, "1536x1024"),
        (AspectRatio.R16_9, "1536x1024"),
        (AspectRatio.R21_9, "1536x1024"),
        (AspectRatio.R2_3, "1024x1536"),
        (AspectRatio.R3_4, "1024x1536"),
        (AspectRatio.R9_16, "1024x1536"),
    ],
)
def test_each_aspect_ratio_asks_openai_for_the_closest_size(ratio: AspectRatio, size: str) -> None:
    resolution = Resolution(ImageSize.K2, ratio)
    assert openai_size(resolution.width, resolution.height) == size


def test_the_mask_becomes_transparent_where_openai_may_paint() -> None:
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 8, 4))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    with Image.open(io.BytesIO(openai_mask(buffer.getvalue()))) as converted:
        assert converted.mode == "RGBA"
        assert converted.getpixel((0, 0)) == (0, 0, 0, 0)  # white: re-render
        assert converted.getpixel((0, 7)) == (0, 0, 0, 255)  # black: keep


async def test_openai_generates_and_the_answer_is_fitted_to_the_contracts_size(
    openai: OpenAIBackend, fake_openai: FakeOpenAI
) -> None:
    picture = await openai.render(CATALOGUE.tier("studio"), request("studio", resolution=WIDE))
    image = opened(picture)
    assert image.size == (1376, 768)
    assert image.getpixel((700, 400)) == colour_for("a fox in the snow")
    (sent,) = fake_openai.requests
    assert sent.path == "/v1/images/generations"
    assert sent.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert sent.json == {
        "model": "gpt-image-2",
        "prompt": "a fox in the snow",
        "n": 1,
        "size": "1536x1024",
        "quality": "low",
        "output_format": "png",
    }


async def test_openai_edits_with_references(openai: OpenAIBackend, fake_openai: FakeOpenAI) -> None:
    first, second = png((10, 120, 30), (300, 200)), jpeg((64, 64))
    await openai.render(
        CATALOGUE.tier("studio"),
        request("studio", references=(first, second), strength=0.5),
    )
    (sent,) = fake_openai.requests
    assert sent.path == "/v1/images/edits"
    assert sent.fields == {
        "model": "gpt-image-2",
        "prompt": "a fox in the snow",
        "n": "1",
        "size": "1024x1024",
        "quality": "low",
        "output_format": "png",
    }
    assert [(name, kind, data) for name, _, kind, data in sent.files] == [
        ("image[]", "image/png", first),
        ("image[]", "image/jpeg", second),
    ]


async def test_openai_inpainting_changes_only_the_masked_region(
    openai: OpenAIBackend, fake_openai: FakeOpenAI
) -> None:
    source = png((10, 120, 30), (1024, 1024))
    mask = Image.new("L", (1024, 1024), 0)
    mask.paste(255, (0, 0, 1024, 512))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    picture = await openai.render(
        CATALOGUE.tier("studio"),
        request("studio", references=(source,), mask=buffer.getvalue()),
    )
    image = opened(picture)
    assert image.getpixel((512, 900)) == (10, 120, 30)
    assert image.getpixel((512, 100)) == colour_for("a fox in the snow")
    (sent,) = fake_openai.requests
    assert [name for name, _, _, _ in sent.files] == ["image[]", "mask"]


@pytest.mark.parametrize(
    ("mode", "error", "reason"),
    [
        (Mode.SAFETY_BLOCK, FailedPrecondition, "CONTENT_BLOCKED"),
        (Mode.NO_IMAGE, FailedPrecondition, "NO_IMAGE"),
        (Mode.MALFORMED_BASE64, Unavailable, "PROVIDER_BAD_RESPONSE"),
        (Mode.NOT_AN_IMAGE, Unavailable, "PROVIDER_BAD_RESPONSE"),
        (Mode.NOT_JSON, Unavailable, "PROVIDER_BAD_RESPONSE"),
    ],
)
async def test_openai_answers_without_a_usable_image_are_typed_errors_never_retried(
    openai: OpenAIBackend,
    fake_openai: FakeOpenAI,
    mode: Mode,
    error: type[TiergenError],
    reason: str,
) -> None:
    fake_openai.fail(mode)
    with pytest.raises(error) as caught:
        await openai.render(CATALOGUE.tier("studio"), request("studio"))
    assert fake_openai.hits == 1
    assert caught.value.reason == reason
    assert caught.value.metadata["provider"] == "openai"


async def test_a_legacy_openai_model_asks_for_base64(fake_openai: FakeOpenAI) -> None:
    catalogue = parse_catalogue(TIERS.replace('model = "gpt-image-2"', 'model = "dall-e-3"'))
    settings = ProviderSettings("openai", fake_openai.url, api_key=ApiKey(fake_openai.api_key))
    backend = OpenAIBackend.open(settings, connections=1)
    try:
        await backend.render(catalogue.tier("studio"), request("studio"))
    finally:
        await backend.close()
    (sent,) = fake_openai.requests
    assert sent.json["response_format"] == "b64_json"
    assert "output_format" not in sent.json and "quality" not in sent.json


# --- instant ---


async def test_instant_gives_a_solid_picture_of_the_exact_size() -> None:
    backend = InstantBackend()
    tier = CATALOGUE.tier("blink")
    first = await backend.render(tier, request("blink", resolution=WIDE))
    again = await backend.render(tier, request("blink", resolution=WIDE))
    other = await backend.render(tier, request("blink", "a hare", resolution=WIDE))
    big = await backend.render(tier, request("blink", resolution=Resolution(ImageSize.K4)))
    assert first.image == again.image
    assert other.image != first.image and len(other.image) == len(first.image)
    image = opened(first)
    assert image.size == (1376, 768)
    assert (
        image.getpixel((0, 0)) == image.getpixel((1375, 767)) == colour_of("a fox in the snow", 7)
    )
    assert opened(other).getpixel((5, 5)) == colour_of("a hare", 7)
    assert opened(big).size == (4096, 4096)
    assert colour_of("a fox in the snow", 8) != colour_of("a fox in the snow", 7)
    await backend.close()
