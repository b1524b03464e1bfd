"""A whole scene painted back to front: sky, land, water, what stands in it, then the weather."""

from __future__ import annotations

from collections.abc import Callable

from services.generator.painting import land, props, sky, weather
from services.generator.painting.canvas import Canvas
from services.generator.painting.painter import Painter
from services.generator.painting.scene import Lighting, Scene, Subject
from services.generator.tiers import Quality

__all__ = ["paint_landscape"]


def paint_landscape(
    scene: Scene, painter: Painter, quality: Quality, report: Callable[[float, str], None]
) -> None:
    """Paints `scene` onto the painter's picture; `report` hears of each stage as it starts."""
    canvas = Canvas(scene, painter, quality)
    report(0.05, "sky")
    sky.sky(canvas)
    if scene.has(Subject.STARS):
        sky.stars(canvas)
    if scene.has(Subject.PLANET):
        sky.planet(canvas)
    if scene.has(Subject.SUN):
        sky.sun(canvas)
    if scene.has(Subject.MOON):
        sky.moon(canvas)
    if scene.has(Subject.CLOUDS):
        sky.clouds(canvas)

    report(0.25, "land")
    # Without water, a city stands between the far ridges and the near ones; by water, every
    # ridge is on the far shore, behind it.
    for ridge in canvas.ridges:
        if canvas.water or ridge.depth < 0.5:
            land.ridge(canvas, ridge)
    if scene.has(Subject.CITY):
        props.city(canvas)
    if not canvas.water:
        for ridge in canvas.ridges:
            if ridge.depth >= 0.5 and not (scene.has(Subject.GRID) and ridge.depth == 1.0):
                land.ridge(canvas, ridge)
    if canvas.water:
        report(0.4, "water")
        land.water(canvas)
        if scene.has(Subject.BOAT):
            props.boat(canvas)
    elif scene.has(Subject.GRID):
        land.grid(canvas)
    if canvas.shore is not None:
        land.ridge(canvas, canvas.shore)

    report(0.55, "subjects")
    if scene.has(Subject.TREES) or scene.has(Subject.PALMS):
        props.trees(canvas)
    if scene.has(Subject.TOWER):
        props.tower(canvas)
    if scene.has(Subject.HOUSE):
        props.house(canvas)
    if scene.has(Subject.FIGURE):
        props.figure(canvas)
    if scene.has(Subject.BIRDS):
        props.birds(canvas)

    report(0.65, "weather")
    if scene.lighting is Lighting.FOG:
        weather.fog(canvas)
    if scene.has(Subject.LIGHTNING):
        weather.lightning(canvas)
    if scene.has(Subject.RAIN):
        weather.rain(canvas)
    if scene.has(Subject.SNOW):
        weather.snow(canvas)
