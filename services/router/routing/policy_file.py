"""The routing policy file: its embedded default, and the parser that turns it into rules.

The file is read at start and on change, long before (and independently of) the generator's
tier catalogue, so the parser checks only what the file alone can get wrong: its shape, its
stages, fidelities, signals, sizes and seconds. Whether the tiers it names exist is known only
once the generator has said which it offers; `services.router.routing.routable` checks that
then, and a rule naming a tier the generator does not offer is left out and logged instead of
stopping a router that is already serving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.router.routing.catalogue import Fidelity, ImageSize, Stage
from services.router.routing.signals import SIGNAL_LABELS, PromptSignals
from services.router.routing.toml_source import TomlSource

__all__ = ["AUTO", "DEFAULT_POLICY_TOML", "ROUTED_STAGES", "PolicyRules", "StageRule"]

#: Tier name that asks the policy to choose (as does an empty tier).
AUTO = "auto"
#: The stages a generation is routed for; enhance is served by Upscale.
ROUTED_STAGES = (Stage.EXPLORE, Stage.VALIDATE, Stage.REFINE)

DEFAULT_POLICY_TOML = """\
# Routing policy: how an `auto` request picks its tier. Stages are explore, validate and refine;
# enhance is served by Upscale, not by a tier.

[stages.explore]
tier = "nano"

[stages.validate]
tier = "nano"
# A reference image here is a winner being re-run with small changes; nano follows a reference
# only loosely.
reference_tier = "standard"

[stages.validate.fidelity]
high = "standard"

[stages.refine]
tier = "standard"
# Text, fine materials, reflections and crowds are where the pro tier earns its price.
signal_tier = "pro"

[stages.refine.fidelity]
high = "pro"

# Prompt signals: quoted_text is text in double quotes ("SALE" or \u201cSALE\u201d) to draw in
# the image; each keyword list matches whole words or phrases, ignoring case.
[signals]
quoted_text = true
materials = [
  "marble", "brushed steel", "brushed metal", "chrome", "gold leaf", "velvet", "silk", "satin",
  "leather", "porcelain", "crystal", "wood grain", "fur", "lace", "embroidery", "knitted",
]
reflections = [
  "reflection", "reflections", "reflective", "reflecting", "mirror", "mirrors", "mirrored",
  "glossy", "specular", "refraction", "wet pavement", "puddle", "puddles",
]
many_subjects = [
  "crowd", "crowds", "crowded", "group of", "groups of", "audience", "team of", "family of",
  "flock of", "herd of", "army of", "dozens of", "hundreds of", "many people", "busy street",
]

# When an automatically routed generation's tier fails retryably (its backend unavailable or
# overloaded, never an ambiguous timeout that may already have been billed upstream), render
# on a lower tier instead and charge that tier's price. Off unless listed:
# [fallback]
# pro = "standard"
# standard = "nano"

