"""Every kind of bad input is refused with INVALID_ARGUMENT, the right field and a clear message."""

from __future__ import annotations

import io
import math
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from services.runtime.errors import InvalidArgument
from services.upscaler.pipeline import (
    OutputFormat,
    PipelineSettings,
    UpscaleMethod,
    UpscaleSpec,
    upscale_image,
)

SETTINGS = PipelineSettings()
IMAGE = "chunk.data"


def encoded(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def sample(image_format: str = "PNG") -> bytes:
    image = Image.new("RGB", (64, 48), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    for x in range(0, 64, 4):
        draw.line((x, 0, 63 - x, 47), fill=(x * 4, 200, 255 - x * 4), width=2)
    return encoded(image, image_format)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming `width` x `height` RGB, followed by a scrap of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def animated(image_format: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    return encoded(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100)


def refusal(
    data: bytes, spec: UpscaleSpec | None = None, settings: PipelineSettings = SETTINGS
) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        upscale_image(data, spec or UpscaleSpec(factor=2), settings)
    return caught.value


def fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


def test_empty_input() -> None:
    error = refusal(b"")

    assert (error.reason, fields(error)) == ("EMPTY_IMAGE", [IMAGE])
    assert "empty" in error.message


@pytest.mark.parametrize(
    "data",
    [b"hello, this is not an image", bytes(range(256)), b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"],
    ids=["text", "binary", "pdf"],
)
def test_bytes_that_are_not_an_image(data: bytes) -> None:
    error = refusal(data)

    assert (error.reason, fields(error)) == ("UNSUPPORTED_IMAGE", [IMAGE])
    assert error.message == "the bytes are not a PNG, JPEG, WebP, GIF or BMP image"


def test_an_image_format_the_upscaler_does_not_take() -> None:
    error = refusal(encoded(Image.new("RGB", (8, 8)), "TIFF"))

    assert error.reason == "UNSUPPORTED_IMAGE"
    assert "PNG, JPEG, WebP, GIF or BMP" in error.message


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
@pytest.mark.parametrize("kept", [0.6, 0.1])
def test_truncated_images(image_format: str, kept: float) -> None:
    data = sample(image_format)

    error = refusal(data[: int(len(data) * kept)])

    assert (error.reason, fields(error)) == ("CORRUPT_IMAGE", [IMAGE])
    assert f"the {image_format} image is truncated or corrupt" in error.message
    assert "send the complete file" in error.message


def test_corrupt_png_data() -> None:
    data = sample("PNG")
    start = data.index(b"IDAT") + 12
    damaged = data[:start] + bytes(byte ^ 0xFF for byte in data[start : start + 40])

    error = refusal(damaged + data[start + 40 :])

    assert (error.reason, fields(error)) == ("CORRUPT_IMAGE", [IMAGE])


def test_corrupt_jpeg_data() -> None:
    data = sample("JPEG")

    error = refusal(data[:400] + bytes(300) + data[700:])

    assert error.reason == "CORRUPT_IMAGE"


@pytest.mark.parametrize(
    "side",
    [5000, 10_000, 100_000],
    ids=["above-our-limit", "above-pillow-warning", "above-pillow-error"],
)
def test_decompression_bombs_are_refused_from_the_header(side: int) -> None:
    # Decoding 100000 x 100000 RGB would need 30 GB; the data behind the header is a scrap, so
    # IMAGE_TOO_LARGE (not CORRUPT_IMAGE) proves the size was checked before decoding.
    error = refusal(png_declaring(side, side))

    assert (error.reason, fields(error)) == ("IMAGE_TOO_LARGE", [IMAGE])
    assert "the largest accepted input side is 4096 px" in error.message


def test_an_input_side_beyond_the_limit_names_the_size() -> None:
    error = refusal(sample(), settings=PipelineSettings(max_input_side=50))

    assert error.message == "the image is 64x48 px; the largest accepted input side is 50 px"
    assert error.metadata == {"max_side": "50", "width": "64", "height": "48"}


def test_input_bytes_beyond_the_limit() -> None:
    data = sample()

    error = refusal(data, settings=PipelineSettings(max_input_bytes=len(data) - 1))

    assert (error.reason, fields(error)) == ("IMAGE_TOO_LARGE", [IMAGE])
    assert f"the image is {len(data)} bytes" in error.message


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "PNG"])
def test_animated_images(image_format: str) -> None:
    error = refusal(animated(image_format))

    assert (error.reason, fields(error)) == ("ANIMATED_IMAGE", [IMAGE])
    assert "send a single still image" in error.message


def test_a_single_frame_gif_is_fine() -> None:
    result = upscale_image(sample("GIF"), UpscaleSpec(factor=2), SETTINGS)

    assert (result.width, result.height) == (128, 96)


def test_output_beyond_the_limit_suggests_a_factor_that_fits() -> None:
    limits = PipelineSettings(max_input_side=200, max_output_side=200)

    error = refusal(sample(), UpscaleSpec(factor=4), limits)

    assert (error.reason, fields(error)) == ("OUTPUT_TOO_LARGE", ["spec.factor"])
    assert error.metadata == {"max_output_side": "200", "max_factor": "3"}
    assert error.message == (
        "upscaling this 64x48 image by 4 would give 256x192 px, beyond the largest output "
        "side of 200 px; use a factor of at most 3"
    )


def test_output_beyond_the_limit_is_refused_before_decoding() -> None:
    error = refusal(png_declaring(3000, 3000), UpscaleSpec(factor=4))

    assert error.reason == "OUTPUT_TOO_LARGE"
    assert "use a factor of at most 2.5" in error.message


def test_settings_that_would_refuse_every_factor_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_input_side 4096 exceeds max_output_side 2048"):
        PipelineSettings(max_output_side=2048)


@pytest.mark.parametrize("factor", [0, 0.5, 1.25, 3.9, 4.5, 8, -2, math.nan, math.inf])
def test_unsupported_factors(factor: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        UpscaleSpec(factor=factor)

    error = caught.value
    assert (error.reason, fields(error)) == ("INVALID_FACTOR", ["spec.factor"])
    assert "use 1 to 4 in steps of 0.5" in error.message


@pytest.mark.parametrize("quality", [0, -5, 101])
def test_quality_out_of_range(quality: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        UpscaleSpec(factor=2, output_format=OutputFormat.JPEG, quality=quality)

    assert (caught.value.reason, fields(caught.value)) == ("INVALID_QUALITY", ["spec.quality"])


def test_unknown_method() -> None:
    with pytest.raises(InvalidArgument) as caught:
        UpscaleSpec.parse(factor=2, method="sharpest")

    error = caught.value
    assert (error.reason, fields(error)) == ("UNKNOWN_METHOD", ["spec.method"])
    assert error.message == "unknown method 'sharpest'; use one of lanczos, bicubic, enhance"


def test_unknown_output_format() -> None:
    with pytest.raises(InvalidArgument) as caught:
        UpscaleSpec.parse(factor=2, output_format="tiff")

    error = caught.value
    assert (error.reason, fields(error)) == ("UNKNOWN_FORMAT", ["spec.output_format"])
    assert error.message == "unknown output format 'tiff'; use one of png, jpeg, webp"


def test_parse_defaults_and_spellings() -> None:
    assert UpscaleSpec.parse(factor=2) == UpscaleSpec(factor=2)
    assert UpscaleSpec.parse(factor=2, default_format=OutputFormat.JPEG).output_format is (
        OutputFormat.JPEG
    )
    parsed = UpscaleSpec.parse(factor=2.5, method=" Enhance", output_format="WEBP", quality=70)
    assert parsed == UpscaleSpec(
        factor=2.5, method=UpscaleMethod.ENHANCE, output_format=OutputFormat.WEBP, quality=70
    )
