"""What a running operation tells its caller: the accepted batch, progress, finished jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from services.router.jobs.model import BatchRecord, Job

__all__ = ["BatchAccepted", "BatchEvent", "JobFinished", "JobProgressed", "ProgressCoalescer"]


@dataclass(frozen=True)
class BatchAccepted:
    """First event of every call that creates work: the batch, its jobs and its decision."""

    record: BatchRecord


@dataclass(frozen=True)
class JobProgressed:
    """A job moved on."""

    job_id: str
    stage: str
    fraction: float


@dataclass(frozen=True)
class JobFinished:
    """A job reached a final state."""

    job: Job


BatchEvent = BatchAccepted | JobProgressed | JobFinished


class ProgressCoalescer:
    """A running batch's events on their way to the caller, progress coalesced.

    A job's progress waits up to `interval` seconds, replaced by any newer progress of the same
    job meanwhile, and is dropped once the job finishes: the final job says more. A batch of
    quick jobs then streams its jobs alone, and a long one a few progress events a second.
    """

    def __init__(self, emit: Callable[[BatchEvent | None], None], interval: float) -> None:
        self._emit = emit
        self._interval = interval
        self._pending: dict[str, JobProgressed] = {}
        self._flush_handle: asyncio.TimerHandle | None = None

    def progress(self, job_id: str, stage: str, fraction: float) -> None:
        event = JobProgressed(job_id, stage, fraction)
        if self._interval <= 0:
            self._emit(event)
            return
        self._pending[job_id] = event
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def finished(self, job: Job) -> None:
        self._pending.pop(job.job_id, None)
        self._emit(JobFinished(job))

    def close(self) -> None:
        """Drops what is still pending; every job has finished."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending.clear()

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        for event in pending.values():
            self._emit(event)
