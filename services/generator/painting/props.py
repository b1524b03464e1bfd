"""What stands in a scene: city, trees, lighthouse, house, figure, boat and birds."""

from __future__ import annotations

import math
import random

import numpy as np

from services.generator.painting.canvas import Canvas, Ridge
from services.generator.painting.painter import Layer
from services.generator.painting.scene import Lighting, Subject, mix

__all__ = ["birds", "boat", "city", "figure", "house", "tower", "trees"]


def city(canvas: Canvas) -> None:
    """A skyline at the horizon, taller near the focus, its windows lit by the light of day."""
    lit_share = {
        Lighting.NIGHT: 0.55,
        Lighting.NEON: 0.6,
        Lighting.STORM: 0.35,
        Lighting.GOLDEN: 0.25,
        Lighting.FOG: 0.3,
    }.get(canvas.scene.lighting, 0.0)
    base = canvas.horizon + (2 if canvas.water else 0.08 * (canvas.height - canvas.horizon))
    rows = ((0.35, 0.8), (0.7, 1.0)) if canvas.detail else ((0.7, 1.0),)
    for depth, size in rows:
        rng = canvas.scene.rng(f"city-{depth}")
        colour = mix(canvas.land_colour(depth), canvas.palette.ink, 0.25 * depth * canvas.detail)
        buildings = Layer()
        lit = Layer()
        dark = Layer()
        x = -rng.uniform(0, 0.04) * canvas.width
        while x < canvas.width:
            # Every building draws the same numbers whatever the quality, so a tier that
            # skips a detail still puts the buildings in the same places.
            width = rng.uniform(0.03, 0.075) * canvas.width * size
            near_focus = 1 - min(1.0, abs(x / canvas.width - canvas.scene.focus) * 2.2)
            tall = rng.uniform(0.06, 0.18) + 0.16 * near_focus * rng.random()
            crown, mast, gap = rng.random(), rng.random(), rng.uniform(0.0, 0.012)
            windows = random.Random(rng.getrandbits(64))
            height = tall * canvas.height * size * canvas.scene.subject_scale
            top = base - height
            buildings.rectangle(x, top, x + width, base)
            if crown < 0.3:
                buildings.rectangle(x + width * 0.3, top - height * 0.12, x + width * 0.7, top)
            if canvas.detail == 2 and mast < 0.35:
                buildings.line(
                    [(x + width * 0.5, top), (x + width * 0.5, top - height * 0.2)],
                    max(1.0, width * 0.03),
                )
            _windows(canvas, windows, lit, dark, (x, top, x + width, base), lit_share, size)
            x += width + gap * canvas.width
        canvas.painter.paint(buildings, colour)
        if canvas.detail and canvas.scene.lighting is Lighting.NEON:
            canvas.painter.paint(
                buildings, canvas.palette.light, blur=canvas.unit * 0.004, opacity=0.12
            )
        if canvas.detail == 2 and lit_share:
            canvas.painter.paint(lit, canvas.palette.light, blur=canvas.unit * 0.004, opacity=0.7)
        canvas.painter.paint(dark, mix(colour, canvas.palette.sky[2], 0.22))
        canvas.painter.paint(lit, mix(canvas.palette.light, (255, 255, 255), 0.15 * depth))


