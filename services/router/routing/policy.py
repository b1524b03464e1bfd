"""The routing policy: which tier and size a generation or a promote gets, its cost, and why.

The policy is data, read from TOML (embedded defaults in `DEFAULT_POLICY_TOML`). For an `auto`
request the tier comes from these rules, applied in order and each recorded as a reason:

1. the stage's tier (`[stages.<stage>] tier`);
2. the caller's fidelity, when the stage maps it (`[stages.<stage>.fidelity]`);
3. prompt signals raise the tier to at least `signal_tier` (see `PromptSignals`);
4. a reference image raises it to at least `reference_tier`;
5. a requested size the tier does not offer raises it to the nearest tier above that does;
6. a deadline shorter than the tier's expected latency for one image lowers it to the nearest
   tier below that can make it (images of a batch render concurrently, so one image's latency
   is the estimate); DeadlineExceeded when none can;
7. when the caller's available credits are known and do not cover the total, a request that
   allows a downgrade gets the nearest cheaper tier that fits; otherwise it is unaffordable.

An explicit tier skips rules 1-6: it is honoured as asked, or refused when unknown or when it
does not offer the requested size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.router.routing.catalogue import (
    DEFAULT_CATALOGUE,
    AspectRatio,
    Fidelity,
    ImageSize,
    Stage,
    TierCatalogue,
    TierSpec,
    pixel_size,
)
from services.router.routing.pricing import PriceTable
from services.router.routing.toml_source import RouterConfigError, TomlSource
from services.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
)
from services.runtime.identifiers import excerpt

__all__ = [
    "AUTO",
    "DEFAULT_POLICY_TOML",
    "MAX_N",
    "MAX_PROMPT_CHARS",
    "PROMOTE_SIZE_LIMIT",
    "Decision",
    "PromptSignals",
    "Quote",
    "RouteRequest",
    "RouterConfigError",
    "RoutingPolicy",
    "StageRule",
    "insufficient_credits",
]

#: Longest prompt accepted, in characters.
MAX_PROMPT_CHARS = 2000
#: Most variations one Generate call may ask for.
MAX_N = 64
#: Tier name that asks the policy to choose (as does an empty tier).
AUTO = "auto"
#: A promote without a size gets the target tier's largest size up to this one.
PROMOTE_SIZE_LIMIT = ImageSize.K2

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

# Expected seconds per image, overriding the built-in renderer's figures for slower backends:
# [latency.pro]
# "4K" = 40.0
"""

_SIGNAL_LABELS: Mapping[str, str] = {
    "materials": "fine material",
    "reflections": "reflections",
    "many_subjects": "many subjects",
}
_QUOTED = re.compile(r"\"([^\"\n]*\S[^\"\n]*)\"|\u201c([^\u201d\n]*\S[^\u201d\n]*)\u201d")
_ROUTED_STAGES = (Stage.EXPLORE, Stage.VALIDATE, Stage.REFINE)
_STAGE_KEYS = frozenset({"tier", "fidelity", "signal_tier", "reference_tier"})
_SIGNAL_KEYS = frozenset({"quoted_text", *_SIGNAL_LABELS})


@dataclass(frozen=True)
class RouteRequest:
    """A generation as the caller asks for it.

    `tier` is "" or "auto" for an automatic choice. `size` None lets the policy choose.
    `n` 0 means 1. `available` is the account's available credits, None when unknown (then
    affordability is not checked). `deadline_seconds` is the time left before the caller's
    deadline, None when there is none.
    """

    prompt: str
    tier: str = ""
    stage: Stage = Stage.EXPLORE
    size: ImageSize | None = None
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    n: int = 1
    fidelity: Fidelity = Fidelity.UNSPECIFIED
    allow_downgrade: bool = False
    has_reference: bool = False
    available: int | None = None
    deadline_seconds: float | None = None


