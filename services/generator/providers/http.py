"""The HTTP side every image provider shares: a pooled client, retries with backoff, error mapping.

Only answers that say "try again" are retried: 429 (after the provider's Retry-After, when it
gives one) and 5xx, with exponential backoff and jitter, `max_attempts` in all. A 4xx, a safety
block, a timeout or a broken connection is never retried here: a timeout or a connection lost
mid-request is ambiguous (the provider may have rendered the image, and billed it), so the error
says so in its `ambiguous` metadata and leaves the decision to the caller.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from services.generator.picture import UnreadableImage, conform
from services.runtime.errors import (
    FailedPrecondition,
    Internal,
    ResourceExhausted,
    TiergenError,
    Unavailable,
)
from services.runtime.settings import ConfigError

__all__ = [
    "ApiKey",
    "FormFile",
    "ProviderHttp",
    "ProviderSettings",
    "Refusal",
    "RetryHint",
    "decode_base64",
    "key_variable",
    "retry_after_seconds",
    "setting_variable",
]

_log = structlog.get_logger("tiergen.generator")

#: Looks at a refused answer (a 4xx other than 429) first: a provider-specific error, or None.
Refusal = Callable[[httpx.Response], TiergenError | None]
#: A provider's own retry advice in a 429 or 5xx body, in seconds, when no Retry-After header says.
RetryHint = Callable[[httpx.Response], float | None]
#: One file of a multipart form: field name, and (file name, bytes, media type).
FormFile = tuple[str, tuple[str, bytes, str]]

_MOST_ATTEMPTS = 10
# Longest piece of a provider's own error message repeated in ours.
_MESSAGE_CHARS = 300


def setting_variable(provider: str, setting: str) -> str:
    """The environment variable of one provider setting, for example TIERGEN_GEMINI_BASE_URL."""
    return f"TIERGEN_{provider.upper()}_{setting}"


def key_variable(provider: str) -> str:
    """The environment variable holding a provider's API key, for example GEMINI_API_KEY."""
    return f"{provider.upper()}_API_KEY"


class ApiKey:
    """A provider's API key. It prints as *** so that no repr, log line or error can carry it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value.strip():
            raise ValueError("an API key cannot be empty")
        self._value = value.strip()

    def reveal(self) -> str:
        """The key itself, for the one request header that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ProviderSettings:
    """How to reach one HTTP provider and how hard to try; checked when made."""

    #: The backend name: "gemini" or "openai".
    name: str
    #: Scheme and host, and a path prefix when a proxy needs one; no trailing API version.
    base_url: str
    #: None when neither <NAME>_API_KEY nor <NAME>_API_KEY_FILE is set.
    api_key: ApiKey | None = None
    #: Longest wait for a connection to open.
    connect_timeout_seconds: float = 10.0
    #: Longest wait for the provider to send the next bytes of the request or its answer; a 4K
    #: image can take a minute or more to render before the first byte comes back.
    timeout_seconds: float = 180.0
    #: Sends of one request in all, retries of 429 and 5xx included.
    max_attempts: int = 3
    #: Wait before the first retry; it doubles each retry, and jitter takes up to half of it off.
    backoff_seconds: float = 1.0
    #: Longest wait before a retry; a Retry-After above it ends the attempts at once.
    max_backoff_seconds: float = 30.0

    def __post_init__(self) -> None:
        def variable(setting: str) -> str:
            return setting_variable(self.name, setting)

        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{variable('BASE_URL')}={self.base_url!r}: expected an http:// or https:// URL"
            )
        if parts.query or parts.fragment:
            raise ConfigError(
                f"{variable('BASE_URL')}={self.base_url!r}: takes no query or fragment"
            )
        for setting, seconds in (
            ("CONNECT_TIMEOUT_SECONDS", self.connect_timeout_seconds),
            ("TIMEOUT_SECONDS", self.timeout_seconds),
        ):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ConfigError(f"{variable(setting)}={seconds}: must be seconds > 0")
        if not 1 <= self.max_attempts <= _MOST_ATTEMPTS:
            raise ConfigError(
                f"{variable('MAX_ATTEMPTS')}={self.max_attempts}:"
                f" must be between 1 and {_MOST_ATTEMPTS}"
            )
        if not (math.isfinite(self.backoff_seconds) and self.backoff_seconds >= 0):
            raise ConfigError(f"{variable('BACKOFF_SECONDS')}={self.backoff_seconds}: must be >= 0")
        if not (
            math.isfinite(self.max_backoff_seconds)
            and self.max_backoff_seconds >= self.backoff_seconds
        ):
            raise ConfigError(
                f"{variable('MAX_BACKOFF_SECONDS')}={self.max_backoff_seconds}: must be at least"
                f" {variable('BACKOFF_SECONDS')} ({self.backoff_seconds})"
            )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date); None if unusable.

    `now` is the current Unix time, for a date; the clock when None.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def decode_base64(text: str) -> bytes:
    """Bytes of standard or URL-safe base64, padded or not (protobuf's JSON takes all four).

    Raises ValueError for anything else.
    """
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except binascii.Error as error:
        raise ValueError(f"not base64: {error}") from None


