"""The router's view of a generator's tier catalogue, for router tests that run without one: the
generator's own parser reads the catalogue, and each tier is what `ListTiers` reports of it
(`test_router_tiers_from_generator.py` checks that against a real generator)."""

from __future__ import annotations

from services.generator.tiers import DEFAULT_CATALOGUE_TOML, parse_catalogue
from services.router.routing.catalogue import TierCatalogue, TierSpec

__all__ = ["reported_tiers"]


def reported_tiers(toml: str = DEFAULT_CATALOGUE_TOML) -> TierCatalogue:
    """The catalogue a generator configured with `toml` reports (its embedded one by default)."""
    return TierCatalogue(
        tuple(
            TierSpec(
                name=tier.name,
                sizes=tier.sizes,
                expected_latency_seconds=dict(tier.expected_latency_seconds),
                aspect_ratios=tier.aspect_ratios,
                inpainting=tier.capabilities.inpainting,
                text_rendering=tier.capabilities.text_rendering,
                max_reference_images=tier.capabilities.max_reference_images,
                max_concurrency=tier.max_concurrency,
                queue_limit=tier.queue_limit,
            )
            for tier in parse_catalogue(toml)
        )
    )