@dataclass(frozen=True)
class Decision:
    """What will run, at what price, and why (reasons in the order the policy applied them)."""

    tier: str
    size: ImageSize
    aspect_ratio: AspectRatio
    width: int
    height: int
    unit_cost: int
    n: int
    total_cost: int
    reasons: tuple[str, ...]
    #: A cheaper tier than the policy's first choice was taken to fit the budget.
    downgraded: bool = False


@dataclass(frozen=True)
class Quote:
    """A decision and whether the caller's available credits cover it."""

    decision: Decision
    #: None when the caller's credits were not known; the quote then counts as affordable.
    available: int | None

    @property
    def shortfall(self) -> int:
        """Credits missing to pay the total, 0 when affordable."""
        if self.available is None:
            return 0
        return max(0, self.decision.total_cost - self.available)

    @property
    def affordable(self) -> bool:
        """Whether the available credits cover the total."""
        return self.shortfall == 0


@dataclass(frozen=True)
class StageRule:
    """How `auto` routes one stage: its tier, the fidelity overrides and the raising rules."""

    tier: str
    fidelity: Mapping[Fidelity, str] = field(default_factory=dict)
    signal_tier: str | None = None
    reference_tier: str | None = None


@dataclass(frozen=True)
class PromptSignals:
    """Keyword rules that spot prompts needing a better tier.

    `quoted_text`: text between double quotes (straight or curly) is text to draw in the image.
    `keywords` maps a signal ("materials", "reflections", "many_subjects") to words or phrases
    matched whole, ignoring case, with any run of spaces between the words of a phrase.
    """

    quoted_text: bool
    keywords: Mapping[str, tuple[str, ...]]
    _patterns: Mapping[str, re.Pattern[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        patterns = {
            signal: re.compile(
                r"(?<!\w)(?:"
                + "|".join(
                    r"\s+".join(re.escape(word) for word in phrase.split())
                    for phrase in sorted(phrases, key=len, reverse=True)
                )
                + r")(?!\w)",
                re.IGNORECASE,
            )
            for signal, phrases in self.keywords.items()
            if phrases
        }
        object.__setattr__(self, "_patterns", patterns)

    def detect(self, prompt: str) -> tuple[str, ...]:
        """The signals found in `prompt`, each described with the words that matched."""
        found: list[str] = []
        if self.quoted_text:
            quoted = _QUOTED.search(prompt)
            if quoted:
                text = quoted.group(1) or quoted.group(2)
                found.append(f"text in quotes ({_shorten(text)!r})")
        for signal, pattern in self._patterns.items():
            match = pattern.search(prompt)
            if match:
                found.append(f"{_SIGNAL_LABELS[signal]} ({match.group(0)!r})")
        return tuple(found)


@dataclass(frozen=True)
class RoutingPolicy:
    """Routing rules, the prices they quote from, and the tiers with their expected latencies."""

    stages: Mapping[Stage, StageRule]
    signals: PromptSignals
    prices: PriceTable
    catalogue: TierCatalogue = DEFAULT_CATALOGUE
    #: For an automatically routed generation whose tier fails retryably: the tier to try
    #: instead, always a lower (cheaper) one, so the credits held cover it.
    fallback: Mapping[str, str] = field(default_factory=dict)

    def fallback_for(self, tier: str, size: ImageSize) -> str | None:
        """The tier to render on when `tier` fails retryably, if the policy names one for it."""
        lower = self.fallback.get(tier)
        spec = self.catalogue.find(lower) if lower else None
        return lower if spec is not None and spec.offers(size) else None

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        prices: PriceTable,
        catalogue: TierCatalogue = DEFAULT_CATALOGUE,
    ) -> RoutingPolicy:
        """The policy in the TOML file at `path`, or the embedded defaults when `path` is None.

        Raises RouterConfigError naming the file, the bad entry and (when found) its line. A
        reload is another `load`; the caller swaps the policy it holds only when this succeeds.
        """
        source = TomlSource.read(
            path, default_text=DEFAULT_POLICY_TOML, default_name="embedded routing policy"
        )
        return cls.parse(source, prices=prices, catalogue=catalogue)

    @classmethod
    def parse(
        cls,
        source: TomlSource,
        *,
        prices: PriceTable,
        catalogue: TierCatalogue = DEFAULT_CATALOGUE,
    ) -> RoutingPolicy:
        """The policy described by `source`, checked against `catalogue`."""
        return _PolicyParser(source, catalogue).policy(prices)

    def quote(self, request: RouteRequest) -> Quote:
        """The decision for `request` and whether it is affordable; never raises for credits.

        InvalidArgument for a bad request (fields "spec.prompt", "spec.n", "spec.stage",
        "spec.tier", "spec.resolution"); DeadlineExceeded when no tier can meet the deadline.
        """
        self._check(request)
        reasons: list[str] = []
        explicit = self._explicit_tier(request)
        if explicit is not None:
            tier, size = self._honour(explicit, request, reasons)
        else:
            tier = self._auto_tier(request, reasons)
            tier, size = self._fit_size(tier, request.size, reasons)
            tier, size = self._meet_deadline(tier, size, request, reasons)
        decision = self._priced(tier, size, request.aspect_ratio, request.n or 1, reasons)
        return self._fit_budget(decision, request)

    def decide(self, request: RouteRequest) -> Decision:
        """The decision for `request`; as `quote`, and FailedPrecondition when unaffordable.

        The error has reason INSUFFICIENT_CREDITS and metadata available, required, shortfall
        and tier.
        """
        quote = self.quote(request)
        if not quote.affordable:
            assert quote.available is not None, "a quote without a budget is always affordable"
            raise insufficient_credits(quote.decision, quote.available)
        return quote.decision

    def promotion(
        self,
        parent_tier: str,
        target_tier: str,
        size: ImageSize | None = None,
        aspect_ratio: AspectRatio = AspectRatio.R1_1,
    ) -> Decision:
        """The decision for promoting a job rendered on `parent_tier` to `target_tier`.

        The target must rank above the parent (InvalidArgument on "tier", reason
        PROMOTE_NOT_HIGHER); a size it does not offer is InvalidArgument on "resolution"; no
        size means the target's largest up to `PROMOTE_SIZE_LIMIT`. A parent that was not
        rendered by a tier (an upscale) is InvalidArgument on "job_id". Whether it is
        affordable is for the hold to tell (see `insufficient_credits`).
        """
        parent = self.catalogue.find(parent_tier)
        if parent is None:
            raise InvalidArgument(
                f"the job was not rendered by a tier ({parent_tier!r}), so it cannot be promoted",
                field="job_id",
                reason="PARENT_NOT_PROMOTABLE",
            )
        target = self.catalogue.require(target_tier, field="tier")
        if self.catalogue.rank(target) <= self.catalogue.rank(parent):
            raise InvalidArgument(
                f"a promote goes to a tier above {parent.name}; {target.name} is not"
                f" (tiers from lowest: {', '.join(self.catalogue.names)})",
                field="tier",
                reason="PROMOTE_NOT_HIGHER",
            )
        reasons = [f"promote from {parent.name} to {target.name}"]
        if size is None:
            size = target.largest_size_up_to(PROMOTE_SIZE_LIMIT)
            reasons.append(
                f"size not given: {size}, the largest {target.name} offers up to"
                f" {PROMOTE_SIZE_LIMIT}"
            )
        elif not target.offers(size):
            raise _size_not_offered(target, size, "resolution")
        return self._priced(target, size, aspect_ratio, 1, reasons)

    def _check(self, request: RouteRequest) -> None:
        violations: list[tuple[FieldViolation, str]] = []

        def reject(field_path: str, reason: str, description: str) -> None:
            violations.append((FieldViolation(field_path, description), reason))

        if not request.prompt.strip():
            reject("spec.prompt", "PROMPT_EMPTY", "prompt is empty")
        elif len(request.prompt) > MAX_PROMPT_CHARS:
            reject(
                "spec.prompt",
                "PROMPT_TOO_LONG",
                f"prompt is {len(request.prompt)} characters; at most {MAX_PROMPT_CHARS}",
            )
        if not 0 <= request.n <= MAX_N:
            reject("spec.n", "N_OUT_OF_RANGE", f"n is {request.n}; it must be 1 to {MAX_N}")
        if request.stage not in self.stages:
            reject(
                "spec.stage",
                "ENHANCE_IS_UPSCALE",
                f"stage {request.stage} lifts an existing image; call Upscale on its job"
                " instead of generating",
            )
        if request.tier not in ("", AUTO):
            tier = self.catalogue.find(request.tier)
            if tier is None:
                reject(
                    "spec.tier",
                    "UNKNOWN_TIER",
                    f"unknown tier {excerpt(request.tier)}; known tiers: auto,"
                    f" {', '.join(self.catalogue.names)}",
                )
            elif request.size is not None and not tier.offers(request.size):
                error = _size_not_offered(tier, request.size, "spec.resolution")
                reject("spec.resolution", error.reason, error.message)
        if violations:
            reasons = {reason for _, reason in violations}
            raise InvalidArgument(
                "; ".join(violation.description for violation, _ in violations),
                violations=[violation for violation, _ in violations],
                reason=reasons.pop() if len(reasons) == 1 else None,
            )

    def _explicit_tier(self, request: RouteRequest) -> TierSpec | None:
        if request.tier in ("", AUTO):
            return None
        return self.catalogue.require(request.tier, field="spec.tier")

    def _honour(
        self, tier: TierSpec, request: RouteRequest, reasons: list[str]
    ) -> tuple[TierSpec, ImageSize]:
        reasons.append(f"tier {tier.name} requested explicitly")
        size = request.size
        if size is None:
            size = tier.smallest_size
            reasons.append(f"size not given: {size}, the smallest {tier.name} offers")
        expected = tier.expected_latency_seconds[size]
        deadline = request.deadline_seconds
        if deadline is not None and expected > deadline:
            reasons.append(
                f"deadline in {deadline:g} s is shorter than the {expected:g} s {tier.name} is"
                f" expected to take at {size}; kept because the tier was explicit"
            )
        return tier, size

    def _auto_tier(self, request: RouteRequest, reasons: list[str]) -> TierSpec:
        rule = self.stages[request.stage]
        tier = self.catalogue.require(rule.tier, field="spec.tier")
        reasons.append(f"stage {request.stage} routes to {tier.name}")
        if request.fidelity in rule.fidelity:
            tier = self.catalogue.require(rule.fidelity[request.fidelity], field="spec.tier")
            reasons.append(f"fidelity {request.fidelity} routes to {tier.name}")
        if rule.signal_tier is not None:
            signals = self.signals.detect(request.prompt)
            if signals:
                tier = self._raise_to(
                    tier, rule.signal_tier, f"prompt asks for {', '.join(signals)}", reasons
                )
        if request.has_reference and rule.reference_tier is not None:
            tier = self._raise_to(tier, rule.reference_tier, "a reference image is given", reasons)
        return tier

    def _raise_to(self, tier: TierSpec, floor_name: str, why: str, reasons: list[str]) -> TierSpec:
        floor = self.catalogue.require(floor_name, field="spec.tier")
        if self.catalogue.rank(floor) > self.catalogue.rank(tier):
            reasons.append(f"{why}: raised to {floor.name}")
            return floor
        reasons.append(f"{why}: {tier.name} already ranks at or above {floor.name}")
        return tier

    def _fit_size(
        self, tier: TierSpec, size: ImageSize | None, reasons: list[str]
    ) -> tuple[TierSpec, ImageSize]:
        if size is None:
            size = tier.smallest_size
            reasons.append(f"size not given: {size}, the smallest {tier.name} offers")
            return tier, size
        if tier.offers(size):
            return tier, size
        larger = next((above for above in self.catalogue.above(tier) if above.offers(size)), None)
        if larger is None:
            raise _size_not_offered(tier, size, "spec.resolution")
        reasons.append(f"{tier.name} does not offer {size}: raised to {larger.name}")
        return larger, size

    def _meet_deadline(
        self, tier: TierSpec, size: ImageSize, request: RouteRequest, reasons: list[str]
    ) -> tuple[TierSpec, ImageSize]:
        deadline = request.deadline_seconds
        if deadline is None:
            return tier, size
        candidates = [(tier, size)] + [
            (lower, lower_size)
            for lower in self.catalogue.below(tier)
            if (lower_size := _size_on(lower, size, request.size is not None)) is not None
        ]
        for candidate, candidate_size in candidates:
            expected = candidate.expected_latency_seconds[candidate_size]
            if expected <= deadline:
                if candidate is not tier:
                    reasons.append(
                        f"{candidate.name} is expected to take {expected:g} s at"
                        f" {candidate_size}: chosen to meet the deadline"
                    )
                return candidate, candidate_size
            reasons.append(
                f"deadline in {deadline:g} s: {candidate.name} is expected to take"
                f" {expected:g} s at {candidate_size}, excluded"
            )
        raise DeadlineExceeded(
            f"no tier can render {size} before the deadline in {deadline:g} s; "
            + "; ".join(reasons[-len(candidates) :]),
            reason="DEADLINE_TOO_SHORT",
            metadata={"deadline_seconds": f"{deadline:g}", "size": str(size)},
        )

    def _fit_budget(self, decision: Decision, request: RouteRequest) -> Quote:
        available = request.available
        if available is None or decision.total_cost <= available:
            return Quote(decision, available)
        if not request.allow_downgrade:
            return Quote(decision, available)
        tier = self.catalogue.require(decision.tier, field="spec.tier")
        deadline = request.deadline_seconds
        for lower in self.catalogue.below(tier):
            size = _size_on(lower, decision.size, request.size is not None)
            if size is None:
                continue
            if deadline is not None and lower.expected_latency_seconds[size] > deadline:
                continue
            total = self.prices.price(lower.name, size) * decision.n
            if total <= available:
                why = (
                    f"{decision.total_cost} credits on {tier.name} exceed the {available}"
                    f" available: downgraded to {lower.name} for {total}"
                )
                cheaper = self._priced(
                    lower, size, decision.aspect_ratio, decision.n, [*decision.reasons, why]
                )
                return Quote(replace(cheaper, downgraded=True), available)
        why = f"no cheaper tier fits the {available} credits available"
        return Quote(replace(decision, reasons=(*decision.reasons, why)), available)

    def _priced(
        self,
        tier: TierSpec,
        size: ImageSize,
        aspect_ratio: AspectRatio,
        n: int,
        reasons: Sequence[str],
    ) -> Decision:
        width, height = pixel_size(size, aspect_ratio)
        unit_cost = self.prices.price(tier.name, size)
        return Decision(
            tier=tier.name,
            size=size,
            aspect_ratio=aspect_ratio,
            width=width,
            height=height,
            unit_cost=unit_cost,
            n=n,
            total_cost=unit_cost * n,
            reasons=tuple(reasons),
        )


def _size_on(tier: TierSpec, size: ImageSize, size_given: bool) -> ImageSize | None:
    """The size `tier` would render instead of another tier's `size`, or None if it cannot."""
    if tier.offers(size):
        return size
    return None if size_given else tier.smallest_size


def _size_not_offered(tier: TierSpec, size: ImageSize, field_path: str) -> InvalidArgument:
    return InvalidArgument(
        f"tier {tier.name!r} offers sizes {', '.join(tier.sizes)}, not {size}",
        field=field_path,
        reason="SIZE_NOT_OFFERED",
    )


def insufficient_credits(decision: Decision, available: int) -> FailedPrecondition:
    """The refusal of `decision` when only `available` credits are there (INSUFFICIENT_CREDITS)."""
    shortfall = decision.total_cost - available
    return FailedPrecondition(
        f"{decision.n} {decision.tier} image(s) at {decision.size} cost {decision.total_cost}"
        f" credits; {available} available, {shortfall} short",
        reason="INSUFFICIENT_CREDITS",
        metadata={
            "available": str(available),
            "required": str(decision.total_cost),
            "shortfall": str(shortfall),
            "tier": decision.tier,
        },
    )


def _shorten(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class _PolicyParser:
    """Reads a policy document, naming the first bad entry it meets."""

    def __init__(self, source: TomlSource, catalogue: TierCatalogue) -> None:
        self.source = source
        self.catalogue = catalogue

    def policy(self, prices: PriceTable) -> RoutingPolicy:
        document = self.source.parse()
        self._known_keys(document, (), frozenset({"stages", "signals", "latency", "fallback"}))
        stages_table = self._table(document, ("stages",))
        for name in stages_table:
            if name == Stage.ENHANCE:
                raise self.source.error(
                    ("stages", name), "enhance is served by Upscale, not routed to a tier"
                )
            if name not in _ROUTED_STAGES:
                raise self.source.error(
                    ("stages", name),
                    f"unknown stage; stages are {', '.join(_ROUTED_STAGES)}",
                )
        stages = {stage: self._stage_rule(stages_table, stage) for stage in _ROUTED_STAGES}
        signals = self._signals(document.get("signals", {}))
        catalogue = self._latencies(document.get("latency", {}))
        fallback = self._fallback(document.get("fallback", {}))
        return RoutingPolicy(
            stages=stages, signals=signals, prices=prices, catalogue=catalogue, fallback=fallback
        )

    def _fallback(self, table: object) -> dict[str, str]:
        path = ("fallback",)
        if not isinstance(table, dict):
            raise self.source.error(path, "must be a table of tier = lower tier")
        fallback = {}
        for name, lower in table.items():
            tier = self._tier(name, (*path, name))
            target = self._tier(lower, (*path, name))
            ranks = [
                self.catalogue.rank(self.catalogue.require(t, field="fallback"))
                for t in (target, tier)
            ]
            if ranks[0] >= ranks[1]:
                raise self.source.error(
                    (*path, name),
                    f"falls back to {target}, which does not rank below {tier}: the credits "
                    "held for a tier must cover its fallback",
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
        if not isinstance(value, str) or self.catalogue.find(value) is None:
            raise self.source.error(
                path, f"unknown tier {value!r}; known tiers: {', '.join(self.catalogue.names)}"
            )
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
        for signal in _SIGNAL_LABELS:
            phrases = table.get(signal, [])
            if not isinstance(phrases, list) or not all(
                isinstance(phrase, str) and phrase.strip() for phrase in phrases
            ):
                raise self.source.error(
                    (*path, signal), "must be a list of non-empty words or phrases"
                )
            keywords[signal] = tuple(phrase.strip() for phrase in phrases)
        return PromptSignals(quoted_text=quoted_text, keywords=keywords)

    def _latencies(self, table: object) -> TierCatalogue:
        path = ("latency",)
        if not isinstance(table, dict):
            raise self.source.error(path, "must be a table")
        unknown = sorted(set(table) - set(self.catalogue.names))
        if unknown:
            raise self.source.error(
                (*path, unknown[0]),
                f"unknown tier; known tiers: {', '.join(self.catalogue.names)}",
            )
        tiers = []
        for tier in self.catalogue:
            overrides = table.get(tier.name, {})
            tier_path = (*path, tier.name)
            if not isinstance(overrides, dict):
                raise self.source.error(tier_path, "must be a table of seconds per size")
            latencies = dict(tier.expected_latency_seconds)
            for size_name, seconds in overrides.items():
                where = (*tier_path, size_name)
                if size_name not in set(ImageSize) or not tier.offers(ImageSize(size_name)):
                    raise self.source.error(
                        where, f"tier {tier.name} offers sizes {', '.join(tier.sizes)}"
                    )
                if (
                    not isinstance(seconds, int | float)
                    or isinstance(seconds, bool)
                    or not math.isfinite(seconds)
                    or seconds <= 0
                ):
                    raise self.source.error(where, f"must be seconds > 0, not {seconds!r}")
                latencies[ImageSize(size_name)] = float(seconds)
            tiers.append(replace(tier, expected_latency_seconds=latencies))
        return TierCatalogue(tiers=tuple(tiers))

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
