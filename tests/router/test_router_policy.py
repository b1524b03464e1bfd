"""Tests of the routing policy: automatic and explicit routing, budgets, deadlines, promotes."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.routing.catalogue import AspectRatio, Fidelity, ImageSize, Stage
from services.router.routing.policy import (
    DEFAULT_POLICY_TOML,
    MAX_PROMPT_CHARS,
    RouterConfigError,
    RouteRequest,
    RoutingPolicy,
    insufficient_credits,
)
from services.router.routing.pricing import PriceTable
from services.runtime.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument

PLAIN = "a lighthouse on a cliff at dusk"


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return PriceTable.load()


@pytest.fixture(scope="module")
def policy(prices: PriceTable) -> RoutingPolicy:
    return RoutingPolicy.load(prices=prices)


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
        (RouteRequest("", tier="nano"), "spec.prompt", "PROMPT_EMPTY"),
        (RouteRequest("   \n", tier="nano"), "spec.prompt", "PROMPT_EMPTY"),
        (RouteRequest("x" * (MAX_PROMPT_CHARS + 1)), "spec.prompt", "PROMPT_TOO_LONG"),
        (RouteRequest(PLAIN, n=65), "spec.n", "N_OUT_OF_RANGE"),
        (RouteRequest(PLAIN, n=-1), "spec.n", "N_OUT_OF_RANGE"),
        (RouteRequest(PLAIN, tier="ultra"), "spec.tier", "UNKNOWN_TIER"),
        (RouteRequest(PLAIN, tier="Pro"), "spec.tier", "UNKNOWN_TIER"),
        (
            RouteRequest(PLAIN, tier="nano", size=ImageSize.K2),
            "spec.resolution",
            "SIZE_NOT_OFFERED",
        ),
        (
            RouteRequest(PLAIN, tier="standard", size=ImageSize.K4),
            "spec.resolution",
            "SIZE_NOT_OFFERED",
        ),
        (RouteRequest(PLAIN, stage=Stage.ENHANCE), "spec.stage", "ENHANCE_IS_UPSCALE"),
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
    assert fields(caught.value) == ["spec.prompt", "spec.n", "spec.tier"]
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
        assert (fields(caught.value), caught.value.reason) == (["resolution"], "SIZE_NOT_OFFERED")

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

    def test_a_policy_file_changes_routing(self, tmp_path: Path, prices: PriceTable) -> None:
        text = DEFAULT_POLICY_TOML.replace(
            '[stages.explore]\ntier = "nano"', '[stages.explore]\ntier = "standard"'
        ).replace('# [latency.pro]\n# "4K" = 40.0', '[latency.standard]\n"1K" = 3.0')
        policy = RoutingPolicy.load(self.write(tmp_path, text), prices=prices)
        assert policy.decide(RouteRequest(PLAIN)).tier == "standard"
        quick = policy.decide(RouteRequest(PLAIN, deadline_seconds=1.0))
        assert quick.tier == "nano"
        assert "standard is expected to take 3 s at 1K, excluded" in quick.reasons[-2]

    def test_reload_reads_the_file_again(self, tmp_path: Path, prices: PriceTable) -> None:
        path = self.write(tmp_path, DEFAULT_POLICY_TOML)
        assert RoutingPolicy.load(path, prices=prices).decide(RouteRequest(PLAIN)).tier == "nano"
        path.write_text(DEFAULT_POLICY_TOML.replace('tier = "nano"', 'tier = "pro"', 1))
        assert RoutingPolicy.load(path, prices=prices).decide(RouteRequest(PLAIN)).tier == "pro"

    def test_keywords_come_from_the_file(self, tmp_path: Path, prices: PriceTable) -> None:
        text = DEFAULT_POLICY_TOML.replace('"marble", ', '"terrazzo", ').replace(
            "quoted_text = true", "quoted_text = false"
        )
        policy = RoutingPolicy.load(self.write(tmp_path, text), prices=prices)
        assert policy.decide(RouteRequest("a terrazzo floor", stage=Stage.REFINE)).tier == "pro"
        assert policy.decide(RouteRequest("a marble floor", stage=Stage.REFINE)).tier == "standard"
        assert policy.decide(RouteRequest('a "SALE" sign', stage=Stage.REFINE)).tier == "standard"

    @pytest.mark.parametrize(
        ("old", "new", "expected"),
        [
            (
                'signal_tier = "pro"',
                'signal_tier = "ultra"',
                ":19: stages.refine.signal_tier: unknown tier 'ultra'",
            ),
            (
                '[stages.explore]\ntier = "nano"',
                '[stages.explore]\ntier = "Nano"',
                ":5: stages.explore.tier: unknown tier 'Nano'",
            ),
            (
                '[stages.refine.fidelity]\nhigh = "pro"',
                "[stages.refine.fidelity]\nhigh = 3",
                ":22: stages.refine.fidelity.high: unknown tier 3",
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
                '[latency.nano]\n"2K" = 1.0',
                "latency.nano.2K: tier nano offers sizes 1K",
            ),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[latency.pro]\n"4K" = 0',
                "latency.pro.4K: must be seconds > 0",
            ),
            (
                '# [latency.pro]\n# "4K" = 40.0',
                '[latency.ultra]\n"4K" = 1',
                "latency.ultra: unknown tier",
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
