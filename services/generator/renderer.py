"""The built-in renderer: a prompt and seed painted into a deterministic PNG at a tier's quality."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter, ImageOps

from services.generator.drift import style_drift_of
from services.generator.painting.landscape import paint_landscape
from services.generator.painting.painter import Layer, Painter, font, vertical_gradient
from services.generator.painting.scene import RGB, Scene, compose_scene, mix
from services.generator.tiers import Quality, RenderRequest, Tier
from services.runtime.errors import InvalidArgument

__all__ = ["Progress", "RenderResult", "RenderSpec", "render"]

#: Told how far a render got: the fraction done (0 to 1) and the name of the stage starting.
Progress = Callable[[float, str], None]

Floats = npt.NDArray[np.float32]

_MEDIA_TYPE = "image/png"


@dataclass(frozen=True)
class RenderSpec:
    """Everything that decides a render's bytes; plain values, so it crosses to worker processes.

    `references[0]` steers the composition by `strength` (0 ignores it, 1 keeps it) and every
    reference steers the colours. With a `mask` (white = re-render), `references[0]` is the
    image being edited: only the masked region changes, and `strength` is not used.
    """

    prompt: str
    seed: int
    width: int
    height: int
    quality: Quality = Quality.MEDIUM
    draw_text: bool = False
    references: tuple[bytes, ...] = ()
    strength: float = 0.0
    mask: bytes | None = None

    @classmethod
    def for_request(cls, tier: Tier, request: RenderRequest) -> RenderSpec:
        """The spec rendering `request` on `tier`; check the request with validate_request first."""
        return cls(
            prompt=request.prompt,
            seed=request.seed,
            width=request.resolution.width,
            height=request.resolution.height,
            quality=tier.quality,
            draw_text=tier.capabilities.text_rendering,
            references=request.references,
            strength=request.strength,
            mask=request.mask,
        )


@dataclass(frozen=True)
class RenderResult:
    """An encoded image and what the renderer read from the prompt to draw it."""

    image: bytes
    width: int
    height: int
    palette: str
    lighting: str
    subjects: tuple[str, ...]
    text: str
    media_type: str = _MEDIA_TYPE
    #: How far the image moved from `references[0]` (see `services.generator.drift`); None
    #: without a reference.
    drift: float | None = None


def render(spec: RenderSpec, progress: Progress | None = None) -> RenderResult:
    """Paints `spec` and encodes it as PNG; the same spec always gives the same bytes.

    Pure and CPU-bound: run it in a worker process to keep an event loop free. `progress`, when
    given, is called a handful of times from the thread doing the work; a callable crossing to a
    worker process must be picklable (a module-level function, or a partial over a managed
    queue), otherwise pass None there and report progress around the call.
    """
    report = progress or _silent
    report(0.0, "composing")
    scene = compose_scene(spec.prompt, spec.seed)
    size = (spec.width, spec.height)
    references = [
        _decode(data, f"references[{index}]") for index, data in enumerate(spec.references)
    ]
    mask = None
    if spec.mask is not None:
        mask = _inpainting_mask(spec.mask, references, size)

    painter = Painter(Image.new("RGB", size), _SUPERSAMPLE[spec.quality])
    paint_landscape(scene, painter, spec.quality, report)

    if mask is not None:
        report(0.75, "matching")
        _match_colours(painter.image, references, 0.6)
    elif references and spec.strength > 0:
        report(0.75, "steering")
        _steer(painter.image, references, spec.strength, spec.quality)
    if spec.draw_text and scene.text:
        report(0.8, "lettering")
        _letter(painter, scene, spec.quality)
    report(0.85, "finishing")
    picture = _finish(painter.image, scene, spec.quality)
    if mask is not None:
        picture = Image.composite(picture, references[0].convert("RGB"), mask)

    # Measured here, on the decoded images, instead of by decoding both again downstream.
    drift = style_drift_of(references[0], picture) if references else None
    report(0.9, "encoding")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=_COMPRESSION[spec.quality])
    report(1.0, "done")
    return RenderResult(
        image=buffer.getvalue(),
        width=spec.width,
        height=spec.height,
        palette=scene.palette.name,
        lighting=str(scene.lighting),
        subjects=tuple(sorted(str(subject) for subject in scene.subjects | {scene.terrain})),
        text=scene.text if spec.draw_text else "",
        drift=drift,
    )


def _silent(fraction: float, stage: str) -> None:
    """Progress nobody listens to."""


# Supersampling factor per quality: 1 draws straight onto the picture (no anti-aliasing).
_SUPERSAMPLE = {Quality.LOW: 1, Quality.MEDIUM: 2, Quality.HIGH: 2}

# The low tier's images are mostly flat colour, which compresses well even at level 1; the
# grain of the high tier does not compress whatever the level, so time spent there is wasted.
_COMPRESSION = {Quality.LOW: 1, Quality.MEDIUM: 3, Quality.HIGH: 1}


def _decode(data: bytes, field: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP"))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(f"{field} is not a readable image: {exc}", field=field) from exc
    return image


def _inpainting_mask(
    data: bytes, references: list[Image.Image], size: tuple[int, int]
) -> Image.Image:
    """The mask of an in-painting, checked against the image it edits and the output size."""
    if not references:
        raise InvalidArgument("in-painting needs the image to edit as references[0]", field="mask")
    if references[0].size != size:
        raise InvalidArgument(
            f"the image to edit is {references[0].width}x{references[0].height},"
            f" not the {size[0]}x{size[1]} asked for",
            field="references[0]",
        )
    mask = _decode(data, "mask")
    if mask.size != size:
        raise InvalidArgument(
            f"mask is {mask.width}x{mask.height} but the image to edit is {size[0]}x{size[1]}",
            field="mask",
        )
    return mask.convert("L")


def _colour_statistics(images: list[Image.Image]) -> tuple[Floats, Floats]:
    """Mean and standard deviation of each channel over `images`, from small copies of them."""
    pixels = []
    for image in images:
        small = image.convert("RGB")
        small.thumbnail((96, 96), Image.Resampling.BOX)
        pixels.append(np.asarray(small, np.float32).reshape(-1, 3))
    stacked = np.concatenate(pixels)
    return stacked.mean(axis=0), np.maximum(stacked.std(axis=0), 1.0)


def _match_colours(picture: Image.Image, references: list[Image.Image], amount: float) -> None:
    """Moves the picture's colours `amount` of the way toward the references' colours."""
    if not references or amount <= 0:
        return
    target_mean, target_spread = _colour_statistics(references)
    mean, spread = _colour_statistics([picture])
    values = np.arange(256, dtype=np.float32)
    tables: list[int] = []
    for channel in range(3):
        moved = (values - mean[channel]) / spread[channel] * target_spread[channel]
        moved += target_mean[channel]
        blended = values + (moved - values) * amount
        tables.extend(int(v) for v in np.clip(np.round(blended), 0, 255))
    picture.paste(picture.point(tables))


def _steer(
    picture: Image.Image, references: list[Image.Image], strength: float, quality: Quality
) -> None:
    """Pulls the picture toward the references: colours by all of them, layout by the first."""
    _match_colours(picture, references, strength)
    method = Image.Resampling.BILINEAR if quality is Quality.LOW else Image.Resampling.LANCZOS
    fitted = ImageOps.fit(references[0].convert("RGB"), picture.size, method=method)
    picture.paste(Image.blend(picture, fitted, strength))


def _wrap(text: str, size: float, width: float) -> list[str]:
    """`text` broken into lines no wider than `width` at `size`, where the words allow."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font(round(size)).getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _letter(painter: Painter, scene: Scene, quality: Quality) -> None:
    """Draws the prompt's quoted text across the top of the picture."""
    width, height = painter.width, painter.height
    size = min(height * 0.1, width * 0.11)
    room = width * 0.86
    lines = _wrap(scene.text, size, room)
    while size > height * 0.03 and (
        len(lines) > 3 or any(font(round(size)).getlength(line) > room for line in lines)
    ):
        size *= 0.88
        lines = _wrap(scene.text, size, room)
    top = height * 0.07
    step = size * 1.15
    behind = painter.image.crop(
        (int(width * 0.1), int(top), int(width * 0.9), int(top + step * len(lines)) + 1)
    ).convert("L")
    bright_behind = float(np.asarray(behind, np.float32).mean()) > 150
    ink: RGB = scene.palette.ink if bright_behind else (250, 248, 240)
    shadow: RGB = (255, 255, 255) if bright_behind else scene.palette.ink

    def lettering(dx: float, dy: float, stroke: float = 0.0) -> Layer:
        layer = Layer()
        for index, line in enumerate(lines):
            layer.text(width / 2 + dx, top + index * step + dy, line, size, stroke)
        return layer

    if quality is Quality.LOW:
        painter.paint(lettering(0, 0), ink)
        return
    painter.paint(lettering(size * 0.04, size * 0.06), shadow, blur=size * 0.06, opacity=0.6)
    if quality is Quality.HIGH:
        painter.paint(
            lettering(0, 0, size * 0.12), scene.palette.light, blur=size * 0.3, opacity=0.45
        )
        painter.paint(lettering(0, 0, size * 0.05), shadow, opacity=0.85)
        fill = vertical_gradient(
            top, top + step * len(lines), ink, mix(ink, scene.palette.sun, 0.45)
        )
        painter.paint(lettering(0, 0), fill)
        return
    painter.paint(lettering(0, 0), ink)


