"""The router's metrics and spans for its domain steps (route, reserve, render, store, settle)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter

from services.router.jobs.model import Job

__all__ = ["CAPTURED", "RECOVERED", "count_final", "step"]

_JOBS = Counter(
    "tiergen_router_jobs_total",
    "Jobs that reached a final state, by kind, tier (empty for upscales) and status.",
    ["kind", "tier", "status"],
)
CAPTURED = Counter(
    "tiergen_router_credits_captured_total", "Credits captured for delivered images."
)
RECOVERED = Counter(
    "tiergen_router_batches_recovered_total",
    "Batches taken over from a router that stopped while running them.",
)

_tracer = trace.get_tracer("tiergen.router")


def count_final(job: Job) -> None:
    """Counts a job that reached its final state."""
    _JOBS.labels(job.kind.value, job.tier or "", job.status.value).inc()


@contextlib.contextmanager
def step(name: str, **attributes: Any) -> Iterator[None]:
    """A span for one domain step, with `tiergen.*` attributes."""
    with _tracer.start_as_current_span(
        name, attributes={f"tiergen.{k}": v for k, v in attributes.items() if v is not None}
    ):
        yield
