"""The scene being painted: picture, quality, and the lie of the land, water and horizon."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.generator.painting.painter import Painter
from services.generator.painting.scene import RGB, Scene, Subject, mix
from services.generator.tiers import Quality

__all__ = ["Canvas", "Floats", "Ridge", "terrain_profile", "value_noise"]

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Ridge:
    """One line of land: its depth (0 farthest, 1 nearest), baseline, height and shape.

    Its highest point rises `amplitude` pixels above the baseline, whatever the noise drew.
    """

    depth: float
    baseline: float
    amplitude: float
    terrain: Subject
    lattice: Floats
    peak: float

    @classmethod
    def of(
        cls, depth: float, baseline: float, amplitude: float, terrain: Subject, lattice: Floats
    ) -> Ridge:
        """A ridge whose noise is scaled so its highest point reaches exactly `amplitude`."""
        # Measured on a fixed grid, not the drawing's samples, so every tier scales alike.
        peak = float(terrain_profile(terrain, lattice, _PEAK_GRID).max())
        return cls(depth, baseline, amplitude, terrain, lattice, max(peak, 0.05))

    def heights(self, xs: Floats) -> Floats:
        """How high the land rises at each x (fractions of the width), from 0 to 1."""
        scaled: Floats = terrain_profile(self.terrain, self.lattice, xs) / np.float32(self.peak)
        return scaled

    def tops(self, xs: Floats) -> Floats:
        """The y of the land's top edge at each x (fractions of the width), in pixels."""
        return (self.baseline - self.amplitude * self.heights(xs)).astype(np.float32)


_PEAK_GRID = np.linspace(0.0, 1.0, 1025, dtype=np.float32)


def value_noise(lattice: Floats, xs: Floats, frequency: float) -> Floats:
    """Smooth noise through random values at whole multiples of 1/frequency."""
    position = xs * frequency
    cell = np.floor(position).astype(np.int64)
    blend = (1 - np.cos((position - cell) * np.pi)) / 2
    first = lattice[cell % lattice.size]
    second = lattice[(cell + 1) % lattice.size]
    noise: Floats = (first + (second - first) * blend).astype(np.float32)
    return noise


def terrain_profile(terrain: Subject, lattice: Floats, xs: Floats) -> Floats:
    """The height of `terrain` along xs, from fixed noise, so any sampling gives the same land."""
    octaves = lattice.reshape(8, -1)
    if terrain is Subject.MOUNTAINS:
        base = 0.55 + 0.45 * value_noise(octaves[0], xs, 1.3)
        ridged = sum(
            (0.5**k) * (1 - np.abs(value_noise(octaves[k], xs, 2.5 * 2**k))) ** 2
            for k in range(1, 6)
        )
        heights = base * (0.35 + 0.75 * ridged)
    elif terrain is Subject.HILLS:
        heights = (
            0.55
            + 0.35 * value_noise(octaves[0], xs, 1.6)
            + 0.12 * value_noise(octaves[1], xs, 4.0)
            + 0.02 * value_noise(octaves[2], xs, 16.0)
        )
    else:
        phase = xs * 3.2 + 0.35 * value_noise(octaves[0], xs, 2.0)
        fraction = phase - np.floor(phase)
        # Dunes rise slowly on the windward side and drop steeply on the lee.
        shape = np.where(fraction < 0.78, (fraction / 0.78) ** 1.6, ((1 - fraction) / 0.22) ** 0.8)
        heights = 0.35 + 0.5 * shape + 0.15 * value_noise(octaves[1], xs, 1.1)
    clipped: Floats = np.clip(heights, 0.0, 1.2).astype(np.float32)
    return clipped


class Canvas:
    """A scene being painted: the picture, its quality, and where the land and water lie.

    `detail` is the quality as a number (0 coarse, 1 standard, 2 fine) for the painting code to
    compare against. Positions are in output pixels.
    """

    def __init__(self, scene: Scene, painter: Painter, quality: Quality) -> None:
        self.scene = scene
        self.painter = painter
        self.quality = quality
        self.palette = scene.palette
        self.width = painter.width
        self.height = painter.height
        self.unit = min(self.width, self.height)
        self.horizon = scene.horizon * self.height
        self.water = scene.has(Subject.WATER)
        self.detail = {Quality.LOW: 0, Quality.MEDIUM: 1, Quality.HIGH: 2}[quality]
        self.ridges = self._lay_ridges()
        self.shore = self._lay_shore()

    def _lay_ridges(self) -> list[Ridge]:
        depths = {
            Quality.LOW: (0.0, 1.0),
            Quality.MEDIUM: (0.0, 0.5, 1.0),
            Quality.HIGH: (0.0, 0.34, 0.67, 1.0),
        }[self.quality]
        terrain = self.scene.terrain
        tallest = {Subject.MOUNTAINS: 0.36, Subject.HILLS: 0.13, Subject.DUNES: 0.11}[terrain]
        below = self.height - self.horizon
        ridges = []
        for depth in depths:
            lattice = self.scene.generator(f"ridge-{depth:.2f}").uniform(-1, 1, 8 * 64)
            amplitude = self.height * tallest * (1 - 0.55 * depth)
            if self.water:
                baseline = self.horizon + 1
                amplitude *= 0.8
            else:
                baseline = self.horizon + depth * 0.45 * below
                if depth == 1.0 and (self.scene.has(Subject.CITY) or self.scene.has(Subject.GRID)):
                    amplitude *= 0.4
            ridges.append(Ridge.of(depth, baseline, amplitude, terrain, lattice.astype(np.float32)))
        return ridges

    def _lay_shore(self) -> Ridge | None:
        standing = {Subject.FIGURE, Subject.HOUSE, Subject.TREES, Subject.PALMS, Subject.TOWER}
        if not self.water or not standing & self.scene.subjects:
            return None
        lattice = self.scene.generator("shore").uniform(-1, 1, 8 * 64).astype(np.float32)
        below = self.height - self.horizon
        return Ridge.of(
            1.0,
            self.horizon + 0.82 * below,
            0.1 * below + 0.02 * self.height,
            Subject.HILLS,
            lattice,
        )

    def ground(self) -> Ridge:
        """The land things stand on: the shore by water, the nearest ridge elsewhere."""
        return self.shore or self.ridges[-1]

    def ground_at(self, x: float) -> float:
        """The y of the ground at pixel column x."""
        return float(self.ground().tops(np.asarray([x / self.width], np.float32))[0])

    def samples(self) -> Floats:
        """Where along the width land outlines are sampled: coarse facets at low quality."""
        count = {
            Quality.LOW: max(24, self.width // 28),
            Quality.MEDIUM: self.width // 5,
            Quality.HIGH: self.width // 2,
        }[self.quality]
        return np.linspace(0.0, 1.0, count + 1, dtype=np.float32)

    def land_colour(self, depth: float) -> RGB:
        """The land colour at `depth`, between the palette's farthest and nearest."""
        position = depth * 3
        index = min(int(position), 2)
        return mix(self.palette.land[index], self.palette.land[index + 1], position - index)

    def sky_colour(self, y: float) -> RGB:
        """The sky's colour at pixel row y, before glows."""
        zenith, middle, horizon = self.palette.sky
        t = y / max(self.horizon, 1.0)
        if t < 0.55:
            return mix(zenith, middle, t / 0.55)
        return mix(middle, horizon, min(1.0, (t - 0.55) / 0.45))
