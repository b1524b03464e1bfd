"""Draws the docs' side-by-side crop of `lanczos` against `enhance` at 4x.

A detailed scene is drawn at full size, shrunk 4x (as a low-tier render would be), then
enlarged 4x by both methods; the same crop of each is placed next to the original.

    python -m bench.upscale_gallery [--out docs/images/upscale-enhance-vs-lanczos.png]
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.upscaler.pipeline import PipelineSettings, UpscaleMethod, UpscaleSpec, upscale_image

__all__ = ["comparison", "draw_scene", "main"]

_DEFAULT_OUT = Path("docs/images/upscale-enhance-vs-lanczos.png")
_SCENE_SIDE = 1536
_FACTOR = 4
#: The crop, in scene pixels: a wall, windows, a tree, a fence, grass and lettering.
_CROP = (620, 690, 1120, 1190)
#: A detail inside the crop (lettering and fence), shown again at `_ZOOM` x.
_DETAIL = (650, 1000, 900, 1180)
_ZOOM = 2
_LABEL_HEIGHT = 36
_GAP = 8


def draw_scene(side: int = _SCENE_SIDE, seed: int = 7) -> Image.Image:
    """A deterministic landscape with hard edges, fine lines, text and natural texture."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
    sky = np.array([70, 120, 200], np.float32) * (1 - rows) + np.array([230, 200, 170]) * rows
    pixels = np.broadcast_to(sky, (side, side, 3)).copy()
    horizon = int(side * 0.62)
    blades = rng.normal(0.0, 18.0, (side - horizon, side)).astype(np.float32)
    pixels[horizon:] = np.array([70, 120, 50], np.float32) + blades[..., None] * [0.6, 1.0, 0.4]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)

    draw.ellipse((side * 0.72, side * 0.08, side * 0.86, side * 0.22), fill=(255, 236, 180))
    ridge = [(0.0, horizon * 1.0)]
    for step in range(13):
        x = side * step / 12
        ridge.append((x, horizon - side * (0.12 + 0.1 * float(rng.random()))))
    ridge.append((side * 1.0, horizon * 1.0))
    draw.polygon(ridge, fill=(95, 105, 130))

    left, top, right = side * 0.38, side * 0.5, side * 0.6
    bottom = horizon + side * 0.05
    draw.rectangle((left, top, right, bottom), fill=(190, 90, 70), outline=(60, 30, 25), width=3)
    draw.polygon(
        [(left - 20, top), ((left + right) / 2, top - side * 0.1), (right + 20, top)],
        fill=(80, 50, 45),
    )
    for column in range(3):
        for row in range(2):
            x0 = left + 24 + column * (right - left - 48) / 3
            y0 = top + 30 + row * 90
            draw.rectangle(
                (x0, y0, x0 + 50, y0 + 60), fill=(250, 225, 140), outline=(40, 30, 30), width=4
            )
            draw.line((x0 + 25, y0, x0 + 25, y0 + 60), fill=(40, 30, 30), width=3)
            draw.line((x0, y0 + 30, x0 + 50, y0 + 30), fill=(40, 30, 30), width=3)
    for post in range(0, side, 22):
        draw.line((post, horizon + 60, post + 4, horizon + 120), fill=(235, 230, 220), width=4)
    draw.line((0, horizon + 75, side, horizon + 80), fill=(235, 230, 220), width=3)

    trunk = side * 0.7
    draw.rectangle((trunk, horizon - 40, trunk + 24, horizon + 40), fill=(80, 55, 35))
    for _ in range(160):
        cx = trunk + 12 + float(rng.normal(0, 55))
        cy = horizon - 120 + float(rng.normal(0, 55))
        radius = float(rng.uniform(8, 22))
        shade = int(rng.integers(60, 140))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(30, shade, 40))
    font = ImageFont.load_default(size=64)
    draw.text(
        (side * 0.43, horizon + 130),
        "TIERGEN 4x",
        fill=(250, 250, 250),
        font=font,
        stroke_width=3,
        stroke_fill=(20, 20, 20),
    )
    return image


def comparison(scene: Image.Image, settings: PipelineSettings | None = None) -> Image.Image:
    """Original | lanczos 4x | enhance 4x: the same crop of each, then a 2x zoom of a detail."""
    settings = settings or PipelineSettings()
    small = scene.resize(
        (scene.width // _FACTOR, scene.height // _FACTOR), Image.Resampling.LANCZOS
    )
    encoded = io.BytesIO()
    small.save(encoded, "PNG")
    versions = [("original", scene)]
    for method in (UpscaleMethod.LANCZOS, UpscaleMethod.ENHANCE):
        result = upscale_image(
            encoded.getvalue(), UpscaleSpec(factor=_FACTOR, method=method), settings
        )
        with Image.open(io.BytesIO(result.data)) as upscaled:
            upscaled.load()
            versions.append((f"{method.value} 4x from 1/4 size", upscaled))
    crop_width = _CROP[2] - _CROP[0]
    zoom_size = ((_DETAIL[2] - _DETAIL[0]) * _ZOOM, (_DETAIL[3] - _DETAIL[1]) * _ZOOM)
    rows = [_CROP[3] - _CROP[1], zoom_size[1]]
    sheet = Image.new(
        "RGB",
        (len(versions) * (crop_width + _GAP) - _GAP, sum(rows) + 2 * _LABEL_HEIGHT),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=22)
    for index, (label, image) in enumerate(versions):
        x = index * (crop_width + _GAP)
        draw.text((x + 6, 6), label, fill=(0, 0, 0), font=font)
        sheet.paste(image.crop(_CROP), (x, _LABEL_HEIGHT))
        below = _LABEL_HEIGHT + rows[0]
        draw.text((x + 6, below + 6), f"{label}, detail at 2x zoom", fill=(0, 0, 0), font=font)
        detail = image.crop(_DETAIL).resize(zoom_size, Image.Resampling.NEAREST)
        sheet.paste(detail, (x, below + _LABEL_HEIGHT))
    return sheet


def main(argv: Sequence[str] | None = None) -> int:
    """Write the comparison image."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    parser.add_argument("--scene", type=Path, help="also write the full-size scene here")
    arguments = parser.parse_args(argv)
    scene = draw_scene()
    if arguments.scene:
        scene.save(arguments.scene)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    comparison(scene).save(arguments.out, optimize=True)
    print(arguments.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
