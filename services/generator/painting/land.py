"""The land and water of a scene: ridges of terrain, mountain light and snow, water, grid."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from services.generator.painting.canvas import Canvas, Floats, Ridge
from services.generator.painting.painter import Layer, vertical_gradient
from services.generator.painting.scene import RGB, Subject, mix

__all__ = ["grid", "ridge", "water"]


def ridge(canvas: Canvas, line: Ridge) -> None:
    """One ridge of land: flat when coarse, else fading into haze, mountains lit and snowy."""
    xs = canvas.samples()
    tops = line.tops(xs)
    behind_water = canvas.water and line is not canvas.shore
    bottom = canvas.horizon + 2 if behind_water else float(canvas.height)
    layer = Layer()
    points = [(float(x) * canvas.width, float(y)) for x, y in zip(xs, tops, strict=True)]
    layer.polygon([*points, (float(canvas.width), bottom), (0.0, bottom)])
    depth = line.depth * 0.66 if behind_water else line.depth
    colour = canvas.land_colour(depth)
    if canvas.detail == 0:
        canvas.painter.paint(layer, colour)
        return
    peak = float(tops.min())
    foot = mix(colour, canvas.palette.sky[2], 0.1 + 0.35 * (1 - depth))
    canvas.painter.paint(layer, vertical_gradient(peak, line.baseline, colour, foot))
    if line.terrain is Subject.MOUNTAINS and depth < 0.9:
        _mountain_light(canvas, line, points, colour, foot)


def _mountain_light(
    canvas: Canvas, line: Ridge, outline: list[tuple[float, float]], colour: RGB, foot: RGB
) -> None:
    """Lit faces on the high tier, and snow on the highest peaks of cold mountains."""
    heights = [(line.baseline - y) / line.amplitude for _, y in outline]
    reach = max(2, round(len(outline) * 0.04))
    peaks = [
        index
        for index in range(1, len(outline) - 1)
        if heights[index] == max(heights[max(0, index - reach) : index + reach + 1])
        and heights[index] > 0.45
    ]
    if canvas.detail == 2:
        _lit_faces(
            canvas, line, outline, heights, peaks, mix(colour, canvas.palette.sun, 0.28), foot
        )
    cold = ("winter", "ocean", "night", "forest", "dawn", "pastel")
    if line.depth == 0.0 and canvas.palette.name in cold:
        _snow_caps(canvas, line, outline, heights, peaks)


def _lit_faces(
    canvas: Canvas,
    line: Ridge,
    outline: list[tuple[float, float]],
    heights: list[float],
    peaks: list[int],
    lit: RGB,
    foot: RGB,
) -> None:
    """From each peak, the slope facing the light, down to a point below the peak."""
    toward = 1 if canvas.scene.light_x > 0.5 else -1
    longest = canvas.width * 0.08
    faces = Layer()
    for index in peaks:
        end = index
        while (
            0 < end < len(outline) - 1
            and heights[end + toward] <= heights[end] + 0.02
            and abs(outline[end + toward][0] - outline[index][0]) < longest
        ):
            end += toward
        px, py = outline[index]
        vx, _ = outline[end]
        ground = py + (line.baseline - py) * 0.8
        faces.polygon(
            [
                *outline[min(index, end) : max(index, end) + 1][::toward],
                (px + (vx - px) * 0.35, ground),
            ]
        )
    canvas.painter.paint(
        faces,
        vertical_gradient(line.baseline - line.amplitude, line.baseline, lit, foot),
        opacity=0.7,
    )


def _snow_caps(
    canvas: Canvas,
    line: Ridge,
    outline: list[tuple[float, float]],
    heights: list[float],
    peaks: list[int],
) -> None:
    """Snow on each high peak, ending in a toothed edge a little below it."""
    rng = canvas.scene.rng("snow-caps")
    caps = Layer()
    # Snow clings to the peak itself, not to a long high ridge beside it.
    reach_x = canvas.width * 0.045
    for index in peaks:
        teeth = [rng.uniform(0.5, 1.0) for _ in range(7)]
        if heights[index] < 0.75:
            continue
        snow_line = heights[index] - 0.13
        peak_x = outline[index][0]
        left = right = index
        while (
            left > 0 and heights[left - 1] > snow_line and peak_x - outline[left - 1][0] < reach_x
        ):
            left -= 1
        while (
            right < len(outline) - 1
            and heights[right + 1] > snow_line
            and outline[right + 1][0] - peak_x < reach_x
        ):
            right += 1
        if right - left < 2:
            continue
        edge_y = line.baseline - snow_line * line.amplitude
        lx, rx = outline[left][0], outline[right][0]
        tooth = line.amplitude * 0.05
        edge = [
            (
                rx - (rx - lx) * step / 8,
                edge_y + (tooth * depth if step % 2 else -tooth * 0.3 * depth),
            )
            for step, depth in enumerate(teeth, start=1)
        ]
        caps.polygon([*outline[left : right + 1], *edge])
    canvas.painter.paint(caps, mix((246, 248, 252), canvas.palette.sky[2], 0.2), opacity=0.95)


def water(canvas: Canvas) -> None:
    """Water below the horizon, reflecting everything above it.

    Flat bands when coarse; on the standard tier the reflection sways, and on the fine one
    waves break it and glitter lies under the light.
    """
    top = round(canvas.horizon)
    below = canvas.height - top
    if below <= 0:
        return
    deep = canvas.palette.water
    near = mix(deep, canvas.palette.sky[2], 0.45)
    if canvas.detail == 0:
        bands = 6
        for band in range(bands):
            layer = Layer()
            layer.rectangle(0, top + below * (band / bands) ** 2, canvas.width, canvas.height)
            canvas.painter.paint(layer, mix(near, deep, band / (bands - 1)))
        _light_path(canvas)
        return
    above = canvas.painter.image.crop((0, max(0, top - below), canvas.width, top))
    mirrored = Image.new("RGB", (canvas.width, below), canvas.palette.sky[0])
    mirrored.paste(above.transpose(Image.Transpose.FLIP_TOP_BOTTOM), (0, 0))
    tint = np.asarray(vertical_gradient(0, below, near, deep)((0, 0, 1, below)), np.float32)
    if canvas.detail == 1:
        softened = mirrored.filter(ImageFilter.GaussianBlur(max(1.0, canvas.unit * 0.002)))
        surface = _swayed(canvas, np.asarray(softened), tint)
    else:
        surface = _rippled(canvas, np.asarray(mirrored), tint)
    canvas.painter.image.paste(Image.fromarray(surface.clip(0, 255).astype(np.uint8)), (0, top))
    _ripples(canvas, top, below)
    if canvas.detail == 2:
        _glitter(canvas, top, below)


def _swayed(canvas: Canvas, mirrored: npt.NDArray[np.uint8], tint: Floats) -> Floats:
    """The mirrored sky with each row shifted sideways: calm water, cheaper than ripples."""
    below, width = mirrored.shape[:2]
    rows = np.arange(below, dtype=np.float32)
    phase = canvas.scene.generator("sway").uniform(0, 2 * np.pi)
    shift = canvas.unit * (0.001 + 0.01 * rows / below) * np.sin(rows * 0.7 + phase)
    columns = np.arange(width, dtype=np.int32)[None, :]
    source_x = np.clip(columns + shift.astype(np.int32)[:, None], 0, width - 1)
    reflection = np.take_along_axis(mirrored, source_x[..., None], axis=1).astype(np.float32)
    reflection -= tint
    reflection *= np.float32(0.6)
    reflection += tint
    surface: Floats = reflection
    return surface


def _rippled(canvas: Canvas, mirrored: npt.NDArray[np.uint8], tint: Floats) -> Floats:
    """The mirrored sky broken by waves that grow toward the viewer, fading with distance."""
    below, width = mirrored.shape[:2]
    waves = canvas.scene.generator("waves")
    frequencies = waves.uniform(0.004, 0.02, 3) * 1024 / canvas.unit
    phases = waves.uniform(0, 2 * np.pi, 3)
    rows = np.arange(below, dtype=np.float32)
    columns = np.arange(width, dtype=np.float32)
    nearness = rows / below
    amplitude = (canvas.unit * (0.002 + 0.014 * nearness))[:, None]
    # sin(fx + gy + p) = sin(fx + p)cos(gy) + cos(fx + p)sin(gy): outer products of a row
    # and a column cost far less than a sine per pixel.
    dx = amplitude * (
        _wave(columns, rows, frequencies[0], 0.9, phases[0])
        + 0.5 * _wave(columns, rows, frequencies[1], -0.45, phases[1])
    )
    dy = amplitude * 0.35 * _wave(columns, rows, frequencies[2], 0.3, phases[2])
    source_x = np.clip(columns[None, :] + dx, 0, width - 1).astype(np.int32)
    source_y = np.clip(rows[:, None] + dy, 0, below - 1).astype(np.int32)
    reflection = mirrored[source_y, source_x].astype(np.float32)
    weight = (0.82 - 0.42 * nearness)[:, None, None]
    reflection -= tint
    reflection *= weight
    reflection += tint
    surface: Floats = reflection
    return surface


def _light_path(canvas: Canvas) -> None:
    """The coarse tier's reflection of the sun or moon: a few flat bars on the water."""
    if not (canvas.scene.has(Subject.SUN) or canvas.scene.has(Subject.MOON)):
        return
    below = canvas.height - canvas.horizon
    cx = canvas.scene.light_x * canvas.width
    bars = Layer()
    for index in range(7):
        y = canvas.horizon + (0.04 + index * 0.13) * below
        half = canvas.unit * (0.07 - index * 0.006) * (1 + index * 0.25)
        bars.rectangle(cx - half, y, cx + half, y + max(2.0, canvas.height * 0.006))
    canvas.painter.paint(bars, mix(canvas.palette.sun, canvas.palette.water, 0.3))


