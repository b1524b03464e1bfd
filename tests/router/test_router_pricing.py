"""Tests of the price table: defaults, lookups, upscale bands and bad price files."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.routing.catalogue import ImageSize
from services.router.routing.pricing import DEFAULT_PRICES_TOML, PriceTable, RouterConfigError
from services.runtime.errors import InvalidArgument


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


@pytest.mark.parametrize(
    ("tier", "size", "credits"),
    [
        ("nano", ImageSize.K1, 2),
        ("standard", ImageSize.K1, 6),
        ("standard", ImageSize.K2, 12),
        ("pro", ImageSize.K1, 15),
        ("pro", ImageSize.K2, 24),
        ("pro", ImageSize.K4, 48),
    ],
)
def test_default_generation_prices(
    prices: PriceTable, tier: str, size: ImageSize, credits: int
) -> None:
    assert prices.price(tier, size) == credits


def test_unknown_tier_is_invalid(prices: PriceTable) -> None:
    with pytest.raises(InvalidArgument) as caught:
        prices.price("ultra", ImageSize.K1)
    assert caught.value.violations[0].field == "tier"
    assert caught.value.reason == "UNKNOWN_TIER"


def test_size_the_tier_does_not_offer_is_invalid(prices: PriceTable) -> None:
    with pytest.raises(InvalidArgument) as caught:
        prices.price("nano", ImageSize.K2)
    assert caught.value.violations[0].field == "resolution"
    assert caught.value.reason == "SIZE_NOT_OFFERED"


@pytest.mark.parametrize(
    ("width", "height", "credits"),
    [
        (1536, 1536, 4),  # 1K upscaled 1.5x
        (2048, 2048, 4),  # 1K upscaled 2x
        (3168, 1344, 4),  # 21:9 1K upscaled 2x is still a 2K size
        (4096, 4096, 8),  # 2K upscaled 2x, or 1K upscaled 4x
        (8192, 8192, 16),  # 2K upscaled 4x
    ],
)
def test_upscale_price_by_output_size_class(
    prices: PriceTable, width: int, height: int, credits: int
) -> None:
    assert prices.upscale_price(width, height) == credits


def test_prices_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(DEFAULT_PRICES_TOML.replace('"4K" = 48', '"4K" = 60').replace("= 16", "= 30"))
    table = PriceTable.load(path)
    assert table.price("pro", ImageSize.K4) == 60
    assert table.upscale_price(8192, 8192) == 30
    assert table.price("nano", ImageSize.K1) == 2


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("[generate.pro]", "[generate.ultra]", ":9: generate.ultra: unknown tier"),
        ('"1K" = 2\n', '"1K" = 2\n"2K" = 4\n', ":4: generate.nano.2K: tier nano does not offer 2K"),
        ('"4K" = 48\n', "", "generate.pro.4K: missing price"),
        ('"4K" = 48', '"8K" = 48', ":12: generate.pro.8K: not a size"),
        ('"2K" = 12', '"2K" = 0', ":7: generate.standard.2K: must be a whole number of credits"),
        ('"2K" = 12', '"2K" = 12.5', "generate.standard.2K: must be a whole number of credits"),
        ('"2K" = 12', '"2K" = true', "generate.standard.2K: must be a whole number of credits"),
        ("larger = 16", "", "upscale.larger: missing price"),
        ("larger = 16", "larger = 5", "upscale.larger: 5 credits is less than the 8"),
        ('"2K" = 4', '"2K" = 10', "upscale.4K: 8 credits is less than the 10"),
        ('"2K" = 4', '"3K" = 4', "upscale.3K: not a size"),
        ("[upscale]", "[upscale]\n[discounts]", "discounts: unknown table"),
        ("[upscale]", "[upscale", "not valid TOML"),
    ],
)
def test_bad_price_files_name_the_entry(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in DEFAULT_PRICES_TOML
    path = tmp_path / "prices.toml"
    path.write_text(DEFAULT_PRICES_TOML.replace(old, new, 1))
    with pytest.raises(RouterConfigError) as caught:
        PriceTable.load(path)
    assert str(caught.value).startswith(str(path))
    assert expected in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(RouterConfigError, match="cannot read"):
        PriceTable.load(tmp_path / "absent.toml")
