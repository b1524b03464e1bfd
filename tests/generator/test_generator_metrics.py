"""The generator's queues on the metrics registry: renders running and waiting per tier, the
expected wait of a new render, and refusals by reason."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from services.generator.providers.instant import InstantBackend
from services.generator.scheduling import RenderScheduler
from services.generator.tiers import TierCatalogue, load_catalogue
from services.runtime.errors import ResourceExhausted
from services.runtime.fairshare import Requester, Urgency
from services.runtime.resolution import ImageSize


def _sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _renders(tier: str, state: str) -> float | None:
    return _sample("tiergen_generator_renders", {"tier": tier, "state": state})


def _scheduler(
    queue_limit: int = 64, clock: Callable[[], float] = time.monotonic
) -> tuple[RenderScheduler, TierCatalogue]:
    # A tier on the instant backend: bounded only by its own max_concurrency.
    tier = replace(
        load_catalogue().tier("nano"),
        name="metered",
        backend="instant",
        max_concurrency=1,
        queue_limit=queue_limit,
    )
    catalogue = TierCatalogue((tier,))
    return RenderScheduler(catalogue, {"instant": InstantBackend()}, clock=clock), catalogue


async def test_renders_running_and_waiting_are_reported_per_tier():
    # A clock that stands still: the running render's time left is its whole estimate, however
    # long this test takes between its steps.
    scheduler, catalogue = _scheduler(clock=lambda: 1000.0)
    tier = catalogue.tier("metered")
    assert (_renders("metered", "running"), _renders("metered", "waiting")) == (0, 0)
    first_running = asyncio.Event()
    release = asyncio.Event()

    async def render() -> None:
        with scheduler.admit(tier, ImageSize.K1, Requester("acme", "a"), None) as ticket:
            async with ticket.turn():
                first_running.set()
                await release.wait()

    renders = [asyncio.create_task(render()) for _ in range(3)]
    await first_running.wait()
    await asyncio.sleep(0)
    assert (_renders("metered", "running"), _renders("metered", "waiting")) == (1, 2)

    # A new tenant goes before acme's two waiting renders: it waits only for the running one
    # (0.05 s); acme's next render waits for its own two as well.
    wait = _sample(
        "tiergen_generator_expected_wait_seconds", {"tier": "metered", "urgency": "bulk"}
    )
    assert wait is not None
    assert wait == pytest.approx(0.05)
    assert scheduler.expected_wait("metered", Urgency.BULK, "acme") == pytest.approx(0.15)

    release.set()
    await asyncio.gather(*renders)
    assert (_renders("metered", "running"), _renders("metered", "waiting")) == (0, 0)


async def test_refusals_are_counted_by_reason():
    scheduler, catalogue = _scheduler(queue_limit=0)
    tier = catalogue.tier("metered")

    def refused(urgency: str, reason: str) -> float:
        labels = {"tier": "metered", "urgency": urgency, "reason": reason}
        return _sample("tiergen_generator_refused_total", labels) or 0.0

    full, shed = refused("bulk", "QUEUE_FULL"), refused("bulk", "SHED")
    with scheduler.admit(tier, ImageSize.K1, Requester("acme", "a"), None):
        with pytest.raises(ResourceExhausted):
            scheduler.admit(tier, ImageSize.K1, Requester("acme", "b"), None)
        assert refused("bulk", "QUEUE_FULL") == full + 1
        # An interactive render takes the place of the waiting bulk one.
        sketch = Requester("acme", "b", Urgency.INTERACTIVE)
        with scheduler.admit(tier, ImageSize.K1, sketch, None):
            assert refused("bulk", "SHED") == shed + 1
