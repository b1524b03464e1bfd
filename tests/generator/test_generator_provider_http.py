"""The providers' shared HTTP side: retry advice, backoff, which answers are retried, and errors."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from services.generator.providers.gemini import GeminiBackend
from services.generator.providers.http import (
    ApiKey,
    ProviderHttp,
    ProviderSettings,
    decode_base64,
    retry_after_seconds,
)
from services.generator.tiers import RenderRequest, parse_catalogue
from services.runtime.errors import Internal, ResourceExhausted, Unavailable
from services.runtime.settings import ConfigError
from tests.generator.fake_providers import FakeGemini, FakeOpenAI, Mode

GENERATIONS = "/v1/images/generations"
BODY = json.dumps({"model": "gpt-image-2", "prompt": "a fox", "n": 1}).encode()


class Waits:
    """Records the waits a client asks for instead of waiting them out."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def settings(
    fake: FakeOpenAI | FakeGemini, name: str = "openai", **changes: Any
) -> ProviderSettings:
    values: dict[str, object] = {
        "name": name,
        "base_url": fake.url,
        "api_key": ApiKey(fake.api_key),
        "timeout_seconds": 5.0,
        "max_attempts": 3,
        "backoff_seconds": 1.0,
        "max_backoff_seconds": 30.0,
    }
    values.update(changes)
    return ProviderSettings(**values)  # type: ignore[arg-type]


def openai_http(
    fake: FakeOpenAI, waits: Waits, jitter: float = 0.0, **changes: Any
) -> ProviderHttp:
    provider = settings(fake, **changes)
    key = provider.api_key.reveal() if provider.api_key else ""
    return ProviderHttp(
        provider,
        headers={"authorization": f"Bearer {key}"},
        connections=2,
        sleep=waits,
        jitter=lambda: jitter,
    )


@pytest.fixture
def waits() -> Waits:
    return Waits()


async def post(http: ProviderHttp) -> httpx.Response:
    try:
        return await http.post(
            GENERATIONS, model="gpt-image-2", content=BODY, content_type="application/json"
        )
    finally:
        await http.close()


# --- pure parts ---


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("1.5", 1.5), ("0", 0.0), (" 12 ", 12.0), ("-1", None), ("soon", None)],
)
def test_retry_after_in_seconds(header: str, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_a_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, now=now.timestamp()) == 30.0
    assert retry_after_seconds(earlier, now=now.timestamp()) == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("nan") is None


@pytest.mark.parametrize(
    ("text", "data"),
    [("aGVsbG8=", b"hello"), ("aGVsbG8", b"hello"), ("/+8=", b"\xff\xef"), ("_-8", b"\xff\xef")],
)
def test_base64_in_every_spelling_protobuf_accepts(text: str, data: bytes) -> None:
    assert decode_base64(text) == data


def test_malformed_base64_is_refused() -> None:
    with pytest.raises(ValueError, match="not base64"):
        decode_base64("this is *not* base64!")


def test_an_api_key_never_prints() -> None:
    key = ApiKey("  sk-secret-1234\n")
    assert key.reveal() == "sk-secret-1234"
    assert "sk-secret" not in f"{key} {key!r} {[key]}"
    provider = ProviderSettings("openai", "https://api.openai.com", api_key=key)
    assert "sk-secret" not in repr(provider)
    assert key == ApiKey("sk-secret-1234") and key != ApiKey("other")
    with pytest.raises(ValueError, match="empty"):
        ApiKey("  ")


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"base_url": "ftp://example.com"}, "TIERGEN_OPENAI_BASE_URL"),
        ({"base_url": "https://"}, "TIERGEN_OPENAI_BASE_URL"),
        ({"base_url": "https://example.com/?key=1"}, "TIERGEN_OPENAI_BASE_URL"),
        ({"timeout_seconds": 0.0}, "TIERGEN_OPENAI_TIMEOUT_SECONDS"),
        ({"connect_timeout_seconds": float("inf")}, "TIERGEN_OPENAI_CONNECT_TIMEOUT_SECONDS"),
        ({"max_attempts": 0}, "TIERGEN_OPENAI_MAX_ATTEMPTS"),
        ({"max_attempts": 11}, "TIERGEN_OPENAI_MAX_ATTEMPTS"),
        ({"backoff_seconds": -1.0}, "TIERGEN_OPENAI_BACKOFF_SECONDS"),
        ({"backoff_seconds": 5.0, "max_backoff_seconds": 1.0}, "TIERGEN_OPENAI_MAX_BACKOFF"),
    ],
)
def test_bad_provider_settings_name_the_variable(changes: dict[str, object], variable: str) -> None:
    values: dict[str, object] = {"name": "openai", "base_url": "https://api.openai.com"}
    values.update(changes)
    with pytest.raises(ConfigError, match=variable):
        ProviderSettings(**values)  # type: ignore[arg-type]


def test_a_providers_message_is_short_and_free_of_the_key(fake_openai: FakeOpenAI) -> None:
    http = openai_http(fake_openai, Waits())
    echoed = httpx.Response(400, json={"error": {"message": f"bad {fake_openai.api_key} " * 50}})
    message = http.message_of(echoed)
    assert fake_openai.api_key not in message
    assert message.startswith("bad *** bad ***") and len(message) == 300
    assert http.message_of(httpx.Response(502, content=b"<html>")) == "Bad Gateway"


# --- retries, over real HTTP ---


async def test_a_429_is_retried_after_its_retry_after(
    fake_openai: FakeOpenAI, waits: Waits
) -> None:
    fake_openai.fail(Mode.RATE_LIMITED, times=2, retry_after="7")
    response = await post(openai_http(fake_openai, waits))
    assert response.status_code == 200
    assert fake_openai.hits == 3
    assert waits.seconds == [7.0, 7.0]


