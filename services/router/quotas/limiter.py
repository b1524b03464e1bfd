"""The quota limiter: admits or refuses a call that creates work against its tenant's and its
account's quotas, before anything is held, charged or recorded.

What counts, and when (docs/api.md says it to callers):

- requests per second: every Generate, Promote, Upscale and Edit that would create work, and
  every Quote (it routes and reads the balance, so it is load like the others). A retry that
  replays a recorded batch creates nothing and is not counted; neither are reads, cancellation,
  the account calls (OpenAccount, CheckIn, GetBalance, Grant: once per account or week, or an
  operator's) nor the key and webhook administration.
- images per minute: the images a call asks for (n of a Generate, 1 otherwise). A call refused
  after the limiter admitted it but before its batch was recorded (a bad request found while
  planning, the tier's queue full, too few credits) gives its images back, so that its retry
  is not charged twice; its request still counts.
- concurrent jobs: the owner's unfinished jobs in the job table, plus the calls this router
  admitted whose batches are not recorded yet, plus the call's own jobs.

A refusal is RESOURCE_EXHAUSTED, reason QUOTA_EXCEEDED, with a QuotaFailure naming each quota
that refused (`tenant:acme:images_per_minute`, `account:acme/alice:requests_per_second`) and a
RetryInfo: when the rates would fit the call (exactly, from the TATs the store judged), or
about one render's time for concurrent jobs, which end when their renders do. The call drew on
nothing: a refusal moves no TAT.

The store (`quotas.store`) is exact across router replicas for the rates; for concurrent jobs
the limiter closes the gap between its own admissions and their batches' records, and replicas
leave the tolerance docs/architecture.md states.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog
from prometheus_client import Counter

from services.router.jobs.model import Owner
from services.router.quotas.rates import SECOND_US, Draw, Rate, fits, wait_us
from services.router.quotas.store import JobsAsk, QuotaAsk, QuotaStore, Verdict
from services.router.quotas.table import NO_QUOTAS, Level, Quota, QuotaTable, load_quotas
from services.runtime.errors import QuotaViolation, ResourceExhausted, TiergenError
from services.runtime.settings import ConfigError

__all__ = ["QuotaLimiter", "QuotaPass", "reload_on_change", "subject"]

_log = structlog.get_logger("tiergen.router")
_E = TypeVar("_E")

REFUSALS = Counter(
    "tiergen_router_quota_refusals_total",
    "Calls refused over a quota, by tenant, level (tenant or account) and quota"
    " (requests_per_second, images_per_minute, concurrent_jobs); a call over several counts"
    " once for each.",
    ["tenant", "level", "quota"],
)

_PERIOD_US = {Quota.REQUESTS_PER_SECOND: SECOND_US, Quota.IMAGES_PER_MINUTE: 60 * SECOND_US}


def subject(level: Level, owner: Owner, quota: Quota) -> str:
    """The quota's name in a QuotaFailure, and its rate's row: `tenant:acme:images_per_minute`,
    `account:acme/alice:requests_per_second`. The level is up to the first `:` and the quota
    after the last; tenants hold neither `/` nor `:`, so an account id holding a `:` still
    reads unambiguously."""
    who = owner.tenant if level is Level.TENANT else f"{owner.tenant}/{owner.account_id}"
    return f"{level.value}:{who}:{quota.value}"


def _who(level: Level, owner: Owner) -> str:
    return (
        f"tenant {owner.tenant}"
        if level is Level.TENANT
        else f"account {owner.tenant}/{owner.account_id}"
    )


@dataclass(frozen=True)
class _RateAsked:
    """One rate quota a call draws on."""

    level: Level
    quota: Quota
    limit: float
    draw: Draw


@dataclass(frozen=True)
class _Refused:
    """One quota that refused a call, and how long until it would fit."""

    level: Level
    quota: Quota
    limit: float
    violation: QuotaViolation
    wait: float


class QuotaPass:
    """What an admitted call holds: its place among this router's calls not yet recorded
    (for concurrent jobs), and the images it drew, which it gives back if refused before its
    batch is recorded."""

    def __init__(
        self,
        limiter: QuotaLimiter | None = None,
        owner: Owner | None = None,
        jobs: int = 0,
        images: Sequence[Draw] = (),
    ) -> None:
        self._limiter = limiter
        self._owner = owner
        self._jobs = jobs
        self._images = tuple(images)
        #: Set once the call's batch is recorded (its stream's first event).
        self.accepted = False

    def release(self) -> None:
        """Leaves the calls not yet recorded (once)."""
        if self._jobs and self._limiter is not None and self._owner is not None:
            self._limiter._unpend(self._owner, self._jobs)
        self._jobs = 0

    async def give_back(self) -> None:
        """Returns the images drawn (once); a failure is logged, never raised over the
        refusal that caused it."""
        draws, self._images = self._images, ()
        if not draws or self._limiter is None:
            return
        try:
            await self._limiter._give_back(draws)
        except TiergenError as error:
            _log.warning("could not give back a refused call's images", error=error.message)

    async def follow(self, events: AsyncGenerator[_E, None]) -> AsyncGenerator[_E, None]:
        """`events`, marking the call accepted at the first: its batch is recorded then, and
        its jobs count in the job table from that moment."""
        async with contextlib.aclosing(events):
            async for event in events:
                if not self.accepted:
                    self.accepted = True
                    self.release()
                yield event


class QuotaLimiter:
    """Applies the quota table (reloadable with `use`) through a `QuotaStore`.

    `clock` is wall-clock seconds (TATs are shared by replicas, so their clocks must agree;
    see docs/architecture.md); `busy_retry_seconds` is the RetryInfo of a refusal for
    concurrent jobs.
    """

    def __init__(
        self,
        table: QuotaTable = NO_QUOTAS,
        store: QuotaStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_retry_seconds: float = 1.0,
    ) -> None:
        if table.limited and store is None:
            raise ValueError("quotas need a store")
        self._table = table
        self._store = store
        self._clock = clock
        self._busy_retry_seconds = busy_retry_seconds
        #: Jobs of calls this router admitted whose batches are not recorded yet.
        self._pending_tenants: dict[str, int] = {}
        self._pending_accounts: dict[tuple[str, str], int] = {}

    @property
    def table(self) -> QuotaTable:
        return self._table

    def use(self, table: QuotaTable) -> None:
        """Swaps in a reloaded table; calls already admitted keep their passes."""
        if table.limited and self._store is None:
            raise ValueError("quotas need a store")
        self._table = table

    async def admit_quote(self, owner: Owner) -> None:
        """Counts a Quote against the owner's requests per second; ResourceExhausted over it."""
        (await self._take(owner, 0)).release()

    @contextlib.asynccontextmanager
    async def admit(self, owner: Owner, images: int) -> AsyncIterator[QuotaPass]:
        """Admits a call that creates `images` jobs, or raises ResourceExhausted
        (QUOTA_EXCEEDED). Within the block the call runs; wrap its events in the pass's
        `follow`. A TiergenError leaving the block before the first event gives the images
        back; leaving it in any way ends the call's place among those not yet recorded."""
        admitted = await self._take(owner, images)
        try:
            yield admitted
        except TiergenError:
            if not admitted.accepted:
                await admitted.give_back()
            raise
        finally:
            admitted.release()

    async def sweep_idle(
        self, *, every_seconds: float = 600.0, idle_seconds: float = 3600.0
    ) -> None:
        """Forgets, every `every_seconds`, the subjects idle for `idle_seconds` (their rows mean
        the same as none); runs until cancelled."""
        while True:
            await asyncio.sleep(every_seconds)
            if self._store is None:
                continue
            before_us = self._now_us() - round(idle_seconds * SECOND_US)
            try:
                swept = await self._store.sweep(before_us)
            except TiergenError as error:
                _log.warning("could not sweep idle quota subjects", error=error.message)
                continue
            if swept:
                _log.debug("swept idle quota subjects", subjects=swept)

    # The judgement ---------------------------------------------------------------------

    def _now_us(self) -> int:
        return round(self._clock() * SECOND_US)

    async def _take(self, owner: Owner, images: int) -> QuotaPass:
        quotas = self._table.of(owner.tenant, owner.account_id)
        if not quotas.limited:
            return QuotaPass()
        asked: list[_RateAsked] = []
        for level in Level:
            limits = quotas.at(level)
            for quota, cost in ((Quota.REQUESTS_PER_SECOND, 1), (Quota.IMAGES_PER_MINUTE, images)):
                limit = limits.of(quota)
                if limit is None or cost == 0:
                    continue
                draw = Draw(subject(level, owner, quota), Rate(limit, _PERIOD_US[quota]), cost)
                asked.append(_RateAsked(level, quota, limit, draw))
        tenant_limit = quotas.tenant.concurrent_jobs
        account_limit = quotas.account.concurrent_jobs
        jobs: JobsAsk | None = None
        if images and (tenant_limit is not None or account_limit is not None):
            # Read before this call's own jobs are added, and before the store counts: a call
            # recorded meanwhile is then counted twice (a refusal a moment early), never
            # missed.
            jobs = JobsAsk(
                images,
                tenant_limit,
                account_limit,
                self._pending_tenants.get(owner.tenant, 0),
                self._pending_accounts.get((owner.tenant, owner.account_id), 0),
            )
        if not asked and jobs is None:
            return QuotaPass()
        if jobs is not None:
            self._pend(owner, images)
        admitted = QuotaPass(
            self,
            owner,
            jobs=images if jobs is not None else 0,
            images=[a.draw for a in asked if a.quota is Quota.IMAGES_PER_MINUTE],
        )
        assert self._store is not None  # a limited table needs one (checked by `use`)
        now_us = self._now_us()
        try:
            verdict = await self._store.take(QuotaAsk(owner, [a.draw for a in asked], jobs), now_us)
        except BaseException:
            admitted.release()
            raise
        if not verdict.admitted:
            admitted.release()
            raise self._refusal(owner, asked, jobs, verdict, now_us)
        return admitted

    def _refusal(
        self,
        owner: Owner,
        asked: Sequence[_RateAsked],
        jobs: JobsAsk | None,
        verdict: Verdict,
        now_us: int,
    ) -> ResourceExhausted:
        refused: list[_Refused] = []
        for rate in asked:
            base_us = verdict.bases_us.get(rate.draw.subject, now_us)
            if fits(rate.draw, base_us, now_us):
                continue
            wait = wait_us(rate.draw, base_us, now_us) / SECOND_US
            refused.append(
                _Refused(
                    rate.level,
                    rate.quota,
                    rate.limit,
                    self._rate_violation(owner, rate, wait),
                    wait,
                )
            )
        if jobs is not None:
            fit = dict(zip(Level, jobs.fit(verdict.tenant_jobs, verdict.account_jobs), strict=True))
            limits = {Level.TENANT: jobs.tenant_limit, Level.ACCOUNT: jobs.account_limit}
            busy = {
                Level.TENANT: verdict.tenant_jobs + jobs.tenant_pending,
                Level.ACCOUNT: verdict.account_jobs + jobs.account_pending,
            }
            for level in Level:
                limit = limits[level]
                if fit[level] or limit is None:
                    continue
                description = (
                    f"{_who(level, owner)} may have {limit} jobs unfinished at once;"
                    f" {busy[level]} are, and this call adds {jobs.jobs}"
                )
                violation = QuotaViolation(
                    subject(level, owner, Quota.CONCURRENT_JOBS), description
                )
                refused.append(
                    _Refused(
                        level, Quota.CONCURRENT_JOBS, limit, violation, self._busy_retry_seconds
                    )
                )
        if not refused:
            # The store refused on a state that no longer shows (it cannot, but say something
            # true): every quota asked, retried after a moment.
            refused = [
                _Refused(
                    rate.level,
                    rate.quota,
                    rate.limit,
                    QuotaViolation(rate.draw.subject, "the quota is used up"),
                    self._busy_retry_seconds,
                )
                for rate in asked
            ]
        for one in refused:
            REFUSALS.labels(owner.tenant, one.level.value, one.quota.value).inc()
        retry_after = math.ceil(max(one.wait for one in refused) * 1000) / 1000 or 0.001
        first = refused[0]
        return ResourceExhausted(
            f"over quota ({'; '.join(one.violation.description for one in refused)}): nothing"
            f" was held, charged or recorded; retry in {retry_after:g} s with the same"
            " idempotency key",
            retry_after=retry_after,
            violations=[one.violation for one in refused],
            reason="QUOTA_EXCEEDED",
            metadata={
                "subject": first.violation.subject,
                "quota": first.quota.value,
                "level": first.level.value,
                "limit": f"{first.limit:g}",
            },
        )

    @staticmethod
    def _rate_violation(owner: Owner, rate: _RateAsked, wait: float) -> QuotaViolation:
        who = _who(rate.level, owner)
        if rate.quota is Quota.REQUESTS_PER_SECOND:
            description = (
                f"{who} may make {rate.limit:g} requests per second; the next fits in {wait:.3g} s"
            )
        elif rate.draw.cost > rate.draw.rate.burst:
            description = (
                f"{who} may start {rate.limit:g} images per minute; this call's"
                f" {rate.draw.cost} are more than that and start once the quota is unused, in"
                f" {wait:.3g} s"
            )
        else:
            description = (
                f"{who} may start {rate.limit:g} images per minute; this call's"
                f" {rate.draw.cost} fit in {wait:.3g} s"
            )
        return QuotaViolation(rate.draw.subject, description)

    # This router's calls not yet recorded -----------------------------------------------

    def _pend(self, owner: Owner, jobs: int) -> None:
        account = (owner.tenant, owner.account_id)
        self._pending_tenants[owner.tenant] = self._pending_tenants.get(owner.tenant, 0) + jobs
        self._pending_accounts[account] = self._pending_accounts.get(account, 0) + jobs

    def _unpend(self, owner: Owner, jobs: int) -> None:
        account = (owner.tenant, owner.account_id)
        left = self._pending_tenants.pop(owner.tenant, 0) - jobs
        if left > 0:
            self._pending_tenants[owner.tenant] = left
        left = self._pending_accounts.pop(account, 0) - jobs
        if left > 0:
            self._pending_accounts[account] = left

    async def _give_back(self, draws: Sequence[Draw]) -> None:
        if self._store is not None:
            await self._store.give_back(draws)


def _modified(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


async def reload_on_change(limiter: QuotaLimiter, path: Path | None, interval: float) -> None:
    """Reloads the quota file at `path` when it changes, every `interval` seconds; a bad file
    (or none) keeps the quotas in force, with an error logged.

    The file is read once more at the first look, as it was loaded before this started and
    may have changed in between; a table equal to the one in force is not news.
    """
    if path is None:
        return
    seen: tuple[int, int] | None = None
    while True:
        await asyncio.sleep(interval)
        current = _modified(path)
        if current == seen:
            continue
        seen = current
        try:
            table = load_quotas(path)
        except ConfigError as error:
            _log.error("quota reload failed; the previous quotas stay", error=str(error))
            continue
        if table != limiter.table:
            limiter.use(table)
            _log.info("quotas reloaded", file=str(path))
