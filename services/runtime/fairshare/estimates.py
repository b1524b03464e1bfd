"""Expected service time per kind of work, from what recent jobs of that kind took.

An exponentially weighted mean: each finished job moves its kind's estimate a fifth of the way to
its own time, so the estimate follows a machine that slows down (another process took a core)
within a few jobs, and one slow outlier moves it only a fifth. Until a kind has run, its
estimate is the configured guess (the tier catalogue's expected latency, for a render).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ServiceTimes"]

#: Share of the last observation in the estimate.
_SMOOTHING = 0.2
#: No estimate goes below a millisecond: a cost of 0 would let work jump the fair queue.
_SHORTEST = 0.001


class ServiceTimes:
    """Seconds a job of each kind is expected to keep a worker, learned from finished jobs."""

    def __init__(self, initial: Callable[[str], float], smoothing: float = _SMOOTHING) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be above 0 and at most 1")
        self._initial = initial
        self._smoothing = smoothing
        self._estimates: dict[str, float] = {}

    def estimate(self, work: str) -> float:
        known = self._estimates.get(work)
        if known is None:
            known = max(_SHORTEST, self._initial(work))
        return known

    def observe(self, work: str, seconds: float) -> None:
        """Records that a job of kind `work` kept its worker `seconds`."""
        current = self.estimate(work)
        updated = current + self._smoothing * (max(_SHORTEST, seconds) - current)
        self._estimates[work] = updated

    def known(self) -> dict[str, float]:
        """The estimates learned so far, by kind of work."""
        return dict(self._estimates)
