"""Admission: places at the generator for a batch's renders, taken before any credit is held.

The generator takes a bounded number of renders per tier (running and waiting) and refuses the
rest with RESOURCE_EXHAUSTED. Were the router to hold credits first and learn of the refusal
from the generator, a burst would hold credits for work that never runs, and calls arriving
meanwhile would be refused INSUFFICIENT_CREDITS while the account can pay. So the router keeps
its own count of the places its batches occupy in each tier, bounded by the capacity the
generator reports in the same `ListTiers` answer the tier catalogue comes from (running plus
waiting; see `capacities`), and refuses a batch that finds no place
before it holds a credit or records anything: the key stays free for a retry.

A batch occupies as many places as it renders at once (at most the router's parallel jobs), from
admission until it settles; the generator frees a place when its render ends, a little earlier,
so a router alone never sends the generator more than it takes. Several router replicas each
admit up to that capacity; the generator's own refusal then still reaches a batch, which
releases its hold at once and does not keep the key (see `Router`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from services.router.routing.catalogue import TierCatalogue
from services.runtime.errors import QuotaViolation, ResourceExhausted

__all__ = ["Admission", "TierCapacity", "capacities"]


@dataclass(frozen=True)
class TierCapacity:
    """What one tier of the generator takes at once, and how soon a place frees."""

    #: Renders running plus waiting.
    places: int
    #: About one render's time: when a place frees, so when a refused call may retry.
    retry_after_seconds: float


def capacities(catalogue: TierCatalogue) -> dict[str, TierCapacity]:
    """What each of the generator's tiers takes at once, as its catalogue reports it."""
    return {
        tier.name: TierCapacity(
            places=tier.places,
            retry_after_seconds=min(tier.expected_latency_seconds.values(), default=1.0),
        )
        for tier in catalogue
    }


class Admission:
    """Places per tier; a tier whose capacity is not known yet admits everything."""

    def __init__(self) -> None:
        self._capacity: dict[str, TierCapacity] = {}
        self._taken: dict[str, int] = {}

    def configure(self, capacity: Mapping[str, TierCapacity]) -> None:
        """Adopts the generator's capacities; places already taken stay taken."""
        self._capacity = dict(capacity)

    def taken(self, tier: str) -> int:
        """Places the router's batches occupy in `tier` now."""
        return self._taken.get(tier, 0)

    @contextlib.contextmanager
    def admit(self, tier: str, places: int) -> Iterator[None]:
        """Holds `places` in `tier` for the block; ResourceExhausted (QUEUE_FULL) when fewer
        are free, with a RetryInfo of about one render and a QuotaFailure naming the tier."""
        capacity = self._capacity.get(tier)
        taken = self._taken.get(tier, 0)
        if capacity is not None:
            # A batch wider than the whole tier still runs once the tier is idle.
            wanted = min(places, capacity.places)
            if taken + wanted > capacity.places:
                raise _queue_full(tier, capacity, taken)
            places = wanted
        self._taken[tier] = taken + places
        try:
            yield
        finally:
            self._taken[tier] -= places


def _queue_full(tier: str, capacity: TierCapacity, taken: int) -> ResourceExhausted:
    retry_after = capacity.retry_after_seconds
    description = (
        f"tier {tier!r} is busy: {taken} of its {capacity.places} places (running and"
        " waiting) are taken"
    )
    return ResourceExhausted(
        f"{description}; nothing was charged or recorded, retry in {retry_after:g} s with the"
        " same idempotency key",
        retry_after=retry_after,
        violations=[QuotaViolation(f"tier:{tier}", description)],
        reason="QUEUE_FULL",
        metadata={"tier": tier, "places": str(capacity.places)},
    )
