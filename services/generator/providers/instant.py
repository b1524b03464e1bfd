"""The `instant` backend: a solid-colour PNG at no cost, for tests and benchmarks of the router.

It measures everything around a render (routing, credits, streaming) with the render itself
taken out. The colour comes from the prompt and seed, so different requests give different
bytes; references and masks are ignored. Each size is encoded once, as a one-colour palette
PNG, and a request only rewrites the palette's three bytes and their checksum.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import time
import zlib

from PIL import Image

from services.generator.picture import Picture
from services.generator.tiers import RenderRequest, Tier

__all__ = ["InstantBackend", "colour_of", "solid_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def colour_of(prompt: str, seed: int) -> tuple[int, int, int]:
    """The colour of the instant picture of `prompt` and `seed`."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return digest[0], digest[1], digest[2]


def solid_png(width: int, height: int) -> bytes:
    """A black `width` x `height` PNG whose palette is its first chunk after the header."""
    picture = Image.new("P", (width, height), 0)
    picture.putpalette([0, 0, 0])
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _palette_at(encoded: bytes) -> int:
    """Offset of the PLTE chunk's three colour bytes in a PNG from `solid_png`."""
    offset = len(_SIGNATURE)
    while offset < len(encoded):
        (length,) = struct.unpack(">I", encoded[offset : offset + 4])
        if encoded[offset + 4 : offset + 8] == b"PLTE":
            if length != 3:
                raise ValueError(f"a one-colour palette has 3 bytes, not {length}")
            return offset + 8
        offset += 12 + length
    raise ValueError("the PNG has no palette")


def _recoloured(encoded: bytes, at: int, colour: tuple[int, int, int]) -> bytes:
    rgb = bytes(colour)
    checksum = struct.pack(">I", zlib.crc32(b"PLTE" + rgb))
    return encoded[:at] + rgb + checksum + encoded[at + 7 :]


class InstantBackend:
    """Answers every request at once with a solid-colour picture of its exact size."""

    def __init__(self) -> None:
        self._encoded: dict[tuple[int, int], tuple[bytes, int]] = {}

    async def close(self) -> None:
        self._encoded.clear()

    async def render(self, tier: Tier, request: RenderRequest) -> Picture:
        started = time.perf_counter()
        size = (request.resolution.width, request.resolution.height)
        cached = self._encoded.get(size)
        if cached is None:
            # A 4K one takes some tens of milliseconds to encode, once.
            encoded = await asyncio.to_thread(solid_png, *size)
            cached = self._encoded.setdefault(size, (encoded, _palette_at(encoded)))
        encoded, at = cached
        image = _recoloured(encoded, at, colour_of(request.prompt, request.seed))
        return Picture(image, size[0], size[1], time.perf_counter() - started)
