"""Images in chunks: splitting bytes into `ImageChunk` messages and reassembling them safely."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from tiergen.common.v1 import common_pb2

from services.runtime.errors import InvalidArgument

__all__ = ["CHUNK_BYTES", "ChunkAssembler", "drain", "image_info", "split"]

#: Bytes per chunk: small enough for any message limit, large enough to keep overhead low.
CHUNK_BYTES = 1024 * 1024

_MEDIA_TYPES: dict[common_pb2.ImageFormat, str] = {
    common_pb2.IMAGE_FORMAT_PNG: "image/png",
    common_pb2.IMAGE_FORMAT_JPEG: "image/jpeg",
    common_pb2.IMAGE_FORMAT_WEBP: "image/webp",
}


def split(data: bytes, size: int = CHUNK_BYTES) -> Iterator[common_pb2.ImageChunk]:
    """The chunks of `data`, in order, each at most `size` bytes."""
    view = memoryview(data)
    for offset in range(0, len(data), size):
        yield common_pb2.ImageChunk(offset=offset, data=bytes(view[offset : offset + size]))


def image_info(
    data: bytes,
    width: int,
    height: int,
    image_format: common_pb2.ImageFormat,
    sha256: str = "",
) -> common_pb2.ImageInfo:
    """The `ImageInfo` announcing `data`; `sha256`, when the caller knows it already (an asset's
    address, a digest checked on the way in), spares hashing the bytes again."""
    return common_pb2.ImageInfo(
        width=width,
        height=height,
        format=image_format,
        media_type=_MEDIA_TYPES.get(image_format, "application/octet-stream"),
        size_bytes=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )


class ChunkAssembler:
    """Collects chunks of one image, checking order, the size limit and, at the end, the checksum.

    `field` names the request field in errors, so a caller knows which image was wrong.
    """

    def __init__(
        self, field: str, limit: int, expected: common_pb2.ImageInfo | None = None
    ) -> None:
        self._field = field
        self._limit = limit
        self._expected = expected
        self._buffer = bytearray()
        #: The SHA-256 of the finished image once checked against the announced one, so that
        #: whoever stores it need not hash it again; "" when none was announced.
        self.sha256 = ""
        if expected is not None and expected.size_bytes > limit:
            raise InvalidArgument(
                f"{field} is {expected.size_bytes} bytes; the limit is {limit}", field=field
            )

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, chunk: common_pb2.ImageChunk) -> None:
        if chunk.offset != len(self._buffer):
            raise InvalidArgument(
                f"{self._field} chunk at offset {chunk.offset} arrived when {len(self._buffer)} "
                "bytes were received; send chunks in order",
                field=self._field,
            )
        if len(self._buffer) + len(chunk.data) > self._limit:
            raise InvalidArgument(
                f"{self._field} exceeds the limit of {self._limit} bytes", field=self._field
            )
        self._buffer += chunk.data

    def finish(self) -> bytes:
        """The whole image; raises when it is empty, short, or fails its announced checksum."""
        data = bytes(self._buffer)
        if not data:
            raise InvalidArgument(f"{self._field} has no bytes", field=self._field)
        expected = self._expected
        if expected is not None:
            if expected.size_bytes and expected.size_bytes != len(data):
                raise InvalidArgument(
                    f"{self._field} announced {expected.size_bytes} bytes but {len(data)} "
                    "arrived; the stream stopped mid-image",
                    field=self._field,
                )
            if expected.sha256:
                if expected.sha256 != hashlib.sha256(data).hexdigest():
                    raise InvalidArgument(
                        f"{self._field} does not match its announced sha256", field=self._field
                    )
                self.sha256 = expected.sha256
        return data


async def drain(requests: AsyncIterator[Any], budget: int) -> None:
    """Reads and drops what the client still sends, up to `budget` bytes, before refusing it.

    Works around grpc/grpc#36066: an asyncio client still writing when the server's status
    arrives reports INTERNAL ("Internal error from Core") instead of that status, so a refused
    upload would reach such callers without its code, reason or RetryInfo.
    """
    async for request in requests:
        budget -= request.ByteSize()
        if budget < 0:
            return
