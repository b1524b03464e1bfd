"""The shared resolution vocabulary: pixel sizes of every size class and aspect ratio, and the one
mapping to and from the proto enums of tiergen.common.v1."""

from __future__ import annotations

import pytest
from tiergen.common.v1 import common_pb2

from services.runtime.resolution import AspectRatio, ImageSize, Resolution, pixel_size
from services.runtime.resolution_proto import (
    aspect_ratio_from_proto,
    aspect_ratio_to_proto,
    size_from_proto,
    size_to_proto,
)

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


def test_every_size_and_ratio_maps_to_its_proto_value_and_back() -> None:
    for size in ImageSize:
        value = size_to_proto(size)
        assert common_pb2.ImageSize.Name(value) == f"IMAGE_SIZE_{size.value}"
        assert size_from_proto(value) is size
    for ratio in AspectRatio:
        value = aspect_ratio_to_proto(ratio)
        assert common_pb2.AspectRatio.Name(value) == f"ASPECT_RATIO_{ratio.value.replace(':', '_')}"
        assert aspect_ratio_from_proto(value) is ratio


def test_every_proto_value_but_unspecified_has_a_domain_value() -> None:
    sizes = [v for v in common_pb2.ImageSize.values() if v != common_pb2.IMAGE_SIZE_UNSPECIFIED]
    ratios = [
        v for v in common_pb2.AspectRatio.values() if v != common_pb2.ASPECT_RATIO_UNSPECIFIED
    ]
    assert all(size_from_proto(value) is not None for value in sizes)
    assert all(aspect_ratio_from_proto(value) is not None for value in ratios)


def test_unspecified_and_unknown_values_read_as_none() -> None:
    assert size_from_proto(common_pb2.IMAGE_SIZE_UNSPECIFIED) is None
    assert aspect_ratio_from_proto(common_pb2.ASPECT_RATIO_UNSPECIFIED) is None
    assert size_from_proto(99) is None
    assert aspect_ratio_from_proto(99) is None
