"""Decoding of untrusted image bytes: format detection, validation and pixel-mode normalisation."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from services.runtime.errors import InvalidArgument

__all__ = [
    "IMAGE_FIELD",
    "Source",
    "load_source",
    "open_source",
]

#: The request field that carries the image bytes; every image error names it.
IMAGE_FIELD = "chunk.data"

#: Input formats recognised by their leading bytes. Others (TIFF, EPS, ...) widen the attack
#: surface of a service fed untrusted bytes and are not needed to upscale a generated image.
_ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

_FORMAT_NAMES = "PNG, JPEG, WebP, GIF or BMP"
#: Leading bytes of each accepted format (WebP: "RIFF", a size, then "WEBP").
_SIGNATURES = (
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("JPEG", b"\xff\xd8\xff"),
    ("WEBP", b"RIFF"),
    ("GIF", b"GIF8"),
    ("BMP", b"BM"),
)
_SIXTEEN_BIT_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_OPAQUE_COLOUR = frozenset({"RGBX", "CMYK", "YCbCr"})


@dataclass(frozen=True)
class Source:
    """A decoded input image whose mode is "L" (grey), "RGB" or "RGBA" (anything with alpha)."""

    image: Image.Image
    #: Format detected from the bytes, as Pillow names it ("PNG", "JPEG", ...).
    format: str
    #: ICC colour profile of the input, carried to the output so colours stay as authored.
    icc_profile: bytes | None


def open_source(data: bytes, *, max_side: int, max_bytes: int) -> ImageFile.ImageFile:
    """Identify `data` and check its declared size and frame count, without decoding pixels.

    Pillow reads only the header here, so a decompression bomb is refused before any pixel
    memory is allocated. Raises `InvalidArgument` (field `chunk.data`) for empty, oversized,
    unrecognised, corrupt, too large or animated input.
    """
    if not data:
        raise InvalidArgument(
            "the image is empty: send the image bytes in chunks after the spec",
            field=IMAGE_FIELD,
            reason="EMPTY_IMAGE",
        )
    if len(data) > max_bytes:
        raise InvalidArgument(
            f"the image is {len(data)} bytes; the largest accepted input is {max_bytes} bytes",
            field=IMAGE_FIELD,
            reason="IMAGE_TOO_LARGE",
            metadata={"size_bytes": str(len(data)), "max_bytes": str(max_bytes)},
        )
    try:
        opened = Image.open(io.BytesIO(data), formats=_ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed is not None:
            # The signature is right but Pillow could not read the header behind it.
            raise _corrupt("its header is incomplete or malformed", claimed) from None
        raise InvalidArgument(
            f"the bytes are not a {_FORMAT_NAMES} image",
            field=IMAGE_FIELD,
            reason="UNSUPPORTED_IMAGE",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard fires before ours for sizes far beyond any sane limit; the
        # warning only arrives as an exception where warnings are errors (as in the tests).
        raise _too_large(
            f"the image declares more than {Image.MAX_IMAGE_PIXELS} pixels, like a "
            "decompression bomb",
            max_side,
        ) from None
    except Exception as error:
        # Any failure to parse an untrusted header is the caller's corrupt image, not a bug.
        raise _corrupt(error, _claimed_format(data)) from None
    width, height = opened.size
    if width > max_side or height > max_side:
        raise _too_large(f"the image is {width}x{height} px", max_side, width, height)
    try:
        animated = bool(getattr(opened, "is_animated", False))
    except Exception as error:
        raise _corrupt(error, opened.format) from None
    if animated:
        raise InvalidArgument(
            f"the {opened.format} image is animated (it has more than one frame); "
            "send a single still image",
            field=IMAGE_FIELD,
            reason="ANIMATED_IMAGE",
        )
    return opened


def load_source(opened: ImageFile.ImageFile) -> Source:
    """Decode the pixels of an image accepted by `open_source` and normalise its mode.

    Palette images become RGB, or RGBA when they carry transparency; 1-bit and 16-bit grey
    become 8-bit grey; CMYK and other opaque colour modes become RGB. EXIF orientation is
    applied so the output is upright. Raises `InvalidArgument` for truncated or corrupt data.
    """
    try:
        opened.load()
        ImageOps.exif_transpose(opened, in_place=True)
    except Exception as error:
        # Decoding untrusted bytes: every decoder failure means a truncated or corrupt image.
        raise _corrupt(error, opened.format) from None
    icc_profile = opened.info.get("icc_profile")
    return Source(
        image=_normalised(opened),
        format=str(opened.format),
        icc_profile=icc_profile if isinstance(icc_profile, bytes) and icc_profile else None,
    )


def _normalised(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in _SIXTEEN_BIT_GREY:
        # Pillow's I;16 -> L conversion clips at 255 instead of scaling, so scale here.
        wide = np.asarray(image).astype(np.float32)
        return Image.fromarray(np.rint(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8))
    if image.has_transparency_data:
        return image if mode == "RGBA" else image.convert("RGBA")
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode == "P" or mode in _OPAQUE_COLOUR:
        return image.convert("RGB")
    raise InvalidArgument(
        f"the image has pixel mode {mode}, which the upscaler does not support",
        field=IMAGE_FIELD,
        reason="UNSUPPORTED_IMAGE",
        metadata={"mode": mode},
    )


def _too_large(what: str, max_side: int, width: int = 0, height: int = 0) -> InvalidArgument:
    metadata = {"max_side": str(max_side)}
    if width and height:
        metadata |= {"width": str(width), "height": str(height)}
    return InvalidArgument(
        f"{what}; the largest accepted input side is {max_side} px",
        field=IMAGE_FIELD,
        reason="IMAGE_TOO_LARGE",
        metadata=metadata,
    )


def _claimed_format(data: bytes) -> str | None:
    """The accepted format whose signature `data` starts with, if any."""
    for name, signature in _SIGNATURES:
        if data.startswith(signature) and (name != "WEBP" or data[8:12] == b"WEBP"):
            return name
    return None


def _corrupt(error: Exception | str, image_format: str | None = None) -> InvalidArgument:
    what = f"{image_format} image" if image_format else "image"
    detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return InvalidArgument(
        f"the {what} is truncated or corrupt ({detail}); send the complete file",
        field=IMAGE_FIELD,
        reason="CORRUPT_IMAGE",
    )