def _ripples(canvas: Canvas, top: int, below: int) -> None:
    """Thin light streaks on the water, longer and thicker toward the viewer."""
    rng = canvas.scene.generator("ripples")
    total = 240
    ys = top + below * rng.uniform(0, 1, total) ** 1.7
    xs = rng.uniform(-0.05, 1.05, total) * canvas.width
    lengths = rng.uniform(0.02, 0.12, total) * canvas.width
    shown = 60 if canvas.detail == 1 else total
    ripples = Layer()
    for x, y, length in zip(xs[:shown], ys[:shown], lengths[:shown], strict=True):
        nearness = (y - top) / below
        thickness = max(1.0, canvas.height * 0.0016 * (0.4 + nearness * 1.6))
        ripples.rectangle(x, y, x + length * (0.3 + nearness), y + thickness)
    colour = mix(canvas.palette.sky[2], (255, 255, 255), 0.35)
    canvas.painter.paint(ripples, colour, blur=canvas.unit * 0.0008, opacity=0.28)


def _glitter(canvas: Canvas, top: int, below: int) -> None:
    """Sparkles on the water under the sun or moon, spreading toward the viewer."""
    if not (canvas.scene.has(Subject.SUN) or canvas.scene.has(Subject.MOON)):
        return
    rng = canvas.scene.generator("glitter")
    total = 500
    depth = rng.uniform(0, 1, total) ** 1.4
    spread = canvas.width * (0.015 + 0.09 * depth)
    xs = canvas.scene.light_x * canvas.width + rng.normal(0, 1, total) * spread
    ys = top + depth * below
    sizes = rng.uniform(0.5, 1.0, total) * canvas.unit * 0.006 * (0.4 + depth)
    sparkles = Layer()
    for x, y, size in zip(xs, ys, sizes, strict=True):
        sparkles.ellipse(float(x), float(y), float(size) * 2.2, float(size) * 0.45)
    canvas.painter.paint(
        sparkles,
        mix(canvas.palette.sun, (255, 255, 255), 0.4),
        blur=canvas.unit * 0.0008,
        opacity=0.8,
    )


