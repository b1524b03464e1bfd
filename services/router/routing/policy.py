"""The routing policy: which tier and size a generation or a promote gets, its cost, and why.

The rules come from the policy file (`services.router.routing.policy_file`), the prices from the
price table, and the tiers from the generator (`offered`, None until it first answers; then every
decision is refused UNAVAILABLE, CATALOGUE_UNKNOWN). Only tiers that are both offered and priced
are routed (`services.router.routing.routable`). For an `auto` request the tier comes from these
rules, applied in order and each recorded as a reason:

1. the stage's tier (`[stages.<stage>] tier`);
2. the caller's fidelity, when the stage maps it (`[stages.<stage>.fidelity]`);
3. prompt signals raise the tier to at least `signal_tier` (see `PromptSignals`);
4. a reference image raises it to at least `reference_tier`;
5. a requested size or aspect ratio the tier does not offer raises it to the nearest tier above
   that does;
6. a deadline shorter than the tier's expected latency for one image lowers it to the nearest
   tier below that can make it (images of a batch render concurrently, so one image's latency
   is the estimate); DeadlineExceeded when none can;
7. when the caller's available credits are known and do not cover the total, a request that
   allows a downgrade gets the nearest cheaper tier that fits; otherwise it is unaffordable.

A rule naming a tier that is not routed is skipped, and says so in the reasons; a stage whose
own tier is not routed cannot be routed automatically (FailedPrecondition, STAGE_NOT_ROUTABLE).
An explicit tier skips rules 1-6: it is honoured as asked, or refused when it is not offered
(UNKNOWN_TIER), not priced (TIER_NOT_PRICED), or does not offer the size or aspect ratio.

Errors name the domain's fields (`prompt`, `tier`, `n`, `stage`, `size`, `aspect_ratio`,
`job_id`); the gRPC edge maps them to the field paths of the request it serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from services.router.routing.catalogue import (
    AspectRatio,
    ImageSize,
    Stage,
    TierCatalogue,
    TierSpec,
    catalogue_unknown,
    pixel_size,
    ratio_not_offered,
    size_not_offered,
)
from services.router.routing.decision import Decision, Quote, RouteRequest, insufficient_credits
from services.router.routing.policy_file import (
    AUTO,
    DEFAULT_POLICY_TOML,
    PolicyRules,
    StageRule,
)
from services.router.routing.pricing import PriceTable
from services.router.routing.routable import Note, Routable, reconcile
from services.router.routing.signals import PromptSignals
from services.router.routing.toml_source import RouterConfigError, TomlSource
from services.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
)
from services.runtime.resolution import MAX_PROMPT_CHARS

__all__ = [
    "AUTO",
    "DEFAULT_POLICY_TOML",
    "MAX_N",
    "PROMOTE_SIZE_LIMIT",
    "Decision",
    "Note",
    "PromptSignals",
    "Quote",
    "RouteRequest",
    "RouterConfigError",
    "RoutingPolicy",
    "StageRule",
    "insufficient_credits",
]

#: Most variations one Generate call may ask for.
MAX_N = 64
#: A promote without a size gets the target tier's largest size up to this one.
PROMOTE_SIZE_LIMIT = ImageSize.K2


@dataclass(frozen=True)
class RoutingPolicy:
    """Routing rules, the prices they quote from, and the generator's tiers they route to."""

    stages: Mapping[Stage, StageRule]
    signals: PromptSignals
    prices: PriceTable
    #: For an automatically routed generation whose tier fails retryably: the tier to try
    #: instead, always a lower (cheaper) one, so the credits held cover it.
    fallback: Mapping[str, str] = field(default_factory=dict)
    #: Expected seconds per image by tier and size, in place of the generator's figures.
    latency: Mapping[str, Mapping[ImageSize, float]] = field(default_factory=dict)
    #: The generator's tiers as it last reported them; None until it first answers.
    offered: TierCatalogue | None = None
    _routable: Routable | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        routable = None
        if self.offered is not None:
            rules = PolicyRules(self.stages, self.signals, self.fallback, self.latency)
            routable = reconcile(self.offered, self.prices, rules)
        object.__setattr__(self, "_routable", routable)

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        prices: PriceTable,
        catalogue: TierCatalogue | None = None,
    ) -> RoutingPolicy:
        """The policy in the TOML file at `path`, or the embedded defaults when `path` is None,
        routing to `catalogue` (None: not known yet).

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
        catalogue: TierCatalogue | None = None,
    ) -> RoutingPolicy:
        """The policy described by `source`, routing to `catalogue` (None: not known yet)."""
        rules = PolicyRules.parse(source)
        return cls(
            stages=rules.stages,
            signals=rules.signals,
            prices=prices,
            fallback=rules.fallback,
            latency=rules.latency,
            offered=catalogue,
        )

    def with_catalogue(self, offered: TierCatalogue) -> RoutingPolicy:
        """This policy routing to the generator's tiers as `offered` now describes them."""
        return replace(self, offered=offered)

    @property
    def known(self) -> bool:
        """Whether the generator has told its tiers."""
        return self._routable is not None

    @property
    def catalogue(self) -> TierCatalogue:
        """The tiers routed; Unavailable (CATALOGUE_UNKNOWN) until the generator has answered."""
        return self._reconciled().catalogue

    @property
    def notes(self) -> tuple[Note, ...]:
        """What reconciling the generator's tiers with the prices and rules left out."""
        return () if self._routable is None else self._routable.notes

    def _reconciled(self) -> Routable:
        if self._routable is None:
            raise catalogue_unknown()
        return self._routable

    def require_tier(self, name: str, *, field: str) -> TierSpec:
        """The routed tier called `name`; InvalidArgument on `field` when the generator does not
        offer it (UNKNOWN_TIER) or the price table has no price for it (TIER_NOT_PRICED)."""
        return self._reconciled().require(name, field=field)

    def fallback_for(
        self, tier: str, size: ImageSize, aspect_ratio: AspectRatio | None = None
    ) -> str | None:
        """The tier to render on when `tier` fails retryably, if the policy names one for it
        that offers `size` (and `aspect_ratio`, when given)."""
        routable = self._reconciled()
        lower = routable.fallback.get(tier)
        spec = routable.catalogue.find(lower) if lower else None
        return lower if spec is not None and spec.offers(size, aspect_ratio) else None

    def quote(self, request: RouteRequest) -> Quote:
        """The decision for `request` and whether it is affordable; never raises for credits.

        Unavailable until the generator's tiers are known; InvalidArgument for a bad request
        (fields "prompt", "n", "stage", "tier", "size", "aspect_ratio"); DeadlineExceeded when
        no tier can meet the deadline.
        """
        self._reconciled()  # nothing is decided before the tiers are known
        self._check(request)
        reasons: list[str] = []
        explicit = self._explicit_tier(request)
        if explicit is not None:
            tier, size = self._honour(explicit, request, reasons)
        else:
            tier = self._auto_tier(request, reasons)
            tier, size = self._fit_size(tier, request, reasons)
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

        The target must be routed (InvalidArgument on "tier": UNKNOWN_TIER, TIER_NOT_PRICED),
        rank above the parent (PROMOTE_NOT_HIGHER) and take a reference image, the parent's
        (TIER_TAKES_NO_REFERENCE); a size or aspect ratio it does not offer is InvalidArgument
        on "size" or "aspect_ratio"; no size means the target's largest up to
        `PROMOTE_SIZE_LIMIT`. A parent that was not rendered by a tier (an upscale) is
        InvalidArgument on "job_id"; one whose tier the generator no longer offers may go to
        any tier. Whether it is affordable is for the hold to tell (see `insufficient_credits`).
        """
        routable = self._reconciled()
        if not parent_tier:
            raise InvalidArgument(
                "the job was not rendered by a tier (an upscale), so it cannot be promoted",
                field="job_id",
                reason="PARENT_NOT_PROMOTABLE",
            )
        target = self.require_tier(target_tier, field="tier")
        offered = routable.offered
        parent = offered.find(parent_tier)
        if parent is not None:
            # Ranked among every tier offered: the parent's own tier may have lost its price.
            ranked = offered.find(target.name)
            assert ranked is not None, "a routed tier is an offered one"
            if offered.rank(ranked) <= offered.rank(parent):
                raise InvalidArgument(
                    f"a promote goes to a tier above {parent.name}; {target.name} is not"
                    f" (tiers from lowest: {', '.join(routable.catalogue.names)})",
                    field="tier",
                    reason="PROMOTE_NOT_HIGHER",
                )
            reasons = [f"promote from {parent.name} to {target.name}"]
        else:
            reasons = [f"promote from {parent_tier} (no longer offered) to {target.name}"]
        if target.max_reference_images < 1:
            raise InvalidArgument(
                f"tier {target.name!r} takes no reference image, so the job's image cannot be"
                " handed over to it",
                field="tier",
                reason="TIER_TAKES_NO_REFERENCE",
                metadata={"tier": target.name},
            )
        if aspect_ratio not in target.aspect_ratios:
            raise ratio_not_offered(target, aspect_ratio, "aspect_ratio")
        if size is None:
            size = target.largest_size_up_to(PROMOTE_SIZE_LIMIT)
            reasons.append(
                f"size not given: {size}, the largest {target.name} offers up to"
                f" {PROMOTE_SIZE_LIMIT}"
            )
        elif not target.offers(size):
            raise size_not_offered(target, size, "size")
        return self._priced(target, size, aspect_ratio, 1, reasons)

    def edit_tier(self, tier_name: str, size: ImageSize, aspect_ratio: AspectRatio) -> TierSpec:
        """The tier an edit of a job rendered on `tier_name` at `size` and `aspect_ratio` runs
        on, its own; InvalidArgument on "job_id" when that tier is not routed, cannot in-paint
        (TIER_CANNOT_INPAINT) or no longer offers the job's size or aspect ratio."""
        tier = self.require_tier(tier_name, field="job_id")
        if not tier.inpainting:
            raise InvalidArgument(
                f"tier {tier.name} cannot in-paint; promote the job to a tier that can, then edit",
                field="job_id",
                reason="TIER_CANNOT_INPAINT",
                metadata={"tier": tier.name},
            )
        if not tier.offers(size):
            raise size_not_offered(tier, size, "job_id")
        if aspect_ratio not in tier.aspect_ratios:
            raise ratio_not_offered(tier, aspect_ratio, "job_id")
        return tier

    def _check(self, request: RouteRequest) -> None:
        """Every bad field of `request` at once: one InvalidArgument with a violation each."""
        errors: list[InvalidArgument] = []

        def refuse(field_name: str, reason: str, description: str) -> None:
            errors.append(InvalidArgument(description, field=field_name, reason=reason))

        if not request.prompt.strip():
            refuse("prompt", "PROMPT_EMPTY", "prompt is empty")
        elif len(request.prompt) > MAX_PROMPT_CHARS:
            refuse(
                "prompt",
                "PROMPT_TOO_LONG",
                f"prompt is {len(request.prompt)} characters; at most {MAX_PROMPT_CHARS}",
            )
        if not 0 <= request.n <= MAX_N:
            refuse("n", "N_OUT_OF_RANGE", f"n is {request.n}; it must be 1 to {MAX_N}")
        if request.stage not in self.stages:
            refuse(
                "stage",
                "ENHANCE_IS_UPSCALE",
                f"stage {request.stage} lifts an existing image; call Upscale on its job"
                " instead of generating",
            )
        if request.tier not in ("", AUTO):
            try:
                tier = self.require_tier(request.tier, field="tier")
            except InvalidArgument as error:
                errors.append(error)
            else:
                if request.size is not None and not tier.offers(request.size):
                    errors.append(size_not_offered(tier, request.size, "size"))
                if request.aspect_ratio not in tier.aspect_ratios:
                    errors.append(ratio_not_offered(tier, request.aspect_ratio, "aspect_ratio"))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            reasons = {error.reason for error in errors}
            raise InvalidArgument(
                "; ".join(error.message for error in errors),
                violations=[violation for error in errors for violation in error.violations],
                reason=reasons.pop() if len(reasons) == 1 else None,
            )

    def _explicit_tier(self, request: RouteRequest) -> TierSpec | None:
        if request.tier in ("", AUTO):
            return None
        return self.require_tier(request.tier, field="tier")

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
        catalogue = self.catalogue
        rule = self.stages[request.stage]
        tier = catalogue.find(rule.tier)
        if tier is None:
            raise FailedPrecondition(
                f"stage {request.stage} routes to tier {rule.tier}, which is not routed now"
                f" ({self._why_not(rule.tier)}); name a tier explicitly"
                f" ({', '.join(catalogue.names)})",
                reason="STAGE_NOT_ROUTABLE",
                metadata={"stage": str(request.stage), "tier": rule.tier},
            )
        reasons.append(f"stage {request.stage} routes to {tier.name}")
        if request.fidelity in rule.fidelity:
            name = rule.fidelity[request.fidelity]
            chosen = catalogue.find(name)
            if chosen is None:
                reasons.append(
                    f"fidelity {request.fidelity} routes to {name}, which is not routed"
                    f" ({self._why_not(name)}): kept {tier.name}"
                )
            else:
                tier = chosen
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
        catalogue = self.catalogue
        floor = catalogue.find(floor_name)
        if floor is None:
            reasons.append(
                f"{why}: {floor_name} is not routed ({self._why_not(floor_name)}), kept {tier.name}"
            )
            return tier
        if catalogue.rank(floor) > catalogue.rank(tier):
            reasons.append(f"{why}: raised to {floor.name}")
            return floor
        reasons.append(f"{why}: {tier.name} already ranks at or above {floor.name}")
        return tier

    def _why_not(self, name: str) -> str:
        return self._reconciled().why_not(name)

    def _fit_size(
        self, tier: TierSpec, request: RouteRequest, reasons: list[str]
    ) -> tuple[TierSpec, ImageSize]:
        size, ratio = request.size, request.aspect_ratio
        if not tier.offers(size or tier.smallest_size, ratio):
            larger = next(
                (
                    above
                    for above in self.catalogue.above(tier)
                    if above.offers(size or above.smallest_size, ratio)
                ),
                None,
            )
            missing = ratio if ratio not in tier.aspect_ratios else size
            if larger is None:
                if missing is ratio:
                    raise ratio_not_offered(tier, ratio, "aspect_ratio")
                assert size is not None, "a tier offers its own smallest size"
                raise size_not_offered(tier, size, "size")
            reasons.append(f"{tier.name} does not offer {missing}: raised to {larger.name}")
            tier = larger
        if size is None:
            size = tier.smallest_size
            reasons.append(f"size not given: {size}, the smallest {tier.name} offers")
        return tier, size

    def _meet_deadline(
        self, tier: TierSpec, size: ImageSize, request: RouteRequest, reasons: list[str]
    ) -> tuple[TierSpec, ImageSize]:
        deadline = request.deadline_seconds
        if deadline is None:
            return tier, size
        candidates = [(tier, size)] + [
            (lower, lower_size)
            for lower in self.catalogue.below(tier)
            if (lower_size := _size_on(lower, size, request)) is not None
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
        catalogue = self.catalogue
        tier = catalogue.require(decision.tier, field="tier")
        deadline = request.deadline_seconds
        for lower in catalogue.below(tier):
            size = _size_on(lower, decision.size, request)
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


def _size_on(tier: TierSpec, size: ImageSize, request: RouteRequest) -> ImageSize | None:
    """The size `tier` would render instead of another tier's `size`, or None if it cannot
    (it lacks the requested size or aspect ratio)."""
    if request.aspect_ratio not in tier.aspect_ratios:
        return None
    if tier.offers(size):
        return size
    return None if request.size is not None else tier.smallest_size
