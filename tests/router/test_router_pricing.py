"""Tests of the price table: defaults, lookups, upscale bands, bad price files, and how prices
meet the generator's tiers (a tier offered without a price is not routed; a price for a tier or
size not offered is ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.routing.catalogue import ImageSize, TierCatalogue, TierSpec
from services.router.routing.policy_file import DEFAULT_POLICY_TOML, PolicyRules
from services.router.routing.pricing import DEFAULT_PRICES_TOML, PriceTable, RouterConfigError
from services.router.routing.routable import Note, reconcile
from services.router.routing.toml_source import TomlSource
from services.runtime.errors import InvalidArgument
from tests.router.generator_tiers import reported_tiers

RULES = PolicyRules.parse(TomlSource(DEFAULT_POLICY_TOML, "policy"))


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


def test_unpriced_tier_is_invalid(prices: PriceTable) -> None:
    with pytest.raises(InvalidArgument) as caught:
        prices.price("ultra", ImageSize.K1)
    assert caught.value.violations[0].field == "tier"
    assert caught.value.reason == "UNKNOWN_TIER"


def test_unpriced_size_is_invalid(prices: PriceTable) -> None:
    with pytest.raises(InvalidArgument) as caught:
        prices.price("nano", ImageSize.K2)
    assert caught.value.violations[0].field == "size"
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
        ('"1K" = 2\n', "", ":3: generate.nano: prices no size"),
        ('"4K" = 48', '"8K" = 48', ":13: generate.pro.8K: not a size"),
        ('"2K" = 12', '"2K" = 0', ":8: generate.standard.2K: must be a whole number of credits"),
        ('"2K" = 12', '"2K" = 12.5', "generate.standard.2K: must be a whole number of credits"),
        ('"2K" = 12', '"2K" = true', "generate.standard.2K: must be a whole number of credits"),
        ("[generate.pro]", "[generate]\npro = 3", "generate.pro: must be a table"),
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


def test_tiers_the_table_does_not_know_load_and_wait_for_the_generator(tmp_path: Path) -> None:
    # Which tiers exist is the generator's to say: a price file naming others is not a bad file.
    path = tmp_path / "prices.toml"
    path.write_text(DEFAULT_PRICES_TOML + '\n[generate.ultra]\n"4K" = 99\n')
    assert PriceTable.load(path).price("ultra", ImageSize.K4) == 99


def test_every_tier_offered_and_priced_is_routed() -> None:
    routable = reconcile(reported_tiers(), PriceTable.load(), RULES)
    assert routable.catalogue == reported_tiers()
    assert routable.unpriced == frozenset()
    assert routable.notes == ()


def test_a_tier_offered_without_a_price_is_not_routed_and_said_loudly() -> None:
    offered = reported_tiers()
    ultra = TierSpec("ultra", (ImageSize.K4,), {ImageSize.K4: 9.0}, max_reference_images=1)
    routable = reconcile(TierCatalogue((*offered.tiers, ultra)), PriceTable.load(), RULES)
    assert routable.catalogue.names == ("nano", "standard", "pro")
    assert routable.unpriced == {"ultra"}
    assert routable.notes == (
        Note(
            "error",
            "tier ultra is offered by the generator but has no price ([generate.ultra] in the"
            " price table): it is not routed",
        ),
    )
    with pytest.raises(InvalidArgument) as caught:
        routable.require("ultra", field="tier")
    assert (caught.value.reason, caught.value.metadata) == ("TIER_NOT_PRICED", {"tier": "ultra"})
    assert "ultra" in caught.value.message


def test_a_size_offered_without_a_price_is_not_routed(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(DEFAULT_PRICES_TOML.replace('"4K" = 48\n', ""))
    routable = reconcile(reported_tiers(), PriceTable.load(path), RULES)
    pro = routable.catalogue.find("pro")
    assert pro is not None
    assert pro.sizes == (ImageSize.K1, ImageSize.K2)
    assert set(pro.expected_latency_seconds) == {ImageSize.K1, ImageSize.K2}
    assert [note.level for note in routable.notes] == ["error"]
    assert "tier pro is offered at 4K without a price" in routable.notes[0].message


def test_prices_for_what_the_generator_does_not_offer_are_ignored_with_a_warning(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        DEFAULT_PRICES_TOML.replace('"1K" = 2\n', '"1K" = 2\n"2K" = 4\n', 1)
        + '\n[generate.ultra]\n"4K" = 99\n'
    )
    routable = reconcile(reported_tiers(), PriceTable.load(path), RULES)
    assert routable.catalogue == reported_tiers()
    assert routable.notes == (
        Note(
            "warning",
            "price of tier nano at 2K ignored: the generator's nano offers 1K",
        ),
        Note("warning", "prices of tier ultra ignored: the generator does not offer it"),
    )