def _windows(
    canvas: Canvas,
    rng: random.Random,
    lit: Layer,
    dark: Layer,
    box: tuple[float, float, float, float],
    lit_share: float,
    size: float,
) -> None:
    """A grid of window panes on one building, each lit with chance `lit_share`."""
    left, top, right, bottom = box
    cell = canvas.unit * (0.016 if canvas.detail else 0.026) * size
    columns = max(1, int((right - left) * 0.8 // cell))
    rows = int((bottom - top) * 0.9 // cell)
    margin = (right - left - columns * cell) / 2
    pane = cell * 0.55
    for row in range(1, rows):
        for column in range(columns):
            x = left + margin + column * cell + (cell - pane) / 2
            y = top + row * cell
            if rng.random() < lit_share:
                lit.rectangle(x, y, x + pane, y + pane * 1.2)
            elif canvas.detail:
                dark.rectangle(x, y, x + pane, y + pane * 1.2)


def boat(canvas: Canvas) -> None:
    """A sailboat near the path of light on the water, mirrored on higher tiers."""
    rng = canvas.scene.rng("boat")
    below = canvas.height - canvas.horizon
    side = rng.choice((-1.0, 1.0))
    x = min(max(canvas.scene.light_x + side * rng.uniform(0.08, 0.16), 0.1), 0.9) * canvas.width
    nearness = rng.uniform(0.15, 0.3)
    y = canvas.horizon + below * nearness
    size = canvas.unit * 0.1 * canvas.scene.subject_scale * (0.6 + nearness)
    dark = canvas.scene.lighting in (Lighting.NIGHT, Lighting.STORM, Lighting.NEON)
    sail_colour = mix(canvas.palette.sun, (255, 255, 255), 0.5)
    if dark:
        sail_colour = mix(sail_colour, canvas.palette.ink, 0.55)

    def shapes(flip: float) -> tuple[Layer, Layer]:
        def at(dx: float, dy: float) -> tuple[float, float]:
            return x + dx * size, y + flip * dy * size

        hull = Layer()
        hull.polygon([at(-0.6, -0.12), at(0.6, -0.12), at(0.42, 0.05), at(-0.45, 0.05)])
        hull.line([at(0.0, -0.12), at(0.0, -1.15)], max(1.0, size * 0.025))
        sails = Layer()
        sails.polygon([at(0.04, -1.1), at(0.04, -0.2), at(0.52, -0.2)])
        sails.polygon([at(-0.04, -0.95), at(-0.04, -0.2), at(-0.42, -0.2)])
        return hull, sails

    if canvas.detail:
        hull, sails = shapes(-1.0)
        canvas.painter.paint(sails, sail_colour, blur=size * 0.04, opacity=0.25)
        canvas.painter.paint(hull, canvas.palette.ink, blur=size * 0.04, opacity=0.3)
    hull, sails = shapes(1.0)
    canvas.painter.paint(sails, sail_colour)
    canvas.painter.paint(hull, canvas.palette.ink)


def trees(canvas: Canvas) -> None:
    """Pines, round trees or palms along the ground, with a hazier row behind above coarse."""
    if canvas.scene.has(Subject.PALMS):
        style = "palm"
    elif canvas.palette.name in ("autumn", "meadow", "pastel", "tropical"):
        style = "round"
    else:
        style = "pine"
    clear = {Subject.FIGURE, Subject.HOUSE, Subject.TOWER} & canvas.scene.subjects
    ground = canvas.ground()
    rows: list[tuple[Ridge, float, int]] = []
    if canvas.detail and not canvas.water:
        back = canvas.ridges[len(canvas.ridges) // 2] if len(canvas.ridges) > 2 else None
        if back is not None and back is not ground:
            rows.append((back, 0.55, {1: 18, 2: 30}[canvas.detail]))
    rows.append((ground, 1.0, {0: 9, 1: 14, 2: 20}[canvas.detail]))
    # A forest is trees first: twice as many, and taller.
    dense = 2 if canvas.palette.name == "forest" else 1
    for ridge, size, shown in rows:
        rng = canvas.scene.rng(f"trees-{size}")
        plants = [
            (rng.random(), rng.uniform(0.55, 1.0) * (1 + 0.3 * (dense - 1)), rng.random())
            for _ in range(60)
        ]
        shown *= dense
        colour = mix(
            canvas.land_colour(min(1.0, ridge.depth + 0.15)),
            canvas.palette.ink,
            0.35 if size == 1.0 else 0.15,
        )
        if canvas.water:
            colour = mix(canvas.palette.land[2], canvas.palette.ink, 0.6)
        body = Layer()
        lit = Layer()
        for position, scale, variant in plants[:shown]:
            if clear and size == 1.0 and abs(position - canvas.scene.focus) < 0.09:
                continue
            x = position * canvas.width
            y = float(ridge.tops(np.asarray([position], np.float32))[0])
            height = canvas.unit * 0.15 * size * scale * canvas.scene.subject_scale
            y += height * 0.06
            if style == "pine":
                _pine(canvas, body, lit, x, y, height)
            elif style == "round":
                _round_tree(canvas, body, lit, x, y, height, variant)
            else:
                _palm(canvas, body, x, y, height * 1.5, variant)
        canvas.painter.paint(body, colour)
        if canvas.detail == 2 and size == 1.0:
            light = canvas.palette.sun if style != "round" else canvas.palette.light
            canvas.painter.paint(
                lit, mix(colour, light, 0.3), blur=canvas.unit * 0.001, opacity=0.8
            )


def _pine(canvas: Canvas, body: Layer, lit: Layer, x: float, y: float, height: float) -> None:
    half = height * 0.21
    body.rectangle(x - height * 0.025, y - height * 0.15, x + height * 0.025, y)
    if canvas.detail == 0:
        body.polygon(
            [(x, y - height), (x + half, y - height * 0.12), (x - half, y - height * 0.12)]
        )
        return
    toward = 1.0 if canvas.scene.light_x * canvas.width > x else -1.0
    for tier in range(3):
        base = y - height * (0.1 + tier * 0.25)
        top = y - height * (0.52 + tier * 0.24)
        spread = half * (1 - tier * 0.24)
        body.polygon([(x, top), (x + spread, base), (x - spread, base)])
        lit.polygon([(x, top), (x + toward * spread, base), (x + toward * spread * 0.15, base)])


def _round_tree(
    canvas: Canvas, body: Layer, lit: Layer, x: float, y: float, height: float, variant: float
) -> None:
    body.rectangle(x - height * 0.03, y - height * 0.5, x + height * 0.03, y)
    radius = height * (0.26 + 0.08 * variant)
    body.ellipse(x, y - height * 0.68, radius, radius * 0.95)
    if canvas.detail:
        body.ellipse(x - radius * 0.55, y - height * 0.55, radius * 0.7, radius * 0.6)
        body.ellipse(x + radius * 0.55, y - height * 0.57, radius * 0.65, radius * 0.6)
        toward = 1.0 if canvas.scene.light_x * canvas.width > x else -1.0
        lit.ellipse(x + toward * radius * 0.35, y - height * 0.76, radius * 0.5, radius * 0.45)


def _palm(canvas: Canvas, body: Layer, x: float, y: float, height: float, variant: float) -> None:
    lean = (variant - 0.5) * 0.5 * height
    steps = 6 if canvas.detail == 0 else 16
    trunk = [(x + lean * (t / steps) ** 2, y - height * t / steps) for t in range(steps + 1)]
    body.line(trunk, max(1.0, height * 0.035))
    crown_x, crown_y = trunk[-1]
    for leaf in range(7):
        angle = math.pi * (1.05 + leaf / 6 * 0.9) + (variant - 0.5) * 0.4
        length = height * (0.38 + 0.06 * (leaf % 2))
        upper, lower = [], []
        for step in range(steps + 1):
            s = step / steps
            px = crown_x + math.cos(angle) * length * s
            py = crown_y + math.sin(angle) * length * s + 0.55 * length * s * s
            half = length * 0.07 * math.sin(math.pi * s)
            upper.append((px, py - half))
            lower.append((px, py + half))
        body.polygon(upper + lower[::-1])


def _beside_focus(canvas: Canvas, offset: float) -> float:
    """A column `offset` of the width from the focus, toward the middle of the picture."""
    toward_middle = 1.0 if canvas.scene.focus < 0.5 else -1.0
    return (canvas.scene.focus + toward_middle * offset) * canvas.width


def tower(canvas: Canvas) -> None:
    """A striped lighthouse, its lamp lit and beaming when the light is low."""
    crowded = canvas.scene.has(Subject.FIGURE) or canvas.scene.has(Subject.HOUSE)
    x = _beside_focus(canvas, 0.2) if crowded else canvas.scene.focus * canvas.width
    y = canvas.ground_at(x)
    height = canvas.unit * 0.34 * canvas.scene.subject_scale
    bottom_half, top_half = height * 0.08, height * 0.05
    y += height * 0.02
    if canvas.water:
        # By the sea a lighthouse stands on rocks, so it does not seem to rise out of the water.
        rocks = Layer()
        rng = canvas.scene.rng("rocks")
        for _ in range(5):
            rx = x + rng.uniform(-1.6, 1.6) * bottom_half
            size = rng.uniform(0.5, 1.0) * bottom_half * 1.3
            rocks.ellipse(rx, y - size * 0.15, size, size * 0.55)
        canvas.painter.paint(rocks, mix(canvas.palette.ink, canvas.palette.land[2], 0.3))
        y -= bottom_half * 0.35

    def band(start: float, end: float) -> list[tuple[float, float]]:
        def half(t: float) -> float:
            return bottom_half + (top_half - bottom_half) * t

        return [
            (x - half(start), y - height * start),
            (x + half(start), y - height * start),
            (x + half(end), y - height * end),
            (x - half(end), y - height * end),
        ]

    body = Layer()
    body.polygon(band(0.0, 0.82))
    stripes = Layer()
    for start in (0.12, 0.38, 0.62):
        stripes.polygon(band(start, start + 0.12))
    cap = Layer()
    cap.rectangle(x - top_half * 1.5, y - height * 0.84, x + top_half * 1.5, y - height * 0.82)
    cap.polygon(
        [
            (x - top_half * 1.1, y - height * 0.95),
            (x, y - height * 1.03),
            (x + top_half * 1.1, y - height * 0.95),
        ]
    )
    lamp = Layer()
    lamp.rectangle(x - top_half * 0.8, y - height * 0.95, x + top_half * 0.8, y - height * 0.84)
    dark = canvas.scene.lighting in (Lighting.NIGHT, Lighting.FOG, Lighting.STORM, Lighting.NEON)
    wall = mix((236, 232, 222), canvas.palette.ink, 0.55 if dark else 0.1)
    stripe = mix((190, 48, 44), canvas.palette.ink, 0.5 if dark else 0.15)
    if canvas.palette.name == "noir":
        stripe = mix(canvas.palette.ink, wall, 0.3)
    if canvas.detail and dark:
        beams = Layer()
        lamp_y = y - height * 0.895
        reach = canvas.width * 0.6
        for direction in (-1.0, 1.0):
            beams.polygon(
                [
                    (x, lamp_y),
                    (x + direction * reach, lamp_y - height * 0.12),
                    (x + direction * reach, lamp_y + height * 0.1),
                ]
            )
        canvas.painter.paint(beams, canvas.palette.light, blur=canvas.unit * 0.01, opacity=0.22)
    canvas.painter.paint(body, wall)
    canvas.painter.paint(stripes, stripe)
    canvas.painter.paint(cap, canvas.palette.ink)
    glass = canvas.palette.light if dark else mix(canvas.palette.sky[1], wall, 0.3)
    canvas.painter.paint(lamp, glass)
    if canvas.detail == 2:
        shade = Layer()
        toward = 1.0 if canvas.scene.light_x * canvas.width > x else -1.0
        shade.polygon(
            [
                (x, y),
                (x - toward * bottom_half, y),
                (x - toward * top_half, y - height * 0.82),
                (x, y - height * 0.82),
            ]
        )
        canvas.painter.paint(shade, canvas.palette.ink, opacity=0.25)


def house(canvas: Canvas) -> None:
    """A cabin at the focus, windows glowing and chimney smoking when the light is low."""
    x = canvas.scene.focus * canvas.width
    y = canvas.ground_at(x)
    size = canvas.unit * 0.15 * canvas.scene.subject_scale
    y += size * 0.05
    wall_height = size * 0.58
    lamps_on = canvas.scene.lighting in (
        Lighting.NIGHT,
        Lighting.FOG,
        Lighting.STORM,
        Lighting.NEON,
        Lighting.GOLDEN,
    )
    walls = Layer()
    walls.rectangle(x - size / 2, y - wall_height, x + size / 2, y)
    roof = Layer()
    roof.polygon(
        [
            (x - size * 0.62, y - wall_height),
            (x - size * 0.05, y - size * 1.02),
            (x + size * 0.05, y - size * 1.02),
            (x + size * 0.62, y - wall_height),
        ]
    )
    roof.rectangle(x + size * 0.22, y - size * 1.02, x + size * 0.33, y - size * 0.78)
    openings = Layer()
    openings.rectangle(x - size * 0.08, y - size * 0.34, x + size * 0.08, y)
    panes = Layer()
    for offset in (-0.3, 0.18):
        panes.rectangle(
            x + size * offset, y - size * 0.44, x + size * (offset + 0.12), y - size * 0.3
        )
    wall_colour = mix(canvas.palette.ink, canvas.land_colour(0.2), 0.5)
    roof_colour = mix(canvas.palette.ink, (150, 52, 40), 0.35)
    pane_colour = canvas.palette.light if lamps_on else mix(canvas.palette.sky[1], wall_colour, 0.4)
    if canvas.detail == 2 and lamps_on:
        smoke = Layer()
        for puff in range(5):
            smoke.ellipse(
                x + size * (0.28 + puff * 0.09),
                y - size * (1.12 + puff * 0.2),
                size * (0.06 + puff * 0.03),
                size * (0.05 + puff * 0.025),
            )
        canvas.painter.paint(
            smoke, mix(canvas.palette.sky[1], (220, 220, 220), 0.4), blur=size * 0.05, opacity=0.35
        )
    canvas.painter.paint(walls, wall_colour)
    canvas.painter.paint(roof, roof_colour)
    canvas.painter.paint(openings, canvas.palette.ink)
    if canvas.detail == 2 and lamps_on:
        canvas.painter.paint(panes, canvas.palette.light, blur=size * 0.08, opacity=0.6)
    canvas.painter.paint(panes, pane_colour)
    if canvas.detail == 2:
        lit = Layer()
        toward = 1.0 if canvas.scene.light_x * canvas.width > x else -1.0
        lit.rectangle(
            min(x, x + toward * size / 2), y - wall_height, max(x, x + toward * size / 2), y
        )
        canvas.painter.paint(lit, canvas.palette.sun, opacity=0.12)


def figure(canvas: Canvas) -> None:
    """A standing figure at the focus, with a shadow and, on the fine tier, a rim of light."""
    if canvas.scene.has(Subject.HOUSE):
        x = _beside_focus(canvas, 0.1)
    else:
        x = canvas.scene.focus * canvas.width
    y = canvas.ground_at(x)
    height = canvas.unit * 0.17 * canvas.scene.subject_scale
    y += height * 0.03
    toward = 1.0 if canvas.scene.light_x * canvas.width > x else -1.0

    def silhouette(dx: float) -> Layer:
        def at(px: float, py: float) -> tuple[float, float]:
            return x + dx + px * height, y - py * height

        body = Layer()
        body.ellipse(x + dx, y - 0.9 * height, 0.062 * height, 0.072 * height)
        body.rectangle(
            x + dx - 0.025 * height, y - 0.84 * height, x + dx + 0.025 * height, y - 0.78 * height
        )
        body.ellipse(x + dx, y - 0.76 * height, 0.12 * height, 0.045 * height)
        body.polygon([at(-0.12, 0.77), at(0.12, 0.77), at(0.14, 0.36), at(-0.14, 0.36)])
        body.polygon([at(-0.11, 0.4), at(-0.01, 0.4), at(-0.03, 0.0), at(-0.1, 0.0)])
        body.polygon([at(0.01, 0.4), at(0.11, 0.4), at(0.1, 0.0), at(0.03, 0.0)])
        body.line([at(-0.12, 0.74), at(-0.17, 0.42)], 0.05 * height)
        body.line([at(0.12, 0.74), at(0.17, 0.42)], 0.05 * height)
        return body

    if canvas.detail and canvas.scene.lighting in (Lighting.DAY, Lighting.GOLDEN):
        shadow = Layer()
        shadow.ellipse(x - toward * height * 0.45, y, height * 0.5, height * 0.04)
        canvas.painter.paint(shadow, canvas.palette.ink, blur=height * 0.02, opacity=0.35)
    if canvas.detail == 2:
        canvas.painter.paint(silhouette(toward * height * 0.018), canvas.palette.sun)
    canvas.painter.paint(silhouette(0.0), canvas.palette.ink)


def birds(canvas: Canvas) -> None:
    """A loose flock of gull shapes across the sky from the focus."""
    rng = canvas.scene.rng("birds")
    flock = [
        (
            rng.uniform(-0.15, 0.15),
            rng.uniform(0.2, 0.55),
            rng.uniform(0.6, 1.0),
            rng.uniform(-0.2, 0.2),
        )
        for _ in range(9)
    ]
    centre = 1 - canvas.scene.focus
    shown = {0: 4, 1: 6, 2: 9}[canvas.detail]
    layer = Layer()
    for dx, dy, scale, tilt in flock[:shown]:
        x = (centre + dx) * canvas.width
        y = dy * canvas.horizon
        size = canvas.unit * 0.022 * scale
        wing = 0.45 + tilt
        layer.line(
            [
                (x - size, y - size * wing),
                (x - size * 0.45, y - size * 0.5),
                (x, y),
                (x + size * 0.45, y - size * 0.5),
                (x + size, y - size * wing),
            ],
            max(1.0, size * 0.14),
        )
    canvas.painter.paint(layer, canvas.palette.ink)
