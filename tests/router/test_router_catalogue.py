"""Tests of the router's tier catalogue: ranks, sizes, pixel sizes and size classes."""

from __future__ import annotations

import pytest

from services.router.routing.catalogue import (
    DEFAULT_CATALOGUE,
    AspectRatio,
    ImageSize,
    pixel_size,
    size_class,
)
from services.runtime.errors import InvalidArgument

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
def test_pixel_sizes_follow_the_gemini_table(aspect_ratio: AspectRatio) -> None:
    width, height = GEMINI_1K[aspect_ratio]
    assert pixel_size(ImageSize.K1, aspect_ratio) == (width, height)
    assert pixel_size(ImageSize.K2, aspect_ratio) == (2 * width, 2 * height)
    assert pixel_size(ImageSize.K4, aspect_ratio) == (4 * width, 4 * height)


def test_tiers_in_rank_order_with_their_sizes() -> None:
    assert DEFAULT_CATALOGUE.names == ("nano", "standard", "pro")
    sizes = {tier.name: tier.sizes for tier in DEFAULT_CATALOGUE}
    assert sizes == {
        "nano": (ImageSize.K1,),
        "standard": (ImageSize.K1, ImageSize.K2),
        "pro": (ImageSize.K1, ImageSize.K2, ImageSize.K4),
    }
    for tier in DEFAULT_CATALOGUE:
        assert set(tier.expected_latency_seconds) == set(tier.sizes)
        assert tier.smallest_size is ImageSize.K1


def test_neighbours_by_rank() -> None:
    nano, standard, pro = DEFAULT_CATALOGUE.tiers
    assert DEFAULT_CATALOGUE.above(nano) == (standard, pro)
    assert DEFAULT_CATALOGUE.below(pro) == (standard, nano)
    assert DEFAULT_CATALOGUE.above(pro) == ()
    assert [DEFAULT_CATALOGUE.rank(tier) for tier in (nano, standard, pro)] == [0, 1, 2]


def test_largest_size_up_to_a_limit() -> None:
    nano, standard, pro = DEFAULT_CATALOGUE.tiers
    assert pro.largest_size_up_to(ImageSize.K2) is ImageSize.K2
    assert standard.largest_size_up_to(ImageSize.K4) is ImageSize.K2
    assert nano.largest_size_up_to(ImageSize.K2) is ImageSize.K1


def test_unknown_tier_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        DEFAULT_CATALOGUE.require("ultra", field="spec.tier")
    assert caught.value.reason == "UNKNOWN_TIER"
    assert [violation.field for violation in caught.value.violations] == ["spec.tier"]
    assert "nano, standard, pro" in caught.value.message
    assert DEFAULT_CATALOGUE.find("Pro") is None


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1024, 1024, ImageSize.K1),
        (1584, 672, ImageSize.K1),
        (1500, 1500, ImageSize.K2),
        (2048, 2048, ImageSize.K2),
        (3168, 1344, ImageSize.K2),
        (4096, 4096, ImageSize.K4),
        (6336, 2688, ImageSize.K4),
        (8192, 8192, None),
    ],
)
def test_size_class_is_the_smallest_class_holding_the_pixels(
    width: int, height: int, expected: ImageSize | None
) -> None:
    assert size_class(width, height) is expected
