"""Pixel sizes of every size class and aspect ratio the generator offers."""

from __future__ import annotations

import pytest

from services.generator.resolution import AspectRatio, ImageSize, Resolution, pixel_size

GEMINI_1K = {
    AspectRatio.R1_1: (1024, 1024),
    AspectRatio.R2_3: (848, 1264),
    AspectRatio.R3_2: (1264, 848),
    AspectRatio.R3_4: (896, 1200),
    AspectRatio.R4_3: (1200, 896),
    AspectRatio.R9_16: (768, 1376),
    AspectRatio.R16_9: (1376, 768),
    AspectRatio.R21_9: (1584, 672),
}


@pytest.mark.parametrize("aspect_ratio", list(AspectRatio))
def test_1k_matches_the_gemini_table(aspect_ratio: AspectRatio) -> None:
    assert pixel_size(ImageSize.K1, aspect_ratio) == GEMINI_1K[aspect_ratio]


@pytest.mark.parametrize("aspect_ratio", list(AspectRatio))
@pytest.mark.parametrize(("size", "scale"), [(ImageSize.K2, 2), (ImageSize.K4, 4)])
def test_larger_sizes_scale_each_side(
    aspect_ratio: AspectRatio, size: ImageSize, scale: int
) -> None:
    width, height = GEMINI_1K[aspect_ratio]
    assert pixel_size(size, aspect_ratio) == (width * scale, height * scale)


def test_every_aspect_ratio_is_close_to_its_name() -> None:
    for aspect_ratio in AspectRatio:
        across, down = (int(part) for part in aspect_ratio.value.split(":"))
        width, height = pixel_size(ImageSize.K1, aspect_ratio)
        assert width / height == pytest.approx(across / down, rel=0.03)


def test_values_parse_from_their_names() -> None:
    assert ImageSize("4K") is ImageSize.K4
    assert AspectRatio("21:9") is AspectRatio.R21_9
    with pytest.raises(ValueError):
        ImageSize("8K")


def test_resolution_describes_itself() -> None:
    resolution = Resolution(ImageSize.K2, AspectRatio.R16_9)
    assert (resolution.width, resolution.height) == (2752, 1536)
    assert str(resolution) == "2K 16:9 (2752x1536)"
    assert Resolution() == Resolution(ImageSize.K1, AspectRatio.R1_1)
