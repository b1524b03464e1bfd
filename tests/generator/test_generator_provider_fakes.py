"""The fake provider APIs are faithful: the vendors' own SDKs drive them, in every mode.

If a fake answered in a shape the real API does not use, or accepted a request the SDK would
never send, these tests would fail: the SDKs parse answers strictly (pydantic models) and send
requests exactly as the real services expect them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image

from tests.generator.fake_providers import FakeGemini, FakeOpenAI, Mode, colour_for

MODEL = "gemini-3-pro-image-preview"
IMAGE_ONLY = types.GenerateContentConfig(response_modalities=["IMAGE"])


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else (*colour, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.convert("RGB")


def gemini_client(fake: FakeGemini, api_key: str | None = None) -> genai.Client:
    return genai.Client(
        api_key=api_key or fake.api_key,
        http_options=types.HttpOptions(base_url=fake.url),
    )


def openai_client(fake: FakeOpenAI, api_key: str | None = None) -> openai.OpenAI:
    # No SDK retries: each call is one request, so `hits` counts calls.
    return openai.OpenAI(api_key=api_key or fake.api_key, base_url=fake.url + "/v1", max_retries=0)


@pytest.fixture
def gemini(fake_gemini: FakeGemini) -> Iterator[genai.Client]:
    with gemini_client(fake_gemini) as client:
        yield client


@pytest.fixture
def openai_sdk(fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai_client(fake_openai) as client:
        yield client


# --- Gemini, through google-genai ---


def test_gemini_sdk_renders_with_references_at_the_asked_size(
    fake_gemini: FakeGemini, gemini: genai.Client
) -> None:
    reference = png((200, 10, 10))
    response = gemini.models.generate_content(
        model=MODEL,
        contents=types.Content(
            role="user",
            parts=[
                types.Part.from_text(text="a red fox in the snow"),
                types.Part.from_bytes(data=reference, mime_type="image/png"),
            ],
        ),
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K"),
        ),
    )
    assert response.candidates is not None
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content is not None and candidate.content.parts is not None
    (part,) = candidate.content.parts
    assert part.inline_data is not None and part.inline_data.data is not None
    assert part.inline_data.mime_type == "image/png"
    picture = decoded(part.inline_data.data)
    assert picture.size == (2752, 1536)
    assert picture.getpixel((0, 0)) == colour_for("a red fox in the snow")

    (request,) = fake_gemini.requests
    assert request.path == f"/v1/models/{MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == fake_gemini.api_key
    assert request.json["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
    }
    # The SDK mixes the two spellings the API accepts: `inlineData` holding `mime_type`.
    inline = request.json["contents"][0]["parts"][1]["inlineData"]
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png"
    assert base64.urlsafe_b64decode(inline["data"]) == reference


@pytest.mark.parametrize("finish_reason", ["IMAGE_SAFETY", "PROHIBITED_CONTENT", "NO_IMAGE"])
def test_gemini_sdk_reads_a_candidate_without_an_image(
    fake_gemini: FakeGemini, finish_reason: str, gemini: genai.Client
) -> None:
    fake_gemini.fail(Mode.SAFETY_BLOCK)
    fake_gemini.finish_reason = finish_reason
    response = gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason(finish_reason)
    assert response.candidates[0].content is None


def test_gemini_sdk_reads_a_thinking_models_answer(
    gemini: genai.Client, fake_gemini: FakeGemini
) -> None:
    fake_gemini.fail(Mode.THINKING)
    response = gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert response.candidates is not None and response.candidates[0].content is not None
    parts = response.candidates[0].content.parts or []
    assert [(part.thought, part.inline_data is not None) for part in parts] == [
        (True, False),
        (True, True),
        (None, True),
    ]


def test_gemini_sdk_reads_a_blocked_prompt(fake_gemini: FakeGemini, gemini: genai.Client) -> None:
    fake_gemini.fail(Mode.PROMPT_BLOCKED)
    response = gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT
    assert not response.candidates


def test_gemini_sdk_reads_an_answer_in_words(fake_gemini: FakeGemini, gemini: genai.Client) -> None:
    fake_gemini.fail(Mode.NO_IMAGE)
    response = gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert response.candidates is not None
    content = response.candidates[0].content
    assert content is not None and content.parts is not None
    assert [part.inline_data for part in content.parts] == [None]
    assert content.parts[0].text


def test_gemini_sdk_refuses_malformed_base64(fake_gemini: FakeGemini, gemini: genai.Client) -> None:
    fake_gemini.fail(Mode.MALFORMED_BASE64)
    with pytest.raises(ValueError, match="base64"):
        gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)


def test_gemini_sdk_gets_bytes_that_are_no_image(
    fake_gemini: FakeGemini, gemini: genai.Client
) -> None:
    fake_gemini.fail(Mode.NOT_AN_IMAGE)
    response = gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert response.candidates is not None and response.candidates[0].content is not None
    (part,) = response.candidates[0].content.parts or []
    assert part.inline_data is not None and part.inline_data.data is not None
    with pytest.raises(OSError):
        decoded(part.inline_data.data)


def test_gemini_sdk_reads_rate_limits_and_server_errors(
    fake_gemini: FakeGemini, gemini: genai.Client
) -> None:
    fake_gemini.fail(Mode.RATE_LIMITED, retry_after="13")
    with pytest.raises(genai_errors.ClientError) as limited:
        gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    (detail,) = limited.value.details["error"]["details"]
    assert detail == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}

    fake_gemini.fail(Mode.SERVER_ERROR)
    with pytest.raises(genai_errors.ServerError) as failed:
        gemini.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert (failed.value.code, failed.value.status) == (500, "INTERNAL")


def test_gemini_sdk_with_a_wrong_key_is_refused(fake_gemini: FakeGemini) -> None:
    with (
        gemini_client(fake_gemini, api_key="not-the-key") as client,
        pytest.raises(genai_errors.ClientError) as refused,
    ):
        client.models.generate_content(model=MODEL, contents="a fox", config=IMAGE_ONLY)
    assert (refused.value.code, refused.value.status) == (400, "INVALID_ARGUMENT")
    (detail,) = refused.value.details["error"]["details"]
    assert detail["reason"] == "API_KEY_INVALID"


def test_the_fake_gemini_refuses_what_the_api_refuses(
    fake_gemini: FakeGemini, gemini: genai.Client
) -> None:
    lower_case_size = types.GenerateContentConfig(
        response_modalities=["IMAGE"], image_config=types.ImageConfig(image_size="2k")
    )
    with pytest.raises(genai_errors.ClientError, match="Unsupported image size"):
        gemini.models.generate_content(model=MODEL, contents="a fox", config=lower_case_size)
    with pytest.raises(genai_errors.ClientError, match="responseModalities"):
        gemini.models.generate_content(model=MODEL, contents="a fox")
    not_an_image = types.Part.from_bytes(data=b"plain text", mime_type="image/png")
    with pytest.raises(genai_errors.ClientError, match="Unable to process input image"):
        gemini.models.generate_content(
            model=MODEL,
            contents=types.Content(parts=[types.Part.from_text(text="a fox"), not_an_image]),
            config=IMAGE_ONLY,
        )


# --- OpenAI, through openai ---


def test_openai_sdk_generates_at_the_asked_size(
    fake_openai: FakeOpenAI, openai_sdk: openai.OpenAI
) -> None:
    response = openai_sdk.images.generate(
        model="gpt-image-2",
        prompt="a lighthouse at dusk",
        n=1,
        size="1536x1024",
        quality="low",
        output_format="png",
    )
    assert response.data is not None
    (image,) = response.data
    assert image.b64_json is not None
    assert response.size == "1536x1024" and response.quality == "low"
    assert response.usage is not None and response.usage.total_tokens > 0
    (request,) = fake_openai.requests
    assert request.path == "/v1/images/generations"
    assert request.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert request.json == {
        "model": "gpt-image-2",
        "prompt": "a lighthouse at dusk",
        "n": 1,
        "size": "1536x1024",
        "quality": "low",
        "output_format": "png",
    }


def test_openai_sdk_edits_with_references_and_a_mask(
    fake_openai: FakeOpenAI, openai_sdk: openai.OpenAI
) -> None:
    first, second = png((10, 120, 30), (256, 256)), png((200, 10, 10), (256, 256))
    mask = png((0, 0, 0), (256, 256), mode="RGBA")
    response = openai_sdk.images.edit(
        model="gpt-image-2",
        prompt="add a red door",
        image=[("first.png", first, "image/png"), ("second.png", second, "image/png")],
        mask=("mask.png", mask, "image/png"),
        size="1024x1024",
    )
    assert response.data is not None and response.data[0].b64_json is not None
    picture = decoded(base64.b64decode(response.data[0].b64_json))
    assert picture.size == (1024, 1024)
    (request,) = fake_openai.requests
    assert request.path == "/v1/images/edits"
    assert [(name, data) for name, _, _, data in request.files] == [
        ("image[]", first),
        ("image[]", second),
        ("mask", mask),
    ]
    assert request.fields == {
        "model": "gpt-image-2",
        "prompt": "add a red door",
        "size": "1024x1024",
    }


def test_openai_sdk_reads_a_safety_block(
    fake_openai: FakeOpenAI, openai_sdk: openai.OpenAI
) -> None:
    fake_openai.fail(Mode.SAFETY_BLOCK)
    with pytest.raises(openai.BadRequestError) as blocked:
        openai_sdk.images.generate(model="gpt-image-2", prompt="a fox")
    assert blocked.value.code == "moderation_blocked"
    assert blocked.value.type == "image_generation_user_error"


def test_openai_sdk_reads_answers_without_a_usable_image(
    fake_openai: FakeOpenAI, openai_sdk: openai.OpenAI
) -> None:
    fake_openai.fail(Mode.NO_IMAGE)
    assert openai_sdk.images.generate(model="gpt-image-2", prompt="a fox").data == []
    fake_openai.fail(Mode.MALFORMED_BASE64)
    (image,) = openai_sdk.images.generate(model="gpt-image-2", prompt="a fox").data or []
    assert image.b64_json == "this is *not* base64!"


def test_openai_sdk_reads_rate_limits_and_server_errors(
    fake_openai: FakeOpenAI, openai_sdk: openai.OpenAI
) -> None:
    fake_openai.fail(Mode.RATE_LIMITED, retry_after="7")
    with pytest.raises(openai.RateLimitError) as limited:
        openai_sdk.images.generate(model="gpt-image-2", prompt="a fox")
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "7"
    fake_openai.fail(Mode.SERVER_ERROR)
    with pytest.raises(openai.InternalServerError):
        openai_sdk.images.generate(model="gpt-image-2", prompt="a fox")
    assert fake_openai.hits == 2


def test_openai_sdk_with_a_wrong_key_is_refused(fake_openai: FakeOpenAI) -> None:
    with (
        openai_client(fake_openai, api_key="sk-wrong-0000") as client,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        client.images.generate(model="gpt-image-2", prompt="a fox")
    assert refused.value.code == "invalid_api_key"
    assert "sk-wrong-0000" not in refused.value.message


def test_the_fake_openai_refuses_what_the_api_refuses(
    fake_openai: FakeOpenAI, openai_sdk: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError, match="response_format"):
        openai_sdk.images.generate(model="gpt-image-2", prompt="a fox", response_format="b64_json")
    with pytest.raises(openai.BadRequestError, match="Invalid value"):
        openai_sdk.images.generate(model="gpt-image-2", prompt="a fox", size="1792x1024")
    with pytest.raises(openai.BadRequestError, match="mask"):
        openai_sdk.images.edit(
            model="gpt-image-2",
            prompt="a fox",
            image=("first.png", png((1, 2, 3), (256, 256)), "image/png"),
            mask=("mask.png", png((0, 0, 0), (128, 128), mode="RGBA"), "image/png"),
        )
