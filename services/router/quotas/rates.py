"""The quota rules, free of any store: the generic cell rate algorithm (GCRA) for rates, and the
rule for concurrent jobs.

A rate of `limit` events per period is kept as one number per subject, its theoretical arrival
time (TAT): when the subject would be idle again had every admitted event come at the exact
rate. An event of cost c is admitted when, starting from max(TAT, now), c emission intervals
(period / limit each) end at most `allowance` past now; admitting it moves the TAT there. The
allowance is the burst: `limit` events at once from idle (at least one), and a call costing
more than the whole burst (a 64-image batch against 60 images per minute) is admitted only from
idle, so it always runs eventually and the long-run rate still holds. Over any window of W
seconds a subject admits at most burst + W x rate events: the exactness the limiter promises.

Times are integer microseconds; the emission interval is rounded up, so rounding can only make
a rate stricter, by at most one microsecond per event. The store applies `fits` in one
statement (PostgreSQL mirrors it in SQL), the domain uses it again to say which quota refused
and when a retry fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Draw", "Rate", "fits", "jobs_fit", "wait_us"]

SECOND_US = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` events per `period_us` microseconds."""

    limit: float
    period_us: int

    @property
    def emission_us(self) -> int:
        """The interval between events at the exact rate, rounded up."""
        return max(1, math.ceil(self.period_us / self.limit))

    @property
    def burst(self) -> int:
        """Events admitted at once from idle: the limit per period, at least one."""
        return max(1, math.floor(self.limit))


@dataclass(frozen=True, slots=True)
class Draw:
    """What one call takes from one subject's rate: `cost` events (1 request, n images)."""

    subject: str
    rate: Rate
    cost: int

    @property
    def increment_us(self) -> int:
        """How far an admitted call moves the subject's TAT."""
        return self.rate.emission_us * self.cost

    @property
    def allowance_us(self) -> int:
        """How far past now the TAT may end: the burst, or the whole call when larger."""
        return max(self.rate.burst * self.rate.emission_us, self.increment_us)


def fits(draw: Draw, base_us: int, now_us: int) -> bool:
    """Whether `draw` is admitted now, from `base_us` = max(TAT, now)."""
    return base_us + draw.increment_us - now_us <= draw.allowance_us


def wait_us(draw: Draw, base_us: int, now_us: int) -> int:
    """How long until `draw` would fit, from `base_us` (0 when it fits now)."""
    return max(0, base_us + draw.increment_us - draw.allowance_us - now_us)


def jobs_fit(limit: int | None, busy: int, jobs: int) -> bool:
    """Whether `jobs` more fit beside `busy` unfinished ones under `limit` (None: no limit).

    A call with more jobs than the whole limit is admitted once nothing else is unfinished, as
    a rate admits a call larger than its burst from idle.
    """
    return limit is None or busy + jobs <= limit or busy == 0