async def test_a_5xx_is_retried_with_exponential_backoff_then_unavailable(
    fake_openai: FakeOpenAI, waits: Waits
) -> None:
    fake_openai.fail(Mode.SERVER_ERROR)
    with pytest.raises(Unavailable) as caught:
        await post(openai_http(fake_openai, waits, max_attempts=4, max_backoff_seconds=3.0))
    assert fake_openai.hits == 4
    # 1, 2, 4 capped at 3; no jitter drawn.
    assert waits.seconds == [1.0, 2.0, 3.0]
    error = caught.value
    assert error.reason == "PROVIDER_UNAVAILABLE"
    assert error.metadata == {
        "provider": "openai",
        "model": "gpt-image-2",
        "http_status": "500",
        "attempts": "4",
        "ambiguous": "false",
    }
    assert "HTTP 500 after 4 attempt(s)" in error.message
    assert "The server had an error" in error.message


async def test_jitter_takes_up_to_half_of_each_wait(fake_openai: FakeOpenAI, waits: Waits) -> None:
    fake_openai.fail(Mode.SERVER_ERROR, times=2)
    await post(openai_http(fake_openai, waits, jitter=0.999))
    assert fake_openai.hits == 3
    assert [round(wait, 3) for wait in waits.seconds] == [0.5, 1.001]


async def test_429s_that_outlast_the_attempts_are_resource_exhausted(
    fake_openai: FakeOpenAI, waits: Waits
) -> None:
    fake_openai.fail(Mode.RATE_LIMITED, retry_after="2")
    with pytest.raises(ResourceExhausted) as caught:
        await post(openai_http(fake_openai, waits))
    assert fake_openai.hits == 3
    assert waits.seconds == [2.0, 2.0]
    assert caught.value.retry_after == 2.0
    assert caught.value.reason == "PROVIDER_RATE_LIMITED"
    assert caught.value.metadata["attempts"] == "3"


async def test_a_retry_after_beyond_the_longest_backoff_ends_the_attempts_at_once(
    fake_openai: FakeOpenAI, waits: Waits
) -> None:
    fake_openai.fail(Mode.RATE_LIMITED, retry_after="60")
    with pytest.raises(ResourceExhausted) as caught:
        await post(openai_http(fake_openai, waits))
    assert fake_openai.hits == 1
    assert waits.seconds == []
    assert caught.value.retry_after == 60.0


async def test_geminis_retry_info_stands_in_for_retry_after(
    fake_gemini: FakeGemini, waits: Waits
) -> None:
    fake_gemini.fail(Mode.RATE_LIMITED, times=1, retry_after="13")
    catalogue = parse_catalogue(
        '[tiers.g]\nbackend = "gemini"\nmodel = "gemini-3-pro-image-preview"\n'
        'sizes = ["1K"]\nexpected_latency_seconds = { "1K" = 8 }\n'
    )
    http = ProviderHttp(
        settings(fake_gemini, "gemini"),
        headers={"x-goog-api-key": fake_gemini.api_key},
        connections=1,
        sleep=waits,
    )
    backend = GeminiBackend(http)
    try:
        picture = await backend.render(catalogue.tier("g"), RenderRequest("g", "a fox", 1))
    finally:
        await backend.close()
    assert (picture.width, picture.height) == (1024, 1024)
    assert fake_gemini.hits == 2
    assert waits.seconds == [13.0]


async def test_a_refusal_is_not_retried(fake_openai: FakeOpenAI, waits: Waits) -> None:
    http = openai_http(fake_openai, waits)
    try:
        with pytest.raises(Internal) as caught:
            await http.post(
                GENERATIONS,
                model="gpt-image-2",
                content=b'{"model": "gpt-image-2", "prompt": "a fox", "colour": "red"}',
                content_type="application/json",
            )
    finally:
        await http.close()
    assert fake_openai.hits == 1
    assert waits.seconds == []
    assert caught.value.reason == "PROVIDER_REJECTED"
    assert caught.value.metadata["http_status"] == "400"
    assert "Unrecognized request argument supplied: colour" in caught.value.message


async def test_a_wrong_key_is_internal_and_names_the_variable_not_the_key(
    fake_openai: FakeOpenAI, waits: Waits
) -> None:
    with pytest.raises(Internal) as caught:
        await post(openai_http(fake_openai, waits, api_key=ApiKey("sk-wrong-key-5555")))
    assert fake_openai.hits == 1
    error = caught.value
    assert error.reason == "PROVIDER_AUTH_FAILED"
    assert "OPENAI_API_KEY" in error.message
    assert "5555" not in error.message and "5555" not in str(error.metadata)


async def test_a_timeout_is_ambiguous_and_not_retried(
    fake_openai: FakeOpenAI, waits: Waits
) -> None:
    fake_openai.fail(Mode.HANG)
    with pytest.raises(Unavailable) as caught:
        await post(openai_http(fake_openai, waits, timeout_seconds=0.3))
    assert fake_openai.hits == 1
    assert caught.value.reason == "PROVIDER_TIMEOUT"
    assert caught.value.metadata["ambiguous"] == "true"
    assert "may still have rendered" in caught.value.message


async def test_an_unreachable_provider_is_unavailable_and_not_ambiguous(waits: Waits) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    provider = ProviderSettings("openai", f"http://127.0.0.1:{port}", api_key=ApiKey("k"))
    http = ProviderHttp(provider, headers={}, connections=1, sleep=waits)
    with pytest.raises(Unavailable) as caught:
        await post(http)
    assert caught.value.reason == "PROVIDER_UNREACHABLE"
    assert caught.value.metadata["ambiguous"] == "false"
    assert waits.seconds == []
