from tiergen.common.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpscaleSpec(_message.Message):
    __slots__ = ("factor", "method", "output_format", "quality", "input_size_bytes", "request_id", "tenant", "account_id", "urgency")
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    URGENCY_FIELD_NUMBER: _ClassVar[int]
    factor: float
    method: _common_pb2.UpscaleMethod
    output_format: _common_pb2.ImageFormat
    quality: int
    input_size_bytes: int
    request_id: str
    tenant: str
    account_id: str
    urgency: _common_pb2.Urgency
    def __init__(self, factor: _Optional[float] = ..., method: _Optional[_Union[_common_pb2.UpscaleMethod, str]] = ..., output_format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., quality: _Optional[int] = ..., input_size_bytes: _Optional[int] = ..., request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., account_id: _Optional[str] = ..., urgency: _Optional[_Union[_common_pb2.Urgency, str]] = ...) -> None: ...

class UpscaleRequest(_message.Message):
    __slots__ = ("spec", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: UpscaleSpec
    chunk: _common_pb2.ImageChunk
    def __init__(self, spec: _Optional[_Union[UpscaleSpec, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.ImageChunk, _Mapping]] = ...) -> None: ...

class UpscaleResult(_message.Message):
    __slots__ = ("image", "input_width", "input_height", "method", "process_ms")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageInfo
    input_width: int
    input_height: int
    method: _common_pb2.UpscaleMethod
    process_ms: int
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageInfo, _Mapping]] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., method: _Optional[_Union[_common_pb2.UpscaleMethod, str]] = ..., process_ms: _Optional[int] = ...) -> None: ...

class UpscaleResponse(_message.Message):
    __slots__ = ("progress", "result", "chunk")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    result: UpscaleResult
    chunk: _common_pb2.ImageChunk
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., result: _Optional[_Union[UpscaleResult, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.ImageChunk, _Mapping]] = ...) -> None: ...
