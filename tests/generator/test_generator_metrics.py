"""The generator's queue depth on the metrics registry: renders running and waiting per tier."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from prometheus_client import REGISTRY

from services.generator.scheduling import TierQueue
from services.generator.tiers import load_catalogue
from services.runtime.resolution import ImageSize


def _renders(tier: str, state: str) -> float | None:
    return REGISTRY.get_sample_value("tiergen_generator_renders", {"tier": tier, "state": state})


async def test_renders_running_and_waiting_are_reported_per_tier():
    tier = replace(load_catalogue().tier("nano"), name="metered", max_concurrency=1)
    queue = TierQueue(tier)
    assert (_renders("metered", "running"), _renders("metered", "waiting")) == (0, 0)
    first_running = asyncio.Event()
    release = asyncio.Event()

    async def render() -> None:
        with queue.place(ImageSize.K1):
            async with queue.turn():
                first_running.set()
                await release.wait()

    renders = [asyncio.create_task(render()) for _ in range(3)]
    await first_running.wait()
    await asyncio.sleep(0)
    assert (_renders("metered", "running"), _renders("metered", "waiting")) == (1, 2)

    release.set()
    await asyncio.gather(*renders)
    assert (_renders("metered", "running"), _renders("metered", "waiting")) == (0, 0)
