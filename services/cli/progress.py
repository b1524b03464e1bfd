"""How `tiergen generate`, `promote` and `upscale` show their jobs' progress on stderr.

On a terminal, each job has one line that is rewritten in place as its events arrive: the job,
its tier (or upscale factor), a bar, the percentage, the stage and the time since the job was
first seen. Anywhere else (a pipe, a file, a CI log), each event is one plain line of its own,
which `grep` and log collectors read. The lines go where the progress goes, stderr, so the
choice looks at stderr: `tiergen generate --json > batch.json` still shows live lines.
`--json` documents on stdout are the same either way.

The in-place lines are plain ANSI: move the cursor up over the block, clear each line, write
it again. A line is cut to the terminal's width so it never wraps, which would break the
count of lines to move up. No library is needed for that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TextIO, runtime_checkable

from tiergen.router.v1 import router_pb2

__all__ = ["LineProgress", "LiveProgress", "ProgressView", "progress_view", "ticking"]

_BAR_WIDTH = 20
#: How often the live lines are drawn again between events, so the elapsed times move on
#: while a job waits in a queue.
_TICK_SECONDS = 0.5
_CLEAR_LINE = "\x1b[2K"


@runtime_checkable
class ProgressView(Protocol):
    """What a streamed call reports as its events arrive."""

    def batch(self, batch: router_pb2.Batch) -> None: ...

    def accepted(self, job: router_pb2.Job) -> None: ...

    def progress(self, event: router_pb2.JobProgress) -> None: ...

    def finished(self, job: router_pb2.Job) -> None: ...


def _status(job: router_pb2.Job) -> str:
    return router_pb2.JobStatus.Name(job.status)


def _label(job: router_pb2.Job) -> str:
    return job.tier or f"upscale x{job.upscale_factor:g}"


class LineProgress:
    """One plain line per event, handed to `sink`."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink

    def batch(self, batch: router_pb2.Batch) -> None:
        d = batch.decision
        self._sink(
            f"batch {batch.batch_id}: {d.n} x {d.tier} {d.width}x{d.height},"
            f" {d.total_cost} credits held"
        )

    def accepted(self, job: router_pb2.Job) -> None:
        self._sink(f"{job.job_id} accepted: {job.tier or 'upscale'} {job.width}x{job.height}")

    def progress(self, event: router_pb2.JobProgress) -> None:
        p = event.progress
        self._sink(f"{event.job_id} {p.stage} {p.fraction * 100:.0f}%")

    def finished(self, job: router_pb2.Job) -> None:
        self._sink(f"{job.job_id} {_status(job)}")


@dataclass
class _Row:
    label: str
    started: float
    stage: str = "queued"
    fraction: float = 0.0
    #: The final status, lower case, once the job finished.
    outcome: str | None = None
    ended: float | None = None


class LiveProgress:
    """One line per job on a terminal `stream`, rewritten in place as its events arrive.

    `clock` gives the elapsed times (monotonic seconds); `width` the terminal's columns.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] | None = None,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._width = width or (lambda: _columns(stream))
        self._rows: dict[str, _Row] = {}
        #: Lines of the block drawn last, which the next drawing goes back over.
        self._drawn = 0

    def batch(self, batch: router_pb2.Batch) -> None:
        d = batch.decision
        # Above the block, once: it does not change.
        self._stream.write(
            f"batch {batch.batch_id}: {d.n} x {d.tier} {d.width}x{d.height},"
            f" {d.total_cost} credits held\n"
        )
        now = self._clock()
        for job in batch.jobs:
            self._rows.setdefault(job.job_id, _Row(_label(job) if job.tier else d.tier, now))
        self._draw()

    def accepted(self, job: router_pb2.Job) -> None:
        self._rows.setdefault(job.job_id, _Row(_label(job), self._clock()))
        self._draw()

    def progress(self, event: router_pb2.JobProgress) -> None:
        row = self._row(event.job_id, "")
        if row.outcome is None:
            row.stage = event.progress.stage or row.stage
            row.fraction = min(max(event.progress.fraction, 0.0), 1.0)
        self._draw()

    def finished(self, job: router_pb2.Job) -> None:
        row = self._row(job.job_id, _label(job))
        row.outcome = _status(job).removeprefix("JOB_STATUS_").lower()
        row.ended = self._clock()
        if job.status == router_pb2.JOB_STATUS_SUCCEEDED:
            row.fraction = 1.0
        self._draw()

    def refresh(self) -> None:
        """Draws the lines again (their elapsed times move on) while a job is unfinished."""
        if any(row.outcome is None for row in self._rows.values()):
            self._draw()

    def _row(self, job_id: str, label: str) -> _Row:
        row = self._rows.get(job_id)
        if row is None:
            row = self._rows[job_id] = _Row(label, self._clock())
        return row

    def _draw(self) -> None:
        now = self._clock()
        width = max(self._width() - 1, 10)
        out = [f"\x1b[{self._drawn}F"] if self._drawn else []
        for job_id, row in self._rows.items():
            out.append(f"{_CLEAR_LINE}{_line(job_id, row, now)[:width]}\n")
        self._stream.write("".join(out))
        self._stream.flush()
        self._drawn = len(self._rows)


def _line(job_id: str, row: _Row, now: float) -> str:
    done = round(row.fraction * _BAR_WIDTH)
    bar = "#" * done + "-" * (_BAR_WIDTH - done)
    elapsed = (row.ended if row.ended is not None else now) - row.started
    what = row.outcome or row.stage
    return (
        f"{job_id}  {row.label:<10} [{bar}] {row.fraction * 100:3.0f}%  {what:<10} {elapsed:6.1f}s"
    )


@contextlib.asynccontextmanager
async def ticking(view: ProgressView, every: float = _TICK_SECONDS) -> AsyncIterator[ProgressView]:
    """`view`, refreshed every `every` seconds while inside when it draws live lines."""
    if not isinstance(view, LiveProgress):
        yield view
        return

    async def tick() -> None:
        while True:
            await asyncio.sleep(every)
            view.refresh()

    task = asyncio.create_task(tick())
    try:
        yield view
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 80
    # A terminal that reports no size (0 columns, as a fresh pseudo-terminal does) is taken
    # for the common 80.
    return columns if columns > 0 else 80


def progress_view(stream: TextIO, *, quiet: bool = False) -> ProgressView:
    """The view for a command's progress on `stream`: nothing when `quiet`, live lines on a
    terminal (not a `TERM=dumb` one), plain lines elsewhere."""
    if quiet:
        return LineProgress(lambda _line: None)
    if stream.isatty() and os.environ.get("TERM") != "dumb":
        return LiveProgress(stream)

    def write(line: str) -> None:
        print(line, file=stream, flush=True)

    return LineProgress(write)
