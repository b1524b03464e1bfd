"""TIERGEN_UPSCALER_* configuration: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import os

import pytest

from services.upscaler.encoding import OutputFormat
from services.upscaler.pipeline import PipelineSettings
from services.upscaler.settings import UpscalerSettings


def test_defaults_match_the_issue() -> None:
    settings = UpscalerSettings.from_env({})

    assert settings == UpscalerSettings()
    assert (settings.max_input_side, settings.max_output_side) == (4096, 8192)
    assert settings.default_output_format is OutputFormat.PNG
    assert settings.png_compress_level == 1
    assert settings.workers == (os.cpu_count() or 1)


def test_every_variable_is_read() -> None:
    settings = UpscalerSettings.from_env(
        {
            "TIERGEN_UPSCALER_MAX_INPUT_SIDE": "2048",
            "TIERGEN_UPSCALER_MAX_OUTPUT_SIDE": "4096",
            "TIERGEN_UPSCALER_MAX_INPUT_BYTES": "1000000",
            "TIERGEN_UPSCALER_OUTPUT_FORMAT": "WebP",
            "TIERGEN_UPSCALER_PNG_COMPRESS_LEVEL": "6",
            "TIERGEN_UPSCALER_JPEG_QUALITY": "80",
            "TIERGEN_UPSCALER_WEBP_QUALITY": "70",
            "TIERGEN_UPSCALER_TILE_SIZE": "256",
            "TIERGEN_UPSCALER_WORKERS": "3",
            "TIERGEN_UPSCALER_QUEUE_LIMIT": "0",
        }
    )

    assert settings == UpscalerSettings(
        max_input_side=2048,
        max_output_side=4096,
        max_input_bytes=1_000_000,
        default_output_format=OutputFormat.WEBP,
        png_compress_level=6,
        jpeg_quality=80,
        webp_quality=70,
        tile_size=256,
        workers=3,
        queue_limit=0,
    )
    assert settings.pipeline() == PipelineSettings(
        max_input_side=2048,
        max_output_side=4096,
        max_input_bytes=1_000_000,
        tile_size=256,
        png_compress_level=6,
        jpeg_quality=80,
        webp_quality=70,
    )


def test_blank_variables_keep_their_defaults() -> None:
    assert UpscalerSettings.from_env({"TIERGEN_UPSCALER_TILE_SIZE": "  "}).tile_size == 512


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TIERGEN_UPSCALER_TILE_SIZE", "big", "TIERGEN_UPSCALER_TILE_SIZE='big': expected a whole"),
        ("TIERGEN_UPSCALER_TILE_SIZE", "16", "TIERGEN_UPSCALER_TILE_SIZE=16: must be between 64"),
        ("TIERGEN_UPSCALER_PNG_COMPRESS_LEVEL", "10", "TIERGEN_UPSCALER_PNG_COMPRESS_LEVEL=10"),
        ("TIERGEN_UPSCALER_JPEG_QUALITY", "0", "TIERGEN_UPSCALER_JPEG_QUALITY=0"),
        ("TIERGEN_UPSCALER_WEBP_QUALITY", "101", "TIERGEN_UPSCALER_WEBP_QUALITY=101"),
        ("TIERGEN_UPSCALER_WORKERS", "0", "TIERGEN_UPSCALER_WORKERS=0"),
        ("TIERGEN_UPSCALER_QUEUE_LIMIT", "-1", "TIERGEN_UPSCALER_QUEUE_LIMIT=-1"),
        ("TIERGEN_UPSCALER_MAX_INPUT_BYTES", "0", "TIERGEN_UPSCALER_MAX_INPUT_BYTES=0"),
        ("TIERGEN_UPSCALER_MAX_OUTPUT_SIDE", "99999", "TIERGEN_UPSCALER_MAX_OUTPUT_SIDE=99999"),
        ("TIERGEN_UPSCALER_OUTPUT_FORMAT", "tiff", "TIERGEN_UPSCALER_OUTPUT_FORMAT='tiff'"),
        # Pillow refuses more than ~9459 x 9459 px as a decompression bomb.
        ("TIERGEN_UPSCALER_MAX_INPUT_SIDE", "12000", "TIERGEN_UPSCALER_MAX_INPUT_SIDE=12000"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        UpscalerSettings.from_env({variable: value})


def test_an_input_limit_above_the_output_limit_names_both_variables() -> None:
    environ = {"TIERGEN_UPSCALER_MAX_OUTPUT_SIDE": "1024"}

    with pytest.raises(ValueError) as caught:
        UpscalerSettings.from_env(environ)

    assert "TIERGEN_UPSCALER_MAX_INPUT_SIDE=4096" in str(caught.value)
    assert "TIERGEN_UPSCALER_MAX_OUTPUT_SIDE=1024" in str(caught.value)
