"""The weather over a scene: fog, lightning, rain and snow."""

from __future__ import annotations

import numpy as np
from PIL import Image

from services.generator.painting.canvas import Canvas
from services.generator.painting.painter import Layer
from services.generator.painting.scene import mix

__all__ = ["fog", "lightning", "rain", "snow"]


def fog(canvas: Canvas) -> None:
    """A bank of haze along the horizon: one flat band when coarse, else soft and patchy."""
    haze = mix(canvas.palette.sky[2], (236, 238, 240), 0.4)
    if canvas.detail == 0:
        band = Layer()
        band.rectangle(
            0,
            canvas.horizon - canvas.height * 0.1,
            canvas.width,
            canvas.horizon + canvas.height * 0.12,
        )
        canvas.painter.paint(band, haze, opacity=0.35)
        return
    small_w, small_h = max(canvas.width // 16, 2), max(canvas.height // 16, 2)
    rows = (np.arange(small_h, dtype=np.float32)[:, None] + 0.5) * canvas.height / small_h
    thickness = 0.6 * np.exp(-(((rows - canvas.horizon) / (canvas.height * 0.16)) ** 2))
    patches = canvas.scene.generator("fog").uniform(0.7, 1.0, (3, 8)).astype(np.float32)
    drift = np.asarray(
        Image.fromarray(patches).resize((small_w, small_h), Image.Resampling.BICUBIC),
        np.float32,
    )
    mask_small = Image.fromarray((np.clip(thickness * drift, 0, 1) * 255).astype(np.uint8))
    mask = mask_small.resize((canvas.width, canvas.height), Image.Resampling.BICUBIC)
    canvas.painter.paste(mask, (0, 0, canvas.width, canvas.height), haze)


def lightning(canvas: Canvas) -> None:
    """A jagged bolt from the top of the sky to the horizon, glowing above coarse."""
    rng = canvas.scene.rng("lightning")
    x = (1 - canvas.scene.focus) * canvas.width
    y = canvas.height * 0.05
    bolt = [(x, y)]
    bottom = canvas.horizon + 2
    while y < bottom:
        y = min(bottom, y + rng.uniform(0.04, 0.09) * canvas.height)
        x += rng.uniform(-0.04, 0.04) * canvas.width
        bolt.append((x, y))
    layer = Layer()
    layer.line(bolt, max(1.5, canvas.unit * 0.004))
    if canvas.detail:
        canvas.painter.paint(layer, canvas.palette.light, blur=canvas.unit * 0.012, opacity=0.8)
    canvas.painter.paint(layer, (255, 255, 240))


def rain(canvas: Canvas) -> None:
    """Slanting streaks of rain, more of them with each tier."""
    rng = canvas.scene.generator("rain")
    total = 1500
    xs = rng.uniform(-0.1, 1.0, total) * canvas.width
    ys = rng.uniform(-0.05, 1.0, total) * canvas.height
    lengths = rng.uniform(0.6, 1.0, total) * canvas.height * 0.04
    shown = {0: 120, 1: 500, 2: total}[canvas.detail]
    drops = Layer()
    width = max(1.0, canvas.unit * 0.0012)
    for x, y, length in zip(xs[:shown], ys[:shown], lengths[:shown], strict=True):
        drops.line([(float(x), float(y)), (float(x + length * 0.25), float(y + length))], width)
    colour = mix(canvas.palette.sky[2], (255, 255, 255), 0.4)
    canvas.painter.paint(drops, colour, opacity=0.5 if canvas.detail == 0 else 0.35)


def snow(canvas: Canvas) -> None:
    """Falling snow, near flakes larger (and soft on the fine tier) than far ones."""
    rng = canvas.scene.generator("snow")
    total = 1600
    xs = rng.uniform(0, 1, total) * canvas.width
    ys = rng.uniform(0, 1, total) * canvas.height
    sizes = rng.uniform(0.3, 1.0, total) ** 2
    shown = {0: 150, 1: 700, 2: total}[canvas.detail]
    scale = canvas.unit / 1024
    near = Layer()
    far = Layer()
    for x, y, size in zip(xs[:shown], ys[:shown], sizes[:shown], strict=True):
        radius = max(1.0, (0.8 + 3.2 * size) * scale)
        (near if size > 0.5 else far).ellipse(float(x), float(y), radius, radius)
    canvas.painter.paint(far, (250, 250, 255), opacity=0.85)
    soft = scale * 1.2 if canvas.detail == 2 else 0.0
    canvas.painter.paint(near, (255, 255, 255), blur=soft, opacity=0.9)
