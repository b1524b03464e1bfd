"""Chunked images: split and reassemble, with order, limit and checksum checks."""

from __future__ import annotations

import pytest
from tiergen.common.v1 import common_pb2

from services.runtime.chunks import ChunkAssembler, image_info, split
from services.runtime.errors import InvalidArgument


def test_split_and_reassemble_round_trip():
    data = bytes(range(256)) * 5000
    info = image_info(data, 10, 20, common_pb2.IMAGE_FORMAT_PNG)
    assert info.media_type == "image/png"
    chunks = list(split(data, size=4096))
    assert all(len(c.data) <= 4096 for c in chunks)
    assembler = ChunkAssembler("image", limit=len(data), expected=info)
    for chunk in chunks:
        assembler.add(chunk)
    assert assembler.finish() == data
    # The digest checked on the way in is kept, so that the bytes are not hashed again.
    assert assembler.sha256 == info.sha256


def test_a_known_digest_is_announced_without_hashing_again():
    info = image_info(b"png bytes", 1, 1, common_pb2.IMAGE_FORMAT_PNG, sha256="ab" * 32)
    assert info.sha256 == "ab" * 32
    unannounced = ChunkAssembler("image", limit=100)
    unannounced.add(common_pb2.ImageChunk(offset=0, data=b"png bytes"))
    unannounced.finish()
    assert unannounced.sha256 == ""


def test_out_of_order_chunk_is_rejected():
    assembler = ChunkAssembler("reference", limit=100)
    with pytest.raises(InvalidArgument, match="offset 5") as caught:
        assembler.add(common_pb2.ImageChunk(offset=5, data=b"x"))
    assert caught.value.violations[0].field == "reference"


def test_limit_is_enforced_before_buffering():
    with pytest.raises(InvalidArgument, match="limit"):
        ChunkAssembler("image", limit=10, expected=common_pb2.ImageInfo(size_bytes=11))
    assembler = ChunkAssembler("image", limit=10)
    with pytest.raises(InvalidArgument, match="exceeds the limit of 10"):
        assembler.add(common_pb2.ImageChunk(offset=0, data=b"x" * 11))


def test_truncated_empty_and_corrupted_streams_are_rejected():
    data = b"abcdef"
    info = image_info(data, 1, 1, common_pb2.IMAGE_FORMAT_PNG)
    short = ChunkAssembler("image", limit=100, expected=info)
    short.add(common_pb2.ImageChunk(offset=0, data=data[:3]))
    with pytest.raises(InvalidArgument, match="stopped mid-image"):
        short.finish()
    with pytest.raises(InvalidArgument, match="no bytes"):
        ChunkAssembler("image", limit=100).finish()
    info.sha256 = "0" * 64
    corrupted = ChunkAssembler("image", limit=100, expected=info)
    corrupted.add(common_pb2.ImageChunk(offset=0, data=data))
    with pytest.raises(InvalidArgument, match="sha256"):
        corrupted.finish()
