"""The sky of a scene: its gradient and glow, stars, planet, sun, moon and clouds."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops

from services.generator.painting.canvas import Canvas
from services.generator.painting.painter import Layer, radial_gradient, vertical_gradient
from services.generator.painting.scene import Lighting, Subject, mix

__all__ = ["clouds", "moon", "planet", "sky", "stars", "sun"]


def sky(canvas: Canvas) -> None:
    """The sky from zenith to horizon: flat bands when coarse, else smooth with a glow."""
    width, height = canvas.width, canvas.height
    if canvas.detail == 0:
        bands = 12
        step = canvas.horizon / bands
        for index in range(bands + 1):
            band = Layer()
            top = index * step
            bottom = height if index == bands else (index + 1) * step
            band.rectangle(0, top, width, bottom)
            canvas.painter.paint(band, canvas.sky_colour(top + step / 2))
        return
    # A smooth sky barely changes from pixel to pixel: paint it small, then enlarge.
    shrink = 4
    small_w, small_h = max(width // shrink, 2), max(height // shrink, 2)
    ys = (np.arange(small_h, dtype=np.float32) + 0.5) * height / small_h
    column = np.asarray([canvas.sky_colour(float(y)) for y in ys], np.float32)
    pixels = np.broadcast_to(column[:, None, :], (small_h, small_w, 3)).copy()
    if canvas.scene.has(Subject.SUN) or canvas.scene.has(Subject.MOON):
        xs = (np.arange(small_w, dtype=np.float32) + 0.5) * width / small_w
        dx = (xs[None, :] - canvas.scene.light_x * width) / canvas.unit
        dy = (ys[:, None] - canvas.scene.light_y * height) / canvas.unit
        distance = np.sqrt(dx * dx + dy * dy)
        reach = 0.55 if canvas.scene.lighting in (Lighting.GOLDEN, Lighting.NEON) else 0.35
        strength = 0.55 if canvas.scene.has(Subject.SUN) else 0.25
        glow = (strength * np.exp(-((distance / reach) ** 2)))[..., None]
        glow_colour = np.asarray(canvas.palette.sun, np.float32)
        pixels += (glow_colour - pixels) * glow
    image = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    canvas.painter.image.paste(image.resize((width, height), Image.Resampling.BICUBIC))


def stars(canvas: Canvas) -> None:
    """A starfield, denser with each tier; the fine tier makes the brightest twinkle."""
    rng = canvas.scene.generator("stars")
    total = 700
    xs = rng.uniform(0, canvas.width, total)
    ys = (rng.uniform(0, 1, total) ** 1.6) * canvas.horizon * 0.95
    sizes = rng.uniform(0.4, 1.0, total) ** 3
    shown = {0: 90, 1: 300, 2: total}[canvas.detail]
    scale = canvas.unit / 1024
    layer = Layer()
    bright = Layer()
    for x, y, size in zip(xs[:shown], ys[:shown], sizes[:shown], strict=True):
        radius = max(0.6, (0.6 + 2.2 * size) * scale)
        if canvas.detail == 0:
            radius = max(1.0, round(radius))
        layer.ellipse(float(x), float(y), radius, radius)
        if size > 0.55:
            bright.ellipse(float(x), float(y), radius * 4, radius * 4)
    if canvas.detail == 2:
        canvas.painter.paint(bright, canvas.palette.light, blur=3 * scale, opacity=0.35)
    canvas.painter.paint(layer, mix(canvas.palette.sun, (255, 255, 255), 0.5))


def planet(canvas: Canvas) -> None:
    """A ringed planet across the sky from the sun or moon, shaded and banded on higher tiers."""
    light_x = canvas.scene.light_x
    across = 0.5 + (0.5 - light_x) * 0.9
    if abs(across - light_x) < 0.3:
        across = light_x + 0.32 if light_x < 0.5 else light_x - 0.32
    cx = across * canvas.width
    cy = canvas.horizon * 0.5
    radius = 0.15 * canvas.unit * canvas.scene.subject_scale
    base = mix(canvas.palette.land[0], canvas.palette.light, 0.35)
    shade = mix(canvas.palette.sky[0], base, 0.25)
    ring_colour = mix(canvas.palette.light, (255, 255, 255), 0.4)
    back, front = _ring(canvas, cx, cy, radius)
    canvas.painter.paint(back, ring_colour, opacity=0.8)
    body = Layer()
    body.ellipse(cx, cy, radius, radius)
    if canvas.detail == 0:
        canvas.painter.paint(body, base)
        lit = Layer()
        lit.ellipse(cx - radius * 0.25, cy - radius * 0.25, radius * 0.7, radius * 0.7)
        canvas.painter.paint(lit, mix(base, (255, 255, 255), 0.25))
    else:
        toward = -1.0 if light_x < 0.5 else 1.0
        canvas.painter.paint(
            body,
            radial_gradient(
                cx + toward * radius * 0.5,
                cy - radius * 0.5,
                radius * 2.0,
                mix(base, (255, 255, 255), 0.3),
                shade,
            ),
        )
    if canvas.detail == 2:
        bands = Layer()
        rng = canvas.scene.rng("planet")
        for _ in range(6):
            offset = rng.uniform(-0.8, 0.8) * radius
            half = math.sqrt(max(radius * radius - offset * offset, 0.0))
            bands.rectangle(
                cx - half, cy + offset, cx + half, cy + offset + rng.uniform(0.03, 0.09) * radius
            )
        canvas.painter.paint(bands, shade, blur=radius * 0.02, opacity=0.3)
    canvas.painter.paint(front, ring_colour)


def _ring(canvas: Canvas, cx: float, cy: float, radius: float) -> tuple[Layer, Layer]:
    """The planet's ring, split into the half behind the planet and the half in front."""
    tilt = -0.28
    halves = (Layer(), Layer())
    steps = 48 if canvas.detail == 0 else 160
    for half, start in enumerate((math.pi, 0.0)):
        points = []
        for step in range(steps + 1):
            angle = start + step / steps * math.pi
            x = 1.9 * radius * math.cos(angle)
            y = 0.42 * radius * math.sin(angle)
            points.append(
                (
                    cx + x * math.cos(tilt) - y * math.sin(tilt),
                    cy + x * math.sin(tilt) + y * math.cos(tilt),
                )
            )
        halves[half].line(points, max(1.5, radius * 0.05))
    return halves


