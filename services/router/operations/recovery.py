"""Leases and recovery: a router keeps the batches it runs, and takes over those of routers
that are gone.

A batch is leased to the router process running it, which renews the lease every third of it.
A batch whose router died is claimed by another (or by the next start), which fails its
unfinished jobs and settles its hold the same way a batch settles, with the same ledger
idempotency keys. The waits between rounds go through an injected `sleep`, so that tests drive
the rounds without waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from services.router.jobs.model import BatchRecord, Lease
from services.router.jobs.store import JobStore
from services.router.operations.batches import BatchRunner
from services.router.operations.limits import OperationLimits
from services.router.operations.telemetry import RECOVERED, count_final
from services.runtime.errors import FailedPrecondition, TiergenError

__all__ = ["Recovery"]

_log = structlog.get_logger("tiergen.router")

#: Renewals per lease: a lease survives two renewals in a row going astray.
_RENEWALS_PER_LEASE = 3
#: Abandoned batches claimed per statement; recovery claims again until fewer come back.
_CLAIM_LIMIT = 50

Sleep = Callable[[float], Awaitable[None]]


class Recovery:
    """Renews this process's leases and recovers the batches of routers that are gone."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        batches: BatchRunner,
        lease: Lease,
        limits: OperationLimits,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._jobs = jobs
        self._batches = batches
        self._lease = lease
        self._limits = limits
        self._sleep = sleep
        #: Batches claimed from a lost router and being recovered here.
        self._recovering: set[str] = set()

    async def recover(self) -> int:
        """Takes over the batches of routers that are gone: fails their unfinished jobs and
        settles their holds, charging only what was delivered. Returns how many it took.

        Which routers are gone is the job store's call (`JobStore.claim_abandoned`): over a
        store shared by replicas, those whose leases ran out; over a store one router owns,
        every earlier process. Safe to run on every replica at once: each batch is claimed by
        one, and settling again repeats the ledger's idempotent answer.
        """
        recovered = 0
        while True:
            records = await self._jobs.claim_abandoned(
                self._lease, unleased_seconds=self._limits.hold_ttl_seconds, limit=_CLAIM_LIMIT
            )
            for record in records:
                await self._recover_batch(record)
            recovered += len(records)
            if len(records) < _CLAIM_LIMIT:
                return recovered

    async def watch_abandoned(self) -> None:
        """Runs `recover` every claim interval until cancelled; a failure waits for the next."""
        while True:
            await self._sleep(self._limits.claim_interval_seconds)
            try:
                await self.recover()
            except TiergenError as error:
                _log.error("could not recover abandoned batches", error=str(error))

    async def keep_leases(self) -> None:
        """Renews, every third of a lease, the leases of the batches this process is running,
        until cancelled. Cancel it after the batches have settled, so that they stay leased."""
        while True:
            await self._sleep(self._limits.lease_seconds / _RENEWALS_PER_LEASE)
            await self.renew()

    async def renew(self) -> frozenset[str]:
        """One round of renewals; returns the batches renewed."""
        running = [*self._batches.running, *self._recovering]
        if not running:
            return frozenset()
        try:
            renewed = await self._jobs.renew_leases(self._lease, running)
        except TiergenError as error:
            _log.error("could not renew leases", batches=len(running), error=str(error))
            return frozenset()
        # A batch that finished meanwhile is still this process's: only a claim takes one.
        lost = sorted(set(running) - renewed)
        if lost:
            _log.error("batches claimed by another router; it recovers them", batch_ids=lost)
        return renewed

    async def _recover_batch(self, record: BatchRecord) -> None:
        batch = record.batch
        self._recovering.add(batch.batch_id)
        try:
            for job in record.jobs:
                if job.status.is_final:
                    continue
                with contextlib.suppress(FailedPrecondition):
                    count_final(
                        await self._jobs.mark_failed(
                            job.job_id,
                            "ABORTED",
                            "ROUTER_LOST",
                            "the router running this job stopped before it finished;"
                            " it was not charged",
                        )
                    )
                _log.warning("failed a job its router left", job_id=job.job_id)
            # In the batch's own tenant, whichever tenant's call this router was serving.
            await self._batches.settle(batch.owner, batch.batch_id)
        finally:
            self._recovering.discard(batch.batch_id)
        RECOVERED.inc()
        _log.warning("recovered an abandoned batch", batch_id=batch.batch_id)
