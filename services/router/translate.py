"""Conversions between the router's domain enums and their protobuf values (edge code)."""

from __future__ import annotations

from tiergen.common.v1 import common_pb2

from services.router.routing.catalogue import AspectRatio, ImageSize, Stage

__all__ = [
    "aspect_ratio_from_proto",
    "aspect_ratio_to_proto",
    "size_from_proto",
    "size_to_proto",
    "stage_from_proto",
    "stage_to_proto",
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
_STAGES: dict[Stage, common_pb2.Stage] = {
    Stage.EXPLORE: common_pb2.STAGE_EXPLORE,
    Stage.VALIDATE: common_pb2.STAGE_VALIDATE,
    Stage.REFINE: common_pb2.STAGE_REFINE,
    Stage.ENHANCE: common_pb2.STAGE_ENHANCE,
}
_SIZES_BACK: dict[int, ImageSize] = {int(value): size for size, value in _SIZES.items()}
_RATIOS_BACK: dict[int, AspectRatio] = {int(value): ratio for ratio, value in _RATIOS.items()}
_STAGES_BACK: dict[int, Stage] = {int(value): stage for stage, value in _STAGES.items()}


def size_to_proto(size: ImageSize) -> common_pb2.ImageSize:
    return _SIZES[size]


def size_from_proto(value: int) -> ImageSize | None:
    """None for IMAGE_SIZE_UNSPECIFIED or an unknown value (the policy chooses or rejects)."""
    return _SIZES_BACK.get(value)


def aspect_ratio_to_proto(ratio: AspectRatio) -> common_pb2.AspectRatio:
    return _RATIOS[ratio]


def aspect_ratio_from_proto(value: int) -> AspectRatio | None:
    """Square for ASPECT_RATIO_UNSPECIFIED; None for a value this router does not know."""
    if value == common_pb2.ASPECT_RATIO_UNSPECIFIED:
        return AspectRatio.R1_1
    return _RATIOS_BACK.get(value)


def stage_to_proto(stage: Stage) -> common_pb2.Stage:
    return _STAGES[stage]


def stage_from_proto(value: int) -> Stage | None:
    """Explore for STAGE_UNSPECIFIED; None for a value this router does not know."""
    if value == common_pb2.STAGE_UNSPECIFIED:
        return Stage.EXPLORE
    return _STAGES_BACK.get(value)
