"""The OpenAI Images API as a backend: generations, and edits for references and in-painting.

A request without references goes to `/v1/images/generations` as JSON; one whose references
steer it (strength above 0) or that carries a mask goes to `/v1/images/edits` as a multipart
form with each reference as an `image[]` file and the mask as `mask`. OpenAI draws a few fixed
sizes, so the request asks for the one closest in shape to the contract's size, and the answer
is scaled to cover that exact size and centre-cropped (`conform`): the contract's pixel sizes
hold whatever the provider draws. The tier's quality is passed on as OpenAI's `quality`.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from typing import Any

import httpx
from PIL import Image

from services.generator.picture import Picture, media_type
from services.generator.providers.http import FormFile, ProviderHttp, ProviderSettings
from services.generator.tiers import RenderRequest, Tier
from services.runtime.errors import TiergenError

__all__ = ["MOST_REFERENCES", "SIZES", "OpenAIBackend", "openai_mask", "openai_size"]

#: Sizes every GPT image model draws, width x height.
SIZES = ((1024, 1024), (1536, 1024), (1024, 1536))

#: Most images one edit may carry.
MOST_REFERENCES = 16

# Error codes of a 400 answer from OpenAI's safety system (the second from older models).
_BLOCKING_CODES = frozenset({"moderation_blocked", "content_policy_violation"})

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def openai_size(width: int, height: int) -> str:
    """The OpenAI size closest in aspect ratio to `width` x `height`, as "WxH"."""
    wanted = math.log(width / height)
    best = min(SIZES, key=lambda size: abs(math.log(size[0] / size[1]) - wanted))
    return f"{best[0]}x{best[1]}"


def openai_mask(mask: bytes) -> bytes:
    """The contract's mask (white = re-render) as OpenAI's: a PNG transparent where to edit.

    CPU work: call it off the event loop.
    """
    with Image.open(io.BytesIO(mask)) as opened:
        region = opened.convert("L")
    alpha = region.point(lambda level: 0 if level >= 128 else 255)
    converted = Image.new("RGBA", region.size, (0, 0, 0, 255))
    converted.putalpha(alpha)
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_file(index: int, image: bytes) -> FormFile:
    kind = media_type(image)
    return "image[]", (f"reference-{index}.{_EXTENSIONS[kind]}", image, kind)


def _is_gpt_image(model: str) -> bool:
    """Whether `model` is a GPT image model: base64 answers always, PNG by `output_format`.
    Older models answer with a URL unless asked for `response_format=b64_json`."""
    return model.startswith(("gpt-image", "chatgpt-image"))


def _fields(tier: Tier, request: RenderRequest, model: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "n": 1,
        "size": openai_size(request.resolution.width, request.resolution.height),
    }
    if _is_gpt_image(model):
        fields["quality"] = str(tier.quality)
        fields["output_format"] = "png"
    else:
        fields["response_format"] = "b64_json"
    return fields


class OpenAIBackend:
    """Renders a tier's requests with its OpenAI `model`, over one pooled client."""

    def __init__(self, http: ProviderHttp) -> None:
        self._http = http

    @classmethod
    def open(cls, settings: ProviderSettings, connections: int) -> OpenAIBackend:
        """A backend with its own client; `settings.api_key` must be set."""
        if settings.api_key is None:
            raise ValueError("the openai backend needs an API key")
        headers = {"authorization": f"Bearer {settings.api_key.reveal()}"}
        return cls(ProviderHttp(settings, headers=headers, connections=connections))

    async def close(self) -> None:
        await self._http.close()

    async def render(self, tier: Tier, request: RenderRequest) -> Picture:
        started = time.perf_counter()
        model = tier.model
        assert model is not None, "check_backends refuses an OpenAI tier without a model"
        fields = _fields(tier, request, model)
        if request.mask is not None or (request.references and request.strength > 0):
            files = [_image_file(index, image) for index, image in enumerate(request.references)]
            if request.mask is not None:
                mask = await asyncio.to_thread(openai_mask, request.mask)
                files.append(("mask", ("mask.png", mask, "image/png")))
            response = await self._http.post(
                "/v1/images/edits",
                model=model,
                data={name: str(value) for name, value in fields.items()},
                files=files,
                refusal=lambda refused: self._refusal(refused, model),
            )
        else:
            response = await self._http.post(
                "/v1/images/generations",
                model=model,
                content=json.dumps(fields).encode("utf-8"),
                content_type="application/json",
                refusal=lambda refused: self._refusal(refused, model),
            )
        width, height = request.resolution.width, request.resolution.height
        keep = None if request.mask is None else (request.references[0], request.mask)
        image = await asyncio.to_thread(self._picture, response.content, model, width, height, keep)
        return Picture(image, width, height, time.perf_counter() - started)

    def _picture(
        self,
        content: bytes,
        model: str,
        width: int,
        height: int,
        keep: tuple[bytes, bytes] | None,
    ) -> bytes:
        """The answer's image as a PNG of the asked size, or the error the answer amounts to."""
        try:
            document: Any = json.loads(content)
        except ValueError:
            raise self._http.bad_response(model, "the answer is not JSON") from None
        if not isinstance(document, dict):
            raise self._http.bad_response(model, "the answer is not a JSON object")
        images = document.get("data")
        if images is not None and not isinstance(images, list):
            raise self._http.bad_response(model, "data is not a list")
        first = images[0] if images else None
        if first is None:
            raise self._http.no_image(model, "NO_IMAGE")
        encoded = first.get("b64_json") if isinstance(first, dict) else None
        if not isinstance(encoded, str):
            raise self._http.no_image(model, "NO_IMAGE")
        return self._http.decode_picture(model, encoded, width, height, keep=keep)

    def _refusal(self, response: httpx.Response, model: str) -> TiergenError | None:
        if response.status_code != 400:
            return None
        try:
            document: Any = json.loads(response.content)
        except ValueError:
            return None
        error = document.get("error") if isinstance(document, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if code in _BLOCKING_CODES:
            return self._http.blocked(model, str(code))
        return None
