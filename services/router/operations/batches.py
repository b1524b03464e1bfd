"""Running a batch: the one path every plan takes, from admission to its settled credits.

A plan is admitted to its tier (a place at the generator for each job that renders at once),
then its credits are held, then the batch is recorded; a refusal at any of these holds and
records nothing. Each job then runs its work, its image is stored content-addressed, and the
job is marked succeeded; once every job is final, the hold is captured for the jobs delivered
and the rest returned, or released whole when nothing was delivered. A caller that cancels or
goes away stops the batch the same way: unfinished jobs are cancelled and only delivered images
are charged. A batch refused before any work (overload, a backend unreachable, a stopping
router) is forgotten once its hold is released, so that its key runs anew on a retry.

A batch is its owner's from the start: its hold is placed, captured and released in the owner's
tenant, also when another router settles it after this one is gone.

A detached submission (`Submission.detach`) answers with the accepted batch and ends; the batch
then runs in a task of its own, with no caller to go away and no caller's deadline, holding its
tier's places until it is done, and settles exactly as an attached one. It is drained, leased
and recovered like any batch. Its refusals are its key's answer (nobody is there to retry), so
a detached batch is never forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog

from services.router.assets.store import AssetStore
from services.router.downstream.ports import CreditLedger
from services.router.jobs.model import (
    Batch,
    BatchRecord,
    HoldBalance,
    HoldState,
    Job,
    JobStatus,
    Lease,
    Owner,
)
from services.router.jobs.store import JobStore
from services.router.operations.events import (
    BatchAccepted,
    BatchEvent,
    JobFinished,
    ProgressCoalescer,
)
from services.router.operations.limits import OperationLimits
from services.router.operations.planning import Plan, Work, refused_before_work
from services.router.operations.telemetry import count_captured, count_final, step
from services.router.routing.admission import Admission
from services.router.routing.policy import Decision, RoutingPolicy, insufficient_credits
from services.runtime import errors
from services.runtime.errors import FailedPrecondition, NotFound, TiergenError
from services.runtime.interceptors import outliving_the_caller
from services.runtime.tracing import current_trace_id

__all__ = ["BatchRunner", "Submission", "job_error"]

_log = structlog.get_logger("tiergen.router")
_T = TypeVar("_T")

#: Refusals of a job store move that mean the job was already final (cancelled meanwhile).
_STORE_REASONS = frozenset({"JOB_FINAL", "ILLEGAL_TRANSITION"})
#: Share of the shutdown grace that running batches get to finish; the rest lets the ones
#: ended early settle and tell their callers.
_DRAIN_SHARE = 0.8


@dataclass(frozen=True)
class Submission:
    """How a call that creates work wants it run: `detach` to answer once it is accepted and
    leave it running; `webhook_id`, the tenant's endpoint to tell about this batch only."""

    detach: bool = False
    webhook_id: str | None = None


def job_error(job: Job) -> TiergenError:
    """The error a failed job recorded, as the domain error a caller receives."""
    if job.error is None:
        return errors.Internal(f"job {job.job_id} failed without a recorded error")
    cls = errors.error_class(job.error.code)
    return cls(job.error.message, reason=job.error.reason, metadata={"job_id": job.job_id})


def _refusal(error: FailedPrecondition, decision: Decision | None) -> FailedPrecondition:
    """The ledger's refusal of a hold, told as the routing decision it refuses when there is one
    (the tier, and the shortfall next to the available and required credits)."""
    available = error.metadata.get("available", "")
    if decision is None or error.reason != "INSUFFICIENT_CREDITS" or not available.isdigit():
        return error
    return insufficient_credits(decision, int(available))


async def _to_the_end(awaitable: Awaitable[_T]) -> _T:
    """The result of `awaitable`, awaited to its end although the task awaiting it is cancelled
    meanwhile: recording how a job ended (or waiting for the jobs that do) must not be cut short
    by a cancellation, or the credits would be settled with the job still running. A job's task
    that was cancelled while recording its failure ends with that failure recorded; its batch
    sees the cancellation itself."""
    future = asyncio.ensure_future(awaitable)
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            if future.done():
                return future.result()
            # Cancelled again while the work goes on: wait for it all the same.