def sun(canvas: Canvas) -> None:
    """The sun: a disc in a halo, striped under neon, with beams on the fine tier."""
    scene = canvas.scene
    cx, cy = scene.light_x * canvas.width, scene.light_y * canvas.height
    golden = scene.lighting in (Lighting.GOLDEN, Lighting.NEON)
    radius = canvas.unit * (0.11 if golden else 0.06) * scene.subject_scale
    disc = Layer()
    disc.ellipse(cx, cy, radius, radius)
    colour = canvas.palette.sun
    if scene.lighting is Lighting.FOG:
        colour = mix(colour, canvas.sky_colour(cy), 0.45)
    if canvas.detail == 0:
        halo = Layer()
        halo.ellipse(cx, cy, radius * 1.5, radius * 1.5)
        canvas.painter.paint(halo, mix(canvas.sky_colour(cy), colour, 0.4))
        canvas.painter.paint(disc, colour)
    else:
        halo = Layer()
        halo.ellipse(cx, cy, radius * 1.25, radius * 1.25)
        canvas.painter.paint(halo, colour, blur=radius * 0.5, opacity=0.6)
        if scene.lighting is Lighting.NEON:
            canvas.painter.paint(
                disc, vertical_gradient(cy - radius, cy + radius, (255, 236, 120), colour)
            )
        else:
            canvas.painter.paint(disc, colour)
    if scene.lighting is Lighting.NEON:
        _stripe(canvas, cx, cy, radius)
    if canvas.detail == 2 and scene.lighting in (Lighting.GOLDEN, Lighting.FOG):
        _sunbeams(canvas, cx, cy, radius)


def _stripe(canvas: Canvas, cx: float, cy: float, radius: float) -> None:
    """Cuts the retro sun's lower half into bands of sky."""
    for index in range(6):
        top = cy + radius * (0.08 + index * 0.16)
        thickness = radius * (0.025 + index * 0.018)
        cut = Layer()
        cut.rectangle(cx - radius * 1.1, top, cx + radius * 1.1, top + thickness)
        canvas.painter.paint(cut, canvas.sky_colour(top))


def _sunbeams(canvas: Canvas, cx: float, cy: float, radius: float) -> None:
    """Faint rays fanning down from a low or veiled sun."""
    rng = canvas.scene.rng("sunbeams")
    beams = Layer()
    reach = canvas.unit * 1.4
    for _ in range(9):
        angle = rng.uniform(0.15, math.pi - 0.15)
        spread = rng.uniform(0.02, 0.05)
        beams.polygon(
            [
                (cx, cy),
                (cx + reach * math.cos(angle - spread), cy + reach * math.sin(angle - spread)),
                (cx + reach * math.cos(angle + spread), cy + reach * math.sin(angle + spread)),
            ]
        )
    canvas.painter.paint(beams, canvas.palette.sun, blur=radius * 0.35, opacity=0.12)


