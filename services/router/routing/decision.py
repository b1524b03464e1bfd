"""What routing decides: a generation as asked for, the decision (tier, size, price, reasons), a
quote of it against the caller's credits, and the refusal of one the credits do not cover.

Plain values kept apart from the policy that makes them: jobs, batches and the gRPC edge carry
them without needing the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.router.routing.catalogue import AspectRatio, Fidelity, ImageSize, Stage
from services.runtime.errors import FailedPrecondition

__all__ = ["Decision", "Quote", "RouteRequest", "insufficient_credits"]


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
