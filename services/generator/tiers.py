"""The tier catalogue from TOML: what each tier offers, and render requests checked against it."""

from __future__ import annotations

import enum
import io
import math
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from services.runtime.errors import FieldViolation, InvalidArgument
from services.runtime.resolution import MAX_PROMPT_CHARS, AspectRatio, ImageSize, Resolution

__all__ = [
    "DEFAULT_CATALOGUE_TOML",
    "Capabilities",
    "Quality",
    "ReferenceLimits",
    "RenderRequest",
    "Tier",
    "TierCatalogue",
    "TierConfigError",
    "load_catalogue",
    "parse_catalogue",
    "validate_request",
]

#: Image encodings accepted for reference images and masks.
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")

_Member = TypeVar("_Member", bound=enum.StrEnum)

_TIER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# A model name goes into a provider's URL path, so it may not carry '/', ':' or '?'.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# "auto" is how a caller asks the router to choose a tier by stage; a tier of that name
# could never be asked for explicitly.
_RESERVED_NAMES = frozenset({"auto"})


class Quality(enum.StrEnum):
    """How much work a backend puts into a picture; the built-in renderer's level of detail."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class Capabilities:
    """What a tier can do beyond drawing a prompt."""

    max_reference_images: int
    text_rendering: bool
    inpainting: bool


@dataclass(frozen=True)
class Tier:
    """One tier of the catalogue: its backend, sizes, capabilities and limits."""

    name: str
    display_name: str
    backend: str
    quality: Quality
    sizes: tuple[ImageSize, ...]
    aspect_ratios: tuple[AspectRatio, ...]
    capabilities: Capabilities
    max_concurrency: int
    queue_limit: int
    expected_latency_seconds: Mapping[ImageSize, float]
    #: The provider's model for a tier on an HTTP backend, for example "gpt-image-2".
    model: str | None = None

    @property
    def smallest_size(self) -> ImageSize:
        """The size a request gets when it names none."""
        return min(self.sizes, key=lambda size: size.scale)

    def offers(self, resolution: Resolution) -> bool:
        """Whether this tier renders at `resolution`."""
        return resolution.size in self.sizes and resolution.aspect_ratio in self.aspect_ratios


@dataclass(frozen=True)
class ReferenceLimits:
    """Largest reference image or mask accepted, in encoded bytes and in decoded pixels."""

    max_bytes: int = 64 * 1024 * 1024
    # Below Pillow's own decompression-bomb threshold (89 million pixels), and above a 4K
    # image (at most 17 million) upscaled 2x in one direction.
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class TierCatalogue:
    """Every tier the generator serves, cheapest first, and the limits on reference images."""

    tiers: tuple[Tier, ...]
    reference_limits: ReferenceLimits = field(default_factory=ReferenceLimits)

    def __iter__(self) -> Iterator[Tier]:
        return iter(self.tiers)

    def __len__(self) -> int:
        return len(self.tiers)

    @property
    def names(self) -> tuple[str, ...]:
        """Tier names in catalogue order."""
        return tuple(tier.name for tier in self.tiers)

    def tier(self, name: str) -> Tier:
        """The tier called `name`; InvalidArgument on the field "tier" when there is none."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise InvalidArgument(
            f"unknown tier {name!r}; known tiers: {', '.join(self.names)}",
            field="tier",
            reason="UNKNOWN_TIER",
        )


class TierConfigError(ValueError):
    """A tier catalogue file that cannot be used; the message names the file and the entry."""


DEFAULT_CATALOGUE_TOML = """\
# Tier catalogue of the generator. Each [tiers.<name>] table is one tier, cheapest first.
# Point TIERGEN_GENERATOR_TIERS_FILE at a file in this format to replace these defaults.
# `backend` is "builtin" (the default), "gemini", "openai" or "instant"; a tier on an HTTP
# provider also names its `model` (docs/providers.md).

[limits]
max_reference_bytes = 67108864     # 64 MiB of encoded image
max_reference_pixels = 50000000

[tiers.nano]
display_name = "Nano"
backend = "builtin"
quality = "low"
sizes = ["1K"]
aspect_ratios = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "21:9"]
max_reference_images = 1
text_rendering = false
inpainting = false
max_concurrency = 2
queue_limit = 64
expected_latency_seconds = { "1K" = 0.05 }

[tiers.standard]
display_name = "Standard"
backend = "builtin"
quality = "medium"
sizes = ["1K", "2K"]
aspect_ratios = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "21:9"]
max_reference_images = 4
text_rendering = true
inpainting = true
max_concurrency = 2
queue_limit = 16
expected_latency_seconds = { "1K" = 0.2, "2K" = 0.6 }

[tiers.pro]
display_name = "Pro"
backend = "builtin"
quality = "high"
sizes = ["1K", "2K", "4K"]
aspect_ratios = ["1:1", "3:2", "2:3", "4:3", "3:4", "16:9", "9:16", "21:9"]
max_reference_images = 8
text_rendering = true
inpainting = true
max_concurrency = 1
queue_limit = 8
expected_latency_seconds = { "1K" = 0.35, "2K" = 1.0, "4K" = 4.0 }
"""