def grid(canvas: Canvas) -> None:
    """The retro neon floor: a perspective grid running to the horizon, glowing above coarse."""
    top = canvas.horizon
    floor = Layer()
    floor.rectangle(0, top, canvas.width, canvas.height)
    dark = canvas.palette.land[3]
    if canvas.detail == 0:
        canvas.painter.paint(floor, dark)
    else:
        canvas.painter.paint(
            floor,
            vertical_gradient(top, canvas.height, mix(dark, canvas.palette.sky[2], 0.35), dark),
        )
    lines = Layer()
    thin = max(1.0, canvas.unit * 0.0018)
    for index in range(1, 15):
        t = (index / 14) ** 2.2
        y = top + t * (canvas.height - top)
        lines.line([(0.0, y), (float(canvas.width), y)], thin * (0.6 + 2.2 * t))
    centre = canvas.width / 2
    for index in range(-24, 25):
        lines.line(
            [
                (centre + index * canvas.width * 0.006, top),
                (centre + index * canvas.width * 0.09, float(canvas.height)),
            ],
            thin * 1.4,
        )
    colour = canvas.palette.sun
    if canvas.detail:
        canvas.painter.paint(lines, colour, blur=canvas.unit * 0.006, opacity=0.7)
    canvas.painter.paint(lines, mix(colour, (255, 255, 255), 0.35 * canvas.detail))


def _wave(columns: Floats, rows: Floats, across: float, down: float, phase: float) -> Floats:
    """sin(across * column + down * row + phase) for every pixel, as two outer products."""
    horizontal = (columns * np.float32(across) + np.float32(phase)).astype(np.float32)
    vertical = (rows * np.float32(down)).astype(np.float32)
    wave: Floats = (
        np.outer(np.cos(vertical), np.sin(horizontal))
        + np.outer(np.sin(vertical), np.cos(horizontal))
    ).astype(np.float32)
    return wave
