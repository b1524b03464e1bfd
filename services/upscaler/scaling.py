"""Tiled resampling: enlarges a source image tile by tile into the output raster.

Each output tile is resampled straight from the source with Pillow's `box` argument. Pillow
reads the source pixels the filter needs *around* the box (Lanczos: 3 source pixels per side),
so the overlap between neighbouring tiles lives in the source and every output pixel comes out
as a whole-image resize would compute it (up to float rounding of the box edges): no margins
to crop, no seams. Working memory is one tile, plus the output raster itself (which Pillow's
encoders need whole).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum

from PIL import Image

from services.upscaler.enhancement import Box, enhance_tile

__all__ = ["Checkpoint", "UpscaleMethod", "output_size", "upscale"]

#: Called before each tile with the fraction of tiles done; it may raise to stop the work
#: (for example `Cancelled` or `DeadlineExceeded`).
Checkpoint = Callable[[float], None]


class UpscaleMethod(StrEnum):
    """How an image is enlarged."""

    #: Lanczos (a = 3) resampling: sharp and faithful.
    LANCZOS = "lanczos"
    #: Bicubic resampling: softer.
    BICUBIC = "bicubic"
    #: Lanczos plus detail recovery (see `services.upscaler.enhancement`).
    ENHANCE = "enhance"


_FILTERS = {
    UpscaleMethod.LANCZOS: Image.Resampling.LANCZOS,
    UpscaleMethod.BICUBIC: Image.Resampling.BICUBIC,
    UpscaleMethod.ENHANCE: Image.Resampling.LANCZOS,
}


def output_size(width: int, height: int, factor_halves: int) -> tuple[int, int]:
    """Size of a `width` x `height` image enlarged by `factor_halves / 2`, halves rounded up."""
    return (width * factor_halves + 1) // 2, (height * factor_halves + 1) // 2


def upscale(
    source: Image.Image,
    size: tuple[int, int],
    method: UpscaleMethod,
    *,
    tile_size: int,
    checkpoint: Checkpoint | None = None,
) -> Image.Image:
    """Enlarge `source` (mode "L", "RGB" or "RGBA") to `size`, `tile_size` output pixels at a time.

    The result has the source's mode.
    """
    # Pillow premultiplies alpha around every resize of an "RGBA" image; doing it once here
    # instead of once per tile keeps the per-tile cost flat.
    working = source.convert("RGBa") if source.mode == "RGBA" else source
    resample = _FILTERS[method]
    output = Image.new(source.mode, size)
    tiles = list(_tiles(source.size, size, tile_size))
    for done, (position, extent, box) in enumerate(tiles):
        if checkpoint is not None:
            checkpoint(done / len(tiles))
        tile = working.resize(extent, resample, box=box)
        if method is UpscaleMethod.ENHANCE:
            tile = enhance_tile(tile, working, box)
        if tile.mode == "RGBa":
            tile = tile.convert("RGBA")
        output.paste(tile, position)
    return output


def _tiles(
    source_size: tuple[int, int], size: tuple[int, int], tile_size: int
) -> Iterator[tuple[tuple[int, int], tuple[int, int], Box]]:
    """Yield each tile's output position, output size and source box."""
    source_width, source_height = source_size
    width, height = size
    for top in range(0, height, tile_size):
        bottom = min(top + tile_size, height)
        for left in range(0, width, tile_size):
            right = min(left + tile_size, width)
            # Multiply before dividing: the last box then ends exactly on the source edge.
            box = (
                left * source_width / width,
                top * source_height / height,
                right * source_width / width,
                bottom * source_height / height,
            )
            yield (left, top), (right - left, bottom - top), box
