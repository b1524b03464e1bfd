"""What the router knows of the tiers: their rank, sizes, aspect ratios, latencies, features and
capacity, exactly as the generator reports them (`GeneratorService.ListTiers`).

The router keeps no catalogue of its own: one it kept could disagree with the generator's (a tier
the generator cannot in-paint on would still be sent edits, which hold credits and then fail).
Until the generator first answers, the catalogue is unknown and the calls that need it are
refused as UNAVAILABLE (`catalogue_unknown`). Sizes, aspect ratios and pixel sizes are the
suite's shared vocabulary (`services.runtime.resolution`), so a decision's width and height are
those of the image the generator returns.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.identifiers import excerpt
from services.runtime.resolution import AspectRatio, ImageSize, pixel_size

__all__ = [
    "CATALOGUE_RETRY_SECONDS",
    "AspectRatio",
    "Fidelity",
    "ImageSize",
    "Stage",
    "TierCatalogue",
    "TierSpec",
    "catalogue_unknown",
    "pixel_size",
    "ratio_not_offered",
    "size_class",
    "size_not_offered",
]

#: How soon a call refused for want of the catalogue may retry: the router asks the generator
#: again at least this often until it first answers.
CATALOGUE_RETRY_SECONDS = 1.0


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


def catalogue_unknown() -> Unavailable:
    """The refusal of a call that needs the tier catalogue before the generator has told it."""
    return Unavailable(
        "the router does not know the generator's tiers yet (the generator has not answered"
        f" ListTiers); nothing was charged or recorded, retry in {CATALOGUE_RETRY_SECONDS:g} s",
        retry_after=CATALOGUE_RETRY_SECONDS,
        reason="CATALOGUE_UNKNOWN",
    )


@dataclass(frozen=True)
class TierSpec:
    """One tier as the generator offers it: sizes, ratios, latency per size, features, capacity."""

    name: str
    sizes: tuple[ImageSize, ...]
    expected_latency_seconds: Mapping[ImageSize, float]
    aspect_ratios: tuple[AspectRatio, ...] = tuple(AspectRatio)
    #: Whether the tier re-renders a masked region of an image (Edit).
    inpainting: bool = False
    #: Whether quoted text in a prompt is drawn into the image.
    text_rendering: bool = False
    #: Reference images a render may carry; a promote needs one (its parent's image).
    max_reference_images: int = 0
    #: Renders the generator runs at once on this tier, and how many more may wait.
    max_concurrency: int = 1
    queue_limit: int = 0

    @property
    def smallest_size(self) -> ImageSize:
        """The size a generation gets when it names none."""
        return min(self.sizes, key=lambda size: size.scale)

    @property
    def places(self) -> int:
        """Renders the generator takes on this tier at once, running plus waiting."""
        return self.max_concurrency + self.queue_limit

    def offers(self, size: ImageSize, aspect_ratio: AspectRatio | None = None) -> bool:
        """Whether this tier renders at `size` (and at `aspect_ratio`, when given)."""
        return size in self.sizes and (aspect_ratio is None or aspect_ratio in self.aspect_ratios)

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
    _by_name: Mapping[str, TierSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {tier.name: tier for tier in self.tiers})

    def __iter__(self) -> Iterator[TierSpec]:
        return iter(self.tiers)

    def __len__(self) -> int:
        return len(self.tiers)

    @property
    def names(self) -> tuple[str, ...]:
        """Tier names, lowest rank first."""
        return tuple(tier.name for tier in self.tiers)

    def find(self, name: str) -> TierSpec | None:
        """The tier called `name`, or None."""
        return self._by_name.get(name)

    def require(self, name: str, *, field: str) -> TierSpec:
        """The tier called `name`; InvalidArgument on `field` (reason UNKNOWN_TIER) otherwise."""
        tier = self.find(name)
        if tier is None:
            raise InvalidArgument(
                f"unknown tier {excerpt(name)}; known tiers: {', '.join(self.names)}",
                field=field,
                reason="UNKNOWN_TIER",
                metadata={"tier": excerpt(name)},
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

    def changes_from(self, before: TierCatalogue | None) -> tuple[str, ...]:
        """What differs from `before`, one line per tier added, removed or changed, for the log."""
        if before is None:
            return (f"tiers {', '.join(self.names)}",)
        lines = [f"tier {name} added" for name in self.names if before.find(name) is None]
        lines += [f"tier {name} removed" for name in before.names if self.find(name) is None]
        for tier in self:
            old = before.find(tier.name)
            if old is not None and old != tier:
                lines.append(f"tier {tier.name} changed: {_difference(old, tier)}")
        if not lines and before.names != self.names:
            lines.append(f"tiers reordered: {', '.join(self.names)}")
        return tuple(lines)


def size_not_offered(tier: TierSpec, size: ImageSize, field_name: str) -> InvalidArgument:
    """The refusal of `size` on `tier`, naming the request's `field_name` (SIZE_NOT_OFFERED)."""
    return InvalidArgument(
        f"tier {tier.name!r} offers sizes {', '.join(tier.sizes)}, not {size}",
        field=field_name,
        reason="SIZE_NOT_OFFERED",
        metadata={"tier": tier.name, "size": str(size)},
    )


def ratio_not_offered(tier: TierSpec, ratio: AspectRatio, field_name: str) -> InvalidArgument:
    """The refusal of `ratio` on `tier`, naming the request's `field_name`
    (ASPECT_RATIO_NOT_OFFERED)."""
    return InvalidArgument(
        f"tier {tier.name!r} offers aspect ratios {', '.join(tier.aspect_ratios)}, not {ratio}",
        field=field_name,
        reason="ASPECT_RATIO_NOT_OFFERED",
        metadata={"tier": tier.name, "aspect_ratio": str(ratio)},
    )


def _difference(old: TierSpec, new: TierSpec) -> str:
    names = [
        "sizes",
        "expected_latency_seconds",
        "aspect_ratios",
        "inpainting",
        "text_rendering",
        "max_reference_images",
        "max_concurrency",
        "queue_limit",
    ]
    changed = [
        f"{name} {_shown(getattr(old, name))} -> {_shown(getattr(new, name))}"
        for name in names
        if getattr(old, name) != getattr(new, name)
    ]
    return "; ".join(changed)


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {seconds:g}" for key, seconds in value.items()) + "}"
    return str(value)
