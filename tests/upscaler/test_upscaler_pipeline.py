"""The upscale pipeline end to end: sizes, formats, pixel modes, tiling and worker processes."""

from __future__ import annotations

import hashlib
import io
import pickle
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw

from services.runtime.errors import Cancelled, InvalidArgument
from services.upscaler.pipeline import (
    OutputFormat,
    PipelineSettings,
    UpscaledImage,
    UpscaleMethod,
    UpscaleSpec,
    upscale_image,
)

SETTINGS = PipelineSettings()
FACTORS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


def encoded(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def decoded(result: UpscaledImage) -> Image.Image:
    image = Image.open(io.BytesIO(result.data))
    image.load()
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def picture(width: int = 48, height: int = 32, mode: str = "RGB") -> Image.Image:
    """A small deterministic image with flat areas, hard edges and noise."""
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise + np.uint8(90))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 4, height // 4, width // 2, height - 4), fill=(220, 40, 40))
    draw.ellipse((width // 2, 2, width - 2, height // 2), fill=(30, 60, 200))
    draw.line((0, height - 1, width - 1, 0), fill=(250, 250, 250), width=2)
    return image.convert(mode)


@pytest.mark.parametrize("method", list(UpscaleMethod))
@pytest.mark.parametrize("factor", FACTORS)
def test_every_method_and_factor_gives_the_rounded_size(
    method: UpscaleMethod, factor: float
) -> None:
    result = upscale_image(
        encoded(picture(13, 7)), UpscaleSpec(factor=factor, method=method), SETTINGS
    )

    expected = (int(13 * factor + 0.5), int(7 * factor + 0.5))
    assert (result.width, result.height) == expected
    assert decoded(result).size == expected
    assert (result.source_width, result.source_height) == (13, 7)
    assert result.method is method


@pytest.mark.parametrize("method", list(UpscaleMethod))
@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1)])
def test_one_pixel_wide_images_upscale(method: UpscaleMethod, size: tuple[int, int]) -> None:
    source = Image.new("RGB", size, (10, 200, 30))

    result = upscale_image(encoded(source), UpscaleSpec(factor=2.5, method=method), SETTINGS)

    image = decoded(result)
    assert image.size == (int(size[0] * 2.5 + 0.5), int(size[1] * 2.5 + 0.5))
    assert pixel(image, 0, 0) == (10, 200, 30)


def test_lanczos_matches_a_whole_image_pillow_resize() -> None:
    source = picture()

    result = upscale_image(encoded(source), UpscaleSpec(factor=4), SETTINGS)

    reference = source.resize((192, 128), Image.Resampling.LANCZOS)
    assert np.array_equal(pixels(decoded(result)), pixels(reference))


def test_bicubic_is_softer_than_lanczos() -> None:
    data = encoded(picture())
    spread = {}
    for method in (UpscaleMethod.LANCZOS, UpscaleMethod.BICUBIC):
        result = upscale_image(data, UpscaleSpec(factor=4, method=method), SETTINGS)
        spread[method] = float(np.abs(np.diff(pixels(decoded(result)), axis=1)).mean())

    assert spread[UpscaleMethod.BICUBIC] < spread[UpscaleMethod.LANCZOS]


@pytest.mark.parametrize(
    ("output_format", "pillow_name", "tolerance"),
    [
        (OutputFormat.PNG, "PNG", 0.0),
        (OutputFormat.JPEG, "JPEG", 6.0),
        (OutputFormat.WEBP, "WEBP", 6.0),
    ],
)
def test_each_output_format_round_trips(
    output_format: OutputFormat, pillow_name: str, tolerance: float
) -> None:
    source = picture()

    result = upscale_image(
        encoded(source), UpscaleSpec(factor=2, output_format=output_format), SETTINGS
    )

    image = decoded(result)
    assert image.format == pillow_name
    assert result.media_type == f"image/{output_format.value}"
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    assert result.source_format == "PNG"
    reference = pixels(source.resize((96, 64), Image.Resampling.LANCZOS))
    assert np.abs(pixels(image.convert("RGB")) - reference).mean() <= tolerance