def moon(canvas: Canvas) -> None:
    """A crescent moon, glowing on higher tiers and cratered on the fine one."""
    scene = canvas.scene
    cx, cy = scene.light_x * canvas.width, scene.light_y * canvas.height
    radius = canvas.unit * 0.055 * scene.subject_scale
    colour = canvas.palette.sun
    if canvas.detail:
        glow = Layer()
        glow.ellipse(cx, cy, radius * 1.6, radius * 1.6)
        canvas.painter.paint(glow, colour, blur=radius * 0.9, opacity=0.3)
    disc = Layer()
    disc.ellipse(cx, cy, radius, radius)
    shadow = Layer()
    shadow.ellipse(cx + radius * 0.45, cy - radius * 0.2, radius * 0.92, radius * 0.92)
    box = canvas.painter.region(disc)
    if box is None:
        return
    # The crescent is the disc less the shadow, so the glowing sky shows through the rest.
    crescent = ImageChops.subtract(
        canvas.painter.coverage(disc, box), canvas.painter.coverage(shadow, box)
    )
    canvas.painter.paste(crescent, box, colour)
    if canvas.detail == 2:
        rng = scene.rng("craters")
        craters = Layer()
        for _ in range(7):
            angle = rng.uniform(0, 2 * math.pi)
            distance = rng.uniform(0, 0.7) * radius
            size = rng.uniform(0.08, 0.22) * radius
            craters.ellipse(
                cx + distance * math.cos(angle), cy + distance * math.sin(angle), size, size
            )
        spots = ImageChops.multiply(canvas.painter.coverage(craters, box, opacity=0.5), crescent)
        canvas.painter.paste(spots, box, mix(colour, canvas.palette.sky[1], 0.4))


def clouds(canvas: Canvas) -> None:
    """Clouds of overlapping puffs: flat, soft, or soft with a shaded underside and lit top."""
    rng = canvas.scene.rng("clouds")
    storm = canvas.scene.lighting is Lighting.STORM
    shown = {0: 3, 1: 5, 2: 7}[canvas.detail] + (4 if storm else 0)
    for index in range(11):
        cx = rng.uniform(-0.1, 1.1) * canvas.width
        cy = rng.uniform(0.08, 0.75) * canvas.horizon * (0.7 if storm else 1.0)
        span = rng.uniform(0.12, 0.3) * canvas.width
        puffs = [(rng.uniform(-0.5, 0.5), rng.uniform(0.35, 0.7)) for _ in range(6)]
        if index >= shown:
            continue
        base = canvas.sky_colour(cy)
        if storm:
            colour = mix(base, canvas.palette.ink, 0.35)
        elif canvas.scene.lighting is Lighting.NIGHT:
            colour = mix(base, (120, 130, 160), 0.35)
        elif canvas.scene.lighting is Lighting.GOLDEN:
            colour = mix(base, canvas.palette.sun, 0.5)
        else:
            colour = mix(base, (255, 255, 255), 0.75)
        body = Layer()
        under = Layer()
        for offset, size in puffs:
            x = cx + offset * span
            radius = size * span * 0.32
            body.ellipse(x, cy - radius * 0.35, radius, radius * 0.6)
            under.ellipse(x, cy + radius * 0.05, radius * 1.05, radius * 0.35)
        body.ellipse(cx, cy, span * 0.55, span * 0.08)
        if canvas.detail == 0:
            canvas.painter.paint(body, colour)
            continue
        soft = span * (0.025 if canvas.detail == 2 else 0.04)
        canvas.painter.paint(body, colour, blur=soft, opacity=0.9)
        if canvas.detail == 2:
            canvas.painter.paint(
                under, mix(colour, canvas.palette.ink, 0.25), blur=soft * 2, opacity=0.45
            )
            light = Layer()
            for offset, size in puffs[:3]:
                radius = size * span * 0.22
                light.ellipse(cx + offset * span, cy - radius * 0.7, radius, radius * 0.5)
            canvas.painter.paint(
                light, mix(colour, canvas.palette.sun, 0.6), blur=soft * 1.5, opacity=0.5
            )
