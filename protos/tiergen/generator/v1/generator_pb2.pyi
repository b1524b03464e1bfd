from tiergen.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(_message.Message):
    __slots__ = ("name", "display_name", "backend", "sizes", "aspect_ratios", "max_reference_images", "text_rendering", "inpainting", "max_concurrency", "queue_limit", "expected_latency_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIOS_FIELD_NUMBER: _ClassVar[int]
    MAX_REFERENCE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_RENDERING_FIELD_NUMBER: _ClassVar[int]
    INPAINTING_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    backend: str
    sizes: _containers.RepeatedScalarFieldContainer[_common_pb2.ImageSize]
    aspect_ratios: _containers.RepeatedScalarFieldContainer[_common_pb2.AspectRatio]
    max_reference_images: int
    text_rendering: bool
    inpainting: bool
    max_concurrency: int
    queue_limit: int
    expected_latency_ms: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., backend: _Optional[str] = ..., sizes: _Optional[_Iterable[_Union[_common_pb2.ImageSize, str]]] = ..., aspect_ratios: _Optional[_Iterable[_Union[_common_pb2.AspectRatio, str]]] = ..., max_reference_images: _Optional[int] = ..., text_rendering: _Optional[bool] = ..., inpainting: _Optional[bool] = ..., max_concurrency: _Optional[int] = ..., queue_limit: _Optional[int] = ..., expected_latency_ms: _Optional[_Iterable[int]] = ...) -> None: ...

class ListTiersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTiersResponse(_message.Message):
    __slots__ = ("tiers",)
    TIERS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    def __init__(self, tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ...) -> None: ...

class RenderSpec(_message.Message):
    __slots__ = ("tier", "resolution", "prompt", "seed", "reference", "strength", "mask", "request_id", "tenant", "account_id", "urgency")
    TIER_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    URGENCY_FIELD_NUMBER: _ClassVar[int]
    tier: str
    resolution: _common_pb2.Resolution
    prompt: str
    seed: int
    reference: _common_pb2.ImageInfo
    strength: float
    mask: _common_pb2.ImageInfo
    request_id: str
    tenant: str
    account_id: str
    urgency: _common_pb2.Urgency
    def __init__(self, tier: _Optional[str] = ..., resolution: _Optional[_Union[_common_pb2.Resolution, _Mapping]] = ..., prompt: _Optional[str] = ..., seed: _Optional[int] = ..., reference: _Optional[_Union[_common_pb2.ImageInfo, _Mapping]] = ..., strength: _Optional[float] = ..., mask: _Optional[_Union[_common_pb2.ImageInfo, _Mapping]] = ..., request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., account_id: _Optional[str] = ..., urgency: _Optional[_Union[_common_pb2.Urgency, str]] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("spec", "reference_chunk", "mask_chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    MASK_CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: RenderSpec
    reference_chunk: _common_pb2.ImageChunk
    mask_chunk: _common_pb2.ImageChunk
    def __init__(self, spec: _Optional[_Union[RenderSpec, _Mapping]] = ..., reference_chunk: _Optional[_Union[_common_pb2.ImageChunk, _Mapping]] = ..., mask_chunk: _Optional[_Union[_common_pb2.ImageChunk, _Mapping]] = ...) -> None: ...

class RenderResult(_message.Message):
    __slots__ = ("image", "tier", "backend", "seed", "render_ms", "drift")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RENDER_MS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageInfo
    tier: str
    backend: str
    seed: int
    render_ms: int
    drift: float
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageInfo, _Mapping]] = ..., tier: _Optional[str] = ..., backend: _Optional[str] = ..., seed: _Optional[int] = ..., render_ms: _Optional[int] = ..., drift: _Optional[float] = ...) -> None: ...

class RenderResponse(_message.Message):
    __slots__ = ("progress", "result", "chunk")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    result: RenderResult
    chunk: _common_pb2.ImageChunk
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., result: _Optional[_Union[RenderResult, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.ImageChunk, _Mapping]] = ...) -> None: ...
