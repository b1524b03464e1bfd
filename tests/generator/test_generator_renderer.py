"""The built-in renderer: deterministic bytes, prompts that show, tiers that differ, references."""

from __future__ import annotations

import io
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from services.generator.renderer import RenderResult, RenderSpec, render
from services.generator.tiers import Quality, RenderRequest, load_catalogue
from services.runtime.errors import InvalidArgument
from services.runtime.resolution import AspectRatio, ImageSize, Resolution, pixel_size

# Small pictures keep the suite fast; the renderer draws any size the same way.
WIDTH, HEIGHT = 320, 192
PROMPT = "a lone figure watching a sunset over the ocean"

Pixels = npt.NDArray[np.int16]


def spec(prompt: str = PROMPT, quality: Quality = Quality.MEDIUM, **changes: object) -> RenderSpec:
    values: dict[str, object] = {
        "prompt": prompt,
        "seed": 7,
        "width": WIDTH,
        "height": HEIGHT,
        "quality": quality,
        "draw_text": quality is not Quality.LOW,
    }
    values.update(changes)
    return RenderSpec(**values)  # type: ignore[arg-type]


def pixels(encoded: bytes) -> Pixels:
    with Image.open(io.BytesIO(encoded)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def difference(first: bytes, second: bytes) -> float:
    """Mean absolute difference of two images, per channel, from 0 to 255."""
    return float(np.abs(pixels(first) - pixels(second)).mean())


def png(picture: npt.NDArray[np.integer] | Image.Image) -> bytes:
    image = (
        picture if isinstance(picture, Image.Image) else Image.fromarray(picture.astype(np.uint8))
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_in_worker(render_spec: RenderSpec) -> bytes:
    return render(render_spec).image


# --- determinism ---


@pytest.mark.parametrize("quality", list(Quality))
def test_the_same_spec_gives_the_same_bytes(quality: Quality) -> None:
    assert render(spec(quality=quality)).image == render(spec(quality=quality)).image


def test_the_same_spec_gives_the_same_bytes_in_a_fresh_process() -> None:
    specs = [spec(quality=quality) for quality in Quality]
    # "spawn" starts a new interpreter, with its own hash seed and nothing inherited.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        remote = list(pool.map(render_in_worker, specs))
    assert remote == [render(one).image for one in specs]


def test_spec_and_result_cross_process_boundaries() -> None:
    result = render(spec(quality=Quality.LOW))
    assert pickle.loads(pickle.dumps(result)) == result
    assert pickle.loads(pickle.dumps(spec())) == spec()


# --- the prompt drives the picture ---


def test_different_prompts_give_visibly_different_pictures() -> None:
    assert difference(render(spec("a sunset")).image, render(spec("a neon city")).image) > 20


def test_different_seeds_give_different_pictures_of_the_same_prompt() -> None:
    first, second = render(spec(seed=1)), render(spec(seed=2))
    assert first.image != second.image
    assert first.palette == second.palette
    assert difference(first.image, second.image) > 2


def test_unknown_words_change_the_picture() -> None:
    assert render(spec("zxq blorf")).image != render(spec("zxq blorg")).image


def test_palette_words_show_in_the_colours() -> None:
    warm = pixels(render(spec("a desert sunset")).image).mean(axis=(0, 1))
    cold = pixels(render(spec("a frozen ocean")).image).mean(axis=(0, 1))
    assert warm[0] > warm[2]
    assert cold[2] > cold[0]


def test_the_result_says_what_it_read() -> None:
    result = render(spec('neon city at night "OPEN"'))
    assert (result.palette, result.lighting) == ("neon", "night")
    assert {"city", "moon"} <= set(result.subjects)
    assert result.text == "OPEN"
    assert result.media_type == "image/png"


# --- tiers ---


@pytest.mark.parametrize("aspect_ratio", list(AspectRatio))
def test_nano_renders_every_aspect_ratio_at_its_exact_size(aspect_ratio: AspectRatio) -> None:
    catalogue = load_catalogue()
    resolution = Resolution(ImageSize.K1, aspect_ratio)
    request = RenderRequest(tier="nano", prompt="hills", seed=3, resolution=resolution)
    result = render(RenderSpec.for_request(catalogue.tier("nano"), request))
    assert (result.width, result.height) == pixel_size(ImageSize.K1, aspect_ratio)
    with Image.open(io.BytesIO(result.image)) as image:
        assert (image.size, image.mode) == ((result.width, result.height), "RGB")


def test_a_spec_carries_its_tier() -> None:
    catalogue = load_catalogue()
    resolution = Resolution(ImageSize.K4, AspectRatio.R21_9)
    request = RenderRequest(tier="pro", prompt="p", seed=1, resolution=resolution, strength=0.3)
    made = RenderSpec.for_request(catalogue.tier("pro"), request)
    assert (made.width, made.height) == (6336, 2688)
    assert (made.quality, made.draw_text, made.strength) == (Quality.HIGH, True, 0.3)
    nano = RenderSpec.for_request(catalogue.tier("nano"), RenderRequest("nano", "p", 1))
    assert (nano.quality, nano.draw_text) == (Quality.LOW, False)


@pytest.mark.parametrize("prompt", [PROMPT, "neon city at night", "misty forest with a lighthouse"])
def test_tiers_differ_in_more_than_size(prompt: str) -> None:
    def colours(quality: Quality) -> int:
        flat = pixels(render(spec(prompt, quality, draw_text=False)).image).reshape(-1, 3)
        return len(np.unique(flat, axis=0))

    def roughness(quality: Quality) -> float:
        picture = pixels(render(spec(prompt, quality, draw_text=False)).image)
        return float(np.abs(np.diff(picture, axis=1)).mean())

    # nano: flat colours with hard edges; standard: gradients and anti-aliasing; pro: grain.
    assert colours(Quality.LOW) < 256
    assert colours(Quality.MEDIUM) > 2000
    assert colours(Quality.HIGH) > colours(Quality.MEDIUM)
    assert roughness(Quality.HIGH) > roughness(Quality.MEDIUM)


def test_the_same_prompt_keeps_its_composition_across_tiers() -> None:
    nano = pixels(render(spec(quality=Quality.LOW)).image)
    standard = pixels(render(spec(quality=Quality.MEDIUM)).image)
    other = pixels(render(spec("neon city at night", Quality.MEDIUM)).image)
    assert np.abs(nano - standard).mean() < np.abs(other - standard).mean() / 2


# --- quoted text ---


def test_quoted_text_is_drawn_on_tiers_with_text_rendering() -> None:
    for quality in (Quality.MEDIUM, Quality.HIGH):
        hello = render(spec('a city "HELLO"', quality)).image
        world = render(spec('a city "WORLD"', quality)).image
        plain = render(spec("a city", quality)).image
        assert len({hello, world, plain}) == 3
        changed = np.abs(pixels(hello) - pixels(plain)).sum(axis=2) > 30
        rows = np.nonzero(changed.any(axis=1))[0]
        assert rows.size and rows.max() < HEIGHT / 2, "text belongs at the top"


def test_quoted_text_leaves_nano_untouched() -> None:
    hello = render(spec('a city "HELLO"', Quality.LOW))
    assert hello.image == render(spec('a city "WORLD"', Quality.LOW)).image
    assert hello.image == render(spec("a city", Quality.LOW)).image
    assert hello.text == ""


def test_long_text_still_fits() -> None:
    words = " ".join(["lorem", "ipsum", "dolor"] * 20)
    result = render(spec(f'a city "{words}"', Quality.MEDIUM))
    assert result.image != render(spec("a city", Quality.MEDIUM)).image


# --- reference images ---


@pytest.fixture(scope="module")
def reference() -> bytes:
    return render(RenderSpec("a green meadow with a house", 11, WIDTH, HEIGHT)).image


@pytest.mark.parametrize("quality", list(Quality))
def test_strength_zero_ignores_the_reference(quality: Quality, reference: bytes) -> None:
    with_reference = render(spec(quality=quality, references=(reference,), strength=0.0))
    assert with_reference.image == render(spec(quality=quality)).image


def test_strength_one_keeps_the_reference(reference: bytes) -> None:
    kept = render(spec(quality=Quality.LOW, references=(reference,), strength=1.0))
    assert np.array_equal(pixels(kept.image), pixels(reference))
    finished = render(spec(quality=Quality.HIGH, references=(reference,), strength=1.0))
    assert difference(finished.image, reference) < 15


def test_strength_pulls_the_picture_toward_the_reference(reference: bytes) -> None:
    distances = [
        difference(render(spec(references=(reference,), strength=s)).image, reference)
        for s in (0.0, 0.3, 0.7)
    ]
    assert distances[0] > distances[1] > distances[2]


def test_a_reference_of_another_shape_is_fitted(reference: bytes) -> None:
    tall = png(Image.open(io.BytesIO(reference)).resize((90, 300)))
    result = render(spec(references=(tall,), strength=0.8))
    assert (result.width, result.height) == (WIDTH, HEIGHT)
    assert result.image != render(spec()).image


def test_every_reference_steers_the_colours(reference: bytes) -> None:
    red = png(Image.new("RGB", (40, 40), (220, 30, 30)))
    one = render(spec(references=(reference,), strength=0.5)).image
    two = render(spec(references=(reference, red), strength=0.5)).image
    assert pixels(two)[..., 0].mean() > pixels(one)[..., 0].mean()


def test_an_unreadable_reference_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as caught:
        render(spec(references=(b"\x89PNG\r\n\x1a\n broken",), strength=0.5))
    assert [violation.field for violation in caught.value.violations] == ["references[0]"]


# --- in-painting ---


def test_inpainting_changes_only_the_masked_pixels(reference: bytes) -> None:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[40:120, 100:220] = 255
    result = render(
        spec("a neon city at night", Quality.MEDIUM, references=(reference,), mask=png(mask))
    )
    before, after = pixels(reference), pixels(result.image)
    outside = mask == 0
    assert np.array_equal(after[outside], before[outside])
    assert np.abs(after[~outside] - before[~outside]).mean() > 10


def test_an_empty_mask_changes_nothing(reference: bytes) -> None:
    mask = png(np.zeros((HEIGHT, WIDTH), np.uint8))
    result = render(spec("a storm", Quality.HIGH, references=(reference,), mask=mask))
    assert np.array_equal(pixels(result.image), pixels(reference))


def test_inpainting_is_deterministic(reference: bytes) -> None:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[:, : WIDTH // 2] = 255
    masked = spec("a boat", Quality.HIGH, references=(reference,), mask=png(mask))
    assert render(masked).image == render(masked).image


def test_inpainting_rejects_mismatched_images(reference: bytes) -> None:
    whole = png(Image.new("L", (WIDTH, HEIGHT), 255))
    half = png(Image.new("L", (WIDTH // 2, HEIGHT), 255))
    narrow_image = png(Image.new("RGB", (WIDTH // 2, HEIGHT)))
    cases: list[tuple[tuple[bytes, ...], bytes, str]] = [
        ((), whole, "mask"),
        ((narrow_image,), whole, "references[0]"),
        ((reference,), half, "mask"),
    ]
    for references, mask, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            render(spec(references=references, mask=mask))
        assert [violation.field for violation in caught.value.violations] == [field]


# --- progress ---


def test_progress_is_reported_in_order_and_ends_done() -> None:
    events: list[tuple[float, str]] = []
    render(spec('a city by the sea "HI"', Quality.HIGH), lambda f, s: events.append((f, s)))
    fractions = [fraction for fraction, _ in events]
    assert len(events) >= 5
    assert fractions == sorted(fractions)
    assert events[0] == (0.0, "composing")
    assert events[-1] == (1.0, "done")
    assert {"lettering", "encoding"} <= {stage for _, stage in events}


def test_progress_is_optional() -> None:
    assert isinstance(render(spec(quality=Quality.LOW), None), RenderResult)
