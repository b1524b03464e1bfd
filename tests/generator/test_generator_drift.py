"""Tests of style drift between a parent image and a handed-over child, with real Pillow images."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw, ImageFilter

from services.generator.drift import style_drift, style_drift_of


def scene(
    seed: int,
    size: tuple[int, int] = (512, 512),
    background: tuple[int, int, int] = (30, 60, 120),
) -> Image.Image:
    """A composition of coloured discs, different for every seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        radius = rng.randrange(min(size) // 20, min(size) // 6)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return image


def encode(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def promote_like(parent: Image.Image) -> Image.Image:
    """What a faithful handover looks like: larger, softer, a little brighter."""
    child = parent.resize((parent.width * 2, parent.height * 2), Image.Resampling.LANCZOS)
    child = child.filter(ImageFilter.GaussianBlur(2))
    return Image.eval(child, lambda value: min(255, int(value * 1.05)))


def test_identical_images_do_not_drift() -> None:
    parent = encode(scene(1))
    assert style_drift(parent, parent) == 0.0


def test_the_same_image_in_another_encoding_barely_drifts() -> None:
    image = scene(1)
    assert style_drift(encode(image), encode(image, "JPEG")) < 0.02


def test_a_near_copy_drifts_less_than_a_different_image() -> None:
    parent = scene(1)
    near = style_drift(encode(parent), encode(promote_like(parent)))
    unrelated = style_drift(encode(parent), encode(scene(2)))
    repainted = style_drift(encode(parent), encode(scene(2, background=(220, 190, 40))))
    assert 0.0 < near < 0.1
    assert unrelated > 0.25
    assert unrelated > 3 * near
    assert repainted > unrelated


def test_drift_is_symmetric_and_bounded() -> None:
    first, second = encode(scene(3)), encode(scene(4, background=(250, 250, 250)))
    assert style_drift(first, second) == style_drift(second, first)
    black = encode(Image.new("RGB", (64, 64), (0, 0, 0)))
    white = encode(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert 0.0 <= style_drift(black, white) <= 1.0
    assert style_drift(black, white) > style_drift(first, second) * 0.5


def test_images_of_different_sizes_and_modes_compare() -> None:
    parent = scene(5, size=(600, 400))
    wide = promote_like(parent).resize((1200, 600))
    opaque = parent.convert("RGBA")
    assert style_drift(encode(parent), encode(wide)) < 0.15
    assert style_drift(encode(parent), encode(opaque)) == 0.0


def test_transparency_is_seen_against_white() -> None:
    transparent = encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))
    white = encode(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert style_drift(transparent, white) == 0.0


def test_losing_colour_is_drift_in_colour_only() -> None:
    parent = scene(5)
    grey = style_drift(encode(parent), encode(parent.convert("L")))
    # The grey levels are the parent's, so only the colour term (weight 0.4) can contribute.
    assert style_drift(encode(parent), encode(promote_like(parent))) < grey <= 0.4


@pytest.mark.parametrize("bad", [b"", b"not an image", encode(scene(6))[:100]])
def test_unreadable_images_are_refused(bad: bytes) -> None:
    good = encode(scene(6))
    with pytest.raises(ValueError, match="child is not a readable image"):
        style_drift(good, bad)
    with pytest.raises(ValueError, match="parent is not a readable image"):
        style_drift(bad, good)


def test_decoded_images_drift_as_their_encodings_do() -> None:
    parent, child = scene(1), promote_like(scene(1))
    assert style_drift_of(parent, child) == style_drift(encode(parent), encode(child))
