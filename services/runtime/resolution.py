"""What a render may ask for, in one vocabulary for the router and the generator: size classes,
aspect ratios, the exact pixel size of each pair, and the longest prompt.

Both services speak of the same images, so they share these values instead of each keeping a
copy that could drift; neither imports the other's code. Free of gRPC, so domain modules use it:
the mapping to `tiergen.common.v1`'s enums is `services.runtime.resolution_proto`, for the edges.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["MAX_PROMPT_CHARS", "AspectRatio", "ImageSize", "Resolution", "pixel_size"]

#: Longest prompt accepted, in characters, by the router and by every tier of the generator.
MAX_PROMPT_CHARS = 2000


class ImageSize(enum.StrEnum):
    """Nominal size class of an image; the exact pixel size also depends on the aspect ratio."""

    K1 = "1K"
    K2 = "2K"
    K4 = "4K"

    @property
    def scale(self) -> int:
        """How many times each side of the 1K size this class is."""
        return _SCALE[self]


class AspectRatio(enum.StrEnum):
    """Width to height ratio of an image."""

    R1_1 = "1:1"
    R3_2 = "3:2"
    R2_3 = "2:3"
    R4_3 = "4:3"
    R3_4 = "3:4"
    R16_9 = "16:9"
    R9_16 = "9:16"
    R21_9 = "21:9"


_SCALE = {ImageSize.K1: 1, ImageSize.K2: 2, ImageSize.K4: 4}

# The Gemini image API's 1K table, so a tier served by the built-in renderer and one served by
# Gemini give images of the same size. Both sides are multiples of 16, which codecs like.
_PIXELS_1K: dict[AspectRatio, tuple[int, int]] = {
    AspectRatio.R1_1: (1024, 1024),
    AspectRatio.R3_2: (1264, 848),
    AspectRatio.R2_3: (848, 1264),
    AspectRatio.R4_3: (1200, 896),
    AspectRatio.R3_4: (896, 1200),
    AspectRatio.R16_9: (1376, 768),
    AspectRatio.R9_16: (768, 1376),
    AspectRatio.R21_9: (1584, 672),
}


def pixel_size(size: ImageSize, aspect_ratio: AspectRatio) -> tuple[int, int]:
    """Width and height in pixels: the 1K size of the aspect ratio, times the size's scale."""
    width, height = _PIXELS_1K[aspect_ratio]
    return width * size.scale, height * size.scale


@dataclass(frozen=True)
class Resolution:
    """A requested output size: a size class and an aspect ratio."""

    size: ImageSize = ImageSize.K1
    aspect_ratio: AspectRatio = AspectRatio.R1_1

    @property
    def width(self) -> int:
        """Width in pixels."""
        return pixel_size(self.size, self.aspect_ratio)[0]

    @property
    def height(self) -> int:
        """Height in pixels."""
        return pixel_size(self.size, self.aspect_ratio)[1]

    def __str__(self) -> str:
        return f"{self.size} {self.aspect_ratio} ({self.width}x{self.height})"
