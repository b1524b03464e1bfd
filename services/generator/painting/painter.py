"""The built-in renderer's brush: layers of shapes, anti-aliased or not, put onto a picture."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from services.generator.painting.scene import RGB

__all__ = [
    "Box",
    "Fill",
    "Layer",
    "Painter",
    "Texture",
    "font",
    "radial_gradient",
    "vertical_gradient",
]

#: A pixel region: left, top, right, bottom (right and bottom exclusive).
Box = tuple[int, int, int, int]

#: A picture made on demand for the region a layer covers.
Texture = Callable[[Box], Image.Image]

#: What a layer is painted with: one colour, or a texture.
Fill = RGB | Texture

Point = tuple[float, float]


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at `size` pixels."""
    return ImageFont.load_default(size=max(size, 1))


@dataclass(frozen=True)
class _Polygon:
    points: tuple[Point, ...]


@dataclass(frozen=True)
class _Ellipse:
    centre: Point
    radii: Point


@dataclass(frozen=True)
class _Rectangle:
    corners: tuple[Point, Point]


@dataclass(frozen=True)
class _Line:
    points: tuple[Point, ...]
    width: float


@dataclass(frozen=True)
class _Text:
    anchor_point: Point
    text: str
    size: float
    stroke: float


_Shape = _Polygon | _Ellipse | _Rectangle | _Line | _Text


class Layer:
    """Shapes painted together with one fill; coordinates are in output pixels, as floats."""

    def __init__(self) -> None:
        self._shapes: list[_Shape] = []
        self._left = math.inf
        self._top = math.inf
        self._right = -math.inf
        self._bottom = -math.inf

    def __bool__(self) -> bool:
        return bool(self._shapes)

    def _cover(self, left: float, top: float, right: float, bottom: float) -> None:
        self._left = min(self._left, left)
        self._top = min(self._top, top)
        self._right = max(self._right, right)
        self._bottom = max(self._bottom, bottom)

    def polygon(self, points: Sequence[Point]) -> None:
        """A filled polygon through `points`."""
        if len(points) < 3:
            return
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        self._cover(min(xs), min(ys), max(xs), max(ys))
        self._shapes.append(_Polygon(tuple(points)))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> None:
        """A filled ellipse centred on (cx, cy) with radii rx and ry."""
        self._cover(cx - rx, cy - ry, cx + rx, cy + ry)
        self._shapes.append(_Ellipse((cx, cy), (rx, ry)))

    def rectangle(self, left: float, top: float, right: float, bottom: float) -> None:
        """A filled axis-aligned rectangle."""
        self._cover(left, top, right, bottom)
        self._shapes.append(_Rectangle(((left, top), (right, bottom))))

    def line(self, points: Sequence[Point], width: float) -> None:
        """A polyline `width` pixels wide."""
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        self._cover(min(xs) - width, min(ys) - width, max(xs) + width, max(ys) + width)
        self._shapes.append(_Line(tuple(points), width))

    def text(self, x: float, y: float, text: str, size: float, stroke: float = 0.0) -> None:
        """`text` centred horizontally on x with its top at y, `size` pixels high."""
        left, top, right, bottom = font(round(size)).getbbox(
            text, anchor="ma", stroke_width=round(stroke)
        )
        self._cover(x + left, y + top, x + right, y + bottom)
        self._shapes.append(_Text((x, y), text, size, stroke))

    def bounds(self) -> tuple[float, float, float, float]:
        """The region every shape lies in."""
        return self._left, self._top, self._right, self._bottom

    def draw(self, draw: ImageDraw.ImageDraw, scale: int, origin: Point, ink: int | RGB) -> None:
        """Draws every shape onto `draw`, shifted by -origin and then scaled by `scale`."""
        ox, oy = origin

        def at(point: Point) -> Point:
            return (point[0] - ox) * scale, (point[1] - oy) * scale

        for shape in self._shapes:
            if isinstance(shape, _Polygon):
                draw.polygon([at(p) for p in shape.points], fill=ink)
            elif isinstance(shape, _Ellipse):
                (cx, cy), (rx, ry) = shape.centre, shape.radii
                draw.ellipse([at((cx - rx, cy - ry)), at((cx + rx, cy + ry))], fill=ink)
            elif isinstance(shape, _Rectangle):
                draw.rectangle([at(shape.corners[0]), at(shape.corners[1])], fill=ink)
            elif isinstance(shape, _Line):
                draw.line(
                    [at(p) for p in shape.points],
                    fill=ink,
                    width=max(1, round(shape.width * scale)),
                    joint="curve",
                )
            else:
                stroke = round(shape.stroke * scale)
                draw.text(
                    at(shape.anchor_point),
                    shape.text,
                    fill=ink,
                    font=font(round(shape.size * scale)),
                    anchor="ma",
                    stroke_width=stroke,
                    stroke_fill=ink,
                )


