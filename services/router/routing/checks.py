"""The rules a handover, an upscale or an edit must meet before anything is held: pure checks
of the caller's values against the parent job, each an INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import io
import math

from PIL import Image as PILImage

from services.runtime.errors import InvalidArgument
from services.runtime.resolution import MAX_PROMPT_CHARS

__all__ = [
    "DEFAULT_HANDOVER_STRENGTH",
    "UPSCALE_FACTORS",
    "check_mask",
    "check_mask_bytes",
    "check_prompt",
    "check_upscale",
    "check_upscale_factor",
    "handover_strength",
]

#: Strength of the parent's image in a handover when the caller gives none.
DEFAULT_HANDOVER_STRENGTH = 0.6
#: Upscale factors: 1 to 4 in steps of 0.5.
UPSCALE_FACTORS = tuple(1.0 + 0.5 * step for step in range(7))


def handover_strength(strength: float | None) -> float:
    """The strength a handover renders with: the caller's, within 0..1, or the default."""
    value = DEFAULT_HANDOVER_STRENGTH if strength is None else strength
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidArgument(
            f"strength {value} is outside 0..1 (0 ignores the parent's image, 1 keeps its "
            "composition)",
            field="strength",
            reason="STRENGTH_OUT_OF_RANGE",
        )
    return value


def check_prompt(prompt: str, what: str = "the prompt") -> str:
    """`prompt` unless it is longer than `MAX_PROMPT_CHARS`."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument(
            f"{what} is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}",
            field="prompt",
            reason="PROMPT_TOO_LONG",
        )
    return prompt


def check_upscale_factor(factor: float) -> float:
    """`factor` when it is one of `UPSCALE_FACTORS`."""
    if factor not in UPSCALE_FACTORS:
        raise InvalidArgument(
            f"factor {factor:g} is not offered; use 1 to 4 in steps of 0.5",
            field="factor",
            reason="FACTOR_NOT_SUPPORTED",
        )
    return factor


def check_upscale(factor: float, width: int, height: int, max_side: int) -> tuple[int, int]:
    """The output size of upscaling `width` x `height` by `factor`, when the factor is offered
    and the output's longest side is at most `max_side`."""
    check_upscale_factor(factor)
    out_width, out_height = round(width * factor), round(height * factor)
    if max(out_width, out_height) > max_side:
        raise InvalidArgument(
            f"upscaling {width}x{height} by {factor:g} gives {out_width}x{out_height}; "
            f"the longest side may be at most {max_side}",
            field="factor",
            reason="OUTPUT_TOO_LARGE",
            metadata={"width": str(out_width), "height": str(out_height), "limit": str(max_side)},
        )
    return out_width, out_height


def check_mask_bytes(data: bytes, max_bytes: int) -> None:
    """InvalidArgument unless `data` is present and at most `max_bytes`: checked before anything
    else of an edit, as it costs nothing."""
    if not data:
        raise InvalidArgument(
            "mask is required: an image of the job's size, white where it is rendered again",
            field="mask",
        )
    if len(data) > max_bytes:
        raise InvalidArgument(
            f"the mask is {len(data)} bytes; the limit is {max_bytes} (save it as a two-tone PNG)",
            field="mask",
        )


def check_mask(data: bytes, width: int, height: int) -> None:
    """InvalidArgument unless `data` is a whole image of `width` x `height` that selects some
    region (white = render again, black = keep).

    The header's size is checked before the pixels are decoded, so a small file claiming a huge
    image is refused unread; then every pixel is decoded, so a truncated file is refused too.
    Decoding is CPU work: call it off the event loop.
    """
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            if image.size != (width, height):
                raise InvalidArgument(
                    f"the mask is {image.size[0]}x{image.size[1]}; it must be the job's"
                    f" {width}x{height}",
                    field="mask",
                    reason="MASK_SIZE_MISMATCH",
                )
            image.load()
            selected = image.convert("L").getbbox()
    except (OSError, PILImage.DecompressionBombError, ValueError, SyntaxError):
        raise InvalidArgument(
            "the mask is not a whole image (unreadable or truncated); send a PNG (white = render"
            " again, black = keep)",
            field="mask",
            reason="MASK_NOT_AN_IMAGE",
        ) from None
    if selected is None:
        raise InvalidArgument(
            "the mask is black everywhere, so it selects nothing to edit; paint the region to"
            " render again white",
            field="mask",
            reason="MASK_EMPTY",
        )
