"""The one mapping between the resolution vocabulary and `tiergen.common.v1`'s enums, for the
gRPC edges of the router and the generator (domain modules use `services.runtime.resolution`,
which imports no generated stubs).

Reading from a message answers None for an unspecified or unknown value, and leaves the default
and the error to the caller: what "unspecified" means (the tier's smallest size, square) and which
field path to name differ from one request to another.
"""

from __future__ import annotations

from tiergen.common.v1 import common_pb2

from services.runtime.resolution import AspectRatio, ImageSize

__all__ = [
    "aspect_ratio_from_proto",
    "aspect_ratio_to_proto",
    "size_from_proto",
    "size_to_proto",
]

_SIZES: dict[ImageSize, common_pb2.ImageSize] = {
    ImageSize.K1: common_pb2.IMAGE_SIZE_1K,
    ImageSize.K2: common_pb2.IMAGE_SIZE_2K,
    ImageSize.K4: common_pb2.IMAGE_SIZE_4K,
}
_RATIOS: dict[AspectRatio, common_pb2.AspectRatio] = {
    AspectRatio.R1_1: common_pb2.ASPECT_RATIO_1_1,
    AspectRatio.R3_2: common_pb2.ASPECT_RATIO_3_2,
    AspectRatio.R2_3: common_pb2.ASPECT_RATIO_2_3,
    AspectRatio.R4_3: common_pb2.ASPECT_RATIO_4_3,
    AspectRatio.R3_4: common_pb2.ASPECT_RATIO_3_4,
    AspectRatio.R16_9: common_pb2.ASPECT_RATIO_16_9,
    AspectRatio.R9_16: common_pb2.ASPECT_RATIO_9_16,
    AspectRatio.R21_9: common_pb2.ASPECT_RATIO_21_9,
}
_SIZES_BACK: dict[int, ImageSize] = {int(value): size for size, value in _SIZES.items()}
_RATIOS_BACK: dict[int, AspectRatio] = {int(value): ratio for ratio, value in _RATIOS.items()}


def size_to_proto(size: ImageSize) -> common_pb2.ImageSize:
    return _SIZES[size]


def size_from_proto(value: int) -> ImageSize | None:
    """None for IMAGE_SIZE_UNSPECIFIED and for a value this build does not know."""
    return _SIZES_BACK.get(value)


def aspect_ratio_to_proto(ratio: AspectRatio) -> common_pb2.AspectRatio:
    return _RATIOS[ratio]


def aspect_ratio_from_proto(value: int) -> AspectRatio | None:
    """None for ASPECT_RATIO_UNSPECIFIED and for a value this build does not know."""
    return _RATIOS_BACK.get(value)
