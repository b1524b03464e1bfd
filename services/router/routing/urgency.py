"""How interactive a job is: the one rule the router tells the generator and upscaler.

A job is **interactive** when someone is waiting for it in the ideation loop: its stage is
explore or validate, and its tier renders its size in at most `INTERACTIVE_SECONDS` (the
generator's own expected latency, from `ListTiers`). With the default catalogue that is every
1K render of those stages (nano 0.05 s, standard 0.2 s, pro 0.35 s), and no 2K or 4K one.
Everything else is **bulk**: refine (promotes, edits, explicit pro renders), enhance (upscales),
and any render slow enough that nobody watches it happen, such as a provider's tier taking
seconds per image even at explore.

The generator and upscaler start interactive work first, within a bound that keeps bulk work
moving (`services.runtime.fairshare`); the rule lives here so that it is decided once, by the
service that knows the stage.
"""

from __future__ import annotations

from services.router.routing.catalogue import ImageSize, Stage, TierCatalogue
from services.runtime.fairshare import Urgency

__all__ = ["INTERACTIVE_SECONDS", "INTERACTIVE_STAGES", "render_urgency", "urgency_of"]

#: Stages at which a person waits for each image before choosing the next.
INTERACTIVE_STAGES = frozenset({Stage.EXPLORE, Stage.VALIDATE})
#: The slowest render (the generator's expected latency) still counted as interactive.
INTERACTIVE_SECONDS = 0.5


def urgency_of(stage: Stage, expected_seconds: float | None) -> Urgency:
    """The urgency of a job at `stage` whose render is expected to take `expected_seconds`
    (None when unknown, or for work that is not a render: then bulk)."""
    interactive = (
        stage in INTERACTIVE_STAGES
        and expected_seconds is not None
        and expected_seconds <= INTERACTIVE_SECONDS
    )
    return Urgency.INTERACTIVE if interactive else Urgency.BULK


def render_urgency(catalogue: TierCatalogue, stage: Stage, tier: str, size: ImageSize) -> Urgency:
    """The urgency of a render of `tier` at `size` for `stage`, by the catalogue's latency."""
    spec = catalogue.find(tier)
    return urgency_of(stage, None if spec is None else spec.expected_latency_seconds.get(size))
