"""The upscaler's gRPC edge: reads a streamed request, admits it, runs it on a worker, streams back.

One `Upscale` call, as the server sees it:

1. The first message must be the spec; it is validated (and the announced input size checked)
   before any image byte is buffered. A request refused while the client is still sending is
   read to its end first (see `_drain`), so asyncio clients see the refusal, not INTERNAL.
2. Admission: a request takes one of `workers + queue_limit` places, or is refused with
   RESOURCE_EXHAUSTED: `QUEUE_FULL` with a RetryInfo of about one job's time, when a place
   frees; `WAIT_EXCEEDS_DEADLINE` with a RetryInfo of the expected wait, when it could not
   start before the caller's deadline. A full upscaler sheds a waiting bulk job for an
   interactive one, or a job of a tenant over its weighted share for one under it (`SHED`).
3. The chunks are assembled (in order, within `max_input_bytes`), "queued" is reported, and the
   job waits for a worker in fair order (`services.runtime.fairshare`: tenants by the weights
   of TIERGEN_UPSCALER_TENANT_WEIGHTS, accounts evenly, interactive first within a bound; the
   spec's `tenant`, `account_id` and `urgency` say whose it is). Only then does it go to the
   process pool, so the pool never queues work of its own. While it runs, the worker's stage on
   the shared `JobBoard` becomes `progress` messages.
4. `progress` "done", then `result`, then the output in 1 MiB chunks.

When the call ends early (cancelled, deadline passed, client gone) the job's board slot is
flagged and its worker stops before its next tile; the worker (and the slot) is handed out
again only once it has let go of the job. A worker process that dies breaks the whole pool, so
the pool is replaced and the requests it was running fail with UNAVAILABLE, which callers may
retry.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeAlias

import grpc
import structlog
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram
from tiergen.common.v1 import common_pb2
from tiergen.upscaler.v1 import upscaler_pb2

from services.runtime.chunks import ChunkAssembler, drain, split
from services.runtime.collectors import executor_pids, forget_workers, track_workers
from services.runtime.errors import (
    InvalidArgument,
    ResourceExhausted,
    TiergenError,
    Unavailable,
)
from services.runtime.fairshare import (
    Claim,
    Dispatcher,
    FairOrder,
    GroupFull,
    GroupLimits,
    Requester,
    ServiceTimes,
    Ticket,
    Turn,
    Urgency,
)
from services.upscaler.pipeline import (
    IMAGE_FIELD,
    OutputFormat,
    UpscaledImage,
    UpscaleMethod,
    UpscaleSpec,
)
from services.upscaler.settings import UpscalerSettings
from services.upscaler.worker import Finished, JobBoard, Stage, run_job
from services.upscaler.worker import Ticket as BoardTicket

__all__ = ["UpscalerService"]

_tracer = trace.get_tracer("tiergen.upscaler")
_log = structlog.get_logger("tiergen.upscaler")

_JOBS = Gauge(
    "tiergen_upscaler_jobs",
    "Upscale jobs admitted, running on a worker or waiting for one (the queue depth and load).",
)
_EXPECTED_WAIT = Gauge(
    "tiergen_upscaler_expected_wait_seconds",
    "Seconds a new upscale of a tenant with nothing queued would wait for a worker, by urgency:"
    " the work ahead of it over the workers, from recent job times.",
    ["urgency"],
)
_REFUSED = Counter(
    "tiergen_upscaler_refused_total",
    "Upscales refused at admission or shed while waiting, by urgency and reason (QUEUE_FULL,"
    " WAIT_EXCEEDS_DEADLINE, SHED).",
    ["urgency", "reason"],
)
#: From a small 2x resize's hundredth of a second to a 4K enhancement's minute.
_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
_UPSCALE_SECONDS = Histogram(
    "tiergen_upscaler_upscale_seconds",
    "Time an upscale took on its worker (decode, upscale, encode), by factor; upscales that"
    " succeeded.",
    ["factor"],
    buckets=_SECONDS_BUCKETS,
)
_QUEUE_WAIT = Histogram(
    "tiergen_upscaler_queue_wait_seconds",
    "Time an admitted upscale waited for a worker before it started, by urgency.",
    ["urgency"],
    buckets=_SECONDS_BUCKETS,
)

_Context: TypeAlias = (
    "grpc.aio.ServicerContext[upscaler_pb2.UpscaleRequest, upscaler_pb2.UpscaleResponse]"
)

_SPEC_FIELD = "spec"
_INPUT_SIZE_FIELD = "spec.input_size_bytes"

#: How often a running job's progress is read from the board. Completion is not polled: the
#: result is awaited directly, so this adds no latency, only progress granularity.
_PROGRESS_SECONDS = 0.1
#: Share of the whole job done when each stage starts and ends: encoding a 4K PNG costs about
#: as much as decoding and upscaling it together.
_STAGE_SHARES = {
    Stage.QUEUED: (0.0, 0.0),
    Stage.DECODING: (0.02, 0.05),
    Stage.UPSCALING: (0.05, 0.6),
    Stage.ENCODING: (0.6, 0.6),
}
_STAGE_NAMES = {
    Stage.QUEUED: "queued",
    Stage.DECODING: "decoding",
    Stage.UPSCALING: "upscaling",
    Stage.ENCODING: "encoding",
}
#: Job time assumed for the RetryInfo hint until a job has finished: a 4K PNG's.
_FIRST_JOB_SECONDS = 1.0
#: The upscaler's one admission group: every job takes the same workers.
_GROUP = "upscale"
#: Longest tenant or account id accepted: the router's own limits are far below it.
_MOST_ID_CHARS = 256
#: The contract's urgency, as the queue knows it; unspecified is bulk.
_URGENCIES = {common_pb2.URGENCY_INTERACTIVE: Urgency.INTERACTIVE}

_FORMATS = {
    OutputFormat.PNG: common_pb2.IMAGE_FORMAT_PNG,
    OutputFormat.JPEG: common_pb2.IMAGE_FORMAT_JPEG,
    OutputFormat.WEBP: common_pb2.IMAGE_FORMAT_WEBP,
}
_METHODS = {
    UpscaleMethod.LANCZOS: common_pb2.UPSCALE_METHOD_LANCZOS,
    UpscaleMethod.BICUBIC: common_pb2.UPSCALE_METHOD_BICUBIC,
    UpscaleMethod.ENHANCE: common_pb2.UPSCALE_METHOD_ENHANCE,
}


class UpscalerService:
    """`tiergen.upscaler.v1.UpscalerService` over a process pool and a job board.

    `start_pool` makes a pool whose workers were started with `prepare_worker(board)`; it is
    called now and again whenever a worker process dies.
    """

    def __init__(
        self,
        settings: UpscalerSettings,
        board: JobBoard,
        start_pool: Callable[[], Executor],
    ) -> None:
        if board.slots != settings.workers + settings.queue_limit:
            raise ValueError(
                f"the board has {board.slots} slots; the settings admit "
                f"{settings.workers + settings.queue_limit} requests"
            )
        self._settings = settings
        self._pipeline = settings.pipeline()
        self._board = board
        self._slots = _Slots(board)
        self._start_pool = start_pool
        self._pool = start_pool()
        self._last_job_seconds = _FIRST_JOB_SECONDS
        fair_share = settings.fair_share
        self._dispatcher = Dispatcher(
            order=FairOrder(fair_share.weights, fair_share.interactive_burst),
            groups={_GROUP: GroupLimits(places=settings.workers + settings.queue_limit)},
            estimates=ServiceTimes(lambda _work: _FIRST_JOB_SECONDS),
            shared_workers=settings.workers,
            subject="the upscaler",
            on_refusal=_count_refusal,
        )
        dispatcher = self._dispatcher
        for urgency in Urgency:
            _EXPECTED_WAIT.labels(urgency.value).set_function(
                functools.partial(dispatcher.expected_wait, "", urgency, _GROUP)
            )
        track_workers(self)

    def worker_pids(self) -> Iterable[int]:
        """The pids of the live worker processes, for their CPU and memory figures."""
        return executor_pids(self._pool)

    async def close(self) -> None:
        """Stop every job at its next check and shut the pool down (a stop hook)."""
        forget_workers(self)
        self._board.cancel_all()
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    async def Upscale(
        self, request_iterator: AsyncIterator[upscaler_pb2.UpscaleRequest], context: _Context
    ) -> AsyncIterator[upscaler_pb2.UpscaleResponse]:
        requests = aiter(request_iterator)
        limit = self._settings.max_input_bytes
        try:
            spec, announced, requester = self._read_spec(await anext(requests, None))
            ticket = self._admit(spec, requester, context.time_remaining())
        except TiergenError:
            await drain(requests, limit)
            raise
        with ticket:
            try:
                data = await _receive_image(requests, announced, limit)
            except TiergenError:
                await drain(requests, limit)
                raise
            # Announced at once: a fast job may be decoding before the board is first read.
            yield upscaler_pb2.UpscaleResponse(progress=_progress("queued", 0.0))
            queued = time.perf_counter()
            async with ticket.turn() as turn:
                _QUEUE_WAIT.labels(ticket.claim.urgency.value).observe(time.perf_counter() - queued)
                job = self._submit(data, spec, turn, context.time_remaining())
                span = _tracer.start_span(
                    "upscale",
                    attributes={
                        "tiergen.factor": spec.factor,
                        "tiergen.method": spec.method.value,
                    },
                )
                try:
                    async for progress in self._progress(job):
                        yield upscaler_pb2.UpscaleResponse(progress=progress)
                    finished = self._outcome(job)
                    image = finished.image
                    span.set_attributes(
                        {"tiergen.width": image.width, "tiergen.height": image.height}
                    )
                except BaseException as error:
                    span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
                    raise
                finally:
                    if not job.future.done():
                        # The call ended before the job did: free its worker at the next tile.
                        self._board.cancel(job.slot)
                        job.future.cancel()
                    span.end()
        self._last_job_seconds = finished.seconds
        _UPSCALE_SECONDS.labels(f"{spec.factor:g}").observe(finished.seconds)
        yield upscaler_pb2.UpscaleResponse(progress=_progress("done", 1.0))
        yield upscaler_pb2.UpscaleResponse(result=_result(finished))
        for chunk in split(image.data):
            yield upscaler_pb2.UpscaleResponse(chunk=chunk)

    def _read_spec(
        self, first: upscaler_pb2.UpscaleRequest | None
    ) -> tuple[UpscaleSpec, int, Requester]:
        """The validated spec of the first message, the input size it announces (0: none), and
        whom the upscale is for."""
        if first is None:
            raise InvalidArgument(
                "the request stream is empty: send the spec first, then the image in chunks",
                field=_SPEC_FIELD,
                reason="SPEC_MISSING",
            )
        if first.WhichOneof("payload") != "spec":
            raise InvalidArgument(
                "the first message must carry the spec; send the image chunks after it",
                field=_SPEC_FIELD,
                reason="SPEC_MISSING",
            )
        message = first.spec
        if message.request_id:
            structlog.contextvars.bind_contextvars(request_id=message.request_id)
        requester = _requester(message)
        spec = UpscaleSpec.parse(
            factor=message.factor,
            method=_enum_name(common_pb2.UpscaleMethod, message.method, "UPSCALE_METHOD_"),
            output_format=_enum_name(
                common_pb2.ImageFormat, message.output_format, "IMAGE_FORMAT_"
            ),
            quality=message.quality or None,
            default_format=self._settings.default_output_format,
        )
        announced = message.input_size_bytes
        limit = self._settings.max_input_bytes
        if announced < 0:
            raise InvalidArgument(
                f"input_size_bytes is {announced}; give the image's size in bytes, or 0",
                field=_INPUT_SIZE_FIELD,
            )
        if announced > limit:
            raise InvalidArgument(
                f"the image is {announced} bytes; the largest accepted input is {limit} bytes",
                field=_INPUT_SIZE_FIELD,
                reason="IMAGE_TOO_LARGE",
                metadata={"size_bytes": str(announced), "max_bytes": str(limit)},
            )
        return spec, announced, requester

    def _admit(self, spec: UpscaleSpec, requester: Requester, remaining: float | None) -> Ticket:
        """A place for the upscale, or RESOURCE_EXHAUSTED (see the module's docstring)."""
        dispatcher = self._dispatcher
        work = f"x{spec.factor:g}/{spec.output_format.value}"
        claim = requester.claim(_GROUP, dispatcher.estimate(work), work)
        try:
            return dispatcher.admit(claim, remaining)
        except GroupFull:
            settings = self._settings
            # A place frees when a running job finishes: within about one job's time.
            retry_after = max(0.1, round(self._last_job_seconds, 1))
            raise ResourceExhausted(
                f"the upscaler is busy: {settings.workers} running and {settings.queue_limit} "
                f"waiting is the most it takes; retry in {retry_after:g} s",
                retry_after=retry_after,
                reason="QUEUE_FULL",
                metadata={
                    "workers": str(settings.workers),
                    "queue_limit": str(settings.queue_limit),
                },
            ) from None

    def _submit(self, data: bytes, spec: UpscaleSpec, turn: Turn, remaining: float | None) -> _Job:
        """Sends the job to the pool on the worker `turn` holds, until the worker lets go."""
        # At most one job per worker holds a slot: the board has more than enough.
        slot = self._slots.take()
        assert slot is not None, "the board has a slot for every worker"
        deadline = None if remaining is None else time.monotonic() + remaining
        pool = self._pool
        try:
            future = pool.submit(run_job, data, spec, self._pipeline, BoardTicket(slot, deadline))
        except BrokenProcessPool:
            self._slots.give_back(slot)
            raise self._replace(pool) from None
        # Not when the call ends: a cancelled job's worker may still be busy until its next tile.
        future.add_done_callback(lambda _: self._slots.give_back(slot))
        turn.hold_until(future)
        return _Job(future, pool, slot)

    async def _progress(self, job: _Job) -> AsyncIterator[common_pb2.Progress]:
        """The job's progress whenever it changes, until the job is done ("queued" is already
        reported)."""
        done = asyncio.wrap_future(job.future)
        reported = _progress("queued", 0.0)
        try:
            while True:
                stage, fraction = self._board.progress(job.slot)
                start, end = _STAGE_SHARES[stage]
                progress = _progress(_STAGE_NAMES[stage], start + (end - start) * fraction)
                if progress != reported:
                    reported = progress
                    yield progress
                finished, _ = await asyncio.wait({done}, timeout=_PROGRESS_SECONDS)
                if finished:
                    return
        finally:
            # A job still running when the call ends finishes unobserved, not as an error
            # logged for never having been retrieved.
            done.cancel()

    def _outcome(self, job: _Job) -> Finished:
        try:
            return job.future.result()
        except BrokenProcessPool:
            raise self._replace(job.pool) from None

    def _replace(self, broken: Executor) -> Unavailable:
        """Start a new pool in place of `broken` (once), and the error for its lost requests."""
        if self._pool is broken:
            _log.error("a worker process died; starting a new pool")
            self._pool = self._start_pool()
            broken.shutdown(wait=False, cancel_futures=True)
        return Unavailable(
            "the worker process running this upscale died; retry the request",
            retry_after=1.0,
            reason="WORKER_DIED",
        )


@dataclass(frozen=True)
class _Job:
    """A request's job on the pool: its future, the pool running it, and its board slot."""

    future: Future[Finished]
    pool: Executor
    slot: int


class _Slots:
    """The board's free job slots: taken on the event loop, given back from any thread."""

    def __init__(self, board: JobBoard) -> None:
        self._board = board
        self._free = list(range(board.slots))
        self._lock = threading.Lock()
        _JOBS.set_function(lambda: board.slots - len(self._free))

    def take(self) -> int | None:
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        self._board.reset(slot)
        return slot

    def give_back(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


async def _receive_image(
    requests: AsyncIterator[upscaler_pb2.UpscaleRequest], announced: int, limit: int
) -> bytes:
    """The image sent in chunks after the spec, checked against its announced size if any."""
    expected = common_pb2.ImageInfo(size_bytes=announced) if announced else None
    assembler = ChunkAssembler(IMAGE_FIELD, limit, expected)
    async for request in requests:
        kind = request.WhichOneof("payload")
        if kind == "chunk":
            assembler.add(request.chunk)
        elif kind == "spec":
            raise InvalidArgument(
                f"a second spec arrived after {len(assembler)} bytes of the image; send the "
                "spec once, as the first message",
                field=_SPEC_FIELD,
                reason="SPEC_REPEATED",
            )
        else:
            raise InvalidArgument(
                "a message after the spec carries nothing; each must carry a chunk",
                field="chunk",
            )
    if not len(assembler):
        raise InvalidArgument(
            "no image arrived after the spec: send the image bytes in chunks, then half-close",
            field=IMAGE_FIELD,
            reason="EMPTY_IMAGE",
        )
    return assembler.finish()


def _requester(spec: upscaler_pb2.UpscaleSpec) -> Requester:
    """Whom the upscale is for, as the router says; bulk work of tenant "" when it says nothing."""
    for field, value in (("tenant", spec.tenant), ("account_id", spec.account_id)):
        if len(value) > _MOST_ID_CHARS:
            raise InvalidArgument(
                f"{field} is {len(value)} characters; at most {_MOST_ID_CHARS}",
                field=f"spec.{field}",
            )
    if spec.tenant:
        structlog.contextvars.bind_contextvars(tenant=spec.tenant)
    return Requester(spec.tenant, spec.account_id, _URGENCIES.get(spec.urgency, Urgency.BULK))


def _count_refusal(claim: Claim, reason: str) -> None:
    _REFUSED.labels(claim.urgency.value, reason).inc()


def _enum_name(enum: EnumTypeWrapper, number: int, prefix: str) -> str:
    """A protobuf enum value as the domain spells it: "enhance", "" when unspecified.

    A number the contract does not define comes through as its digits, so the domain refuses it
    by name ("unknown method '7'").
    """
    try:
        name = enum.Name(number)
    except ValueError:
        return str(number)
    if name.endswith("_UNSPECIFIED"):
        return ""
    return name.removeprefix(prefix).lower()


def _progress(stage: str, fraction: float) -> common_pb2.Progress:
    return common_pb2.Progress(stage=stage, fraction=round(fraction, 2))


def _result(finished: Finished) -> upscaler_pb2.UpscaleResult:
    image: UpscaledImage = finished.image
    return upscaler_pb2.UpscaleResult(
        image=common_pb2.ImageInfo(
            width=image.width,
            height=image.height,
            format=_FORMATS[image.output_format],
            media_type=image.media_type,
            size_bytes=len(image.data),
            sha256=image.sha256,
        ),
        input_width=image.source_width,
        input_height=image.source_height,
        method=_METHODS[image.method],
        process_ms=round(finished.seconds * 1000),
    )
