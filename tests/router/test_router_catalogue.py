"""Tests of the router's tier catalogue: ranks, sizes, aspect ratios, capacities, size classes,
what changed between two answers of the generator, and the refusal before it has answered."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.router.routing.admission import TierCapacity, capacities
from services.router.routing.catalogue import (
    CATALOGUE_RETRY_SECONDS,
    AspectRatio,
    ImageSize,
    TierCatalogue,
    catalogue_unknown,
    size_class,
)
from services.runtime.errors import InvalidArgument
from tests.router.generator_tiers import reported_tiers

CATALOGUE = reported_tiers()


def test_tiers_in_rank_order_with_their_sizes() -> None:
    assert CATALOGUE.names == ("nano", "standard", "pro")
    sizes = {tier.name: tier.sizes for tier in CATALOGUE}
    assert sizes == {
        "nano": (ImageSize.K1,),
        "standard": (ImageSize.K1, ImageSize.K2),
        "pro": (ImageSize.K1, ImageSize.K2, ImageSize.K4),
    }
    for tier in CATALOGUE:
        assert set(tier.expected_latency_seconds) == set(tier.sizes)
        assert tier.smallest_size is ImageSize.K1


def test_neighbours_by_rank() -> None:
    nano, standard, pro = CATALOGUE.tiers
    assert CATALOGUE.above(nano) == (standard, pro)
    assert CATALOGUE.below(pro) == (standard, nano)
    assert CATALOGUE.above(pro) == ()
    assert [CATALOGUE.rank(tier) for tier in (nano, standard, pro)] == [0, 1, 2]


def test_largest_size_up_to_a_limit() -> None:
    nano, standard, pro = CATALOGUE.tiers
    assert pro.largest_size_up_to(ImageSize.K2) is ImageSize.K2
    assert standard.largest_size_up_to(ImageSize.K4) is ImageSize.K2
    assert nano.largest_size_up_to(ImageSize.K2) is ImageSize.K1


def test_a_tier_offers_a_size_at_its_aspect_ratios_only() -> None:
    standard = CATALOGUE.find("standard")
    assert standard is not None
    square_only = replace(standard, aspect_ratios=(AspectRatio.R1_1,))
    assert square_only.offers(ImageSize.K2)
    assert square_only.offers(ImageSize.K2, AspectRatio.R1_1)
    assert not square_only.offers(ImageSize.K2, AspectRatio.R16_9)
    assert not square_only.offers(ImageSize.K4, AspectRatio.R1_1)


def test_unknown_tier_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        CATALOGUE.require("ultra", field="tier")
    assert caught.value.reason == "UNKNOWN_TIER"
    assert [violation.field for violation in caught.value.violations] == ["tier"]
    assert "nano, standard, pro" in caught.value.message
    assert CATALOGUE.find("Pro") is None


def test_capacities_are_the_generators_places_per_tier() -> None:
    assert capacities(CATALOGUE) == {
        "nano": TierCapacity(places=2 + 64, retry_after_seconds=0.05),
        "standard": TierCapacity(places=2 + 16, retry_after_seconds=0.2),
        "pro": TierCapacity(places=1 + 8, retry_after_seconds=0.35),
    }


def test_changes_between_two_answers_name_each_tier() -> None:
    nano, standard, _ = CATALOGUE.tiers
    after = TierCatalogue((nano, replace(standard, inpainting=False, queue_limit=4)))
    assert after.changes_from(CATALOGUE) == (
        "tier pro removed",
        "tier standard changed: inpainting True -> False; queue_limit 16 -> 4",
    )
    assert CATALOGUE.changes_from(after) == (
        "tier pro added",
        "tier standard changed: inpainting False -> True; queue_limit 4 -> 16",
    )
    assert CATALOGUE.changes_from(None) == ("tiers nano, standard, pro",)
    assert CATALOGUE.changes_from(reported_tiers()) == ()
    assert reported_tiers() == CATALOGUE


def test_before_the_generator_answers_calls_are_unavailable_with_a_retry() -> None:
    error = catalogue_unknown()
    assert (error.code, error.reason) == ("UNAVAILABLE", "CATALOGUE_UNKNOWN")
    assert error.retry_after == CATALOGUE_RETRY_SECONDS


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1024, 1024, ImageSize.K1),
        (1584, 672, ImageSize.K1),
        (1500, 1500, ImageSize.K2),
        (2048, 2048, ImageSize.K2),
        (3168, 1344, ImageSize.K2),
        (4096, 4096, ImageSize.K4),
        (6336, 2688, ImageSize.K4),
        (8192, 8192, None),
    ],
)
def test_size_class_is_the_smallest_class_holding_the_pixels(
    width: int, height: int, expected: ImageSize | None
) -> None:
    assert size_class(width, height) is expected
