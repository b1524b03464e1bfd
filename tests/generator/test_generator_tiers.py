"""The tier catalogue: embedded defaults, TOML files good and bad, and render request checks."""

from __future__ import annotations

import dataclasses
import io
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from services.generator.tiers import (
    DEFAULT_CATALOGUE_TOML,
    Quality,
    ReferenceLimits,
    RenderRequest,
    TierCatalogue,
    TierConfigError,
    load_catalogue,
    parse_catalogue,
    validate_request,
)
from services.runtime.errors import InvalidArgument
from services.runtime.resolution import MAX_PROMPT_CHARS, AspectRatio, ImageSize, Resolution

ONE_TIER = """
[tiers.solo]
sizes = ["1K"]
expected_latency_seconds = { "1K" = 0.1 }
"""


def png(width: int, height: int, colour: tuple[int, int, int] = (40, 80, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def catalogue() -> TierCatalogue:
    return load_catalogue()


# --- the embedded defaults ---


def test_defaults_offer_three_tiers_cheapest_first(catalogue: TierCatalogue) -> None:
    assert catalogue.names == ("nano", "standard", "pro")
    assert len(catalogue) == 3
    assert [tier.name for tier in catalogue] == ["nano", "standard", "pro"]
    assert all(tier.backend == "builtin" for tier in catalogue)
    assert [tier.quality for tier in catalogue] == [Quality.LOW, Quality.MEDIUM, Quality.HIGH]


def test_default_sizes_and_capabilities(catalogue: TierCatalogue) -> None:
    nano, standard, pro = catalogue.tier("nano"), catalogue.tier("standard"), catalogue.tier("pro")
    assert nano.sizes == (ImageSize.K1,)
    assert standard.sizes == (ImageSize.K1, ImageSize.K2)
    assert pro.sizes == (ImageSize.K1, ImageSize.K2, ImageSize.K4)
    for tier in catalogue:
        assert set(tier.aspect_ratios) == set(AspectRatio)
        assert set(tier.expected_latency_seconds) == set(tier.sizes)
        assert tier.max_concurrency >= 1
        assert tier.smallest_size is ImageSize.K1
    assert (nano.capabilities.text_rendering, nano.capabilities.inpainting) == (False, False)
    assert nano.capabilities.max_reference_images == 1
    assert standard.capabilities.text_rendering and standard.capabilities.inpainting
    assert standard.capabilities.max_reference_images == 4
    assert pro.capabilities.text_rendering and pro.capabilities.inpainting
    assert pro.capabilities.max_reference_images == 8
    assert nano.offers(Resolution(ImageSize.K1, AspectRatio.R21_9))
    assert not nano.offers(Resolution(ImageSize.K2, AspectRatio.R1_1))


def test_defaults_come_from_the_documented_toml() -> None:
    assert parse_catalogue(DEFAULT_CATALOGUE_TOML) == load_catalogue(None)


def test_unknown_tier_is_an_invalid_argument_on_tier(catalogue: TierCatalogue) -> None:
    with pytest.raises(InvalidArgument) as caught:
        catalogue.tier("ultra")
    assert [violation.field for violation in caught.value.violations] == ["tier"]
    assert "nano, standard, pro" in caught.value.message


# --- loading files ---


def test_a_file_replaces_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "tiers.toml"
    path.write_text(
        """
[limits]
max_reference_bytes = 1000

[tiers.draft]
display_name = "Draft"
quality = "low"
sizes = ["1K"]
aspect_ratios = ["16:9", "1:1"]
max_concurrency = 3
queue_limit = 0
expected_latency_seconds = { "1K" = 0.2 }

[tiers.final]
backend = "gemini"
sizes = ["4K", "2K"]
max_reference_images = 2
inpainting = true
expected_latency_seconds = { "2K" = 3, "4K" = 9.5 }
""",
        encoding="utf-8",
    )
    catalogue = load_catalogue(path, backends={"builtin", "gemini"})
    draft, final = catalogue.tiers
    assert catalogue.reference_limits == ReferenceLimits(max_bytes=1000)
    assert (draft.name, draft.display_name, draft.backend) == ("draft", "Draft", "builtin")
    assert draft.aspect_ratios == (AspectRatio.R16_9, AspectRatio.R1_1)
    assert (draft.max_concurrency, draft.queue_limit) == (3, 0)
    assert (final.display_name, final.backend, final.quality) == ("Final", "gemini", Quality.MEDIUM)
    assert final.smallest_size is ImageSize.K2
    assert final.expected_latency_seconds == {ImageSize.K2: 3.0, ImageSize.K4: 9.5}
    assert final.capabilities.inpainting and not final.capabilities.text_rendering


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(TierConfigError, match=r"nowhere\.toml"):
        load_catalogue(missing)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("tiers = [", "not valid TOML"),
        ("[limits]\n", "missing [tiers]"),
        ("[tiers]\n", "defines no tier"),
        ("tiers = 3\n", "tiers must be a table"),
        ("[other]\n" + ONE_TIER, "unknown top-level key(s): other"),
        ("[limits]\nmax_reference_bytes = 0\n" + ONE_TIER, "limits.max_reference_bytes"),
        ("[limits]\nsize = 1\n" + ONE_TIER, "limits: unknown key(s) size"),
        ("[tiers]\nsolo = 1\n", "tiers.solo: must be a table"),
        (ONE_TIER.replace("solo", '"Solo!"'), "tiers.Solo!: a tier name"),
        (ONE_TIER.replace("solo", "auto"), "tiers.auto: 'auto' is reserved"),
        (ONE_TIER + "colour = 'red'\n", "tiers.solo: unknown key(s) colour"),
        (ONE_TIER.replace('sizes = ["1K"]', ""), "tiers.solo: missing sizes"),
        (ONE_TIER.replace('"1K"]', '"8K"]'), "tiers.solo.sizes: '8K' is not one of 1K, 2K, 4K"),
        (ONE_TIER.replace('["1K"]', '["1K", "1K"]'), "tiers.solo.sizes: lists a value twice"),
        (ONE_TIER.replace('["1K"]', "[]"), "tiers.solo.sizes: must be a non-empty list"),
        (ONE_TIER + "aspect_ratios = ['5:4']\n", "tiers.solo.aspect_ratios: '5:4'"),
        (ONE_TIER + "quality = 'ultra'\n", "tiers.solo.quality: 'ultra'"),
        (ONE_TIER + "backend = ''\n", "tiers.solo.backend: must be a non-empty string"),
        (ONE_TIER + "display_name = 7\n", "tiers.solo.display_name"),
        (ONE_TIER + "max_reference_images = -1\n", "tiers.solo.max_reference_images"),
        (ONE_TIER + "max_concurrency = 0\n", "tiers.solo.max_concurrency: must be an integer >= 1"),
        (ONE_TIER + "max_concurrency = true\n", "tiers.solo.max_concurrency"),
        (ONE_TIER + "queue_limit = 1.5\n", "tiers.solo.queue_limit"),
        (ONE_TIER + "text_rendering = 'yes'\n", "tiers.solo.text_rendering: must be true or false"),
        (ONE_TIER + "inpainting = true\n", "tiers.solo.inpainting: in-painting edits a reference"),
        (
            ONE_TIER.replace('{ "1K" = 0.1 }', "0.1"),
            "tiers.solo.expected_latency_seconds: must be a table",
        ),
        (
            ONE_TIER.replace('sizes = ["1K"]', 'sizes = ["1K", "2K"]'),
            "tiers.solo.expected_latency_seconds: missing 2K",
        ),
        (
            ONE_TIER.replace('{ "1K" = 0.1 }', '{ "1K" = 0.1, "4K" = 1 }'),
            "tiers.solo.expected_latency_seconds: 4K is not one of the tier's sizes",
        ),
        (
            ONE_TIER.replace('"1K" = 0.1', '"1K" = -1'),
            "tiers.solo.expected_latency_seconds.1K: must be seconds > 0",
        ),
        (
            ONE_TIER.replace('"1K" = 0.1', '"1K" = nan'),
            "tiers.solo.expected_latency_seconds.1K",
        ),
    ],
)
def test_a_bad_file_names_the_bad_entry(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "tiers.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TierConfigError) as caught:
        load_catalogue(path)
    assert str(caught.value).startswith(str(path))
    assert complaint in str(caught.value)


def test_a_backend_this_process_lacks_is_a_config_error() -> None:
    text = ONE_TIER + "backend = 'openai'\n"
    assert parse_catalogue(text).tier("solo").backend == "openai"
    with pytest.raises(TierConfigError, match=r"unknown backend 'openai'; available: builtin"):
        parse_catalogue(text, backends={"builtin"})


# --- render requests ---


def fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


def rejected(catalogue: TierCatalogue, request: RenderRequest) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_request(catalogue, request)
    return caught.value


def test_a_good_request_returns_its_tier(catalogue: TierCatalogue) -> None:
    request = RenderRequest(
        tier="pro",
        prompt="x" * MAX_PROMPT_CHARS,
        seed=2**64 - 1,
        resolution=Resolution(ImageSize.K4, AspectRatio.R21_9),
        references=(png(64, 64),) * 8,
        strength=1.0,
    )
    assert validate_request(catalogue, request).name == "pro"


def test_an_inpainting_request_is_accepted_where_offered(catalogue: TierCatalogue) -> None:
    request = RenderRequest(
        tier="standard",
        prompt="fix the sky",
        seed=0,
        resolution=Resolution(ImageSize.K1, AspectRatio.R16_9),
        references=(png(1376, 768),),
        mask=png(1376, 768, (255, 255, 255)),
    )
    assert validate_request(catalogue, request).name == "standard"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tier": "ultra"}, "tier"),
        ({"tier": ""}, "tier"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": " \n\t "}, "prompt"),
        ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"strength": -0.01}, "strength"),
        ({"strength": 1.01}, "strength"),
        ({"strength": math.nan}, "strength"),
        ({"strength": math.inf}, "strength"),
        ({"resolution": Resolution(ImageSize.K2, AspectRatio.R1_1)}, "resolution"),
        ({"references": (png(8, 8), png(8, 8))}, "references"),
        ({"references": (b"not an image",)}, "references[0]"),
        ({"references": (png(8, 8)[:40],)}, "references[0]"),
        ({"references": (b"GIF89a" + b"\0" * 20,)}, "references[0]"),
        ({"mask": png(8, 8)}, "mask"),
        ({"tier": "standard", "mask": png(8, 8)}, "mask"),
    ],
)
def test_each_bad_field_is_named(
    catalogue: TierCatalogue, changes: dict[str, Any], field: str
) -> None:
    base = RenderRequest(tier="nano", prompt="a calm lake", seed=1)
    request = dataclasses.replace(base, **changes)
    error = rejected(catalogue, request)
    assert fields(error) == [field]
    assert error.message


