"""HTTP image providers (Gemini, OpenAI) and the instant backend, behind the generator's tiers."""

from __future__ import annotations

from services.generator.providers.gemini import GeminiBackend
from services.generator.providers.http import ApiKey, ProviderHttp, ProviderSettings
from services.generator.providers.instant import InstantBackend
from services.generator.providers.openai import OpenAIBackend

__all__ = [
    "ApiKey",
    "GeminiBackend",
    "InstantBackend",
    "OpenAIBackend",
    "ProviderHttp",
    "ProviderSettings",
]