@pytest.mark.parametrize("source_format", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_the_input_format_is_detected_from_the_bytes(source_format: str) -> None:
    result = upscale_image(encoded(picture(), source_format), UpscaleSpec(factor=2), SETTINGS)

    assert result.source_format == source_format
    assert (result.width, result.height) == (96, 64)


@pytest.mark.parametrize("output_format", [OutputFormat.JPEG, OutputFormat.WEBP])
def test_quality_trades_bytes_for_fidelity(output_format: OutputFormat) -> None:
    data = encoded(picture())
    sizes = {
        quality: len(
            upscale_image(
                data, UpscaleSpec(factor=2, output_format=output_format, quality=quality), SETTINGS
            ).data
        )
        for quality in (20, 95)
    }

    assert sizes[20] < sizes[95]


def test_unset_quality_uses_the_configured_default() -> None:
    data = encoded(picture())
    spec = UpscaleSpec(factor=2, output_format=OutputFormat.JPEG)

    low_default = upscale_image(data, spec, PipelineSettings(jpeg_quality=20))
    explicit = upscale_image(
        data, UpscaleSpec(factor=2, output_format=OutputFormat.JPEG, quality=20), SETTINGS
    )

    assert low_default.data == explicit.data


def translucent_disc() -> Image.Image:
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 32, 32), fill=(200, 30, 30, 255))
    return image


@pytest.mark.parametrize("method", list(UpscaleMethod))
@pytest.mark.parametrize("output_format", [OutputFormat.PNG, OutputFormat.WEBP])
def test_alpha_is_kept_for_png_and_webp(method: UpscaleMethod, output_format: OutputFormat) -> None:
    result = upscale_image(
        encoded(translucent_disc()),
        UpscaleSpec(factor=2, method=method, output_format=output_format, quality=100),
        SETTINGS,
    )

    image = decoded(result)
    assert image.mode == "RGBA"
    alpha = np.asarray(image.getchannel("A"))
    assert alpha[0, 0] == 0
    assert alpha[40, 40] == 255
    red, green, _, _ = pixel(image, 40, 40)
    assert red > 180 and green < 60


def test_alpha_is_flattened_onto_white_for_jpeg() -> None:
    result = upscale_image(
        encoded(translucent_disc()),
        UpscaleSpec(factor=2, output_format=OutputFormat.JPEG, quality=95),
        SETTINGS,
    )

    image = decoded(result)
    assert image.mode == "RGB"
    assert min(pixel(image, 1, 1)) > 245
    red, green, _ = pixel(image, 40, 40)
    assert red > 180 and green < 60


@pytest.mark.parametrize("method", list(UpscaleMethod))
def test_transparent_pixels_do_not_bleed_colour_into_edges(method: UpscaleMethod) -> None:
    # Fully transparent green must not tint the red disc's rim: resampling is premultiplied.
    image = Image.new("RGBA", (40, 40), (0, 255, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 32, 32), fill=(200, 30, 30, 255))

    result = upscale_image(encoded(image), UpscaleSpec(factor=4, method=method), SETTINGS)

    rim = np.asarray(decoded(result))
    visible = rim[..., 3] > 32
    assert rim[..., 1][visible].max() < 80