def test_a_large_reference_is_rejected_by_bytes_and_by_pixels() -> None:
    limits = "[limits]\nmax_reference_bytes = 2000\nmax_reference_pixels = 400\n"
    tier = ONE_TIER.replace("[tiers.solo]", "[tiers.solo]\nmax_reference_images = 2")
    catalogue = parse_catalogue(limits + tier)
    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 80).save(noisy, format="PNG")
    request = RenderRequest(
        tier="solo", prompt="p", seed=0, references=(noisy.getvalue(), png(30, 30))
    )
    error = rejected(catalogue, request)
    assert fields(error) == ["references[0]", "references[1]"]
    assert "at most 2000" in error.violations[0].description
    assert "30x30; at most 400 pixels" in error.violations[1].description


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size but holds no pixels: how a decompression bomb starts."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(8000, 8000), (10000, 10000), (20000, 20000)])
def test_a_huge_image_is_refused_before_it_is_decoded(
    catalogue: TierCatalogue, width: int, height: int
) -> None:
    request = RenderRequest(
        tier="nano", prompt="p", seed=0, references=(png_header(width, height),)
    )
    error = rejected(catalogue, request)
    assert fields(error) == ["references[0]"]
    assert "pixels" in error.message


def test_mask_problems_are_named(catalogue: TierCatalogue) -> None:
    square = Resolution(ImageSize.K1, AspectRatio.R1_1)
    base = RenderRequest(tier="standard", prompt="p", seed=0, resolution=square)

    def with_(**changes: Any) -> RenderRequest:
        return dataclasses.replace(base, **changes)

    no_image = rejected(catalogue, with_(mask=png(1024, 1024)))
    assert fields(no_image) == ["mask"]
    assert "references[0]" in no_image.message

    wrong_mask = rejected(catalogue, with_(references=(png(1024, 1024),), mask=png(512, 512)))
    assert fields(wrong_mask) == ["mask"]
    assert "512x512" in wrong_mask.message and "1024x1024" in wrong_mask.message

    wrong_image = rejected(catalogue, with_(references=(png(512, 512),), mask=png(512, 512)))
    assert fields(wrong_image) == ["references[0]"]

    unreadable = rejected(catalogue, with_(references=(png(1024, 1024),), mask=b"nope"))
    assert fields(unreadable) == ["mask"]


def test_every_problem_is_reported_at_once(catalogue: TierCatalogue) -> None:
    request = RenderRequest(
        tier="nano",
        prompt="",
        seed=0,
        resolution=Resolution(ImageSize.K4, AspectRatio.R1_1),
        references=(b"junk", b"junk"),
        strength=2.0,
        mask=b"junk",
    )
    error = rejected(catalogue, request)
    assert fields(error) == [
        "prompt",
        "strength",
        "resolution",
        "references",
        "references[0]",
        "references[1]",
        "mask",
    ]
    assert error.reason == "INVALID_ARGUMENT"


def test_a_tier_without_an_aspect_ratio_rejects_it() -> None:
    catalogue = parse_catalogue(ONE_TIER + "aspect_ratios = ['1:1']\n")
    request = RenderRequest(
        tier="solo", prompt="p", seed=0, resolution=Resolution(ImageSize.K1, AspectRatio.R16_9)
    )
    error = rejected(catalogue, request)
    assert fields(error) == ["resolution"]
    assert "16:9" in error.message
