"""Renders one prompt on every tier, each at its largest size, side by side for the docs.

Run from the repository root: `python -m bench.render_gallery` rewrites
docs/images/tiers-side-by-side.png. The top row shows each whole picture, the bottom row the
same small region of each, enlarged, where the tiers' detail is easiest to compare.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from services.generator.painting.painter import font
from services.generator.renderer import RenderSpec, render
from services.generator.tiers import RenderRequest, Tier, load_catalogue, validate_request
from services.runtime.resolution import AspectRatio, Resolution

__all__ = ["main"]

DEFAULT_PROMPT = 'sunset over mountains and a lake, a sailboat and a lighthouse, "TIERGEN"'
DEFAULT_OUT = Path("docs/images/tiers-side-by-side.png")

_PANEL_WIDTH = 720
_GAP = 12
_LABEL_HEIGHT = 44
_BACKGROUND = (24, 24, 28)


def _render(tier: Tier, prompt: str, seed: int, aspect_ratio: AspectRatio) -> Image.Image:
    size = max(tier.sizes, key=lambda candidate: candidate.scale)
    request = RenderRequest(tier.name, prompt, seed, Resolution(size, aspect_ratio))
    started = time.perf_counter()
    result = render(RenderSpec.for_request(validate_request(load_catalogue(), request), request))
    print(
        f"{tier.name:>9} {size} {result.width}x{result.height}"
        f" {time.perf_counter() - started:.2f}s {len(result.image) / 1e6:.1f} MB"
    )
    return Image.open(io.BytesIO(result.image)).convert("RGB")


def _scaled(picture: Image.Image, width: int, height: int) -> Image.Image:
    # Enlarge with NEAREST so a coarse tier's pixels show as they are; shrink with LANCZOS.
    enlarging = width > picture.width
    method = Image.Resampling.NEAREST if enlarging else Image.Resampling.LANCZOS
    return picture.resize((width, height), method)


def side_by_side(
    pictures: Sequence[tuple[str, Image.Image]], detail: tuple[float, float, float, float]
) -> Image.Image:
    """Whole pictures above, the `detail` region (fractions of each picture) enlarged below."""
    first = pictures[0][1]
    panel_height = round(_PANEL_WIDTH * first.height / first.width)
    left, top, right, bottom = detail
    crop_aspect = (bottom - top) * first.height / ((right - left) * first.width)
    crop_height = round(_PANEL_WIDTH * crop_aspect)
    sheet = Image.new(
        "RGB",
        (
            len(pictures) * _PANEL_WIDTH + (len(pictures) + 1) * _GAP,
            _LABEL_HEIGHT + panel_height + crop_height + 3 * _GAP,
        ),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    for index, (label, picture) in enumerate(pictures):
        x = _GAP + index * (_PANEL_WIDTH + _GAP)
        draw.text(
            (x + _PANEL_WIDTH / 2, _LABEL_HEIGHT / 2 + 4),
            label,
            fill=(236, 236, 240),
            font=font(24),
            anchor="mm",
        )
        sheet.paste(_scaled(picture, _PANEL_WIDTH, panel_height), (x, _LABEL_HEIGHT))
        region = (
            round(left * picture.width),
            round(top * picture.height),
            round(right * picture.width),
            round(bottom * picture.height),
        )
        enlarged = _scaled(picture.crop(region), _PANEL_WIDTH, crop_height)
        sheet.paste(enlarged, (x, _LABEL_HEIGHT + panel_height + _GAP))
        frame = (
            x + left * _PANEL_WIDTH,
            _LABEL_HEIGHT + top * panel_height,
            x + right * _PANEL_WIDTH,
            _LABEL_HEIGHT + bottom * panel_height,
        )
        draw.rectangle(frame, outline=(255, 255, 255), width=2)
    return sheet


def main(argv: Sequence[str] | None = None) -> None:
    """Renders the gallery and writes it where --out says."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--aspect-ratio", type=AspectRatio, default=AspectRatio.R16_9)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--detail",
        type=float,
        nargs=4,
        default=(0.2, 0.38, 0.46, 0.8),
        metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
        help="region to enlarge, as fractions of the picture",
    )
    arguments = parser.parse_args(argv)
    catalogue = load_catalogue()
    pictures = [
        (
            f"{tier.display_name} · {max(tier.sizes, key=lambda size: size.scale)}",
            _render(tier, arguments.prompt, arguments.seed, arguments.aspect_ratio),
        )
        for tier in catalogue
    ]
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(pictures, tuple(arguments.detail)).save(arguments.out, optimize=True)
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