def test_palette_images_become_rgb() -> None:
    source = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)

    result = upscale_image(encoded(source), UpscaleSpec(factor=2), SETTINGS)

    image = decoded(result)
    assert image.mode == "RGB"
    reference = pixels(source.convert("RGB").resize((96, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(pixels(image), reference)


@pytest.mark.parametrize("source_format", ["PNG", "GIF"])
def test_palette_transparency_becomes_alpha(source_format: str) -> None:
    source = Image.new("P", (20, 20), 0)
    source.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(source).rectangle((5, 5, 14, 14), fill=1)

    result = upscale_image(
        encoded(source, source_format, transparency=0), UpscaleSpec(factor=2), SETTINGS
    )

    image = decoded(result)
    assert image.mode == "RGBA"
    assert pixel(image, 0, 0)[3] == 0
    assert pixel(image, 20, 20) == (255, 0, 0, 255)


@pytest.mark.parametrize(
    ("output_format", "mode"),
    [(OutputFormat.PNG, "L"), (OutputFormat.JPEG, "L"), (OutputFormat.WEBP, "RGB")],
)
def test_grey_stays_grey(output_format: OutputFormat, mode: str) -> None:
    result = upscale_image(
        encoded(picture(mode="L")), UpscaleSpec(factor=2, output_format=output_format), SETTINGS
    )

    image = decoded(result)
    assert image.mode == mode
    channels = pixels(image.convert("RGB"))
    assert np.array_equal(channels[..., 0], channels[..., 2])


def test_one_bit_images_become_grey() -> None:
    source = Image.new("1", (16, 16), 0)
    ImageDraw.Draw(source).rectangle((4, 4, 11, 11), fill=1)

    image = decoded(upscale_image(encoded(source), UpscaleSpec(factor=2), SETTINGS))

    assert image.mode == "L"
    assert image.getpixel((0, 0)) == 0
    assert image.getpixel((16, 16)) == 255


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    ramp = np.repeat(np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16), 4, axis=0)
    source = Image.fromarray(np.repeat(ramp, 4, axis=1))
    assert source.mode == "I;16"

    image = decoded(upscale_image(encoded(source), UpscaleSpec(factor=1), SETTINGS))

    assert image.mode == "L"
    assert [image.getpixel((x, 0)) for x in (0, 4, 8, 12)] == [0, 64, 128, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    source = picture().convert("CMYK")

    image = decoded(upscale_image(encoded(source, "JPEG"), UpscaleSpec(factor=2), SETTINGS))

    assert image.mode == "RGB"
    assert image.size == (96, 64)


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (40, 20), (10, 10, 10))
    ImageDraw.Draw(source).rectangle((0, 0, 9, 19), fill=(250, 250, 250))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer rotates 90 degrees clockwise

    result = upscale_image(encoded(source, "JPEG", exif=exif), UpscaleSpec(factor=2), SETTINGS)

    image = decoded(result)
    assert (result.width, result.height) == image.size == (40, 80)
    assert (result.source_width, result.source_height) == (20, 40)
    assert min(pixel(image, 20, 2)) > 200
    assert max(pixel(image, 20, 77)) < 60


def test_icc_profile_is_carried_to_the_output() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

    result = upscale_image(encoded(picture(), icc_profile=profile), UpscaleSpec(factor=2), SETTINGS)

    assert decoded(result).info.get("icc_profile") == profile


@pytest.mark.parametrize("method", list(UpscaleMethod))
@pytest.mark.parametrize("factor", [2.5, 4.0])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_tiled_output_equals_the_untiled_output(
    method: UpscaleMethod, factor: float, mode: str
) -> None:
    source = picture(70, 45, mode)
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(source.size)
        source.putalpha(alpha)
    spec = UpscaleSpec(factor=factor, method=method)

    tiled = upscale_image(encoded(source), spec, PipelineSettings(tile_size=64))
    whole = upscale_image(encoded(source), spec, PipelineSettings(tile_size=4096))

    # Compare what a viewer sees: premultiplied colour. Straight colour under alpha 5 may
    # legitimately differ by 255/5 when the premultiplied value differs by 1.
    seen = "RGBa" if mode == "RGBA" else mode
    difference = np.abs(pixels(decoded(tiled).convert(seen)) - pixels(decoded(whole).convert(seen)))
    assert difference.max() <= 2
    assert difference.mean() < 0.1


def test_checkpoint_sees_every_tile_then_the_encoder() -> None:
    seen: list[float] = []

    upscale_image(
        encoded(picture()), UpscaleSpec(factor=4), PipelineSettings(tile_size=64), seen.append
    )

    # 192x128 output in 64 px tiles: 3 x 2 tiles, then one call before encoding.
    assert seen == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])


def test_a_raising_checkpoint_abandons_the_work() -> None:
    calls: list[float] = []

    def cancel_after_two_tiles(done: float) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise Cancelled("the caller went away")

    with pytest.raises(Cancelled):
        upscale_image(
            encoded(picture()),
            UpscaleSpec(factor=4),
            PipelineSettings(tile_size=64),
            cancel_after_two_tiles,
        )
    assert len(calls) == 2


def test_concurrent_calls_from_threads_keep_their_own_encoder_settings() -> None:
    # Pillow keeps encoder settings on the Image being saved; each call must own its images.
    data = encoded(picture())
    specs = [
        UpscaleSpec(factor=2, output_format=output_format, quality=quality)
        for output_format in (OutputFormat.JPEG, OutputFormat.WEBP, OutputFormat.PNG)
        for quality in (15, 95)
    ] * 3
    expected = {spec: upscale_image(data, spec, SETTINGS).data for spec in set(specs)}

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda spec: upscale_image(data, spec, SETTINGS), specs))

    assert [result.data for result in results] == [expected[spec] for spec in specs]


def test_runs_in_a_worker_process_and_errors_cross_back_intact() -> None:
    spec = UpscaleSpec(factor=2, method=UpscaleMethod.ENHANCE, output_format=OutputFormat.WEBP)
    assert pickle.loads(pickle.dumps(spec)) == spec

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(upscale_image, encoded(picture()), spec, SETTINGS).result()
        failure = pool.submit(upscale_image, b"not an image", spec, SETTINGS).exception()

    assert (result.width, result.height, result.output_format) == (96, 64, OutputFormat.WEBP)
    assert isinstance(failure, InvalidArgument)
    assert failure.reason == "UNSUPPORTED_IMAGE"
    assert [violation.field for violation in failure.violations] == ["chunk.data"]
