"""The upscaler's configuration (limits, encoders, tiles, workers, address), from TIERGEN_*."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from services.runtime.fairshare import FairShareSettings
from services.runtime.settings import ConfigError, Env, ServerSettings
from services.upscaler.encoding import OutputFormat
from services.upscaler.pipeline import PipelineSettings

__all__ = ["FAIR_SHARE_PREFIX", "SERVICE", "UpscalerSettings"]

#: The service's short name: its default port, log and trace name.
SERVICE = "upscaler"

#: The environment variable behind each setting, named in every error message.
_VARIABLES = {
    "max_input_side": "TIERGEN_UPSCALER_MAX_INPUT_SIDE",
    "max_output_side": "TIERGEN_UPSCALER_MAX_OUTPUT_SIDE",
    "max_input_bytes": "TIERGEN_UPSCALER_MAX_INPUT_BYTES",
    "default_output_format": "TIERGEN_UPSCALER_OUTPUT_FORMAT",
    "png_compress_level": "TIERGEN_UPSCALER_PNG_COMPRESS_LEVEL",
    "jpeg_quality": "TIERGEN_UPSCALER_JPEG_QUALITY",
    "webp_quality": "TIERGEN_UPSCALER_WEBP_QUALITY",
    "tile_size": "TIERGEN_UPSCALER_TILE_SIZE",
    "workers": "TIERGEN_UPSCALER_WORKERS",
    "queue_limit": "TIERGEN_UPSCALER_QUEUE_LIMIT",
}

#: Prefix of the fair-share settings: TIERGEN_UPSCALER_TENANT_WEIGHTS, …_INTERACTIVE_BURST.
FAIR_SHARE_PREFIX = "TIERGEN_UPSCALER"

#: An output raster this large (1 GiB as RGBA) is where one worker process stops being sane.
_LARGEST_OUTPUT_SIDE = 16384
#: Pillow warns about (and above twice the count refuses) images with more pixels than
#: `MAX_IMAGE_PIXELS` as decompression bombs, so a larger input side could never be honoured.
_LARGEST_INPUT_SIDE = (
    math.isqrt(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else _LARGEST_OUTPUT_SIDE
)
_SMALLEST_TILE = 64


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _default_server() -> ServerSettings:
    # What an empty environment gives, so `from_env({})` equals `UpscalerSettings()`.
    return ServerSettings.from_env(SERVICE, {})


@dataclass(frozen=True)
class UpscalerSettings:
    """Everything the upscaler needs to know at start; invalid values fail here, not later."""

    #: Largest accepted input side in pixels; bigger declared sizes are refused unread.
    max_input_side: int = 4096
    #: Largest output side in pixels; a factor that would exceed it is refused.
    max_output_side: int = 8192
    #: Largest accepted input in bytes (an uncompressed 4096x4096 RGBA image is 64 MiB).
    max_input_bytes: int = 80 * 1024 * 1024
    #: Output format when a request leaves it unspecified.
    default_output_format: OutputFormat = OutputFormat.PNG
    #: zlib level for PNG output: 1 is 3.5x faster than Pillow's 6 for ~30 % more bytes.
    png_compress_level: int = 1
    jpeg_quality: int = 90
    webp_quality: int = 90
    #: Output pixels per tile side; bounds the per-tile working memory.
    tile_size: int = 512
    #: Worker processes running upscales in parallel (one per core by default).
    workers: int = field(default_factory=_cpu_count)
    #: Requests allowed to wait for a worker; one more is refused with RESOURCE_EXHAUSTED.
    queue_limit: int = 4
    #: Where and how the gRPC server listens (TIERGEN_HOST, TIERGEN_PORT, ...).
    server: ServerSettings = field(default_factory=_default_server)
    #: Tenant weights and the interactive bound of the queue for workers.
    fair_share: FairShareSettings = field(default_factory=FairShareSettings)

    def __post_init__(self) -> None:
        _in_range("max_input_side", self.max_input_side, 1, _LARGEST_INPUT_SIDE)
        _in_range("max_output_side", self.max_output_side, 1, _LARGEST_OUTPUT_SIDE)
        _in_range("max_input_bytes", self.max_input_bytes, 1, 2**31 - 1)
        _in_range("png_compress_level", self.png_compress_level, 0, 9)
        _in_range("jpeg_quality", self.jpeg_quality, 1, 100)
        _in_range("webp_quality", self.webp_quality, 1, 100)
        _in_range("tile_size", self.tile_size, _SMALLEST_TILE, _LARGEST_OUTPUT_SIDE)
        _in_range("workers", self.workers, 1, 64)
        _in_range("queue_limit", self.queue_limit, 0, 1024)
        if self.max_input_side > self.max_output_side:
            raise ConfigError(
                f"{_VARIABLES['max_input_side']}={self.max_input_side}: must not exceed "
                f"{_VARIABLES['max_output_side']}={self.max_output_side}, or even a 1x "
                "upscale of the largest input would be refused"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> UpscalerSettings:
        """Read TIERGEN_UPSCALER_* and the server's TIERGEN_* variables; unset or empty ones keep
        their defaults.

        Raises `ConfigError` (a `ValueError`) naming the variable at fault.
        """
        env = Env(environ)
        defaults = cls()
        formats = tuple(member.value for member in OutputFormat)
        return cls(
            max_input_side=env.integer(_VARIABLES["max_input_side"], defaults.max_input_side),
            max_output_side=env.integer(_VARIABLES["max_output_side"], defaults.max_output_side),
            max_input_bytes=env.integer(_VARIABLES["max_input_bytes"], defaults.max_input_bytes),
            default_output_format=OutputFormat(
                env.choice(
                    _VARIABLES["default_output_format"],
                    defaults.default_output_format.value,
                    formats,
                )
            ),
            png_compress_level=env.integer(
                _VARIABLES["png_compress_level"], defaults.png_compress_level
            ),
            jpeg_quality=env.integer(_VARIABLES["jpeg_quality"], defaults.jpeg_quality),
            webp_quality=env.integer(_VARIABLES["webp_quality"], defaults.webp_quality),
            tile_size=env.integer(_VARIABLES["tile_size"], defaults.tile_size),
            workers=env.integer(_VARIABLES["workers"], defaults.workers),
            queue_limit=env.integer(_VARIABLES["queue_limit"], defaults.queue_limit),
            server=ServerSettings.from_env(SERVICE, environ),
            fair_share=FairShareSettings.from_env(FAIR_SHARE_PREFIX, environ),
        )

    def pipeline(self) -> PipelineSettings:
        """The part of the settings a worker process needs to run `upscale_image`."""
        return PipelineSettings(
            max_input_side=self.max_input_side,
            max_output_side=self.max_output_side,
            max_input_bytes=self.max_input_bytes,
            tile_size=self.tile_size,
            png_compress_level=self.png_compress_level,
            jpeg_quality=self.jpeg_quality,
            webp_quality=self.webp_quality,
        )


def _in_range(name: str, value: int, minimum: int, maximum: int) -> None:
    if not minimum <= value <= maximum:
        raise ConfigError(f"{_VARIABLES[name]}={value}: must be between {minimum} and {maximum}")
