"""Which of the generator's tiers the router routes, reconciled with its prices and policy.

The generator says which tiers exist (`ListTiers`); the router's price table and policy file
say what they cost and when to use them. They are written apart and change apart, so they can
disagree, and a router that is serving cannot refuse to start over it. The rule is that money
decides: a tier (or a size of a tier) the generator offers without a price is not routed, and
is named in an error line; a price, latency or fallback for a tier or size the generator does
not offer is ignored with a warning; a policy rule naming a tier that is not routed is logged
as an error and skipped where a request meets it (`RoutingPolicy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from services.router.routing.catalogue import ImageSize, TierCatalogue, TierSpec
from services.router.routing.policy_file import PolicyRules
from services.router.routing.pricing import PriceTable
from services.runtime.errors import InvalidArgument

__all__ = ["Note", "Routable", "reconcile"]


@dataclass(frozen=True)
class Note:
    """One disagreement between the generator's tiers and the router's files, for the log."""

    #: "error" when something the generator offers cannot be routed, "warning" when something
    #: the router's files say is ignored.
    level: Literal["error", "warning"]
    message: str


@dataclass(frozen=True)
class Routable:
    """The tiers the router routes and what reconciling left out."""

    #: The generator's tiers that have prices, in its rank order, with only their priced sizes
    #: and with the policy's latency overrides applied.
    catalogue: TierCatalogue
    #: Tiers the generator offers that have no price: refused by name when asked for.
    unpriced: frozenset[str]
    #: The policy's fallbacks between routed tiers, each to a lower rank.
    fallback: Mapping[str, str]
    notes: tuple[Note, ...]
    #: Every tier the generator offers, routed or not, in its rank order.
    offered: TierCatalogue

    def require(self, name: str, *, field: str) -> TierSpec:
        """The routed tier called `name`; InvalidArgument on `field` when the generator does not
        offer it (UNKNOWN_TIER) or it has no price (TIER_NOT_PRICED)."""
        if name in self.unpriced:
            raise InvalidArgument(
                f"tier {name!r} is offered by the generator but has no price here, so it cannot"
                " be routed; choose another tier",
                field=field,
                reason="TIER_NOT_PRICED",
                metadata={"tier": name},
            )
        return self.catalogue.require(name, field=field)

    def why_not(self, name: str) -> str:
        """Why the tier called `name` is not routed, for a reason or a log line."""
        return _why_not(name, self.offered)


def reconcile(offered: TierCatalogue, prices: PriceTable, rules: PolicyRules) -> Routable:
    """The routable part of `offered`, given the router's `prices` and policy `rules`."""
    notes: list[Note] = []
    tiers: list[TierSpec] = []
    unpriced: set[str] = set()
    for tier in offered:
        priced = _priced(tier, prices.generation.get(tier.name, {}), notes)
        if priced is None:
            unpriced.add(tier.name)
        else:
            tiers.append(_with_latencies(priced, rules.latency.get(tier.name, {}), notes))
    catalogue = TierCatalogue(tuple(tiers))
    for name in prices.generation:
        if offered.find(name) is None:
            notes.append(
                Note("warning", f"prices of tier {name} ignored: the generator does not offer it")
            )
    for name in rules.latency:
        if catalogue.find(name) is None:
            notes.append(
                Note("warning", f"policy latency.{name} ignored: tier {name} is not routed")
            )
    for stage, rule in rules.stages.items():
        for name in rule.tiers:
            if catalogue.find(name) is None:
                notes.append(
                    Note(
                        "error",
                        f"policy stages.{stage} names tier {name}, which is not routed"
                        f" ({_why_not(name, offered)}); its rule is skipped",
                    )
                )
    return Routable(
        catalogue=catalogue,
        unpriced=frozenset(unpriced),
        fallback=_fallbacks(catalogue, offered, rules.fallback, notes),
        notes=tuple(notes),
        offered=offered,
    )


def _priced(tier: TierSpec, prices: Mapping[ImageSize, int], notes: list[Note]) -> TierSpec | None:
    """`tier` with only the sizes it has prices for; None when it has none."""
    for size in prices:
        if size not in tier.sizes:
            notes.append(
                Note(
                    "warning",
                    f"price of tier {tier.name} at {size} ignored: the generator's {tier.name}"
                    f" offers {', '.join(tier.sizes)}",
                )
            )
    sizes = tuple(size for size in tier.sizes if size in prices)
    if not sizes:
        notes.append(
            Note(
                "error",
                f"tier {tier.name} is offered by the generator but has no price"
                f" ([generate.{tier.name}] in the price table): it is not routed",
            )
        )
        return None
    missing = [str(size) for size in tier.sizes if size not in prices]
    if missing:
        notes.append(
            Note(
                "error",
                f"tier {tier.name} is offered at {', '.join(missing)} without a price: it is not"
                f" routed at {', '.join(missing)}",
            )
        )
    latencies = {size: tier.expected_latency_seconds[size] for size in sizes}
    return replace(tier, sizes=sizes, expected_latency_seconds=latencies)


def _with_latencies(
    tier: TierSpec, overrides: Mapping[ImageSize, float], notes: list[Note]
) -> TierSpec:
    latencies = dict(tier.expected_latency_seconds)
    for size, seconds in overrides.items():
        if size in latencies:
            latencies[size] = seconds
        else:
            notes.append(
                Note(
                    "warning",
                    f"policy latency.{tier.name}.{size} ignored: {tier.name} is not routed at"
                    f" {size}",
                )
            )
    return replace(tier, expected_latency_seconds=latencies)


def _fallbacks(
    catalogue: TierCatalogue,
    offered: TierCatalogue,
    fallback: Mapping[str, str],
    notes: list[Note],
) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, lower_name in fallback.items():
        tier, lower = catalogue.find(name), catalogue.find(lower_name)
        if tier is None or lower is None:
            missing = lower_name if tier is not None else name
            why = f"tier {missing} is not routed ({_why_not(missing, offered)})"
        elif catalogue.rank(lower) >= catalogue.rank(tier):
            # The credits held for a tier must cover its fallback.
            why = f"{lower_name} does not rank below {name}"
        else:
            kept[name] = lower_name
            continue
        notes.append(Note("warning", f"policy fallback {name} -> {lower_name} ignored: {why}"))
    return kept


def _why_not(name: str, offered: TierCatalogue) -> str:
    if offered.find(name) is None:
        return "the generator does not offer it"
    return "it has no price"
