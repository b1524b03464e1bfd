"""The price table: credits per generated image by tier and size, and per upscale by output size.

Prices are the router's own, read from TOML at start and on change; the tiers are the
generator's. So the table is checked here only for what it says by itself (sizes, credits,
bands), and against the generator's tiers when those arrive (`services.router.routing.routable`):
a tier offered without a price is not routed, and a price for a tier not offered is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from services.router.routing.catalogue import ImageSize, size_class
from services.router.routing.toml_source import RouterConfigError, TomlSource
from services.runtime.errors import InvalidArgument

__all__ = ["DEFAULT_PRICES_TOML", "LARGER", "PriceTable", "RouterConfigError"]

#: Key of the upscale band for outputs larger than every 4K size.
LARGER = "larger"

DEFAULT_PRICES_TOML = """\
# Credits per image. [generate.<tier>] prices the sizes of a tier the generator offers; a tier
# (or a size) it offers without a price here is not routed.
[generate.nano]
"1K" = 2

[generate.standard]
"1K" = 6
"2K" = 12

[generate.pro]
"1K" = 15
"2K" = 24
"4K" = 48

# Credits per upscaled image, by the size class of the output: an output is in the smallest
# class ("1K", "2K", "4K") holding its pixel count at some aspect ratio, and pays the first band
# at or above that class; outputs beyond every 4K size pay `larger`. A 1K image upscaled 2x is
# 2K (4 credits); a 2K image upscaled 2x is 4K (8); a 2K image upscaled 4x is larger (16).
[upscale]
"2K" = 4
"4K" = 8
larger = 16
"""


@dataclass(frozen=True)
class PriceTable:
    """Credits per generated image, by tier and size, and per upscale, by output size class."""

    generation: Mapping[str, Mapping[ImageSize, int]]
    #: Upscale bands, smallest class first: (largest size class covered, credits).
    upscale_bands: tuple[tuple[ImageSize, int], ...]
    upscale_larger: int

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The table in the TOML file at `path`, or the embedded defaults when `path` is None.

        Raises RouterConfigError naming the file, the entry and (when found) its line.
        """
        source = TomlSource.read(
            path, default_text=DEFAULT_PRICES_TOML, default_name="embedded price table"
        )
        return cls.parse(source)

    @classmethod
    def parse(cls, source: TomlSource) -> PriceTable:
        """The table described by `source`; RouterConfigError naming the first bad entry."""
        document = source.parse()
        unknown = sorted(set(document) - {"generate", "upscale"})
        if unknown:
            raise source.error((unknown[0],), "unknown table; expected [generate.*] and [upscale]")
        generate = _table(source, document, ("generate",))
        generation: dict[str, dict[ImageSize, int]] = {}
        for tier_name in generate:
            prices = _table(source, generate, ("generate", tier_name))
            if not prices:
                raise source.error(("generate", tier_name), "prices no size")
            generation[tier_name] = {}
            for size_name, credits in prices.items():
                where = ("generate", tier_name, size_name)
                size = _size(source, where, size_name)
                generation[tier_name][size] = _credits(source, where, credits)

        upscale = _table(source, document, ("upscale",))
        if LARGER not in upscale:
            raise source.error(("upscale", LARGER), "missing price")
        bands = sorted(
            (
                (_size(source, ("upscale", key), key), _credits(source, ("upscale", key), credits))
                for key, credits in upscale.items()
                if key != LARGER
            ),
            key=lambda band: band[0].scale,
        )
        larger = _credits(source, ("upscale", LARGER), upscale[LARGER])
        ladder = [*((str(size), credits) for size, credits in bands), (LARGER, larger)]
        for (smaller, smaller_credits), (name, credits) in pairwise(ladder):
            if credits < smaller_credits:
                raise source.error(
                    ("upscale", name),
                    f"{credits} credits is less than the {smaller_credits} of the smaller"
                    f" {smaller} band",
                )
        return cls(generation=generation, upscale_bands=tuple(bands), upscale_larger=larger)

    def price(self, tier: str, size: ImageSize) -> int:
        """Credits per image of `tier` at `size`.

        InvalidArgument on "tier" for a tier without prices, on "size" for a size without one.
        """
        prices = self.generation.get(tier)
        if prices is None:
            raise InvalidArgument(
                f"unknown tier {tier!r}; priced tiers: {', '.join(self.generation)}",
                field="tier",
                reason="UNKNOWN_TIER",
            )
        if size not in prices:
            raise InvalidArgument(
                f"tier {tier!r} is priced at sizes {', '.join(prices)}, not {size}",
                field="size",
                reason="SIZE_NOT_OFFERED",
            )
        return prices[size]

    def upscale_price(self, width: int, height: int) -> int:
        """Credits for an upscale whose output is `width` x `height` pixels."""
        output = size_class(width, height)
        if output is not None:
            for band, credits in self.upscale_bands:
                if output.scale <= band.scale:
                    return credits
        return self.upscale_larger


def _table(source: TomlSource, parent: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    value = parent.get(path[-1])
    if not isinstance(value, dict):
        raise source.error(path, "missing table" if value is None else "must be a table")
    return value


def _size(source: TomlSource, path: tuple[str, ...], name: str) -> ImageSize:
    try:
        return ImageSize(name)
    except ValueError:
        raise source.error(path, f"not a size; sizes are {', '.join(ImageSize)}") from None


def _credits(source: TomlSource, path: tuple[str, ...], value: object) -> int:
    # bool is an int subclass; `true` where a price belongs is a mistake worth reporting.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise source.error(path, f"must be a whole number of credits >= 1, not {value!r}")
    return value
