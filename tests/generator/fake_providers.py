"""Local fakes of the Gemini image API and the OpenAI Images API, over real HTTP on loopback.

Each fake is a stdlib HTTP server in a thread that checks requests the way the real API
documents them (paths, auth headers, field names and values) and answers in the real shapes.
`mode` switches it into one of the failures a provider shows in production; `times` limits the
failure to the first few requests, after which it answers normally again. `hits` counts requests
and `requests` keeps them, so a test can see what was sent and how often.

    with FakeGemini() as fake:
        fake.fail(Mode.RATE_LIMITED, times=2)
        ...  # point TIERGEN_GEMINI_BASE_URL (or ProviderSettings.base_url) at fake.url
        assert fake.hits == 3
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import enum
import hashlib
import io
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from PIL import Image

__all__ = [
    "GEMINI_PIXELS_1K",
    "FakeGemini",
    "FakeOpenAI",
    "FakeProvider",
    "Mode",
    "Recorded",
    "colour_for",
]


class Mode(enum.StrEnum):
    """How a fake answers its image requests."""

    OK = "ok"
    #: 429; Gemini gives a RetryInfo detail, OpenAI a Retry-After header, of `retry_after`.
    RATE_LIMITED = "rate_limited"
    #: 500 with the provider's error body.
    SERVER_ERROR = "server_error"
    #: Reads the request and never answers, until the fake is reset or stopped.
    HANG = "hang"
    #: Gemini: 200 whose candidate finished with `finish_reason` (IMAGE_SAFETY) and no image.
    #: OpenAI: 400 with the error code moderation_blocked.
    SAFETY_BLOCK = "safety_block"
    #: Gemini: 200 with promptFeedback.blockReason and no candidates; OpenAI: as SAFETY_BLOCK.
    PROMPT_BLOCKED = "prompt_blocked"
    #: 200 without an image: Gemini answers in words (finish reason STOP), OpenAI with no data.
    NO_IMAGE = "no_image"
    #: 200 whose image data is not base64.
    MALFORMED_BASE64 = "malformed_base64"
    #: 200 whose image data is valid base64 of bytes that are no image.
    NOT_AN_IMAGE = "not_an_image"
    #: 200 with an HTML page in place of JSON, as a misconfigured proxy answers.
    NOT_JSON = "not_json"
    #: Gemini: a thinking model's answer, a thought and a draft image before the final image.
    #: OpenAI: as OK.
    THINKING = "thinking"


#: Gemini's image sizes at 1K, by aspect ratio; 2K and 4K double and quadruple both sides.
GEMINI_PIXELS_1K = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}
_GEMINI_SCALE = {"1K": 1, "2K": 2, "4K": 4}

_OPENAI_SIZES = frozenset({"auto", "1024x1024", "1536x1024", "1024x1536"})
_OPENAI_QUALITIES = frozenset({"low", "medium", "high", "auto"})
_OPENAI_FORMATS = frozenset({"png", "jpeg", "webp"})
_OPENAI_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "quality",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "response_format",
        "user",
        "input_fidelity",
        "partial_images",
        "stream",
    }
)
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


def colour_for(prompt: str) -> tuple[int, int, int]:
    """The colour of every picture a fake draws for `prompt`."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return digest[0], digest[1], digest[2]


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    # A one-colour palette image encodes in milliseconds even at 4K.
    picture = Image.new("P", size, 0)
    picture.putpalette(list(colour))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as opened:
            opened.load()
            return opened.size
    except (OSError, ValueError, SyntaxError):
        return None


@dataclass
class Recorded:
    """One request a fake received."""

    path: str
    headers: dict[str, str]
    #: The JSON body, when it was JSON.
    json: Any = None
    #: Text fields of a multipart form.
    fields: dict[str, str] = field(default_factory=dict)
    #: Files of a multipart form: (field name, file name, content type, bytes).
    files: list[tuple[str, str, str, bytes]] = field(default_factory=list)


@dataclass
class _Answer:
    """What a fake sends back; no answer at all when `hang` is set."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class _Rejected(Exception):
    """A request the real API would refuse with 400; the message is the API's explanation."""


