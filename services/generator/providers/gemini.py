"""The Gemini image API as a backend: `models/{model}:generateContent`, images inline both ways.

The request carries the prompt as a text part and each reference as an `inline_data` part
(base64), and asks for an image of the tier's aspect ratio and size class through
`generationConfig.imageConfig`. The image comes back as the `inlineData` part of a candidate.
Gemini has no masks, so a Gemini tier cannot offer in-painting, and no seed for images, so its
renders do not repeat. A reference is sent only when the request's strength is above 0, the
contract's "ignored"; above that, Gemini decides how closely to follow it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import httpx

from services.generator.picture import Picture, media_type
from services.generator.providers.http import ProviderHttp, ProviderSettings
from services.generator.tiers import RenderRequest, Tier
from services.runtime.errors import TiergenError

__all__ = [
    "BLOCKING_FINISH_REASONS",
    "MOST_REFERENCES",
    "GeminiBackend",
    "generate_content_body",
]

#: Finish reasons (and prompt block reasons) meaning a safety or policy system refused the render.
BLOCKING_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
        "JAILBREAK",
    }
)

#: Most reference images one request may carry (Gemini 3 Pro Image's documented limit).
MOST_REFERENCES = 14

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def generate_content_body(request: RenderRequest) -> bytes:
    """The JSON body of a generateContent request rendering `request`."""
    parts: list[dict[str, Any]] = [{"text": request.prompt}]
    if request.strength > 0:
        parts += [
            {
                "inline_data": {
                    "mime_type": media_type(reference),
                    "data": base64.b64encode(reference).decode("ascii"),
                }
            }
            for reference in request.references
        ]
    body = {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {
                "aspectRatio": str(request.resolution.aspect_ratio),
                "imageSize": str(request.resolution.size),
            },
        },
    }
    return json.dumps(body).encode("utf-8")


class GeminiBackend:
    """Renders a tier's requests with its Gemini `model`, over one pooled client."""

    def __init__(self, http: ProviderHttp) -> None:
        self._http = http

    @classmethod
    def open(cls, settings: ProviderSettings, connections: int) -> GeminiBackend:
        """A backend with its own client; `settings.api_key` must be set."""
        if settings.api_key is None:
            raise ValueError("the gemini backend needs an API key")
        headers = {"x-goog-api-key": settings.api_key.reveal()}
        return cls(ProviderHttp(settings, headers=headers, connections=connections))

    async def close(self) -> None:
        await self._http.close()

    async def render(self, tier: Tier, request: RenderRequest) -> Picture:
        started = time.perf_counter()
        model = tier.model
        assert model is not None, "check_backends refuses a Gemini tier without a model"
        body = await asyncio.to_thread(generate_content_body, request)
        response = await self._http.post(
            f"/v1beta/models/{model}:generateContent",
            model=model,
            content=body,
            content_type="application/json",
            refusal=lambda refused: self._refusal(refused, model),
            retry_hint=_retry_delay,
        )
        width, height = request.resolution.width, request.resolution.height
        image = await asyncio.to_thread(self._picture, response.content, model, width, height)
        return Picture(image, width, height, time.perf_counter() - started)

    def _picture(self, content: bytes, model: str, width: int, height: int) -> bytes:
        """The answer's image as a PNG of the asked size, or the error the answer amounts to."""
        try:
            document: Any = json.loads(content)
        except ValueError:
            raise self._http.bad_response(model, "the answer is not JSON") from None
        if not isinstance(document, dict):
            raise self._http.bad_response(model, "the answer is not a JSON object")
        feedback = _field(document, "promptFeedback", "prompt_feedback")
        block = _field(feedback, "blockReason", "block_reason")
        if isinstance(block, str) and block:
            raise self._http.blocked(model, block)
        try:
            encoded, finish_reason, said = _read_candidates(document)
        except ValueError as error:
            raise self._http.bad_response(model, str(error)) from None
        if encoded is None:
            if finish_reason in BLOCKING_FINISH_REASONS:
                raise self._http.blocked(model, finish_reason)
            raise self._http.no_image(model, finish_reason, said)
        return self._http.decode_picture(model, encoded, width, height)

    def _refusal(self, response: httpx.Response, model: str) -> TiergenError | None:
        # Gemini answers a wrong key with 400 INVALID_ARGUMENT and the reason API_KEY_INVALID.
        if response.status_code == 400 and "API_KEY_INVALID" in _detail_reasons(response):
            return self._http.auth_failure(400, model)
        return None


def _read_candidates(document: dict[str, Any]) -> tuple[str | None, str, str]:
    """The base64 image of an answer's candidates (None without one), the first finish reason
    ("NONE" without one) and the words the model said instead; ValueError for a malformed one."""
    candidates = document.get("candidates") or []
    if not isinstance(candidates, list):
        raise ValueError("candidates is not a list")
    encoded: str | None = None
    said: list[str] = []
    finish_reason = "NONE"
    for candidate in candidates:
        if not isinstance(candidate, dict):
            raise ValueError("a candidate is not an object")
        reason = _field(candidate, "finishReason", "finish_reason")
        if isinstance(reason, str) and finish_reason == "NONE":
            finish_reason = reason
        message = candidate.get("content")
        parts = message.get("parts") if isinstance(message, dict) else None
        for part in parts if isinstance(parts, list) else []:
            # Thinking models send draft images, marked as thoughts, before the final one.
            if not isinstance(part, dict) or part.get("thought"):
                continue
            if isinstance(part.get("text"), str):
                said.append(part["text"])
            inline = _field(part, "inlineData", "inline_data")
            mime = _field(inline, "mimeType", "mime_type")
            if not (isinstance(mime, str) and mime.startswith("image/")):
                continue
            data = inline.get("data")
            if not isinstance(data, str):
                raise ValueError("an image part has no base64 data")
            encoded = data
    return encoded, finish_reason, " ".join(said).strip()


def _field(table: Any, camel: str, snake: str) -> Any:
    """A field of a JSON object by either of its names: the API answers in camelCase, and its
    protobuf JSON mapping accepts snake_case too."""
    if not isinstance(table, dict):
        return None
    return table.get(camel, table.get(snake))


def _details(response: httpx.Response) -> list[dict[str, Any]]:
    """The `error.details` entries of a Google API error answer."""
    try:
        document: Any = json.loads(response.content)
    except ValueError:
        return []
    error = document.get("error") if isinstance(document, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return []
    return [detail for detail in details if isinstance(detail, dict)]


def _detail_reasons(response: httpx.Response) -> set[str]:
    return {str(detail.get("reason")) for detail in _details(response) if "reason" in detail}


def _retry_delay(response: httpx.Response) -> float | None:
    """Seconds of a `google.rpc.RetryInfo` detail ("retryDelay": "13s"), which Gemini sends on
    429 in place of a Retry-After header."""
    for detail in _details(response):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            matched = _DURATION.match(str(detail.get("retryDelay", "")))
            if matched:
                return float(matched.group(1))
    return None
