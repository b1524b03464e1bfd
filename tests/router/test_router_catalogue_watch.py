"""The catalogue watcher over a scripted generator: when it asks, what it adopts, when the router
is ready, and what it logs; every poll driven by the test (its waits are recorded, not slept)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from services.router.routing.admission import Admission
from services.router.routing.catalogue import CATALOGUE_RETRY_SECONDS, TierCatalogue
from services.router.routing.catalogue_watch import CatalogueWatcher
from services.router.server import adopt_catalogue
from services.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from tests.router.fakes import RouterDomain
from tests.router.generator_tiers import reported_tiers

TIERS = reported_tiers()
NANO, STANDARD, PRO = TIERS.tiers
WITHOUT_PRO = TierCatalogue((NANO, STANDARD))
DOWN = Unavailable("connection refused", reason="UNAVAILABLE")


class ScriptedGenerator:
    """Answers ListTiers with each of `answers` in turn (an error is raised)."""

    def __init__(self, answers: Sequence[TierCatalogue | Exception]) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def tiers(self) -> TierCatalogue:
        answer = self.answers[self.asked]
        self.asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class Run:
    """A watcher over `answers`; `watch()` polls once per answer, then stops."""

    def __init__(self, answers: Sequence[TierCatalogue | Exception], interval: float = 30.0):
        self.generator = ScriptedGenerator(answers)
        self.adopted: list[TierCatalogue] = []
        self.ready: list[bool] = []
        self.waits: list[float] = []
        self.watcher = CatalogueWatcher(
            self.generator,
            self.adopted.append,
            ready=self._ready,
            interval=interval,
            sleep=self._sleep,
        )

    async def _ready(self, serving: bool) -> None:
        self.ready.append(serving)

    async def _sleep(self, seconds: float) -> None:
        if self.generator.asked == len(self.generator.answers):
            raise asyncio.CancelledError  # the script is played: stop as a stopping server would
        self.waits.append(seconds)

    async def watch(self) -> None:
        with pytest.raises(asyncio.CancelledError):
            await self.watcher.watch()


def admits(admission: Admission, tier: str) -> bool:
    try:
        with admission.admit(tier, 1):
            return True
    except ResourceExhausted as refused:
        assert refused.reason == "QUEUE_FULL"
        return False


async def test_not_ready_until_the_generator_first_answers() -> None:
    run = Run([DOWN, DOWN, TIERS, TIERS])
    await run.watcher.refresh()
    assert (run.ready, run.watcher.catalogue) == ([False], None)
    await run.watch()
    assert run.ready == [False, True]
    assert run.adopted == [TIERS]
    # Asked again soon while nothing is known, then at the configured interval.
    assert run.waits == [CATALOGUE_RETRY_SECONDS, CATALOGUE_RETRY_SECONDS, 30.0]


async def test_a_short_interval_is_kept_while_nothing_is_known() -> None:
    run = Run([DOWN, TIERS], interval=0.05)
    await run.watch()
    assert run.waits == [0.05, 0.05]


async def test_each_changed_answer_is_adopted_once_and_logged() -> None:
    run = Run([TIERS, TIERS, WITHOUT_PRO, WITHOUT_PRO, TIERS])
    with capture_logs() as logs:
        await run.watch()
    assert run.adopted == [TIERS, WITHOUT_PRO, TIERS]
    assert run.ready == [True]
    changes = [(log["event"], log["changes"]) for log in logs if "changes" in log]
    assert changes == [
        ("tier catalogue learned from the generator", ("tiers nano, standard, pro",)),
        ("tier catalogue changed at the generator", ("tier pro removed",)),
        ("tier catalogue changed at the generator", ("tier pro added",)),
    ]


async def test_a_generator_gone_quiet_leaves_the_last_catalogue_and_readiness() -> None:
    run = Run([TIERS, DOWN, DOWN, DOWN, TIERS])
    with capture_logs() as logs:
        await run.watch()
    assert run.watcher.catalogue == TIERS
    assert run.adopted == [TIERS]
    assert run.ready == [True]
    events = [log["event"] for log in logs]
    # One line per outage, not one per poll.
    assert events.count("could not read the generator's tiers") == 1
    assert events.count("the generator's tiers are readable again") == 1


async def test_an_adopted_catalogue_feeds_routing_and_admission() -> None:
    domain = RouterDomain.build()
    small_nano = replace(NANO, max_concurrency=1, queue_limit=0)
    with capture_logs() as logs:
        adopt_catalogue(domain.router, TierCatalogue((small_nano, STANDARD)))
    policy = domain.router.policy
    assert policy.catalogue.names == ("nano", "standard")
    with pytest.raises(InvalidArgument) as caught:
        policy.require_tier("pro", field="tier")
    assert caught.value.reason == "UNKNOWN_TIER"
    # The embedded files still price pro and raise refine to it: both are logged.
    assert [(log["log_level"], log["problem"]) for log in logs] == [
        ("warning", "prices of tier pro ignored: the generator does not offer it"),
        (
            "error",
            "policy stages.refine names tier pro, which is not routed (the generator does not"
            " offer it); its rule is skipped",
        ),
    ]
    admission = domain.router.admission
    with admission.admit("nano", 1):
        assert not admits(admission, "nano")  # one place, taken
        assert admits(admission, "standard")
