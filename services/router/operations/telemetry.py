"""The router's metrics and spans for its domain steps (route, reserve, render, store, settle)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter

from services.router.jobs.model import Job, JobStatus, Owner

__all__ = ["RECOVERED", "count_captured", "count_final", "step"]

_JOBS = Counter(
    "tiergen_router_jobs_total",
    "Jobs that reached a final state, by kind, tier (empty for upscales) and status.",
    ["kind", "tier", "status"],
)
_IMAGES = Counter(
    "tiergen_router_images_total",
    "Images delivered (jobs that succeeded), by tenant and the tier that rendered them (empty"
    " for upscales).",
    ["tenant", "tier"],
)
_CAPTURED = Counter(
    "tiergen_router_credits_captured_total",
    "Credits captured for delivered images, by tenant and the tier that rendered them (empty"
    " for upscales).",
    ["tenant", "tier"],
)
RECOVERED = Counter(
    "tiergen_router_batches_recovered_total",
    "Batches taken over from a router that stopped while running them.",
)

_tracer = trace.get_tracer("tiergen.router")


def count_final(job: Job) -> None:
    """Counts a job that reached its final state, and its image if it delivered one."""
    _JOBS.labels(job.kind.value, job.tier or "", job.status.value).inc()
    if job.status is JobStatus.SUCCEEDED:
        _IMAGES.labels(job.owner.tenant, job.tier or "").inc()


def count_captured(owner: Owner, jobs: Iterable[Job]) -> None:
    """Counts the credits captured for `owner`'s delivered `jobs`, by the tier of each.

    Labelled by tenant, never by account: tenants are the few platforms configured, accounts
    are their users.
    """
    for job in jobs:
        if job.status is JobStatus.SUCCEEDED and job.cost:
            _CAPTURED.labels(owner.tenant, job.tier or "").inc(job.cost)


@contextlib.contextmanager
def step(name: str, **attributes: Any) -> Iterator[None]:
    """A span for one domain step, with `tiergen.*` attributes."""
    with _tracer.start_as_current_span(
        name, attributes={f"tiergen.{k}": v for k, v in attributes.items() if v is not None}
    ):
        yield