class Painter:
    """Composites layers onto an RGB picture.

    With `supersample` above 1, each layer's coverage is drawn that many times larger and
    averaged down, which anti-aliases its edges; at 1 a plain layer is drawn straight onto the
    picture, the cheapest way Pillow has to put a shape on an image.
    """

    def __init__(self, image: Image.Image, supersample: int) -> None:
        self.image = image
        self.supersample = supersample

    @property
    def width(self) -> int:
        """Width of the picture in pixels."""
        return self.image.width

    @property
    def height(self) -> int:
        """Height of the picture in pixels."""
        return self.image.height

    def paint(self, layer: Layer, fill: Fill, *, blur: float = 0.0, opacity: float = 1.0) -> None:
        """Paints `layer` with `fill`, its edges softened by `blur` pixels, at `opacity`."""
        if not layer or opacity <= 0:
            return
        if self.supersample == 1 and not blur and opacity >= 1 and isinstance(fill, tuple):
            layer.draw(ImageDraw.Draw(self.image), 1, (0.0, 0.0), fill)
            return
        box = self.region(layer, blur)
        if box is None:
            return
        self.paste(self.coverage(layer, box, blur=blur, opacity=opacity), box, fill)

    def region(self, layer: Layer, blur: float = 0.0) -> Box | None:
        """The pixels `layer` may touch once blurred by `blur`; None if it misses the picture."""
        left, top, right, bottom = layer.bounds()
        margin = math.ceil(blur * 3) + 2
        box = (
            max(0, math.floor(left) - margin),
            max(0, math.floor(top) - margin),
            min(self.width, math.ceil(right) + margin),
            min(self.height, math.ceil(bottom) + margin),
        )
        if box[0] >= box[2] or box[1] >= box[3]:
            return None
        return box

    def coverage(
        self, layer: Layer, box: Box, *, blur: float = 0.0, opacity: float = 1.0
    ) -> Image.Image:
        """How much of each pixel of `box` the layer covers, as an "L" image of the box's size."""
        size = box[2] - box[0], box[3] - box[1]
        scale = self.supersample
        mask = Image.new("L", (size[0] * scale, size[1] * scale), 0)
        layer.draw(ImageDraw.Draw(mask), scale, (float(box[0]), float(box[1])), 255)
        if scale > 1:
            mask = mask.reduce(scale)
        if blur:
            mask = mask.filter(ImageFilter.GaussianBlur(blur))
        if opacity < 1:
            mask = mask.point([round(value * opacity) for value in range(256)])
        return mask

    def paste(self, mask: Image.Image, box: Box, fill: Fill) -> None:
        """Puts `fill` onto `box` of the picture where `mask` says, in proportion."""
        if isinstance(fill, tuple):
            self.image.paste(fill, box, mask)
        else:
            self.image.paste(fill(box), box[:2], mask)


def vertical_gradient(top: float, bottom: float, top_colour: RGB, bottom_colour: RGB) -> Texture:
    """A fill going from `top_colour` at y=top to `bottom_colour` at y=bottom (output pixels)."""

    def make(box: Box) -> Image.Image:
        ys = np.arange(box[1], box[3], dtype=np.float32)
        t = np.clip((ys - top) / max(bottom - top, 1.0), 0.0, 1.0)[:, None]
        column = (
            np.asarray(top_colour, np.float32) * (1 - t) + np.asarray(bottom_colour, np.float32) * t
        )
        pixels = np.broadcast_to(column[:, None, :], (box[3] - box[1], box[2] - box[0], 3))
        return Image.fromarray(np.ascontiguousarray(pixels.round().astype(np.uint8)))

    return make


def radial_gradient(cx: float, cy: float, radius: float, inner: RGB, outer: RGB) -> Texture:
    """A fill from `inner` at (cx, cy) to `outer` at `radius` pixels away and beyond."""

    def make(box: Box) -> Image.Image:
        xs = np.arange(box[0], box[2], dtype=np.float32)[None, :] - cx
        ys = np.arange(box[1], box[3], dtype=np.float32)[:, None] - cy
        t = np.clip(np.sqrt(xs * xs + ys * ys) / radius, 0, 1)[..., None]
        pixels = np.asarray(inner, np.float32) * (1 - t) + np.asarray(outer, np.float32) * t
        return Image.fromarray(pixels.round().astype(np.uint8))

    return make