def _shutting_down() -> errors.Unavailable:
    return errors.Unavailable(
        "the router is stopping: nothing undelivered was charged; retry with the same"
        " idempotency key (another replica takes it)",
        retry_after=1.0,
        reason="SHUTTING_DOWN",
    )


class BatchRunner:
    """Runs plans as batches, replays them to retries, and settles their credits."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        assets: AssetStore,
        ledger: CreditLedger,
        policy: Callable[[], RoutingPolicy],
        admission: Admission,
        lease: Lease,
        limits: OperationLimits,
    ) -> None:
        self._jobs = jobs
        self._assets = assets
        self._ledger = ledger
        self._policy = policy
        self._admission = admission
        self._lease = lease
        self._limits = limits
        self._batch_tasks: dict[str, asyncio.Task[None]] = {}
        #: The tasks that follow detached batches to their end in their callers' stead.
        self._detached: set[asyncio.Task[None]] = set()
        self._job_tasks: dict[str, asyncio.Task[Job]] = {}
        #: Set by `drain`: new work is refused and running jobs end as SHUTTING_DOWN.
        self._stopping = False
        #: Set while no batch runs here; `drain` waits for it.
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> list[str]:
        """Ids of the batches running here."""
        return list(self._batch_tasks)

    def cancel_jobs(self, job_ids: list[str]) -> None:
        """Stops the jobs of these ids that run here; each records its own cancellation."""
        for job_id in job_ids:
            task = self._job_tasks.get(job_id)
            if task is not None:
                task.cancel()

    async def submit(
        self,
        owner: Owner,
        key: str,
        fingerprint: str,
        plan: Plan,
        submission: Submission | None = None,
    ) -> AsyncGenerator[BatchEvent, None]:
        """Admits the plan to its tier, opens its batch and runs it, or replays it when a
        racing call with the same key won. A refusal here holds no credit and records nothing."""
        submission = submission or Submission()
        if self._stopping:
            raise _shutting_down()
        places = min(len(plan.jobs), self._limits.parallel_jobs)
        admitted = (
            self._admission.admit(plan.tier, places)
            if plan.tier is not None
            else contextlib.nullcontext()
        )
        with contextlib.ExitStack() as held:
            held.enter_context(admitted)
            record = await self._open(owner, key, fingerprint, plan, submission)
            if record.replayed:
                events = self.replay(record, fingerprint, detach=submission.detach)
            elif submission.detach:
                # The batch keeps its places until it ends, after this call has.
                events = self._detach(record, plan.work, held.pop_all())
            else:
                events = self._run(record, plan.work)
            async with contextlib.aclosing(events):
                async for event in events:
                    yield event

    async def replay(
        self, record: BatchRecord, fingerprint: str, *, detach: bool = False
    ) -> AsyncGenerator[BatchEvent, None]:
        """Answers a retry: the original batch, then (unless `detach`) each job's final state
        as it arrives."""
        if record.batch.fingerprint != fingerprint:
            raise errors.AlreadyExists(
                "this idempotency key was used for a different request; use a new key",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"batch_id": record.batch.batch_id},
            )
        yield BatchAccepted(replace(record, replayed=True))
        if detach:
            return
        reported: set[str] = set()
        while True:
            try:
                current = await self._jobs.batch(record.batch.owner, record.batch.batch_id)
            except NotFound:
                # The call that first used the key was refused without doing any work, and its
                # batch forgotten: the key is free again.
                raise errors.Aborted(
                    "the call that first used this idempotency key was refused before doing any"
                    " work; nothing was charged: retry with the same key",
                    reason="ORIGINAL_REFUSED",
                    metadata={"batch_id": record.batch.batch_id},
                ) from None
            for job in current.jobs:
                if job.status.is_final and job.job_id not in reported:
                    reported.add(job.job_id)
                    yield JobFinished(job)
            if len(reported) == len(current.jobs):
                return
            await asyncio.sleep(self._limits.replay_poll_seconds)

    async def drain(self, grace: float) -> None:
        """Stops taking work and lets running batches finish for most of `grace` seconds; then
        ends the rest, their undelivered jobs failed as SHUTTING_DOWN and not charged, while
        their callers are still connected, so that each hears why and that a retry with its
        key is safe. Returns once every batch has settled and answered its caller."""
        self._stopping = True
        tasks = list(self._batch_tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace * _DRAIN_SHARE)
            for task in pending:
                task.cancel()
        # The streams end after their batches: each settles, then tells its caller. A caller
        # that stopped reading cannot hold the stop up beyond the grace.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(grace * (1 - _DRAIN_SHARE), 1.0))

    async def close(self) -> None:
        """Stops running batches; each settles its hold before this returns."""
        tasks = list(self._batch_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The detached batches' followers end with their batches, once they have settled.
        await asyncio.gather(*self._detached, return_exceptions=True)

    async def settle(
        self,
        owner: Owner,
        batch_id: str,
        batch: Batch | None = None,
        jobs: tuple[Job, ...] = (),
    ) -> None:
        """Captures the credits of the owner's delivered jobs (the rest returns) or releases
        them all.

        `batch` and its final `jobs`, when the caller has them, spare reading them back.
        """
        if batch is None:
            record = await self._jobs.batch(owner, batch_id)
            batch, jobs = record.batch, record.jobs
        hold_id = batch.hold_id
        if hold_id is None or batch.hold_state is not HoldState.OPEN:
            return
        charged = sum(job.cost for job in jobs if job.status is JobStatus.SUCCEEDED)
        # The credits settle even when the caller's deadline has passed: that is often why.
        with outliving_the_caller():
            await self._settle_hold(owner, batch_id, hold_id, charged, jobs)

    # The batch's life ---------------------------------------------------------------------

    async def _open(
        self, owner: Owner, key: str, fingerprint: str, plan: Plan, submission: Submission
    ) -> BatchRecord:
        """Holds the credits, then records the batch; releases the hold if recording fails."""
        total = sum(job.quoted_cost for job in plan.jobs)
        # One hold per attempt: a batch refused without doing any work is forgotten, and the
        # retry that runs its key again must not get that settled hold back from the ledger.
        # The ledger's key still makes the router's own retries of this Reserve call safe; a
        # hold left by a router that died before recording its batch expires by itself.
        hold_key = f"router:{owner.account_id}:{fingerprint[:24]}:{secrets.token_hex(8)}"
        with step("reserve", account_id=owner.account_id, cost=total):
            try:
                reservation = await self._ledger.reserve(
                    owner,
                    total,
                    hold_key,
                    f"{plan.jobs[0].kind.value} x{len(plan.jobs)} ({key})",
                    self._limits.hold_ttl_seconds,
                )
            except FailedPrecondition as error:
                raise _refusal(error, plan.decision) from None
        hold_id = reservation.hold_id
        # What the hold did to the account's credits: a credits.low webhook's question.
        balance = (
            None
            if reservation.available is None
            else HoldBalance(reservation.available + total, reservation.available)
        )
        try:
            record = await self._jobs.create_batch(
                owner=owner,
                idempotency_key=key,
                fingerprint=fingerprint,
                jobs=plan.jobs,
                decision=plan.decision,
                hold_id=hold_id,
                lease=self._lease,
                detached=submission.detach,
                webhook_id=submission.webhook_id,
                balance=balance,
            )
        except BaseException:
            await self._release_unused(owner, hold_id, hold_key)
            raise
        if record.replayed:
            # A racing call with the same key recorded its batch first, with its own hold.
            await self._release_unused(owner, hold_id, hold_key)
        structlog.contextvars.bind_contextvars(batch_id=record.batch.batch_id)
        return record

    async def _release_unused(self, owner: Owner, hold_id: str, hold_key: str) -> None:
        with contextlib.suppress(TiergenError), outliving_the_caller():
            await self._ledger.release(owner, hold_id, f"{hold_key}:release")

    async def _detach(
        self, record: BatchRecord, work: Work, places: contextlib.ExitStack
    ) -> AsyncGenerator[BatchEvent, None]:
        """Starts the batch, answers with it, and leaves a task to follow it to its end."""
        events = self._run(record, work, forget=False)
        with places:
            # Started here, so that a drain that begins now already sees it; with no deadline
            # but its work's own, since no caller waits for it.
            with outliving_the_caller():
                accepted = await anext(events)
            follower = asyncio.create_task(
                self._follow(events, places.pop_all(), record.batch.batch_id),
                name=f"detached-{record.batch.batch_id}",
            )
        self._detached.add(follower)
        follower.add_done_callback(self._detached.discard)
        yield accepted

    async def _follow(
        self,
        events: AsyncGenerator[BatchEvent, None],
        places: contextlib.ExitStack,
        batch_id: str,
    ) -> None:
        """Reads a detached batch's events to its end, as its caller would have."""
        with places:
            try:
                async with contextlib.aclosing(events):
                    async for _ in events:
                        pass
            except TiergenError as error:
                # Its jobs recorded how they ended; nobody is there to hear the batch's error.
                _log.info(
                    "detached batch ended with an error",
                    batch_id=batch_id,
                    code=error.code,
                    reason=error.reason,
                )

    async def _run(
        self, record: BatchRecord, work: Work, *, forget: bool = True
    ) -> AsyncGenerator[BatchEvent, None]:
        """Streams a batch's events while a separate task runs it, so that a caller going
        away cancels the batch instead of abandoning it half-done, from its first event on.
        `forget` False keeps a batch refused before any work (a detached one's)."""
        events: asyncio.Queue[BatchEvent | None] = asyncio.Queue()
        batch_id = record.batch.batch_id
        started = asyncio.Event()
        failures: dict[str, TiergenError] = {}
        task = asyncio.create_task(
            self._execute(record, work, events.put_nowait, started, failures)
        )
        # The stream ends with the task, even one cancelled (by `close`) before it ran.
        task.add_done_callback(lambda _: events.put_nowait(None))
        self._batch_tasks[batch_id] = task
        self._idle.clear()
        finished: list[Job] = []
        try:
            yield BatchAccepted(record)
            while (event := await events.get()) is not None:
                if isinstance(event, JobFinished):
                    finished.append(event.job)
                yield event
        finally:
            if not task.done():
                task.cancel()
            # The batch ends whole, its jobs final and its credits settled, although this
            # stream is cancelled again meanwhile.
            await _to_the_end(asyncio.gather(task, return_exceptions=True))
            if not started.is_set():
                # Cancelled before it ran: nothing of the batch started, so it all returns.
                for job in await self._jobs.cancel_batch(record.batch.owner, batch_id):
                    count_final(job)
                await self.settle(record.batch.owner, batch_id)
                if self._stopping:
                    failures.update((job.job_id, _shutting_down()) for job in record.jobs)
            self._batch_tasks.pop(batch_id, None)
            if not self._batch_tasks:
                self._idle.set()
        if any(job.status is JobStatus.SUCCEEDED for job in finished):
            return
        if (
            forget
            and len(failures) == len(record.jobs)
            and all(refused_before_work(error) for error in failures.values())
        ):
            # Nothing was done: the refusal is not the key's answer, and a retry runs anew.
            if await self._jobs.forget_batch(batch_id):
                _log.info("forgot a batch refused before any work", batch_id=batch_id)
            raise next(iter(failures.values()))
        failed = [job for job in finished if job.status is JobStatus.FAILED]
        if failed:
            # The error as the backend raised it, with its retry hint and quota details.
            raise failures.get(failed[0].job_id) or job_error(failed[0])

    async def _execute(
        self,
        record: BatchRecord,
        work: Work,
        emit: Callable[[BatchEvent | None], None],
        started: asyncio.Event,
        failures: dict[str, TiergenError],
    ) -> None:
        started.set()
        batch = record.batch
        slots = asyncio.Semaphore(self._limits.parallel_jobs)
        events = ProgressCoalescer(emit, self._limits.progress_interval_seconds)
        tasks = []
        for job in record.jobs:
            task = asyncio.create_task(self._run_job(job, work, slots, events, failures))
            self._job_tasks[job.job_id] = task
            tasks.append(task)
        outcomes: list[Job | BaseException] = []
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # The caller went away or the router is stopping: wait for every job to record
            # its cancellation, then settle below, charging only what was delivered.
            await _to_the_end(asyncio.gather(*tasks, return_exceptions=True))
            raise
        finally:
            events.close()
            for job in record.jobs:
                self._job_tasks.pop(job.job_id, None)
            # Every job's final state is known when each returned one; otherwise read them.
            finals = [o for o in outcomes if isinstance(o, Job)]
            known = batch if len(finals) == len(record.jobs) else None
            try:
                await _to_the_end(self.settle(batch.owner, batch.batch_id, known, tuple(finals)))
            finally:
                emit(None)

    async def _run_job(
        self,
        job: Job,
        work: Work,
        slots: asyncio.Semaphore,
        events: ProgressCoalescer,
        failures: dict[str, TiergenError],
    ) -> Job:
        """Runs one job to its final state; `failures` gets the error of a job that failed."""

        def progress(stage: str, fraction: float) -> None:
            events.progress(job.job_id, stage, fraction)

        try:
            async with slots:
                await self._jobs.mark_running(job.job_id)
                progress("running", 0.0)
                delivery = await work(job, progress)
                image = delivery.image
                with step("store", job_id=job.job_id):
                    asset = await self._assets.put(
                        image.data,
                        width=image.width,
                        height=image.height,
                        media_type=image.media_type,
                        sha256=image.sha256,
                    )
                cost, fallback = job.quoted_cost, None
                if delivery.fallback_tier is not None and job.size is not None:
                    prices = self._policy().prices
                    cost = min(cost, prices.price(delivery.fallback_tier, job.size))
                    fallback = (delivery.fallback_tier, (*job.reasons, delivery.fallback_reason))
                final = await self._jobs.mark_succeeded(
                    job.job_id, asset, cost, delivery.drift, fallback
                )
        except asyncio.CancelledError:
            ended = await _to_the_end(self._end_cancelled(job, failures))
            count_final(ended)
            events.finished(ended)
            raise
        except FailedPrecondition as error:
            if error.reason not in _STORE_REASONS:
                failures[job.job_id] = error
                final = await _to_the_end(self._fail(job, error))
            else:
                # Cancelled by CancelJob while it ran: the image is not delivered or charged.
                final = await _to_the_end(self._jobs.get(job.owner, job.job_id))
        except TiergenError as error:
            failures[job.job_id] = error
            final = await _to_the_end(self._fail(job, error))
        except Exception:
            _log.exception("job failed unexpectedly", job_id=job.job_id)
            failures[job.job_id] = errors.Internal(
                f"internal error (trace {current_trace_id() or 'none'})"
            )
            final = await _to_the_end(self._fail(job, failures[job.job_id]))
        count_final(final)
        events.finished(final)
        return final

    async def _end_cancelled(self, job: Job, failures: dict[str, TiergenError]) -> Job:
        """Records the end of a job whose task was cancelled: SHUTTING_DOWN when the router is
        stopping, else cancelled by its caller (unless it ended meanwhile)."""
        if self._stopping:
            # Not the caller's doing: say so, so that it knows a retry is safe.
            failures[job.job_id] = _shutting_down()
            return await self._fail(job, failures[job.job_id])
        with contextlib.suppress(FailedPrecondition):
            await self._jobs.mark_cancelled(job.job_id)
        return await self._jobs.get(job.owner, job.job_id)

    async def _fail(self, job: Job, error: TiergenError) -> Job:
        _log.warning(
            "job failed",
            job_id=job.job_id,
            code=error.code,
            reason=error.reason,
            error=error.message,
        )
        try:
            return await self._jobs.mark_failed(job.job_id, error.code, error.reason, error.message)
        except FailedPrecondition:
            return await self._jobs.get(job.owner, job.job_id)

    async def _settle_hold(
        self, owner: Owner, batch_id: str, hold_id: str, charged: int, jobs: tuple[Job, ...]
    ) -> None:
        try:
            if charged:
                with step("capture", account_id=owner.account_id, cost=charged):
                    await self._ledger.capture(
                        owner, hold_id, charged, f"router:{batch_id}:capture"
                    )
                count_captured(owner, jobs)
                await self._jobs.settle_hold(batch_id, HoldState.CAPTURED, charged)
            else:
                with step("release", account_id=owner.account_id):
                    await self._ledger.release(owner, hold_id, f"router:{batch_id}:release")
                await self._jobs.settle_hold(batch_id, HoldState.RELEASED)
        except TiergenError as error:
            if isinstance(error, FailedPrecondition) and error.reason == "HOLD_EXPIRED":
                # The ledger returned the credits itself: nothing was charged, and nothing is
                # left to settle.
                _log.warning("hold expired unsettled", batch_id=batch_id, uncharged=charged)
                await self._jobs.settle_hold(batch_id, HoldState.RELEASED)
                return
            # The hold stays open, and so the batch unfinished: once its lease runs out a
            # router claims it and settles again, or the ledger's expiry returns the credits.
            _log.error(
                "could not settle hold", batch_id=batch_id, hold_id=hold_id, error=str(error)
            )