class FakeProvider:
    """A provider's API on 127.0.0.1, on a free port, in a background thread."""

    #: Shown in error bodies; set by each fake.
    name = "provider"

    def __init__(self, api_key: str = "fake-test-key") -> None:
        self.api_key = api_key
        self.mode = Mode.OK
        #: Requests that fail in `mode` before the fake answers normally; None for all of them.
        self.times: int | None = None
        #: Seconds of retry advice in a 429.
        self.retry_after = "0"
        #: The finish reason of a Gemini safety block.
        self.finish_reason = "IMAGE_SAFETY"
        self.requests: list[Recorded] = []
        self._failed = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL to point a client at, for example http://127.0.0.1:43121."""
        assert self._server is not None, "the fake is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def hits(self) -> int:
        """Requests received so far."""
        with self._lock:
            return len(self.requests)

    def fail(self, mode: Mode, times: int | None = None, *, retry_after: str | None = None) -> None:
        """Answers the next `times` requests (all, when None) in `mode`."""
        with self._lock:
            self.mode = mode
            self.times = times
            self._failed = 0
            if retry_after is not None:
                self.retry_after = retry_after

    def reset(self) -> None:
        """Back to answering normally; forgets the requests; lets hanging requests go."""
        self._release.set()
        with self._lock:
            self.mode = Mode.OK
            self.times = None
            self._failed = 0
            self.retry_after = "0"
            self.finish_reason = "IMAGE_SAFETY"
            self.requests.clear()
            self._release = threading.Event()

    def start(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                answer = fake._receive(self.path, dict(self.headers.items()), body)
                if answer.hang:
                    fake._wait_for_release()
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                headers = {"content-type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests read `requests`, not stderr."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_for_release(self) -> None:
        with self._lock:
            release = self._release
        release.wait(60)

    def _receive(self, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        recorded = Recorded(path=path, headers={k.lower(): v for k, v in headers.items()})
        with self._lock:
            self.requests.append(recorded)
        refused = self._check_key(recorded)
        if refused is not None:
            return refused
        try:
            self._parse(recorded, body)
        except _Rejected as rejected:
            return self._rejected(str(rejected))
        with self._lock:
            mode = self.mode
            if mode is not Mode.OK and (self.times is None or self._failed < self.times):
                self._failed += 1
            else:
                mode = Mode.OK
        if mode is Mode.HANG:
            return _Answer(200, hang=True)
        if mode is Mode.NOT_JSON:
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return _Answer(200, page, {"content-type": "text/html"})
        return self._answer(recorded, mode)

    # Each fake fills these in.

    def _check_key(self, recorded: Recorded) -> _Answer | None:
        raise NotImplementedError

    def _parse(self, recorded: Recorded, body: bytes) -> None:
        raise NotImplementedError

    def _rejected(self, message: str) -> _Answer:
        raise NotImplementedError

    def _answer(self, recorded: Recorded, mode: Mode) -> _Answer:
        raise NotImplementedError


def _json(status: int, document: Any, headers: dict[str, str] | None = None) -> _Answer:
    return _Answer(status, json.dumps(document).encode(), headers or {})


def _either(table: dict[str, Any], camel: str, snake: str) -> Any:
    if camel in table and snake in table:
        raise _Rejected(f"both {camel} and {snake} are set")
    return table.get(camel, table.get(snake))


class FakeGemini(FakeProvider):
    """`POST /v1beta/models/{model}:generateContent` (or /v1/) of the Gemini API, for images."""

    name = "gemini"
    # The API serves generateContent under both versions; the SDK's default is v1.
    _PATH = re.compile(r"^/(?:v1|v1beta)/models/([A-Za-z0-9._-]+):generateContent$")
    _TOP_LEVEL = frozenset(
        {
            "contents",
            "generationConfig",
            "generation_config",
            "safetySettings",
            "safety_settings",
            "systemInstruction",
            "system_instruction",
            "tools",
            "toolConfig",
            "tool_config",
            "cachedContent",
            "cached_content",
        }
    )

    @staticmethod
    def _error(code: int, status: str, message: str, details: list[Any] | None = None) -> _Answer:
        error: dict[str, Any] = {"code": code, "message": message, "status": status}
        if details:
            error["details"] = details
        return _json(code, {"error": error})

    def _check_key(self, recorded: Recorded) -> _Answer | None:
        key = recorded.headers.get("x-goog-api-key")
        if key is None:
            return self._error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established"
                " identity). Please use API Key or other form of API consumer identity to call"
                " this API.",
            )
        if key != self.api_key:
            return self._error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        return None

    def _rejected(self, message: str) -> _Answer:
        return self._error(400, "INVALID_ARGUMENT", message)

    def _parse(self, recorded: Recorded, body: bytes) -> None:
        if not self._PATH.match(recorded.path.split("?")[0]):
            raise _Rejected(f"no such method: {recorded.path}")
        try:
            document = json.loads(body)
        except ValueError:
            raise _Rejected("Invalid JSON payload received.") from None
        if not isinstance(document, dict):
            raise _Rejected("Invalid JSON payload received: not an object.")
        unknown = set(document) - self._TOP_LEVEL
        if unknown:
            raise _Rejected(f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r}")
        recorded.json = document
        contents = document.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _Rejected("* GenerateContentRequest.contents: contents is not specified")
        for content in contents:
            parts = content.get("parts") if isinstance(content, dict) else None
            if not isinstance(parts, list) or not parts:
                raise _Rejected("* GenerateContentRequest.contents.parts: must not be empty")
            for part in parts:
                self._check_part(part)
        config = _either(document, "generationConfig", "generation_config") or {}
        if not isinstance(config, dict):
            raise _Rejected("generationConfig must be an object")
        modalities = _either(config, "responseModalities", "response_modalities") or ["TEXT"]
        if "IMAGE" not in [str(modality).upper() for modality in modalities]:
            raise _Rejected("an image model needs responseModalities to include IMAGE")
        image_config = _either(config, "imageConfig", "image_config") or {}
        ratio = _either(image_config, "aspectRatio", "aspect_ratio")
        if ratio is not None and ratio not in GEMINI_PIXELS_1K:
            raise _Rejected(f"Unsupported aspect ratio: {ratio}")
        size = _either(image_config, "imageSize", "image_size")
        if size is not None and size not in _GEMINI_SCALE:
            raise _Rejected(f"Unsupported image size: {size}; use 1K, 2K or 4K")

    @staticmethod
    def _check_part(part: Any) -> None:
        if not isinstance(part, dict):
            raise _Rejected("a part must be an object")
        inline = _either(part, "inlineData", "inline_data")
        if ("text" in part) == (inline is not None):
            raise _Rejected("a part carries exactly one of text or inline data")
        if inline is None:
            return
        mime = _either(inline, "mimeType", "mime_type")
        if not isinstance(mime, str) or not mime.startswith("image/"):
            raise _Rejected(f"Unsupported MIME type: {mime}")
        # Protobuf's JSON takes bytes as standard or URL-safe base64, padded or not; the Python
        # SDK sends URL-safe.
        text = str(inline.get("data", "")).replace("-", "+").replace("_", "/")
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except binascii.Error:
            raise _Rejected("inline data is not base64") from None
        if _image_size(data) is None:
            raise _Rejected("Unable to process input image.")

    def _answer(self, recorded: Recorded, mode: Mode) -> _Answer:
        document = recorded.json
        model = self._PATH.match(recorded.path.split("?")[0])
        assert model is not None
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}
        answer: dict[str, Any] = {"usageMetadata": usage, "modelVersion": model.group(1)}
        if mode is Mode.RATE_LIMITED:
            return self._error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{self.retry_after}s",
                    }
                ],
            )
        if mode is Mode.SERVER_ERROR:
            return self._error(
                500, "INTERNAL", "An internal error has occurred. Please retry or report."
            )
        if mode is Mode.PROMPT_BLOCKED:
            answer["promptFeedback"] = {"blockReason": "PROHIBITED_CONTENT"}
            return _json(200, answer)
        if mode is Mode.SAFETY_BLOCK:
            answer["candidates"] = [{"finishReason": self.finish_reason, "index": 0}]
            return _json(200, answer)
        if mode is Mode.NO_IMAGE:
            said = {"text": "I can only describe this scene, not draw it."}
            candidate = {"content": {"role": "model", "parts": [said]}, "finishReason": "STOP"}
            answer["candidates"] = [{**candidate, "index": 0}]
            return _json(200, answer)
        prompt = " ".join(
            part["text"]
            for content in document["contents"]
            for part in content["parts"]
            if "text" in part
        )
        config = _either(document, "generationConfig", "generation_config") or {}
        image_config = _either(config, "imageConfig", "image_config") or {}
        ratio = _either(image_config, "aspectRatio", "aspect_ratio") or "1:1"
        scale = _GEMINI_SCALE[_either(image_config, "imageSize", "image_size") or "1K"]
        width, height = GEMINI_PIXELS_1K[ratio]
        data = _b64(_png((width * scale, height * scale), colour_for(prompt)))
        if mode is Mode.MALFORMED_BASE64:
            data = "this is *not* base64!"
        elif mode is Mode.NOT_AN_IMAGE:
            data = _b64(b"GIF? no: plain bytes that are no image")
        parts: list[dict[str, Any]] = [{"inlineData": {"mimeType": "image/png", "data": data}}]
        if mode is Mode.THINKING:
            red, green, blue = colour_for(prompt)
            draft = _b64(_png((width, height), (255 - red, 255 - green, 255 - blue)))
            parts[:0] = [
                {"text": "Laying out the composition first.", "thought": True},
                {"inlineData": {"mimeType": "image/png", "data": draft}, "thought": True},
            ]
        candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}
        answer["candidates"] = [{**candidate, "index": 0}]
        return _json(200, answer)


