"""Style drift: how far an image rendered from a reference moved from it, from 0 (same) to 1.

Measured where the render happens, in the generator: the built-in renderer still holds both
images decoded, so drift costs a resize instead of decoding a parent and a child again in the
router (about 220 ms of CPU for two 2K PNGs); for a provider's image the generator decodes both.

What it measures. Both images are decoded (alpha composited onto white), converted to RGB and
reduced to a common 64x64 grid by area averaging, so size, aspect ratio and fine detail, which a
promote is meant to change, do not count. Two distances are then taken:

- structure: on grey levels (ITU-R BT.601 luma, 0..1), 1 minus the mean SSIM over 8x8 windows
  (stride 4, constants C1 = 0.01^2, C2 = 0.03^2), halved so that it runs 0..1. It sees layout,
  shapes and light-dark pattern.
- colour: the total variation distance (half the L1 distance) between the two images' joint RGB
  histograms with 4 bins per channel (64 bins). It sees palette shifts regardless of layout.

Drift is 0.6 * structure + 0.4 * colour, rounded to 4 decimals, and symmetric in its two
arguments. The same image scores 0. As a scale: a copy enlarged 2x, blurred and brightened 5%
scores about 0.02; two unrelated compositions on the same background about 0.35, and more
when their palettes differ too. Decoding a 4K image takes a fraction of a
second of CPU: call it off the event loop (for example with `asyncio.to_thread`).
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

__all__ = ["COLOUR_WEIGHT", "GRID", "STRUCTURE_WEIGHT", "style_drift", "style_drift_of"]

#: Side in pixels of the common grid both images are reduced to.
GRID = 64
#: Weight of the structural distance in the drift.
STRUCTURE_WEIGHT = 0.6
#: Weight of the colour distance in the drift.
COLOUR_WEIGHT = 0.4

_WINDOW = 8
_STRIDE = 4
_C1 = 0.01**2
_C2 = 0.03**2
_BINS = 4
_LUMA = np.array([0.299, 0.587, 0.114])

_Pixels = npt.NDArray[np.float64]


def style_drift(parent: bytes, child: bytes) -> float:
    """The drift of `child` from `parent`, both encoded images; ValueError if one is unreadable."""
    return _drift(_grid(parent, "parent"), _grid(child, "child"))


def style_drift_of(parent: Image.Image, child: Image.Image) -> float:
    """The drift of `child` from `parent`, both decoded images."""
    return _drift(_reduced(parent), _reduced(child))


def _drift(first: _Pixels, second: _Pixels) -> float:
    structure = (1.0 - _mean_ssim(first @ _LUMA, second @ _LUMA)) / 2.0
    colour = 0.5 * float(np.abs(_histogram(first) - _histogram(second)).sum())
    drift = STRUCTURE_WEIGHT * structure + COLOUR_WEIGHT * colour
    return round(min(1.0, max(0.0, drift)), 4)


def _grid(encoded: bytes, name: str) -> _Pixels:
    """The image as GRID x GRID x 3 floats in 0..1."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.draft("RGB", (GRID * 4, GRID * 4))
            return _reduced(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"the {name} is not a readable image: {exc}") from exc


def _reduced(image: Image.Image) -> _Pixels:
    """A decoded image as GRID x GRID x 3 floats in 0..1, alpha composited onto white."""
    rgba = image.convert("RGBA")
    flattened = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flattened.alpha_composite(rgba)
    small = flattened.convert("RGB").resize((GRID, GRID), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float64) / 255.0


def _windows(channel: _Pixels) -> _Pixels:
    view = np.lib.stride_tricks.sliding_window_view(channel, (_WINDOW, _WINDOW))
    return view[::_STRIDE, ::_STRIDE].reshape(-1, _WINDOW * _WINDOW)


def _mean_ssim(first: _Pixels, second: _Pixels) -> float:
    x, y = _windows(first), _windows(second)
    mean_x, mean_y = x.mean(axis=1), y.mean(axis=1)
    var_x, var_y = x.var(axis=1), y.var(axis=1)
    covariance = ((x - mean_x[:, None]) * (y - mean_y[:, None])).mean(axis=1)
    ssim = ((2 * mean_x * mean_y + _C1) * (2 * covariance + _C2)) / (
        (mean_x**2 + mean_y**2 + _C1) * (var_x + var_y + _C2)
    )
    return float(ssim.mean())


def _histogram(pixels: _Pixels) -> _Pixels:
    bins = np.minimum((pixels * _BINS).astype(np.int64), _BINS - 1)
    index = (bins[..., 0] * _BINS + bins[..., 1]) * _BINS + bins[..., 2]
    counts: _Pixels = np.bincount(index.ravel(), minlength=_BINS**3).astype(np.float64)
    total = float(counts.sum())
    return counts / total