def _finish(picture: Image.Image, scene: Scene, quality: Quality) -> Image.Image:
    """The tier's finish, the last pass over the whole picture.

    None when coarse; blotchy texture and a vignette on the standard tier; on the fine one also
    bloom around bright light, a touch of contrast, and film grain.
    """
    if quality is Quality.LOW:
        return picture
    width, height = picture.size
    rng = scene.generator("finish")
    small = (max(width // 16, 4), max(height // 16, 4))
    blotches = rng.standard_normal((6, 6)).astype(np.float32)
    texture = np.asarray(Image.fromarray(blotches).resize(small, Image.Resampling.BICUBIC))
    ys = np.linspace(-1, 1, small[1], dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, small[0], dtype=np.float32)[None, :]
    edge = 0.3 if quality is Quality.HIGH else 0.2
    vignette = 1 - edge * ((xs * xs + ys * ys) / 2) ** 1.4
    factor_small = (vignette * (1 + 0.03 * texture)).astype(np.float32)
    factor = np.asarray(
        Image.fromarray(factor_small).resize((width, height), Image.Resampling.BILINEAR)
    )
    bloom = _bloom(picture) if quality is Quality.HIGH else None
    source = np.asarray(picture)
    out = np.empty_like(source)
    # A 4K picture in float32 is 200 MB; a strip at a time keeps a worker's memory small.
    strip = 256
    for start in range(0, height, strip):
        rows = slice(start, min(start + strip, height))
        pixels = source[rows].astype(np.float32) * factor[rows, :, None]
        if bloom is not None:
            pixels += bloom[rows].astype(np.float32) * 0.25
            pixels = (pixels - 128) * 1.05 + 128
            grain = rng.standard_normal((pixels.shape[0], width), dtype=np.float32) * 3.0
            pixels += grain[..., None]
        np.clip(pixels, 0, 255, out=pixels)
        out[rows] = pixels.astype(np.uint8)
    return Image.fromarray(out)


def _bloom(picture: Image.Image) -> npt.NDArray[np.uint8]:
    """The glow that spills from the brightest parts of a picture, at full size."""
    bright = picture.reduce(8).point(lambda value: max(0, value - 205) * 4)
    glow = bright.filter(ImageFilter.GaussianBlur(6)).resize(
        picture.size, Image.Resampling.BILINEAR
    )
    return np.asarray(glow)
