"""When a failed delivery is tried again, when it is given up, and when an endpoint is paused:
the rules, free of I/O, with the defaults docs/api.md documents.

Retries back off exponentially with jitter: after the n-th failed attempt the next waits
`base * 2^(n-1)`, at most `max_delay`, times a random factor from 0.5 to 1 ("equal jitter": the
waits of deliveries that failed together spread out, none waits less than half its step). With
the defaults (5 s, at most 1 h) the waits are 2.5-5 s, 5-10 s, 10-20 s, ... up to 30-60 min, and
a delivery is tried about 30 times within its retry period (24 h from the event); an attempt
that would fall after the period is not made, and the delivery is marked failed.

An endpoint is paused once `pause_after_failures` attempts in a row have failed (any of its
deliveries) over at least `pause_after_seconds` since the first of them (defaults: 20 attempts
over 24 h, so that a receiver down for an afternoon is not paused, one gone for a day is).
While paused nothing is sent to it; its deliveries wait, and those whose period ends meanwhile
are marked failed. Resuming it (UpdateWebhook) sends what is waiting.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["RetryPolicy"]

_MICROS = 1_000_000


@dataclass(frozen=True)
class RetryPolicy:
    """How deliveries are attempted and retried, and when an endpoint is paused."""

    #: Longest one attempt may take, from connecting to the answer's status.
    timeout_seconds: float = 10.0
    #: The wait after the first failed attempt, doubled after each further one.
    base_seconds: float = 5.0
    #: The longest wait between two attempts.
    max_delay_seconds: float = 3600.0
    #: How long after its event a delivery is still attempted.
    period_seconds: float = 86_400.0
    #: Attempts in a row that must fail, over at least `pause_after_seconds`, to pause.
    pause_after_failures: int = 20
    pause_after_seconds: float = 86_400.0

    @property
    def lease_us(self) -> int:
        """How long a delivery taken for an attempt stays the taker's: the attempt's timeout
        and a margin. A router that dies mid-attempt leaves it due again after this."""
        return round((self.timeout_seconds * 2 + 5) * _MICROS)

    def delay_seconds(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        """The wait after `attempts` attempts have failed (1 or more)."""
        step = min(self.base_seconds * 2.0 ** min(attempts - 1, 62), self.max_delay_seconds)
        return float(step * (0.5 + 0.5 * rand()))

    def next_attempt_us(
        self,
        created_us: int,
        now_us: int,
        attempts: int,
        rand: Callable[[], float] = random.random,
    ) -> int | None:
        """When a delivery of an event at `created_us` whose `attempts`-th attempt just failed
        (at `now_us`) is tried again; None when that would be after its retry period."""
        due = now_us + round(self.delay_seconds(attempts, rand) * _MICROS)
        if due > created_us + round(self.period_seconds * _MICROS):
            return None
        return due

    def expired(self, created_us: int, now_us: int) -> bool:
        """Whether the retry period of an event at `created_us` has ended at `now_us`."""
        return now_us > created_us + round(self.period_seconds * _MICROS)

    def pause_reason(
        self, failures: int, failing_since_us: int | None, now_us: int, last_error: str
    ) -> str | None:
        """Why an endpoint whose last `failures` attempts failed, the first at
        `failing_since_us`, is paused now; None while it is not."""
        if failing_since_us is None or failures < self.pause_after_failures:
            return None
        if now_us - failing_since_us < round(self.pause_after_seconds * _MICROS):
            return None
        since = datetime.fromtimestamp(failing_since_us / _MICROS, UTC)
        return (
            f"{failures} attempts in a row failed since"
            f" {since.isoformat(timespec='seconds').replace('+00:00', 'Z')}; the last: {last_error}"
        )
