"""`enhance` against plain Lanczos: crisper edges, no ringing, calm flat areas, alpha untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from services.upscaler.pipeline import (
    OutputFormat,
    PipelineSettings,
    UpscaleMethod,
    UpscaleSpec,
    upscale_image,
)

SETTINGS = PipelineSettings()


def upscaled(image: Image.Image, method: UpscaleMethod, factor: float = 4) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    result = upscale_image(buffer.getvalue(), UpscaleSpec(factor=factor, method=method), SETTINGS)
    pixels: np.ndarray = np.asarray(Image.open(io.BytesIO(result.data)), dtype=np.float64)
    return pixels


def scene() -> Image.Image:
    """Shapes, thin lines and lettering drawn at 4x, then shrunk as a low-tier render would be."""
    image = Image.new("RGB", (256, 256), (90, 130, 190))
    draw = ImageDraw.Draw(image)
    draw.rectangle((30, 120, 140, 230), fill=(190, 90, 70), outline=(50, 30, 20), width=4)
    draw.polygon([(20, 120), (85, 60), (150, 120)], fill=(80, 50, 45))
    draw.ellipse((160, 30, 230, 100), fill=(250, 230, 170))
    for x in range(150, 256, 12):
        draw.line((x, 160, x + 3, 240), fill=(240, 240, 230), width=3)
    draw.text((40, 20), "Tier", fill=(255, 255, 255), font=ImageFont.load_default(size=40))
    return image.resize((64, 64), Image.Resampling.LANCZOS)


def gradient_magnitude(pixels: np.ndarray) -> np.ndarray:
    rows, columns = np.gradient(pixels.mean(axis=2))
    magnitude: np.ndarray = np.hypot(rows, columns)
    return magnitude


def test_enhance_has_more_edge_contrast_than_lanczos() -> None:
    # The *mean* gradient across a monotone edge is its height over the window, whatever its
    # sharpness, so it cannot tell them apart. Steeper edges show as higher peak gradients
    # (the 99th percentile: the edges' cores) and as more gradient energy (mean square).
    lanczos = gradient_magnitude(upscaled(scene(), UpscaleMethod.LANCZOS))
    enhanced = gradient_magnitude(upscaled(scene(), UpscaleMethod.ENHANCE))

    assert np.percentile(enhanced, 99) > 1.3 * np.percentile(lanczos, 99)
    assert (enhanced**2).mean() > 1.05 * (lanczos**2).mean()


def step_edge() -> Image.Image:
    step = np.full((24, 24), 50, dtype=np.uint8)
    step[:, 12:] = 200
    return Image.fromarray(step)


def test_enhance_steepens_a_step_edge_without_ringing() -> None:
    lanczos = upscaled(step_edge(), UpscaleMethod.LANCZOS)[48]
    enhanced = upscaled(step_edge(), UpscaleMethod.ENHANCE)[48]

    # Lanczos rings (the test can see ringing)...
    assert lanczos.max() > 205 and lanczos.min() < 45
    # ...enhance stays inside the source's own range, so it has no halo at all...
    assert enhanced.min() >= 50 - 1 and enhanced.max() <= 200 + 1
    # ...and its steepest step is much steeper.
    assert np.diff(enhanced).max() > 1.5 * np.diff(lanczos).max()


def test_enhance_keeps_flat_areas_flat_and_gradients_smooth() -> None:
    ramp = np.tile(np.linspace(40, 210, 32, dtype=np.float32), (32, 1))
    source = Image.fromarray(np.rint(ramp).astype(np.uint8))

    lanczos = upscaled(source, UpscaleMethod.LANCZOS)
    enhanced = upscaled(source, UpscaleMethod.ENHANCE)

    assert np.abs(enhanced - lanczos)[8:-8, 8:-8].max() <= 2
    flat = upscaled(Image.new("RGB", (16, 16), (120, 80, 40)), UpscaleMethod.ENHANCE)
    assert np.all(flat == [120, 80, 40])


def test_enhance_calms_faint_noise_in_flat_areas() -> None:
    rng = np.random.default_rng(3)
    noisy = np.clip(128 + rng.normal(0, 1.5, (32, 32)), 0, 255).astype(np.uint8)
    source = Image.fromarray(noisy)

    lanczos = upscaled(source, UpscaleMethod.LANCZOS)
    enhanced = upscaled(source, UpscaleMethod.ENHANCE)

    assert enhanced.std() < lanczos.std()


def test_enhance_shifts_all_channels_together_so_hues_stay() -> None:
    lanczos = upscaled(scene(), UpscaleMethod.LANCZOS)
    enhanced = upscaled(scene(), UpscaleMethod.ENHANCE)
    shift = enhanced - lanczos
    # Where no channel was clipped at black or white, every channel moved by the same amount.
    unclipped = np.all((enhanced > 0) & (enhanced < 255), axis=2)
    assert np.abs(shift).max() > 20

    spread = shift.max(axis=2) - shift.min(axis=2)
    assert spread[unclipped].max() <= 1


@pytest.mark.parametrize("output_format", [OutputFormat.PNG, OutputFormat.WEBP])
def test_enhance_leaves_alpha_as_lanczos_made_it(output_format: OutputFormat) -> None:
    source = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(source).ellipse((6, 6, 26, 26), fill=(30, 160, 220, 200))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    alphas = []
    for method in (UpscaleMethod.LANCZOS, UpscaleMethod.ENHANCE):
        spec = UpscaleSpec(factor=2, method=method, output_format=output_format, quality=100)
        result = upscale_image(buffer.getvalue(), spec, SETTINGS)
        alphas.append(np.asarray(Image.open(io.BytesIO(result.data)).getchannel("A")))

    assert np.array_equal(alphas[0], alphas[1])
