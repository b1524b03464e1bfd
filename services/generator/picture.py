"""What every backend hands back: a PNG of exactly the asked size, and the protocol it follows."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Protocol

from PIL import Image, ImageOps, UnidentifiedImageError

from services.generator.tiers import RenderRequest, Tier

__all__ = ["Backend", "Picture", "UnreadableImage", "conform", "media_type"]

#: zlib level of PNGs the generator re-encodes: the fastest, as the built-in renderer's nano tier.
_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class Picture:
    """A rendered image: PNG bytes of exactly `width` x `height`, the seconds it took, and its
    drift from the request's first reference when the backend measured it."""

    image: bytes
    width: int
    height: int
    seconds: float
    drift: float | None = None


class Backend(Protocol):
    """Renders requests for the tiers routed to it: the built-in renderer or a provider."""

    async def render(self, tier: Tier, request: RenderRequest) -> Picture:
        """The picture for `request`, already checked by `validate_request`, on `tier`."""
        ...

    async def close(self) -> None:
        """Lets go of what the backend holds (processes, connections); called once at stop."""
        ...


class UnreadableImage(ValueError):
    """Bytes that should be an image but that Pillow cannot decode."""


def media_type(encoded: bytes) -> str:
    """The media type of a PNG, JPEG or WEBP image from its first bytes (checked images only)."""
    if encoded.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if encoded.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if encoded[:4] == b"RIFF" and encoded[8:12] == b"WEBP":
        return "image/webp"
    raise UnreadableImage("not a PNG, JPEG or WEBP image")


def conform(
    encoded: bytes,
    width: int,
    height: int,
    *,
    keep: tuple[bytes, bytes] | None = None,
) -> bytes:
    """`encoded` as a PNG of exactly `width` x `height`; CPU work, so call it off the event loop.

    A PNG already of that size passes through untouched. Any other image is scaled to cover the
    size and centre-cropped, so its proportions never distort; providers offer fewer sizes than
    the contract. `keep`, an (image, mask) pair of the asked size, pastes the image back where the
    mask is black: an in-painting changes only the masked region, whatever the provider did.
    Raises UnreadableImage when `encoded` does not decode.
    """
    try:
        with Image.open(io.BytesIO(encoded)) as opened:
            opened.load()
            if keep is None and opened.format == "PNG" and opened.size == (width, height):
                return encoded
            picture = opened.convert("RGB")
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as error:
        raise UnreadableImage(f"the image does not decode ({type(error).__name__})") from None
    if picture.size != (width, height):
        picture = ImageOps.fit(picture, (width, height), Image.Resampling.LANCZOS)
    if keep is not None:
        source, mask = keep
        with Image.open(io.BytesIO(source)) as original, Image.open(io.BytesIO(mask)) as region:
            picture = Image.composite(picture, original.convert("RGB"), region.convert("L"))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=_COMPRESS_LEVEL)
    return buffer.getvalue()
