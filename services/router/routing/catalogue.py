"""What the router knows of the tiers: their rank, the sizes they offer and how long they take.

The generator owns the full catalogue; the router keeps only what routing needs. Sizes, aspect
ratios and their pixel sizes are the generator's own (`services.generator.resolution`), so a
decision's width and height are always those of the image the generator returns.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from services.runtime.errors import InvalidArgument
from services.runtime.identifiers import excerpt
from services.runtime.resolution import AspectRatio, ImageSize, pixel_size

__all__ = [
    "DEFAULT_CATALOGUE",
    "AspectRatio",
    "Fidelity",
    "ImageSize",
    "Stage",
    "TierCatalogue",
    "TierSpec",
    "pixel_size",
    "size_class",
]


class Stage(enum.StrEnum):
    """Creative stage of a request; drives the automatic choice of tier."""

    EXPLORE = "explore"
    VALIDATE = "validate"
    REFINE = "refine"
    ENHANCE = "enhance"


class Fidelity(enum.StrEnum):
    """How faithful a result the caller wants, as a hint to automatic routing."""

    UNSPECIFIED = "unspecified"
    DRAFT = "draft"
    BALANCED = "balanced"
    HIGH = "high"


def size_class(width: int, height: int) -> ImageSize | None:
    """The smallest size class with an aspect ratio holding at least `width * height` pixels.

    None when the image is larger than every 4K size (an upscaled 4K image, for example).
    """
    pixels = width * height
    for size in ImageSize:
        if any(pixels <= w * h for w, h in (pixel_size(size, ar) for ar in AspectRatio)):
            return size
    return None


@dataclass(frozen=True)
class TierSpec:
    """One tier as the router sees it: the sizes it offers and its expected latency per size."""

    name: str
    sizes: tuple[ImageSize, ...]
    expected_latency_seconds: Mapping[ImageSize, float]
    #: Whether the tier re-renders a masked region of an image (Edit).
    inpainting: bool = False

    @property
    def smallest_size(self) -> ImageSize:
        """The size a generation gets when it names none."""
        return min(self.sizes, key=lambda size: size.scale)

    def offers(self, size: ImageSize) -> bool:
        """Whether this tier renders at `size`."""
        return size in self.sizes

    def largest_size_up_to(self, limit: ImageSize) -> ImageSize:
        """The largest size offered no larger than `limit` (the smallest offered if none is)."""
        fitting = [size for size in self.sizes if size.scale <= limit.scale]
        if not fitting:
            return self.smallest_size
        return max(fitting, key=lambda size: size.scale)


@dataclass(frozen=True)
class TierCatalogue:
    """The tiers in rank order: each renders better, slower and dearer than the one before."""

    tiers: tuple[TierSpec, ...]

    def __iter__(self) -> Iterator[TierSpec]:
        return iter(self.tiers)

    @property
    def names(self) -> tuple[str, ...]:
        """Tier names, lowest rank first."""
        return tuple(tier.name for tier in self.tiers)

    def find(self, name: str) -> TierSpec | None:
        """The tier called `name`, or None."""
        return next((tier for tier in self.tiers if tier.name == name), None)

    def require(self, name: str, *, field: str) -> TierSpec:
        """The tier called `name`; InvalidArgument on `field` (reason UNKNOWN_TIER) otherwise."""
        tier = self.find(name)
        if tier is None:
            raise InvalidArgument(
                f"unknown tier {excerpt(name)}; known tiers: {', '.join(self.names)}",
                field=field,
                reason="UNKNOWN_TIER",
            )
        return tier

    def rank(self, tier: TierSpec) -> int:
        """Position of `tier` from 0 (cheapest); higher ranks render better."""
        return self.tiers.index(tier)

    def above(self, tier: TierSpec) -> tuple[TierSpec, ...]:
        """Tiers ranked above `tier`, nearest first."""
        return self.tiers[self.rank(tier) + 1 :]

    def below(self, tier: TierSpec) -> tuple[TierSpec, ...]:
        """Tiers ranked below `tier`, nearest first."""
        return tuple(reversed(self.tiers[: self.rank(tier)]))


#: The three tiers of the suite. Latencies are the built-in renderer's (the generator's embedded
#: catalogue); a routing policy file overrides them for slower backends.
DEFAULT_CATALOGUE = TierCatalogue(
    tiers=(
        TierSpec("nano", (ImageSize.K1,), {ImageSize.K1: 0.05}),
        TierSpec(
            "standard",
            (ImageSize.K1, ImageSize.K2),
            {ImageSize.K1: 0.3, ImageSize.K2: 1.0},
            inpainting=True,
        ),
        TierSpec(
            "pro",
            (ImageSize.K1, ImageSize.K2, ImageSize.K4),
            {ImageSize.K1: 0.6, ImageSize.K2: 1.5, ImageSize.K4: 5.0},
            inpainting=True,
        ),
    )
)