# Expected seconds per image, overriding the figures the generator reports for its tiers:
# [latency.pro]
# "4K" = 40.0
"""

_STAGE_KEYS = frozenset({"tier", "fidelity", "signal_tier", "reference_tier"})
_SIGNAL_KEYS = frozenset({"quoted_text", *SIGNAL_LABELS})


@dataclass(frozen=True)
class StageRule:
    """How `auto` routes one stage: its tier, the fidelity overrides and the raising rules."""

    tier: str
    fidelity: Mapping[Fidelity, str] = field(default_factory=dict)
    signal_tier: str | None = None
    reference_tier: str | None = None

    @property
    def tiers(self) -> tuple[str, ...]:
        """Every tier the rule names."""
        named = [self.tier, *self.fidelity.values(), self.signal_tier, self.reference_tier]
        return tuple(dict.fromkeys(name for name in named if name is not None))


@dataclass(frozen=True)
class PolicyRules:
    """What a policy file says: stage rules, prompt signals, fallbacks and latency overrides."""

    stages: Mapping[Stage, StageRule]
    signals: PromptSignals
    #: A tier that fails retryably -> the lower tier to render on instead.
    fallback: Mapping[str, str] = field(default_factory=dict)
    #: Expected seconds per image, by tier and size, in place of the generator's figures.
    latency: Mapping[str, Mapping[ImageSize, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, source: TomlSource) -> PolicyRules:
        """The rules `source` describes; RouterConfigError naming the first bad entry."""
        return _PolicyParser(source).rules()


class _PolicyParser:
    """Reads a policy document, naming the first bad entry it meets."""

    def __init__(self, source: TomlSource) -> None:
        self.source = source

    def rules(self) -> PolicyRules:
        document = self.source.parse()
        self._known_keys(document, (), frozenset({"stages", "signals", "latency", "fallback"}))
        stages_table = self._table(document, ("stages",))
        for name in stages_table:
            if name == Stage.ENHANCE:
                raise self.source.error(
                    ("stages", name), "enhance is served by Upscale, not routed to a tier"
                )
            if name not in ROUTED_STAGES:
                raise self.source.error(
                    ("stages", name),
                    f"unknown stage; stages are {', '.join(ROUTED_STAGES)}",
                )
        return PolicyRules(
            stages={stage: self._stage_rule(stages_table, stage) for stage in ROUTED_STAGES},
            signals=self._signals(document.get("signals", {})),
            fallback=self._fallback(document.get("fallback", {})),
            latency=self._latencies(document.get("latency", {})),
        )

    def _fallback(self, table: object) -> dict[str, str]:
        path = ("fallback",)
        if not isinstance(table, dict):
            raise self.source.error(path, "must be a table of tier = lower tier")
        fallback = {}
        for name, lower in table.items():
            tier = self._tier(name, (*path, name))
            target = self._tier(lower, (*path, name))
            if target == tier:
                raise self.source.error(
                    (*path, name), f"falls back to itself; name a tier ranked below {tier}"
                )
            fallback[tier] = target
        return fallback

    def _stage_rule(self, stages: Mapping[str, Any], stage: Stage) -> StageRule:
        path = ("stages", str(stage))
        table = self._table(stages, path)
        self._known_keys(table, path, _STAGE_KEYS)
        if "tier" not in table:
            raise self.source.error((*path, "tier"), "missing")
        fidelity: dict[Fidelity, str] = {}
        if "fidelity" in table:
            fidelity_path = (*path, "fidelity")
            for name, tier in self._table(table, fidelity_path).items():
                if name == Fidelity.UNSPECIFIED or name not in set(Fidelity):
                    raise self.source.error(
                        (*fidelity_path, name),
                        "unknown fidelity; expected draft, balanced or high",
                    )
                fidelity[Fidelity(name)] = self._tier(tier, (*fidelity_path, name))
        return StageRule(
            tier=self._tier(table["tier"], (*path, "tier")),
            fidelity=fidelity,
            signal_tier=self._optional_tier(table, path, "signal_tier"),
            reference_tier=self._optional_tier(table, path, "reference_tier"),
        )

    def _optional_tier(
        self, table: Mapping[str, Any], path: tuple[str, ...], key: str
    ) -> str | None:
        if key not in table:
            return None
        return self._tier(table[key], (*path, key))

    def _tier(self, value: object, path: tuple[str, ...]) -> str:
        # Which tiers exist is the generator's to say; here only the shape of a name is known.
        if not isinstance(value, str) or not value.strip():
            raise self.source.error(path, f"must be a tier name, not {value!r}")
        if value == AUTO:
            raise self.source.error(path, f"{AUTO!r} asks the router to choose; name a tier")
        return value

    def _signals(self, table: object) -> PromptSignals:
        path = ("signals",)
        if not isinstance(table, dict):
            raise self.source.error(path, "must be a table")
        self._known_keys(table, path, _SIGNAL_KEYS)
        quoted_text = table.get("quoted_text", True)
        if not isinstance(quoted_text, bool):
            raise self.source.error(
                (*path, "quoted_text"), f"must be true or false, not {quoted_text!r}"
            )
        keywords: dict[str, tuple[str, ...]] = {}
        for signal in SIGNAL_LABELS:
            phrases = table.get(signal, [])
            if not isinstance(phrases, list) or not all(
                isinstance(phrase, str) and phrase.strip() for phrase in phrases
            ):
                raise self.source.error(
                    (*path, signal), "must be a list of non-empty words or phrases"
                )
            keywords[signal] = tuple(phrase.strip() for phrase in phrases)
        return PromptSignals(quoted_text=quoted_text, keywords=keywords)

    def _latencies(self, table: object) -> dict[str, dict[ImageSize, float]]:
        path = ("latency",)
        if not isinstance(table, dict):
            raise self.source.error(path, "must be a table")
        latency: dict[str, dict[ImageSize, float]] = {}
        for name, overrides in table.items():
            tier_path = (*path, name)
            self._tier(name, tier_path)
            if not isinstance(overrides, dict):
                raise self.source.error(tier_path, "must be a table of seconds per size")
            latency[name] = {}
            for size_name, seconds in overrides.items():
                where = (*tier_path, size_name)
                if size_name not in set(ImageSize):
                    raise self.source.error(where, f"not a size; sizes are {', '.join(ImageSize)}")
                if (
                    not isinstance(seconds, int | float)
                    or isinstance(seconds, bool)
                    or not math.isfinite(seconds)
                    or seconds <= 0
                ):
                    raise self.source.error(where, f"must be seconds > 0, not {seconds!r}")
                latency[name][ImageSize(size_name)] = float(seconds)
        return latency

    def _table(self, parent: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        value = parent.get(path[-1])
        if not isinstance(value, dict):
            raise self.source.error(path, "missing table" if value is None else "must be a table")
        return value

    def _known_keys(
        self, table: Mapping[str, Any], path: tuple[str, ...], known: frozenset[str]
    ) -> None:
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.source.error(
                (*path, unknown[0]), f"unknown key; expected some of {', '.join(sorted(known))}"
            )
