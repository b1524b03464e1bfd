from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_EXPLORE: _ClassVar[Stage]
    STAGE_VALIDATE: _ClassVar[Stage]
    STAGE_REFINE: _ClassVar[Stage]
    STAGE_ENHANCE: _ClassVar[Stage]

class Urgency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    URGENCY_UNSPECIFIED: _ClassVar[Urgency]
    URGENCY_INTERACTIVE: _ClassVar[Urgency]
    URGENCY_BULK: _ClassVar[Urgency]

class ImageSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_SIZE_UNSPECIFIED: _ClassVar[ImageSize]
    IMAGE_SIZE_1K: _ClassVar[ImageSize]
    IMAGE_SIZE_2K: _ClassVar[ImageSize]
    IMAGE_SIZE_4K: _ClassVar[ImageSize]

class AspectRatio(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASPECT_RATIO_UNSPECIFIED: _ClassVar[AspectRatio]
    ASPECT_RATIO_1_1: _ClassVar[AspectRatio]
    ASPECT_RATIO_3_2: _ClassVar[AspectRatio]
    ASPECT_RATIO_2_3: _ClassVar[AspectRatio]
    ASPECT_RATIO_4_3: _ClassVar[AspectRatio]
    ASPECT_RATIO_3_4: _ClassVar[AspectRatio]
    ASPECT_RATIO_16_9: _ClassVar[AspectRatio]
    ASPECT_RATIO_9_16: _ClassVar[AspectRatio]
    ASPECT_RATIO_21_9: _ClassVar[AspectRatio]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]

class UpscaleMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPSCALE_METHOD_UNSPECIFIED: _ClassVar[UpscaleMethod]
    UPSCALE_METHOD_LANCZOS: _ClassVar[UpscaleMethod]
    UPSCALE_METHOD_BICUBIC: _ClassVar[UpscaleMethod]
    UPSCALE_METHOD_ENHANCE: _ClassVar[UpscaleMethod]
STAGE_UNSPECIFIED: Stage
STAGE_EXPLORE: Stage
STAGE_VALIDATE: Stage
STAGE_REFINE: Stage
STAGE_ENHANCE: Stage
URGENCY_UNSPECIFIED: Urgency
URGENCY_INTERACTIVE: Urgency
URGENCY_BULK: Urgency
IMAGE_SIZE_UNSPECIFIED: ImageSize
IMAGE_SIZE_1K: ImageSize
IMAGE_SIZE_2K: ImageSize
IMAGE_SIZE_4K: ImageSize
ASPECT_RATIO_UNSPECIFIED: AspectRatio
ASPECT_RATIO_1_1: AspectRatio
ASPECT_RATIO_3_2: AspectRatio
ASPECT_RATIO_2_3: AspectRatio
ASPECT_RATIO_4_3: AspectRatio
ASPECT_RATIO_3_4: AspectRatio
ASPECT_RATIO_16_9: AspectRatio
ASPECT_RATIO_9_16: AspectRatio
ASPECT_RATIO_21_9: AspectRatio
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat
UPSCALE_METHOD_UNSPECIFIED: UpscaleMethod
UPSCALE_METHOD_LANCZOS: UpscaleMethod
UPSCALE_METHOD_BICUBIC: UpscaleMethod
UPSCALE_METHOD_ENHANCE: UpscaleMethod

class Resolution(_message.Message):
    __slots__ = ("size", "aspect_ratio")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    size: ImageSize
    aspect_ratio: AspectRatio
    def __init__(self, size: _Optional[_Union[ImageSize, str]] = ..., aspect_ratio: _Optional[_Union[AspectRatio, str]] = ...) -> None: ...

class ImageInfo(_message.Message):
    __slots__ = ("width", "height", "format", "media_type", "size_bytes", "sha256")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: ImageFormat
    media_type: str
    size_bytes: int
    sha256: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., media_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ImageChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AssetRef(_message.Message):
    __slots__ = ("asset_id", "info")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    info: ImageInfo
    def __init__(self, asset_id: _Optional[str] = ..., info: _Optional[_Union[ImageInfo, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "fraction", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    message: str
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...
