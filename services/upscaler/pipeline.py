"""The upscale pipeline: validate a request, decode, enlarge tile by tile, encode.

`upscale_image` is a picklable top-level function of plain values so the service can run it in
a worker process: Pillow's JPEG encoder holds the GIL for its whole run, which would stall an
asyncio server even from a thread.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import TypeVar

from services.runtime.errors import InvalidArgument
from services.upscaler.decoding import IMAGE_FIELD, load_source, open_source
from services.upscaler.encoding import OutputFormat, encode, storable
from services.upscaler.scaling import Checkpoint, UpscaleMethod, output_size, upscale

__all__ = [
    "FACTOR_FIELD",
    "FORMAT_FIELD",
    "IMAGE_FIELD",
    "MAX_FACTOR",
    "METHOD_FIELD",
    "MIN_FACTOR",
    "QUALITY_FIELD",
    "Checkpoint",
    "OutputFormat",
    "PipelineSettings",
    "UpscaleMethod",
    "UpscaleSpec",
    "UpscaledImage",
    "upscale_image",
]

#: Request fields named by the errors, as paths in `tiergen.upscaler.v1.UpscaleRequest`
#: (the image's own errors name `IMAGE_FIELD`, "chunk.data").
FACTOR_FIELD = "spec.factor"
METHOD_FIELD = "spec.method"
FORMAT_FIELD = "spec.output_format"
QUALITY_FIELD = "spec.quality"

MIN_FACTOR = 1.0
MAX_FACTOR = 4.0

_Choice = TypeVar("_Choice", UpscaleMethod, OutputFormat)


@dataclass(frozen=True)
class UpscaleSpec:
    """What the caller asked for; validated on construction (raises `InvalidArgument`)."""

    #: Scale factor from 1 to 4 in steps of 0.5.
    factor: float
    method: UpscaleMethod = UpscaleMethod.LANCZOS
    output_format: OutputFormat = OutputFormat.PNG
    #: JPEG/WebP quality 1-100; None means the server's default. PNG is lossless and ignores it.
    quality: int | None = None

    def __post_init__(self) -> None:
        halves = float(self.factor) * 2
        if not (
            math.isfinite(halves)
            and halves.is_integer()
            and MIN_FACTOR <= self.factor <= MAX_FACTOR
        ):
            raise InvalidArgument(
                f"factor {self.factor:g} is not supported; use 1 to 4 in steps of 0.5 "
                "(2 and 4 are the usual ones)",
                field=FACTOR_FIELD,
                reason="INVALID_FACTOR",
            )
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise InvalidArgument(
                f"quality {self.quality} is out of range; use 1 to 100, or leave it unset",
                field=QUALITY_FIELD,
                reason="INVALID_QUALITY",
            )

    @classmethod
    def parse(
        cls,
        *,
        factor: float,
        method: str = "",
        output_format: str = "",
        quality: int | None = None,
        default_format: OutputFormat = OutputFormat.PNG,
    ) -> UpscaleSpec:
        """Build a spec from names as a caller spells them, case-insensitively.

        An empty `method` means Lanczos and an empty `output_format` means `default_format`.
        """
        return cls(
            factor=factor,
            method=_choice(
                UpscaleMethod, method, UpscaleMethod.LANCZOS, METHOD_FIELD, "UNKNOWN_METHOD"
            ),
            output_format=_choice(
                OutputFormat, output_format, default_format, FORMAT_FIELD, "UNKNOWN_FORMAT"
            ),
            quality=quality,
        )

    @property
    def factor_halves(self) -> int:
        """The factor in half steps (2 for 1x, 8 for 4x), for exact integer size arithmetic."""
        return int(self.factor * 2)


@dataclass(frozen=True)
class PipelineSettings:
    """Limits and encoder defaults of the pipeline, picklable for worker processes."""

    max_input_side: int = 4096
    max_output_side: int = 8192
    #: Largest accepted input; an uncompressed 4096x4096 RGBA image is 64 MiB.
    max_input_bytes: int = 80 * 1024 * 1024
    #: Output pixels per tile side: bounds the per-tile working memory of `enhance`.
    tile_size: int = 512
    #: zlib level for PNG output; see `services.upscaler.encoding` for the measurements.
    png_compress_level: int = 1
    jpeg_quality: int = 90
    webp_quality: int = 90

    def __post_init__(self) -> None:
        if self.max_input_side > self.max_output_side:
            raise ValueError(
                f"max_input_side {self.max_input_side} exceeds max_output_side "
                f"{self.max_output_side}: the largest inputs could not be upscaled at all"
            )
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be at least 1, got {self.tile_size}")

    def quality_for(self, spec: UpscaleSpec) -> int:
        """The encoder quality a request gets."""
        if spec.quality is not None:
            return spec.quality
        if spec.output_format is OutputFormat.WEBP:
            return self.webp_quality
        return self.jpeg_quality


@dataclass(frozen=True)
class UpscaledImage:
    """The encoded output and the facts a caller needs before reading its bytes."""

    data: bytes
    width: int
    height: int
    output_format: OutputFormat
    method: UpscaleMethod
    #: Input format detected from its bytes, as Pillow names it ("PNG", "JPEG", ...).
    source_format: str
    source_width: int
    source_height: int
    #: Lower-case hex SHA-256 of `data`.
    sha256: str

    @property
    def media_type(self) -> str:
        """IANA media type of `data`."""
        return self.output_format.media_type


def upscale_image(
    data: bytes,
    spec: UpscaleSpec,
    settings: PipelineSettings,
    checkpoint: Checkpoint | None = None,
) -> UpscaledImage:
    """Decode `data`, enlarge it as `spec` says and encode the result.

    Raises `InvalidArgument` for bad input: the field is `chunk.data` for the image itself
    (empty, not an image, truncated, corrupt, animated, too large) and `spec.factor` when the
    output would exceed `settings.max_output_side`; the request, not the server's state, is
    what must change, hence INVALID_ARGUMENT rather than FAILED_PRECONDITION. `checkpoint` is
    called between tiles and before encoding, and may raise to abandon the work; it must be
    picklable when the call runs in another process.
    """
    opened = open_source(data, max_side=settings.max_input_side, max_bytes=settings.max_input_bytes)
    width, height = opened.size
    size = output_size(width, height, spec.factor_halves)
    _check_output(width, height, size, spec, settings.max_output_side)
    source = load_source(opened)
    upscaled = upscale(
        storable(source.image, spec.output_format),
        # EXIF orientation may have swapped the sides; the limits are the same for both.
        output_size(*source.image.size, spec.factor_halves),
        spec.method,
        tile_size=settings.tile_size,
        checkpoint=checkpoint,
    )
    if checkpoint is not None:
        checkpoint(1.0)
    sink = io.BytesIO()
    encode(
        upscaled,
        spec.output_format,
        sink,
        quality=settings.quality_for(spec),
        png_compress_level=settings.png_compress_level,
        icc_profile=source.icc_profile,
    )
    encoded = sink.getvalue()
    return UpscaledImage(
        data=encoded,
        width=upscaled.width,
        height=upscaled.height,
        output_format=spec.output_format,
        method=spec.method,
        source_format=source.format,
        source_width=source.image.width,
        source_height=source.image.height,
        sha256=hashlib.sha256(encoded).hexdigest(),
    )


def _check_output(
    width: int, height: int, size: tuple[int, int], spec: UpscaleSpec, max_side: int
) -> None:
    if max(size) <= max_side:
        return
    longest = max(width, height)
    # Factor 1 always fits: `PipelineSettings` keeps the input limit within the output limit.
    fitting = max(h for h in range(2, spec.factor_halves) if (longest * h + 1) // 2 <= max_side)
    raise InvalidArgument(
        f"upscaling this {width}x{height} image by {spec.factor:g} would give "
        f"{size[0]}x{size[1]} px, beyond the largest output side of {max_side} px; "
        f"use a factor of at most {fitting / 2:g}",
        field=FACTOR_FIELD,
        reason="OUTPUT_TOO_LARGE",
        metadata={"max_output_side": str(max_side), "max_factor": f"{fitting / 2:g}"},
    )


def _choice(kind: type[_Choice], name: str, default: _Choice, field: str, reason: str) -> _Choice:
    if not name:
        return default
    try:
        return kind(name.strip().lower())
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise InvalidArgument(
            f"unknown {field.removeprefix('spec.').replace('_', ' ')} {name!r}; use one of {known}",
            field=field,
            reason=reason,
        ) from None