class ProviderHttp:
    """One provider's pooled HTTP client: posts a request, retrying 429 and 5xx with backoff.

    Every failure leaves as a domain error whose metadata names the provider and model. `sleep`
    and `jitter` (a number in [0, 1)) are the waiting and the randomness, replaceable in tests.
    """

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        headers: Mapping[str, str],
        connections: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._jitter = jitter
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            headers=headers,
            timeout=httpx.Timeout(
                settings.timeout_seconds, connect=settings.connect_timeout_seconds
            ),
            # Tier admission already caps the renders in flight: one connection for each.
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    @property
    def name(self) -> str:
        """The provider's backend name."""
        return self.settings.name

    async def close(self) -> None:
        """Closes the pooled connections."""
        await self._client.aclose()

    async def post(
        self,
        path: str,
        *,
        model: str,
        content: bytes | None = None,
        content_type: str | None = None,
        data: Mapping[str, str] | None = None,
        files: Sequence[FormFile] | None = None,
        refusal: Refusal | None = None,
        retry_hint: RetryHint | None = None,
    ) -> httpx.Response:
        """The provider's successful (2xx) answer to a POST of `path`.

        Sends `content` (of `content_type`) or a multipart form of `data` and `files`.
        Raises ResourceExhausted when 429s outlast the attempts, Unavailable for 5xx, timeouts
        and broken connections, and Internal for any other answer (redirects included), after
        `refusal` had its say.
        """
        headers = {"content-type": content_type} if content_type else None
        attempt = 0
        while True:
            attempt += 1
            response = await self._send(path, model, content, headers, data, files)
            status = response.status_code
            if status < 300:
                return response
            if status != 429 and status < 500:
                raise self._refused(response, model, refusal)
            advised = retry_after_seconds(response.headers.get("retry-after"))
            if advised is None and retry_hint is not None:
                advised = retry_hint(response)
            delay = self._backoff(attempt) if advised is None else advised
            if attempt >= self.settings.max_attempts or delay > self.settings.max_backoff_seconds:
                raise self._exhausted(response, model, attempt, delay)
            _log.warning(
                "provider retry",
                provider=self.name,
                model=model,
                http_status=status,
                attempt=attempt,
                delay_s=round(delay, 3),
            )
            await self._sleep(delay)

    def facts(self, model: str, **more: str) -> dict[str, str]:
        """Error metadata naming the provider and model, with `more`."""
        return {"provider": self.name, "model": model, **more}

    def auth_failure(self, status: int, model: str) -> Internal:
        """The error for an answer refusing the operator's API key.

        INTERNAL: the caller can do nothing about it and retrying cannot help; an operator must
        fix the key, and the service logs INTERNAL errors at error level.
        """
        variable = key_variable(self.name)
        return Internal(
            f"the {self.name} provider refused the generator's API key (HTTP {status});"
            f" an operator must fix {variable} or {variable}_FILE",
            reason="PROVIDER_AUTH_FAILED",
            metadata=self.facts(model, http_status=str(status)),
        )

    def blocked(self, model: str, finish_reason: str) -> FailedPrecondition:
        """The error for a render the provider's safety system refused; never retried.

        FAILED_PRECONDITION: the same prompt and references will be refused again; the caller
        must change them.
        """
        return FailedPrecondition(
            f"the {self.name} provider refused to render this request ({finish_reason});"
            " change the prompt or the reference images",
            reason="CONTENT_BLOCKED",
            metadata=self.facts(model, finish_reason=finish_reason),
        )

    def no_image(self, model: str, finish_reason: str, said: str = "") -> FailedPrecondition:
        """The error for a successful answer that carries no image; never retried.

        FAILED_PRECONDITION rather than INTERNAL: the model chose not to draw this prompt (it
        answered in words, or ran out of room), which is about the request, not a fault here,
        and a retry would be billed again for the same likely outcome.
        """
        words = f": {said[:_MESSAGE_CHARS]!r}" if said else ""
        return FailedPrecondition(
            f"the {self.name} provider answered without an image"
            f" (finish reason {finish_reason}){words}; rephrase the prompt",
            reason="NO_IMAGE",
            metadata=self.facts(model, finish_reason=finish_reason),
        )

    def bad_response(self, model: str, what: str) -> Unavailable:
        """The error for a successful answer the generator cannot use: not JSON, not the
        documented shape, malformed base64, or bytes that are no image.

        UNAVAILABLE rather than INTERNAL: the dependency misbehaved, not Tiergen, and a run of
        them should open the router's circuit breaker. Not ambiguous: the provider answered,
        so falling back to another tier cannot cost a second delivered image.
        """
        return Unavailable(
            f"the {self.name} provider sent an answer that cannot be used: {what}",
            reason="PROVIDER_BAD_RESPONSE",
            metadata=self.facts(model, ambiguous="false"),
        )

    def decode_picture(
        self,
        model: str,
        encoded: str,
        width: int,
        height: int,
        *,
        keep: tuple[bytes, bytes] | None = None,
    ) -> bytes:
        """The base64 image of an answer as a PNG of exactly `width` x `height` (see `conform`).

        CPU work: call it off the event loop.
        """
        try:
            image = decode_base64(encoded)
        except ValueError:
            raise self.bad_response(model, "the image is not valid base64") from None
        try:
            return conform(image, width, height, keep=keep)
        except UnreadableImage as error:
            raise self.bad_response(model, str(error)) from None

    def message_of(self, response: httpx.Response) -> str:
        """The provider's own explanation in an error answer, short and free of the API key."""
        explanation = response.reason_phrase or f"HTTP {response.status_code}"
        try:
            document: Any = json.loads(response.content)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("error"), dict):
            message = document["error"].get("message")
            if isinstance(message, str) and message.strip():
                explanation = message.strip()
        key = self.settings.api_key
        if key is not None:
            explanation = explanation.replace(key.reveal(), "***")
        if len(explanation) > _MESSAGE_CHARS:
            explanation = explanation[: _MESSAGE_CHARS - 3] + "..."
        return explanation

    async def _send(
        self,
        path: str,
        model: str,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        files: Sequence[FormFile] | None,
    ) -> httpx.Response:
        name = self.name
        try:
            return await self._client.post(
                path, content=content, headers=headers, data=data, files=files
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            # Nothing reached the provider: safe for the caller to try elsewhere.
            raise Unavailable(
                f"cannot reach the {name} provider at {self.settings.base_url}"
                f" ({type(error).__name__})",
                reason="PROVIDER_UNREACHABLE",
                metadata=self.facts(model, ambiguous="false"),
            ) from None
        except httpx.TimeoutException:
            raise Unavailable(
                f"the {name} provider did not answer within {self.settings.timeout_seconds:g} s;"
                " it may still have rendered (and billed) the image",
                reason="PROVIDER_TIMEOUT",
                metadata=self.facts(model, ambiguous="true"),
            ) from None
        except httpx.TransportError as error:
            raise Unavailable(
                f"the connection to the {name} provider broke during the request"
                f" ({type(error).__name__}); it may still have rendered (and billed) the image",
                reason="PROVIDER_CONNECTION_LOST",
                metadata=self.facts(model, ambiguous="true"),
            ) from None

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff before retry `attempt`, capped, with up to half taken off at random
        so that callers refused together do not come back together."""
        settings = self.settings
        ceiling = min(settings.max_backoff_seconds, settings.backoff_seconds * 2.0 ** (attempt - 1))
        return ceiling * (1.0 - self._jitter() / 2)

    def _refused(
        self, response: httpx.Response, model: str, refusal: Refusal | None
    ) -> TiergenError:
        specific = None if refusal is None else refusal(response)
        if specific is not None:
            return specific
        status = response.status_code
        if status in (401, 403):
            return self.auth_failure(status, model)
        # The request was checked against the tier before it left, so a refusal means the tier's
        # configuration (model, sizes) or this adapter is wrong: nothing the caller can change.
        return Internal(
            f"the {self.name} provider rejected the request for model {model!r}"
            f" (HTTP {status}): {self.message_of(response)}",
            reason="PROVIDER_REJECTED",
            metadata=self.facts(model, http_status=str(status)),
        )

    def _exhausted(
        self, response: httpx.Response, model: str, attempts: int, delay: float
    ) -> TiergenError:
        status = response.status_code
        facts = self.facts(model, http_status=str(status), attempts=str(attempts))
        explanation = self.message_of(response)
        if status == 429:
            return ResourceExhausted(
                f"the {self.name} provider is rate limiting the generator (HTTP 429 after"
                f" {attempts} attempt(s)): {explanation}; retry in {delay:g} s",
                retry_after=delay,
                reason="PROVIDER_RATE_LIMITED",
                metadata=facts,
            )
        return Unavailable(
            f"the {self.name} provider is failing (HTTP {status} after {attempts} attempt(s)):"
            f" {explanation}",
            retry_after=delay,
            reason="PROVIDER_UNAVAILABLE",
            metadata={**facts, "ambiguous": "false"},
        )