class FakeOpenAI(FakeProvider):
    """`POST /v1/images/generations` (JSON) and `/v1/images/edits` (multipart) of OpenAI."""

    name = "openai"

    @staticmethod
    def _error(
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Answer:
        error = {"message": message, "type": kind, "param": param, "code": code}
        return _json(status, {"error": error}, headers)

    def _check_key(self, recorded: Recorded) -> _Answer | None:
        authorization = recorded.headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an"
                " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        key = authorization.removeprefix("Bearer ")
        if key != self.api_key:
            masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:]
            return self._error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at"
                " https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                code="invalid_api_key",
            )
        return None

    def _rejected(self, message: str) -> _Answer:
        return self._error(400, message, "invalid_request_error")

    def _parse(self, recorded: Recorded, body: bytes) -> None:
        content_type = recorded.headers.get("content-type", "")
        if recorded.path == "/v1/images/generations":
            if not content_type.startswith("application/json"):
                raise _Rejected("expected a JSON body")
            try:
                document = json.loads(body)
            except ValueError:
                raise _Rejected("We could not parse the JSON body of your request.") from None
            if not isinstance(document, dict):
                raise _Rejected("the body must be a JSON object")
            recorded.json = document
            self._check_fields(document)
        elif recorded.path == "/v1/images/edits":
            if not content_type.startswith("multipart/form-data"):
                raise _Rejected("expected a multipart/form-data body")
            self._read_form(recorded, content_type, body)
            self._check_fields(recorded.fields)
            self._check_images(recorded)
        else:
            raise _Rejected(f"Invalid URL (POST {recorded.path})")

    @staticmethod
    def _read_form(recorded: Recorded, content_type: str, body: bytes) -> None:
        head = f"content-type: {content_type}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise _Rejected("the multipart body does not parse")
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if not isinstance(name, str) or not isinstance(payload, bytes):
                raise _Rejected("a form part has no name")
            filename = part.get_filename()
            if filename is None:
                recorded.fields[name] = payload.decode()
            else:
                kind = part.get_content_type()
                recorded.files.append((name, filename, kind, payload))

    @staticmethod
    def _check_fields(fields: dict[str, Any]) -> None:
        unknown = set(fields) - _OPENAI_FIELDS
        if unknown:
            raise _Rejected(f"Unrecognized request argument supplied: {sorted(unknown)[0]}")
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise _Rejected("Missing required parameter: 'prompt'.")
        model = fields.get("model")
        if not isinstance(model, str) or not model:
            raise _Rejected("Missing required parameter: 'model'.")
        if str(fields.get("n", 1)) not in {str(n) for n in range(1, 11)}:
            raise _Rejected(f"Invalid 'n': {fields.get('n')}; expected 1 to 10.")
        size = fields.get("size", "auto")
        if size not in _OPENAI_SIZES:
            raise _Rejected(
                f"Invalid value: {size!r}. Supported values are: {sorted(_OPENAI_SIZES)}"
            )
        quality = fields.get("quality", "auto")
        if quality not in _OPENAI_QUALITIES:
            raise _Rejected(f"Invalid value: {quality!r} for 'quality'.")
        output_format = fields.get("output_format", "png")
        if output_format not in _OPENAI_FORMATS:
            raise _Rejected(f"Invalid value: {output_format!r} for 'output_format'.")
        if "response_format" in fields and model.startswith(("gpt-image", "chatgpt-image")):
            raise _Rejected(f"Unknown parameter: 'response_format' is not supported by {model}.")

    @staticmethod
    def _check_images(recorded: Recorded) -> None:
        images = [f for f in recorded.files if f[0] in ("image", "image[]")]
        masks = [f for f in recorded.files if f[0] == "mask"]
        others = [f for f in recorded.files if f[0] not in ("image", "image[]", "mask")]
        if others:
            raise _Rejected(f"Unrecognized file field: {others[0][0]}")
        if not 1 <= len(images) <= 16:
            raise _Rejected("Missing required parameter: 'image' (1 to 16 images).")
        sizes = [_image_size(image[3]) for image in images]
        if None in sizes:
            raise _Rejected("Invalid image file or mode for image: use png, webp or jpg.")
        if len(masks) > 1:
            raise _Rejected("At most one mask.")
        if masks:
            try:
                with Image.open(io.BytesIO(masks[0][3]), formats=("PNG",)) as mask:
                    mask.load()
                    if "A" not in mask.getbands():
                        raise _Rejected("Invalid mask: it must have an alpha channel.")
                    if mask.size != sizes[0]:
                        raise _Rejected("Invalid mask: its size must be the image's.")
            except (OSError, ValueError, SyntaxError):
                raise _Rejected("Invalid mask: a PNG file is required.") from None

    def _answer(self, recorded: Recorded, mode: Mode) -> _Answer:
        fields: dict[str, Any] = recorded.json if recorded.json is not None else recorded.fields
        if mode is Mode.RATE_LIMITED:
            return self._error(
                429,
                "Rate limit reached for images per minute. Please try again later.",
                "requests",
                code="rate_limit_exceeded",
                headers={"retry-after": self.retry_after},
            )
        if mode is Mode.SERVER_ERROR:
            return self._error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        if mode in (Mode.SAFETY_BLOCK, Mode.PROMPT_BLOCKED):
            return self._error(
                400,
                "Your request was rejected as a result of our safety system.",
                "image_generation_user_error",
                code="moderation_blocked",
            )
        size = str(fields.get("size", "auto"))
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        quality = str(fields.get("quality", "auto"))
        answer: dict[str, Any] = {
            "created": int(time.time()),
            "background": "opaque",
            "output_format": str(fields.get("output_format", "png")),
            "quality": "medium" if quality == "auto" else quality,
            "size": f"{width}x{height}",
            "usage": {
                "input_tokens": 50,
                "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
                "output_tokens": 4160,
                "total_tokens": 4210,
                "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
            },
        }
        if mode is Mode.NO_IMAGE:
            answer["data"] = []
            return _json(200, answer)
        data = _b64(_png((width, height), colour_for(str(fields["prompt"]))))
        if mode is Mode.MALFORMED_BASE64:
            data = "this is *not* base64!"
        elif mode is Mode.NOT_AN_IMAGE:
            data = _b64(b"plain bytes that are no image")
        answer["data"] = [{"b64_json": data}]
        return _json(200, answer)
