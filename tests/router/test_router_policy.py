"""Tests of the routing policy: automatic and explicit routing, budgets, deadlines, promotes,
edits, and routing to the tiers the generator offers (features, aspect ratios, prices)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.router.routing.catalogue import (
    AspectRatio,
    Fidelity,
    ImageSize,
    Stage,
    TierCatalogue,
    TierSpec,
)
from services.router.routing.policy import (
    DEFAULT_POLICY_TOML,
    Note,
    RouterConfigError,
    RouteRequest,
    RoutingPolicy,
    insufficient_credits,
)
from services.router.routing.pricing import DEFAULT_PRICES_TOML, PriceTable
from services.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from services.runtime.resolution import MAX_PROMPT_CHARS

PLAIN = "a lighthouse on a cliff at dusk"
K1, K2, K4 = ImageSize.K1, ImageSize.K2, ImageSize.K4

#: The generator's three tiers, with the latencies these tests reason about.
TIERS = TierCatalogue(
    (
        TierSpec("nano", (K1,), {K1: 0.05}, max_reference_images=1),
        TierSpec(
            "standard",
            (K1, K2),
            {K1: 0.3, K2: 1.0},
            inpainting=True,
            text_rendering=True,
            max_reference_images=4,
        ),
        TierSpec(
            "pro",
            (K1, K2, K4),
            {K1: 0.6, K2: 1.5, K4: 5.0},
            inpainting=True,
            text_rendering=True,
            max_reference_images=8,
        ),
    )
)


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


@pytest.fixture(scope="module")
def policy(prices: PriceTable) -> RoutingPolicy:
    return RoutingPolicy.load(prices=prices, catalogue=TIERS)


def offering(policy: RoutingPolicy, *tiers: TierSpec) -> RoutingPolicy:
    """`policy` once the generator offers `tiers` (the others as they are) in its rank order."""
    changed = {tier.name: tier for tier in tiers}
    return policy.with_catalogue(
        TierCatalogue(tuple(changed.get(tier.name, tier) for tier in TIERS))
    )


def tier(name: str) -> TierSpec:
    found = TIERS.find(name)
    assert found is not None
    return found


def fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


@pytest.mark.parametrize(
    ("stage", "fidelity", "stage_tier", "tier"),
    [
        (Stage.EXPLORE, Fidelity.UNSPECIFIED, "nano", "nano"),
        (Stage.EXPLORE, Fidelity.HIGH, "nano", "nano"),
        (Stage.VALIDATE, Fidelity.UNSPECIFIED, "nano", "nano"),
        (Stage.VALIDATE, Fidelity.BALANCED, "nano", "nano"),
        (Stage.VALIDATE, Fidelity.HIGH, "nano", "standard"),
        (Stage.REFINE, Fidelity.DRAFT, "standard", "standard"),
        (Stage.REFINE, Fidelity.UNSPECIFIED, "standard", "standard"),
        (Stage.REFINE, Fidelity.HIGH, "standard", "pro"),
    ],
)
def test_auto_routes_by_stage_and_fidelity(
    policy: RoutingPolicy, stage: Stage, fidelity: Fidelity, stage_tier: str, tier: str
) -> None:
    decision = policy.decide(RouteRequest(PLAIN, stage=stage, fidelity=fidelity))
    assert decision.tier == tier
    assert decision.size is ImageSize.K1
    assert decision.reasons[0] == f"stage {stage} routes to {stage_tier}"


@pytest.mark.parametrize("tier", ["", "auto"])
def test_empty_and_auto_tier_both_choose(policy: RoutingPolicy, tier: str) -> None:
    decision = policy.decide(RouteRequest(PLAIN, tier=tier))
    assert decision.tier == "nano"
    assert decision.reasons == (
        "stage explore routes to nano",
        "size not given: 1K, the smallest nano offers",
    )


@pytest.mark.parametrize(
    ("prompt", "signal"),
    [
        ('a shop front with a sign reading "OPEN LATE"', "text in quotes ('OPEN LATE')"),
        ("a poster saying \u201cSALE\u201d in red", "text in quotes ('SALE')"),
        ("a statue carved from Marble, studio light", "fine material ('Marble')"),
        ("a car with brushed   steel trim", "fine material ('brushed   steel')"),
        ("neon city streets with reflections in the rain", "reflections ('reflections')"),
        ("a crowd cheering at a stadium", "many subjects ('crowd')"),
        ("a FAMILY OF ducks crossing a road", "many subjects ('FAMILY OF')"),
    ],
)
def test_refine_prompt_signals_raise_to_pro(
    policy: RoutingPolicy, prompt: str, signal: str
) -> None:
    decision = policy.decide(RouteRequest(prompt, stage=Stage.REFINE))
    assert decision.tier == "pro"
    assert f"prompt asks for {signal}: raised to pro" in decision.reasons
    assert decision.reasons.index("stage refine routes to standard") == 0


@pytest.mark.parametrize(
    "prompt",
    [
        "a mirrorless camera on a desk",  # "mirror" only as a whole word
        "furniture in a living room",  # "fur" only as a whole word
        'an empty "" sign',  # quotes around nothing draw no text
        "a dog's ball",
    ],
)
def test_keywords_match_whole_words_only(policy: RoutingPolicy, prompt: str) -> None:
    assert policy.decide(RouteRequest(prompt, stage=Stage.REFINE)).tier == "standard"


def test_signals_do_not_matter_when_exploring(policy: RoutingPolicy) -> None:
    decision = policy.decide(RouteRequest('a "SALE" sign on marble', stage=Stage.EXPLORE))
    assert decision.tier == "nano"


def test_signal_on_an_already_pro_request_is_still_a_reason(policy: RoutingPolicy) -> None:
    request = RouteRequest("a chrome teapot", stage=Stage.REFINE, fidelity=Fidelity.HIGH)
    decision = policy.decide(request)
    assert decision.tier == "pro"
    assert decision.reasons[:3] == (
        "stage refine routes to standard",
        "fidelity high routes to pro",
        "prompt asks for fine material ('chrome'): pro already ranks at or above pro",
    )


def test_reference_image_raises_validate_to_standard(policy: RoutingPolicy) -> None:
    request = RouteRequest(PLAIN, stage=Stage.VALIDATE, has_reference=True)
    decision = policy.decide(request)
    assert decision.tier == "standard"
    assert "a reference image is given: raised to standard" in decision.reasons
    assert (
        policy.decide(RouteRequest(PLAIN, stage=Stage.EXPLORE, has_reference=True)).tier == "nano"
    )


def test_size_not_offered_moves_auto_up_a_tier(policy: RoutingPolicy) -> None:
    decision = policy.decide(RouteRequest(PLAIN, stage=Stage.REFINE, size=ImageSize.K4))
    assert (decision.tier, decision.size) == ("pro", ImageSize.K4)
    assert decision.reasons == (
        "stage refine routes to standard",
        "standard does not offer 4K: raised to pro",
    )
    explore = policy.decide(RouteRequest(PLAIN, size=ImageSize.K2))
    assert (explore.tier, explore.size) == ("standard", ImageSize.K2)


def test_decision_has_pixels_and_costs(policy: RoutingPolicy) -> None:
    request = RouteRequest(
        PLAIN, stage=Stage.REFINE, size=ImageSize.K2, aspect_ratio=AspectRatio.R16_9, n=3
    )
    decision = policy.decide(request)
    assert (decision.width, decision.height) == (2752, 1536)
    assert (decision.unit_cost, decision.n, decision.total_cost) == (12, 3, 36)
    assert decision.aspect_ratio is AspectRatio.R16_9
    assert not decision.downgraded


def test_n_zero_means_one(policy: RoutingPolicy) -> None:
    decision = policy.decide(RouteRequest(PLAIN, n=0))
    assert (decision.n, decision.total_cost) == (1, 2)


def test_explicit_tier_is_honoured(policy: RoutingPolicy) -> None:
    decision = policy.decide(RouteRequest('a "SALE" sign', tier="nano", stage=Stage.REFINE))
    assert decision.tier == "nano"
    assert decision.reasons == (
        "tier nano requested explicitly",
        "size not given: 1K, the smallest nano offers",
    )
    pro = policy.decide(RouteRequest(PLAIN, tier="pro", size=ImageSize.K4))
    assert (pro.tier, pro.size, pro.unit_cost) == ("pro", ImageSize.K4, 48)


def test_explicit_tier_keeps_a_tight_deadline_but_says_so(policy: RoutingPolicy) -> None:
    request = RouteRequest(PLAIN, tier="pro", size=ImageSize.K4, deadline_seconds=1.0)
    decision = policy.decide(request)
    assert decision.tier == "pro"
    assert "kept because the tier was explicit" in decision.reasons[-1]


def test_deadline_excludes_slow_tiers(policy: RoutingPolicy) -> None:
    request = RouteRequest(PLAIN, stage=Stage.REFINE, fidelity=Fidelity.HIGH, deadline_seconds=0.5)
    decision = policy.decide(request)
    assert decision.tier == "standard"
    assert decision.reasons[-2:] == (
        "deadline in 0.5 s: pro is expected to take 0.6 s at 1K, excluded",
        "standard is expected to take 0.3 s at 1K: chosen to meet the deadline",
    )


def test_deadline_no_tier_can_meet(policy: RoutingPolicy) -> None:
    request = RouteRequest(PLAIN, stage=Stage.REFINE, size=ImageSize.K4, deadline_seconds=2.0)
    with pytest.raises(DeadlineExceeded) as caught:
        policy.decide(request)
    assert caught.value.reason == "DEADLINE_TOO_SHORT"
    assert "pro is expected to take 5 s at 4K" in caught.value.message
    with pytest.raises(DeadlineExceeded):
        policy.decide(RouteRequest(PLAIN, deadline_seconds=0.01))


def test_deadline_keeps_a_requested_size(policy: RoutingPolicy) -> None:
    # standard 2K takes 1 s; nano does not offer 2K, so it is no way out.
    request = RouteRequest(PLAIN, stage=Stage.REFINE, size=ImageSize.K2, deadline_seconds=0.8)
    with pytest.raises(DeadlineExceeded):
        policy.decide(request)


def test_unaffordable_without_downgrade(policy: RoutingPolicy) -> None:
    request = RouteRequest(PLAIN, tier="pro", n=3, available=20)
    with pytest.raises(FailedPrecondition) as caught:
        policy.decide(request)
    assert caught.value.reason == "INSUFFICIENT_CREDITS"
    assert caught.value.metadata == {
        "available": "20",
        "required": "45",
        "shortfall": "25",
        "tier": "pro",
    }
    quote = policy.quote(request)
    assert (quote.affordable, quote.shortfall, quote.decision.total_cost) == (False, 25, 45)


def test_downgrade_to_the_best_affordable_tier(policy: RoutingPolicy) -> None:
    request = RouteRequest(PLAIN, tier="pro", n=3, available=20, allow_downgrade=True)
    decision = policy.decide(request)
    assert (decision.tier, decision.total_cost, decision.downgraded) == ("standard", 18, True)
    assert decision.reasons[-1] == (
        "45 credits on pro exceed the 20 available: downgraded to standard for 18"
    )
    cheapest = policy.decide(
        RouteRequest(PLAIN, stage=Stage.REFINE, n=4, available=10, allow_downgrade=True)
    )
    assert (cheapest.tier, cheapest.total_cost) == ("nano", 8)


def test_downgrade_keeps_a_requested_size(policy: RoutingPolicy) -> None:
    request = RouteRequest(
        PLAIN, tier="pro", size=ImageSize.K2, n=2, available=30, allow_downgrade=True
    )
    decision = policy.decide(request)
    assert (decision.tier, decision.size, decision.total_cost) == ("standard", ImageSize.K2, 24)
    too_poor = RouteRequest(
        PLAIN, tier="pro", size=ImageSize.K2, n=2, available=20, allow_downgrade=True
    )
    with pytest.raises(FailedPrecondition) as caught:
        policy.decide(too_poor)
    assert caught.value.metadata["shortfall"] == "28"
    assert policy.quote(too_poor).decision.reasons[-1] == (
        "no cheaper tier fits the 20 credits available"
    )


def test_affordable_and_unknown_budgets(policy: RoutingPolicy) -> None:
    exact = policy.quote(RouteRequest(PLAIN, n=5, available=10))
    assert (exact.affordable, exact.shortfall) == (True, 0)
    unknown = policy.quote(RouteRequest(PLAIN, tier="pro", n=64))
    assert (unknown.affordable, unknown.available, unknown.decision.total_cost) == (
        True,
        None,
        960,
    )


@pytest.mark.parametrize(
    ("request_", "field", "reason"),
    [
        (RouteRequest("", tier="nano"), "prompt", "PROMPT_EMPTY"),
        (RouteRequest("   \n", tier="nano"), "prompt", "PROMPT_EMPTY"),
        (RouteRequest("x" * (MAX_PROMPT_CHARS + 1)), "prompt", "PROMPT_TOO_LONG"),
        (RouteRequest(PLAIN, n=65), "n", "N_OUT_OF_RANGE"),
        (RouteRequest(PLAIN, n=-1), "n", "N_OUT_OF_RANGE"),
        (RouteRequest(PLAIN, tier="ultra"), "tier", "UNKNOWN_TIER"),
        (RouteRequest(PLAIN, tier="Pro"), "tier", "UNKNOWN_TIER"),
        (RouteRequest(PLAIN, tier="nano", size=ImageSize.K2), "size", "SIZE_NOT_OFFERED"),
        (RouteRequest(PLAIN, tier="standard", size=ImageSize.K4), "size", "SIZE_NOT_OFFERED"),
        (RouteRequest(PLAIN, stage=Stage.ENHANCE), "stage", "ENHANCE_IS_UPSCALE"),
    ],
)
def test_bad_requests(
    policy: RoutingPolicy, request_: RouteRequest, field: str, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        policy.quote(request_)
    assert fields(caught.value) == [field]
    assert caught.value.reason == reason


def test_limits_are_inclusive(policy: RoutingPolicy) -> None:
    assert policy.decide(RouteRequest("x" * MAX_PROMPT_CHARS, n=64)).n == 64


def test_every_bad_field_is_reported(policy: RoutingPolicy) -> None:
    with pytest.raises(InvalidArgument) as caught:
        policy.decide(RouteRequest("", tier="ultra", n=65))
    assert fields(caught.value) == ["prompt", "n", "tier"]
    assert caught.value.reason == "INVALID_ARGUMENT"


def test_bad_request_is_refused_before_the_budget(policy: RoutingPolicy) -> None:
    with pytest.raises(InvalidArgument):
        policy.decide(RouteRequest(PLAIN, n=65, available=0))


class TestPromotion:
    def test_default_size_is_the_largest_up_to_2k(self, policy: RoutingPolicy) -> None:
        standard = policy.promotion("nano", "standard")
        assert (standard.tier, standard.size, standard.total_cost, standard.n) == (
            "standard",
            ImageSize.K2,
            12,
            1,
        )
        assert standard.reasons == (
            "promote from nano to standard",
            "size not given: 2K, the largest standard offers up to 2K",
        )
        pro = policy.promotion("standard", "pro", aspect_ratio=AspectRatio.R3_2)
        assert (pro.size, pro.width, pro.height) == (ImageSize.K2, 2528, 1696)

    def test_explicit_size(self, policy: RoutingPolicy) -> None:
        decision = policy.promotion("nano", "pro", ImageSize.K4)
        assert (decision.size, decision.unit_cost) == (ImageSize.K4, 48)

    @pytest.mark.parametrize(("parent", "target"), [("pro", "standard"), ("standard", "standard")])
    def test_target_must_rank_above_the_parent(
        self, policy: RoutingPolicy, parent: str, target: str
    ) -> None:
        with pytest.raises(InvalidArgument) as caught:
            policy.promotion(parent, target)
        assert fields(caught.value) == ["tier"]
        assert caught.value.reason == "PROMOTE_NOT_HIGHER"

    def test_unknown_target(self, policy: RoutingPolicy) -> None:
        with pytest.raises(InvalidArgument) as caught:
            policy.promotion("nano", "")
        assert (fields(caught.value), caught.value.reason) == (["tier"], "UNKNOWN_TIER")

    def test_size_the_target_does_not_offer(self, policy: RoutingPolicy) -> None:
        with pytest.raises(InvalidArgument) as caught:
            policy.promotion("nano", "standard", ImageSize.K4)
        assert (fields(caught.value), caught.value.reason) == (["size"], "SIZE_NOT_OFFERED")

    def test_parent_without_a_tier(self, policy: RoutingPolicy) -> None:
        with pytest.raises(InvalidArgument) as caught:
            policy.promotion("", "pro")
        assert (fields(caught.value), caught.value.reason) == (["job_id"], "PARENT_NOT_PROMOTABLE")

    def test_unaffordable(self, policy: RoutingPolicy) -> None:
        refusal = insufficient_credits(policy.promotion("nano", "pro"), 20)
        assert refusal.reason == "INSUFFICIENT_CREDITS"
        assert refusal.metadata == {
            "available": "20",
            "required": "24",
            "shortfall": "4",
            "tier": "pro",
        }


class TestPolicyFile:
    def write(self, tmp_path: Path, text: str) -> Path:
        path = tmp_path / "policy.toml"
        path.write_text(text)
        return path

    def load(self, path: Path, prices: PriceTable) -> RoutingPolicy:
        return RoutingPolicy.load(path, prices=prices, catalogue=TIERS)

    def test_a_policy_file_changes_routing(self, tmp_path: Path, prices: PriceTable) -> None:
        text = DEFAULT_POLICY_TOML.replace(
            '[stages.explore]\ntier = "nano"', '[stages.explore]\ntier = "standard"'
        ).replace('# [latency.pro]\n# "4K" = 40.0', '[latency.standard]\n"1K" = 3.0')
        policy = self.load(self.write(tmp_path, text), prices)
        assert policy.decide(RouteRequest(PLAIN)).tier == "standard"
        quick = policy.decide(RouteRequest(PLAIN, deadline_seconds=1.0))
        assert quick.tier == "nano"
        assert "standard is expected to take 3 s at 1K, excluded" in quick.reasons[-2]

    def test_reload_reads_the_file_again(self, tmp_path: Path, prices: PriceTable) -> None:
        path = self.write(tmp_path, DEFAULT_POLICY_TOML)
        assert self.load(path, prices).decide(RouteRequest(PLAIN)).tier == "nano"
        path.write_text(DEFAULT_POLICY_TOML.replace('tier = "nano"', 'tier = "pro"', 1))
        assert self.load(path, prices).decide(RouteRequest(PLAIN)).tier == "pro"

    def test_keywords_come_from_the_file(self, tmp_path: Path, prices: PriceTable) -> None:
        text = DEFAULT_POLICY_TOML.replace('"marble", ', '"terrazzo", ').replace(
            "quoted_text = true", "quoted_text = false"
        )
        policy = self.load(self.write(tmp_path, text), prices)
        assert policy.decide(RouteRequest("a terrazzo floor", stage=Stage.REFINE)).tier == "pro"
        assert policy.decide(RouteRequest("a marble floor", stage=Stage.REFINE)).tier == "standard"
        assert policy.decide(RouteRequest('a "SALE" sign', stage=Stage.REFINE)).tier == "standard"

    def test_a_file_loads_before_the_generators_tiers_are_known(self, prices: PriceTable) -> None:
        policy = RoutingPolicy.load(prices=prices)
        assert not policy.known
        assert policy.notes == ()
        assert policy.with_catalogue(TIERS).known

    @pytest.mark.parametrize(
        ("old", "new", "expected"),
        [
            (
                '[stages.refine.fidelity]\nhigh = "pro"',
                "[stages.refine.fidelity]\nhigh = 3",
                ":22: stages.refine.fidelity.high: must be a tier name, not 3",
            ),
            (
                '[stages.explore]\ntier = "nano"',
                '[stages.explore]\ntier = "auto"',
                ":5: stages.explore.tier: 'auto' asks the router to choose",
            ),
            (
                '[stages.refine.fidelity]\nhigh = "pro"',
                '[stages.refine.fidelity]\nultra = "pro"',
                ":22: stages.refine.fidelity.ultra: unknown fidelity",
            ),
            (
                '[stages.refine.fidelity]\nhigh = "pro"',
                '[stages.refine.fidelity]\nunspecified = "pro"',
                "stages.refine.fidelity.unspecified: unknown fidelity",
            ),
            (
                '[stages.explore]\ntier = "nano"',
                '[stages.explore]\ntiers = "nano"',
                ":5: stages.explore.tiers: unknown key",
            ),
            (
                '[stages.explore]\ntier = "nano"',
                "[stages.explore]\n",
                "stages.explore.tier: missing",
            ),
            (
                '[stages.explore]\ntier = "nano"',
                '[stages.enhance]\ntier = "nano"',
                ":4: stages.enhance: enhance is served by Upscale",
            ),
            (
                '[stages.explore]\ntier = "nano"',
                '[stages.sketch]\ntier = "nano"',
                ":4: stages.sketch: unknown stage",
            ),
            (
                '[stages.explore]\ntier = "nano"',
                '[stages.refine.extra]\ntier = "nano"',
                "stages.explore: missing table",
            ),
            (
                "quoted_text = true",
                'quoted_text = "yes"',
                ":27: signals.quoted_text: must be true or false",
            ),
            (
                "materials = [",
                'materials = ["", ',
                "signals.materials: must be a list of non-empty words",
            ),
            ("[signals]", "[signals]\ncolours = []", ":27: signals.colours: unknown key"),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[latency.nano]\n"8K" = 1.0',
                "latency.nano.8K: not a size",
            ),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[latency.pro]\n"4K" = 0',
                "latency.pro.4K: must be seconds > 0",
            ),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[fallback]\npro = "pro"',
                "fallback.pro: falls back to itself",
            ),
            ("[signals]", "[routing]\n[signals]", "routing: unknown key"),
            ("[signals]", "[signals", "not valid TOML"),
        ],
    )
    def test_bad_policy_files_name_the_entry(
        self, tmp_path: Path, prices: PriceTable, old: str, new: str, expected: str
    ) -> None:
        assert old in DEFAULT_POLICY_TOML
        path = self.write(tmp_path, DEFAULT_POLICY_TOML.replace(old, new, 1))
        with pytest.raises(RouterConfigError) as caught:
            RoutingPolicy.load(path, prices=prices)
        assert str(caught.value).startswith(str(path))
        assert expected in str(caught.value)

    def test_missing_file(self, tmp_path: Path, prices: PriceTable) -> None:
        with pytest.raises(RouterConfigError, match="cannot read"):
            RoutingPolicy.load(tmp_path / "absent.toml", prices=prices)

    @pytest.mark.parametrize(
        ("old", "new", "note"),
        [
            (
                'signal_tier = "pro"',
                'signal_tier = "ultra"',
                Note(
                    "error",
                    "policy stages.refine names tier ultra, which is not routed (the generator"
                    " does not offer it); its rule is skipped",
                ),
            ),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[latency.nano]\n"2K" = 1.0',
                Note("warning", "policy latency.nano.2K ignored: nano is not routed at 2K"),
            ),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[latency.ultra]\n"4K" = 1',
                Note("warning", "policy latency.ultra ignored: tier ultra is not routed"),
            ),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[fallback]\nnano = "pro"',
                Note(
                    "warning", "policy fallback nano -> pro ignored: pro does not rank below nano"
                ),
            ),
        ],
    )
    def test_what_the_generator_does_not_offer_is_noted_when_its_tiers_arrive(
        self, tmp_path: Path, prices: PriceTable, old: str, new: str, note: Note
    ) -> None:
        path = self.write(tmp_path, DEFAULT_POLICY_TOML.replace(old, new, 1))
        assert RoutingPolicy.load(path, prices=prices).notes == ()
        assert self.load(path, prices).notes == (note,)


class TestTiersFromTheGenerator:
    def test_nothing_is_decided_before_the_generator_answers(self, prices: PriceTable) -> None:
        unknown = RoutingPolicy.load(prices=prices)
        calls = [
            lambda: unknown.quote(RouteRequest(PLAIN)),
            lambda: unknown.decide(RouteRequest(PLAIN, tier="nano")),
            lambda: unknown.promotion("nano", "pro"),
            lambda: unknown.edit_tier("standard", K1, AspectRatio.R1_1),
            lambda: unknown.fallback_for("pro", K1),
            lambda: unknown.catalogue,
        ]
        for call in calls:
            with pytest.raises(Unavailable) as caught:
                call()
            assert caught.value.reason == "CATALOGUE_UNKNOWN"
            assert caught.value.retry_after is not None

    def test_a_tier_the_generator_stops_offering_is_unknown(self, policy: RoutingPolicy) -> None:
        without_pro = policy.with_catalogue(TierCatalogue((tier("nano"), tier("standard"))))
        with pytest.raises(InvalidArgument) as caught:
            without_pro.decide(RouteRequest(PLAIN, tier="pro"))
        assert (fields(caught.value), caught.value.reason) == (["tier"], "UNKNOWN_TIER")
        # Automatic routing raised by a signal to pro keeps standard instead, and says why.
        refine = without_pro.decide(RouteRequest("a chrome teapot", stage=Stage.REFINE))
        assert refine.tier == "standard"
        assert refine.reasons[1] == (
            "prompt asks for fine material ('chrome'): pro is not routed (the generator does"
            " not offer it), kept standard"
        )

    def test_a_tier_offered_without_a_price_is_refused_by_name(
        self, tmp_path: Path, prices: PriceTable
    ) -> None:
        # The embedded price table without its [generate.pro] table.
        path = tmp_path / "prices.toml"
        start = DEFAULT_PRICES_TOML.index("[generate.pro]")
        end = DEFAULT_PRICES_TOML.index("# Credits per upscaled image")
        path.write_text(DEFAULT_PRICES_TOML[:start] + DEFAULT_PRICES_TOML[end:])
        policy = RoutingPolicy.load(prices=PriceTable.load(path), catalogue=TIERS)
        assert policy.catalogue.names == ("nano", "standard")
        with pytest.raises(InvalidArgument) as caught:
            policy.decide(RouteRequest(PLAIN, tier="pro"))
        assert (fields(caught.value), caught.value.reason) == (["tier"], "TIER_NOT_PRICED")
        assert "'pro'" in caught.value.message
        assert [note.level for note in policy.notes] == ["error", "error"]

    def test_a_stage_whose_tier_is_not_routed_cannot_route_automatically(
        self, policy: RoutingPolicy
    ) -> None:
        without_nano = policy.with_catalogue(TierCatalogue((tier("standard"), tier("pro"))))
        with pytest.raises(FailedPrecondition) as caught:
            without_nano.decide(RouteRequest(PLAIN, stage=Stage.EXPLORE))
        assert caught.value.reason == "STAGE_NOT_ROUTABLE"
        assert caught.value.metadata == {"stage": "explore", "tier": "nano"}
        assert without_nano.decide(RouteRequest(PLAIN, tier="standard")).tier == "standard"
        assert (
            Note(
                "error",
                "policy stages.explore names tier nano, which is not routed (the generator does not"
                " offer it); its rule is skipped",
            )
            in without_nano.notes
        )

    def test_an_aspect_ratio_the_tier_does_not_offer(self, policy: RoutingPolicy) -> None:
        square_nano = offering(policy, replace(tier("nano"), aspect_ratios=(AspectRatio.R1_1,)))
        wide = RouteRequest(PLAIN, aspect_ratio=AspectRatio.R16_9)
        with pytest.raises(InvalidArgument) as caught:
            square_nano.decide(replace(wide, tier="nano"))
        assert (fields(caught.value), caught.value.reason) == (
            ["aspect_ratio"],
            "ASPECT_RATIO_NOT_OFFERED",
        )
        raised = square_nano.decide(wide)
        assert (raised.tier, raised.aspect_ratio) == ("standard", AspectRatio.R16_9)
        assert raised.reasons[1] == "nano does not offer 16:9: raised to standard"
        # A downgrade or a deadline never lands on a tier without the ratio.
        poor = replace(wide, tier="standard", available=3, allow_downgrade=True)
        assert square_nano.quote(poor).decision.tier == "standard"

    def test_latencies_are_the_generators(self, policy: RoutingPolicy) -> None:
        slow_nano = offering(policy, replace(tier("nano"), expected_latency_seconds={K1: 9.0}))
        with pytest.raises(DeadlineExceeded):
            slow_nano.decide(RouteRequest(PLAIN, deadline_seconds=1.0))

    def test_a_promote_needs_a_target_that_takes_the_parents_image(
        self, policy: RoutingPolicy
    ) -> None:
        blind_pro = offering(policy, replace(tier("pro"), max_reference_images=0))
        with pytest.raises(InvalidArgument) as caught:
            blind_pro.promotion("nano", "pro")
        assert (fields(caught.value), caught.value.reason) == (["tier"], "TIER_TAKES_NO_REFERENCE")
        square_pro = offering(policy, replace(tier("pro"), aspect_ratios=(AspectRatio.R1_1,)))
        with pytest.raises(InvalidArgument) as caught:
            square_pro.promotion("nano", "pro", aspect_ratio=AspectRatio.R3_2)
        assert (fields(caught.value), caught.value.reason) == (
            ["aspect_ratio"],
            "ASPECT_RATIO_NOT_OFFERED",
        )

    def test_a_parent_whose_tier_is_gone_may_go_to_any_tier(self, policy: RoutingPolicy) -> None:
        without_nano = policy.with_catalogue(TierCatalogue((tier("standard"), tier("pro"))))
        decision = without_nano.promotion("nano", "standard")
        assert decision.tier == "standard"
        assert decision.reasons[0] == "promote from nano (no longer offered) to standard"

    @pytest.mark.parametrize(
        ("tiers", "size", "reason"),
        [
            ({"standard": {"inpainting": False}}, K1, "TIER_CANNOT_INPAINT"),
            ({"standard": {"sizes": (K1,), "expected_latency_seconds": {K1: 0.3}}}, K2, None),
            ({"standard": {"aspect_ratios": (AspectRatio.R3_2,)}}, K1, None),
        ],
    )
    def test_an_edit_runs_on_its_tier_only_while_it_can(
        self,
        policy: RoutingPolicy,
        tiers: dict[str, dict[str, object]],
        size: ImageSize,
        reason: str | None,
    ) -> None:
        assert policy.edit_tier("standard", size, AspectRatio.R1_1).name == "standard"
        changed = offering(
            policy, *(replace(tier(name), **fields_) for name, fields_ in tiers.items())
        )
        with pytest.raises(InvalidArgument) as caught:
            changed.edit_tier("standard", size, AspectRatio.R1_1)
        assert fields(caught.value) == ["job_id"]
        expected = reason or ("SIZE_NOT_OFFERED" if size is K2 else "ASPECT_RATIO_NOT_OFFERED")
        assert caught.value.reason == expected

    def test_an_edit_on_a_tier_the_generator_no_longer_offers(self, policy: RoutingPolicy) -> None:
        without_standard = policy.with_catalogue(TierCatalogue((tier("nano"), tier("pro"))))
        with pytest.raises(InvalidArgument) as caught:
            without_standard.edit_tier("standard", K1, AspectRatio.R1_1)
        assert (fields(caught.value), caught.value.reason) == (["job_id"], "UNKNOWN_TIER")

    def test_fallbacks_follow_the_generators_ranks(self, policy: RoutingPolicy) -> None:
        with_fallback = replace(policy, fallback={"pro": "standard"})
        assert with_fallback.fallback_for("pro", K2) == "standard"
        assert with_fallback.fallback_for("pro", K4) is None  # standard has no 4K
        square = offering(
            with_fallback, replace(tier("standard"), aspect_ratios=(AspectRatio.R1_1,))
        )
        assert square.fallback_for("pro", K2, AspectRatio.R1_1) == "standard"
        assert square.fallback_for("pro", K2, AspectRatio.R16_9) is None
        reordered = with_fallback.with_catalogue(
            TierCatalogue((tier("nano"), tier("pro"), tier("standard")))
        )
        assert reordered.fallback_for("pro", K2) is None
        assert reordered.notes == (
            Note(
                "warning",
                "policy fallback pro -> standard ignored: standard does not rank below pro",
            ),
        )
