"""The worker-process side of an upscale: process start-up, the shared job board, the stop checks.

The server runs `upscale_image` in spawned worker processes, and a task a process pool has
started cannot be interrupted from outside. So the server and its workers share a `JobBoard` in
shared memory: one slot per admitted request, holding a cancellation flag the server raises and
the progress the worker reports. Before every tile the worker checks its slot and the caller's
deadline and gives up at once, so a cancelled or late request frees its worker within one tile.
Decoding (before the first tile) and the final encode (after the last) run without checks: a
cancelled 4096x4096 PNG can still hold its worker for the encoder's second or so.
"""

from __future__ import annotations

import ctypes
import signal
import time
import warnings
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.context import BaseContext

from PIL import Image

from services.runtime.errors import Cancelled, DeadlineExceeded
from services.runtime.workers import end_with_server
from services.upscaler.pipeline import PipelineSettings, UpscaledImage, UpscaleSpec, upscale_image

__all__ = ["Finished", "JobBoard", "Stage", "Ticket", "prepare_worker", "run_job"]


class Stage(IntEnum):
    """Where a job is; the worker running it writes this on the board."""

    QUEUED = 0
    DECODING = 1
    UPSCALING = 2
    ENCODING = 3


class JobBoard:
    """Per-slot cancellation flags and progress in memory shared by a server and its workers.

    Every field has one writer: the server raises `cancel` flags and resets slots it hands out;
    the worker running a slot's job writes its stage and fraction. A board reaches a worker only
    as the process starts (as an argument of `prepare_worker`), never with a job.
    """

    def __init__(self, slots: int, context: BaseContext) -> None:
        self.slots = slots
        self._cancelled = context.RawArray(ctypes.c_bool, slots)
        self._stages = context.RawArray(ctypes.c_byte, slots)
        self._fractions = context.RawArray(ctypes.c_double, slots)

    def reset(self, slot: int) -> None:
        """Ready `slot` for a new job; only for a slot no worker is running."""
        self._cancelled[slot] = False
        self._stages[slot] = Stage.QUEUED
        self._fractions[slot] = 0.0

    def cancel(self, slot: int) -> None:
        """Ask the worker running `slot`'s job, if any, to stop at its next check."""
        self._cancelled[slot] = True

    def cancel_all(self) -> None:
        for slot in range(self.slots):
            self.cancel(slot)

    def cancelled(self, slot: int) -> bool:
        return bool(self._cancelled[slot])

    def report(self, slot: int, stage: Stage, fraction: float = 0.0) -> None:
        """Record that `slot`'s job reached `stage`, `fraction` of the way through it."""
        self._fractions[slot] = fraction
        self._stages[slot] = stage

    def progress(self, slot: int) -> tuple[Stage, float]:
        """The stage `slot`'s job last reported, and how far through it it was."""
        return Stage(self._stages[slot]), float(self._fractions[slot])


@dataclass(frozen=True)
class Ticket:
    """What a worker needs to know about a job besides its input and spec."""

    #: The job's slot on the board.
    slot: int
    #: `time.monotonic()` value after which the caller no longer waits; None for no deadline.
    #: CLOCK_MONOTONIC is one clock for the whole machine, so the server's value holds here.
    deadline: float | None = None


@dataclass(frozen=True)
class Finished:
    """A job's output and the time its worker spent decoding, upscaling and encoding."""

    image: UpscaledImage
    seconds: float


#: The board of this worker process, installed by `prepare_worker` as the process starts:
#: shared memory can reach a spawned process only then, so it lives here for the process's life.
_board: JobBoard | None = None


def prepare_worker(board: JobBoard, server_pid: int) -> None:
    """Initializer of each worker process (`ProcessPoolExecutor(initializer=...)`); the worker
    ends with its server `server_pid`."""
    global _board
    _board = board
    end_with_server(server_pid)
    # Pillow only warns about images between MAX_IMAGE_PIXELS and twice that; as an error the
    # decoder refuses them from the header, before allocating pixel memory for a likely bomb.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    # Ctrl-C reaches the whole process group; the server drains and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_job(data: bytes, spec: UpscaleSpec, settings: PipelineSettings, ticket: Ticket) -> Finished:
    """Run `upscale_image` in a worker, reporting progress and stopping when told to.

    Raises `Cancelled` or `DeadlineExceeded` at the first check after the server cancelled the
    job or its deadline passed, and whatever `upscale_image` raises for bad input.
    """
    if _board is None:
        raise RuntimeError("run_job needs a worker started with prepare_worker")
    board = _board

    def stop_if_told() -> None:
        if board.cancelled(ticket.slot):
            raise Cancelled("the caller cancelled the upscale")
        if ticket.deadline is not None and time.monotonic() >= ticket.deadline:
            raise DeadlineExceeded("the caller's deadline passed before the upscale finished")

    def checkpoint(fraction: float) -> None:
        stop_if_told()
        # The pipeline checks in before each tile and once more, at 1.0, before encoding.
        if fraction < 1.0:
            board.report(ticket.slot, Stage.UPSCALING, fraction)
        else:
            board.report(ticket.slot, Stage.ENCODING)

    # A job cancelled while it waited in the pool's queue stops before it starts decoding.
    stop_if_told()
    board.report(ticket.slot, Stage.DECODING)
    started = time.perf_counter()
    image = upscale_image(data, spec, settings, checkpoint)
    return Finished(image=image, seconds=time.perf_counter() - started)