_TIER_KEYS = frozenset(
    {
        "display_name",
        "backend",
        "quality",
        "sizes",
        "aspect_ratios",
        "max_reference_images",
        "text_rendering",
        "inpainting",
        "max_concurrency",
        "queue_limit",
        "expected_latency_seconds",
        "model",
    }
)
_LIMIT_KEYS = frozenset({"max_reference_bytes", "max_reference_pixels"})


def load_catalogue(
    path: Path | None = None, *, backends: Collection[str] | None = None
) -> TierCatalogue:
    """The catalogue in the TOML file at `path`, or the embedded defaults when `path` is None.

    `backends`, when given, are the backend names this process can serve; a tier naming
    another one is a configuration error.
    """
    if path is None:
        return parse_catalogue(DEFAULT_CATALOGUE_TOML, backends=backends)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TierConfigError(f"{path}: cannot read tier catalogue: {exc.strerror}") from exc
    return parse_catalogue(text, source=str(path), backends=backends)


def parse_catalogue(
    text: str,
    *,
    source: str = "embedded tier catalogue",
    backends: Collection[str] | None = None,
) -> TierCatalogue:
    """The catalogue described by the TOML `text`; `source` names it in error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TierConfigError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(document) - {"limits", "tiers"}
    if unknown:
        raise TierConfigError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    limits = _parse_limits(_table(document, "limits", source, required=False), source)
    tiers_table = _table(document, "tiers", source, required=True)
    if not tiers_table:
        raise TierConfigError(f"{source}: [tiers] defines no tier")
    tiers = tuple(
        _parse_tier(name, entry, f"{source}: tiers.{name}", backends)
        for name, entry in tiers_table.items()
    )
    return TierCatalogue(tiers=tiers, reference_limits=limits)


def _table(document: Mapping[str, Any], key: str, source: str, *, required: bool) -> dict[str, Any]:
    value = document.get(key)
    if value is None:
        if required:
            raise TierConfigError(f"{source}: missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise TierConfigError(f"{source}: {key} must be a table")
    return value


def _parse_limits(table: Mapping[str, Any], source: str) -> ReferenceLimits:
    where = f"{source}: limits"
    _reject_unknown_keys(table, _LIMIT_KEYS, where)
    defaults = ReferenceLimits()
    return ReferenceLimits(
        max_bytes=_positive_int(table, "max_reference_bytes", where, defaults.max_bytes),
        max_pixels=_positive_int(table, "max_reference_pixels", where, defaults.max_pixels),
    )


def _parse_tier(name: str, entry: Any, where: str, backends: Collection[str] | None) -> Tier:
    if not isinstance(entry, dict):
        raise TierConfigError(f"{where}: must be a table")
    if not _TIER_NAME.match(name):
        raise TierConfigError(
            f"{where}: a tier name is 1-32 lower-case letters, digits, '-' or '_',"
            " starting with a letter"
        )
    if name in _RESERVED_NAMES:
        raise TierConfigError(f"{where}: {name!r} is reserved for the router's automatic choice")
    _reject_unknown_keys(entry, _TIER_KEYS, where)

    backend = _string(entry, "backend", where, "builtin")
    if backends is not None and backend not in backends:
        raise TierConfigError(
            f"{where}.backend: unknown backend {backend!r};"
            f" available: {', '.join(sorted(backends))}"
        )
    sizes = _enum_list(entry, "sizes", where, ImageSize, None)
    aspect_ratios = _enum_list(entry, "aspect_ratios", where, AspectRatio, tuple(AspectRatio))
    capabilities = Capabilities(
        max_reference_images=_int(entry, "max_reference_images", where, 0, minimum=0),
        text_rendering=_bool(entry, "text_rendering", where, False),
        inpainting=_bool(entry, "inpainting", where, False),
    )
    if capabilities.inpainting and capabilities.max_reference_images == 0:
        raise TierConfigError(
            f"{where}.inpainting: in-painting edits a reference image,"
            " so max_reference_images must be at least 1"
        )
    return Tier(
        name=name,
        display_name=_string(entry, "display_name", where, name.title()),
        backend=backend,
        quality=_enum_value(entry, "quality", where, Quality, Quality.MEDIUM),
        sizes=sizes,
        aspect_ratios=aspect_ratios,
        capabilities=capabilities,
        max_concurrency=_positive_int(entry, "max_concurrency", where, 1),
        queue_limit=_int(entry, "queue_limit", where, 16, minimum=0),
        expected_latency_seconds=_latencies(entry, where, sizes),
        model=_model(entry, where),
    )


def _reject_unknown_keys(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise TierConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))};"
            f" expected some of {', '.join(sorted(known))}"
        )


def _string(table: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise TierConfigError(f"{where}.{key}: must be a non-empty string, not {value!r}")
    return value


def _model(table: Mapping[str, Any], where: str) -> str | None:
    value = table.get("model")
    if value is None:
        return None
    if not isinstance(value, str) or not _MODEL_NAME.match(value):
        raise TierConfigError(
            f"{where}.model: must be a model name of letters, digits, '.', '-' or '_',"
            f' for example "gemini-3-pro-image-preview", not {value!r}'
        )
    return value


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise TierConfigError(f"{where}.{key}: must be true or false, not {value!r}")
    return value


def _int(table: Mapping[str, Any], key: str, where: str, default: int, *, minimum: int) -> int:
    value = table.get(key, default)
    # bool is an int subclass; `true` where a count belongs is a mistake worth reporting.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TierConfigError(f"{where}.{key}: must be an integer >= {minimum}, not {value!r}")
    return value


def _positive_int(table: Mapping[str, Any], key: str, where: str, default: int) -> int:
    return _int(table, key, where, default, minimum=1)


def _member(value: Any, where: str, kind: type[_Member]) -> _Member:
    try:
        return kind(value)
    except ValueError:
        raise TierConfigError(
            f"{where}: {value!r} is not one of {', '.join(member for member in kind)}"
        ) from None


def _enum_value(
    table: Mapping[str, Any], key: str, where: str, kind: type[_Member], default: _Member
) -> _Member:
    return _member(table.get(key, default), f"{where}.{key}", kind)


def _enum_list(
    table: Mapping[str, Any],
    key: str,
    where: str,
    kind: type[_Member],
    default: tuple[_Member, ...] | None,
) -> tuple[_Member, ...]:
    if key not in table:
        if default is None:
            raise TierConfigError(f"{where}: missing {key}")
        return default
    values = table[key]
    if not isinstance(values, list) or not values:
        raise TierConfigError(f"{where}.{key}: must be a non-empty list, not {values!r}")
    members = tuple(_member(value, f"{where}.{key}", kind) for value in values)
    if len(set(members)) != len(members):
        raise TierConfigError(f"{where}.{key}: lists a value twice: {values!r}")
    return members


def _latencies(
    table: Mapping[str, Any], where: str, sizes: tuple[ImageSize, ...]
) -> dict[ImageSize, float]:
    key = "expected_latency_seconds"
    value = table.get(key)
    if not isinstance(value, dict):
        raise TierConfigError(
            f'{where}.{key}: must be a table of seconds per size, for example {{ "1K" = 0.5 }}'
        )
    latencies: dict[ImageSize, float] = {}
    for size_name, seconds in value.items():
        size = _member(size_name, f"{where}.{key}", ImageSize)
        if size not in sizes:
            raise TierConfigError(f"{where}.{key}: {size_name} is not one of the tier's sizes")
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            raise TierConfigError(
                f"{where}.{key}.{size_name}: must be seconds > 0, not {seconds!r}"
            )
        latencies[size] = float(seconds)
    missing = [str(size) for size in sizes if size not in latencies]
    if missing:
        raise TierConfigError(f"{where}.{key}: missing {', '.join(missing)}")
    return latencies


@dataclass(frozen=True)
class RenderRequest:
    """A render as a caller asks for it, before it is checked against the catalogue.

    With a `mask`, the request is an in-painting: `references[0]` is the image to edit, the mask
    (white = re-render, black = keep) has its size, and both have the requested resolution.
    """

    tier: str
    prompt: str
    seed: int
    resolution: Resolution = field(default_factory=Resolution)
    references: tuple[bytes, ...] = ()
    strength: float = 0.0
    mask: bytes | None = None


def validate_request(catalogue: TierCatalogue, request: RenderRequest) -> Tier:
    """The tier that will render `request`; InvalidArgument naming every bad field otherwise."""
    violations: list[FieldViolation] = []

    def reject(field_path: str, description: str) -> None:
        violations.append(FieldViolation(field_path, description))

    tier: Tier | None = None
    try:
        tier = catalogue.tier(request.tier)
    except InvalidArgument as exc:
        violations.extend(exc.violations)

    if not request.prompt.strip():
        reject("prompt", "prompt is empty")
    elif len(request.prompt) > MAX_PROMPT_CHARS:
        reject(
            "prompt",
            f"prompt is {len(request.prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed",
        )
    if not 0 <= request.seed < 2**64:
        reject("seed", f"seed {request.seed} is outside 0..2^64-1")
    if not (math.isfinite(request.strength) and 0.0 <= request.strength <= 1.0):
        reject("strength", f"strength {request.strength} is outside 0..1")

    if tier is not None:
        if request.resolution.size not in tier.sizes:
            reject(
                "resolution",
                f"tier {tier.name!r} offers sizes {', '.join(tier.sizes)},"
                f" not {request.resolution.size}",
            )
        if request.resolution.aspect_ratio not in tier.aspect_ratios:
            reject(
                "resolution",
                f"tier {tier.name!r} offers aspect ratios {', '.join(tier.aspect_ratios)},"
                f" not {request.resolution.aspect_ratio}",
            )
        most = tier.capabilities.max_reference_images
        if len(request.references) > most:
            reject(
                "references",
                f"tier {tier.name!r} takes at most {most} reference image(s);"
                f" got {len(request.references)}",
            )

    limits = catalogue.reference_limits
    reference_sizes = [
        _inspect_image(reference, f"references[{index}]", limits, reject)
        for index, reference in enumerate(request.references)
    ]
    if request.mask is not None and tier is not None and not tier.capabilities.inpainting:
        reject("mask", f"tier {tier.name!r} does not offer in-painting")
    elif request.mask is not None:
        mask_size = _inspect_image(request.mask, "mask", limits, reject)
        if not request.references:
            reject("mask", "in-painting needs the image to edit as references[0]")
        elif mask_size is not None and reference_sizes[0] is not None:
            if mask_size != reference_sizes[0]:
                reject(
                    "mask",
                    f"mask is {_dimensions(mask_size)} but the image to edit is"
                    f" {_dimensions(reference_sizes[0])}",
                )
            wanted = (request.resolution.width, request.resolution.height)
            if reference_sizes[0] != wanted:
                reject(
                    "references[0]",
                    f"the image to edit is {_dimensions(reference_sizes[0])} but resolution"
                    f" {request.resolution} is {_dimensions(wanted)}",
                )

    if violations:
        raise InvalidArgument(
            "; ".join(violation.description for violation in violations),
            violations=violations,
        )
    assert tier is not None, "an unknown tier is a violation, raised above"
    return tier


def _inspect_image(
    encoded: bytes,
    field_path: str,
    limits: ReferenceLimits,
    reject: Callable[[str, str], None],
) -> tuple[int, int] | None:
    """The pixel size of an encoded image, or None after rejecting it as unusable."""
    if len(encoded) > limits.max_bytes:
        reject(field_path, f"{field_path} is {len(encoded)} bytes; at most {limits.max_bytes}")
        return None
    kinds = ", ".join(_IMAGE_FORMATS[:-1]) + " or " + _IMAGE_FORMATS[-1]
    try:
        with Image.open(io.BytesIO(encoded), formats=_IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > limits.max_pixels:
                reject(
                    field_path,
                    f"{field_path} is {width}x{height}; at most {limits.max_pixels} pixels",
                )
                return None
            image.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard against huge headers; a warning only arrives here when warnings
        # are errors, and otherwise the pixel limit above has already refused the image.
        reject(field_path, f"{field_path} is too large; at most {limits.max_pixels} pixels")
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        reject(field_path, f"{field_path} is not a readable {kinds} image")
        return None
    return width, height


def _dimensions(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
