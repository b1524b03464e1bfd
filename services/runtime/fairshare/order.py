"""The order in which waiting work starts: tenants by weight, accounts evenly, interactive first.

Pure and synchronous, so that its order can be tested step by step; `dispatcher.py` runs it on
an event loop and hands out the workers.

**Between tenants**, start-time fair queueing (Goyal, Vin and Cheng, 1996), the variant of
weighted fair queueing made for servers whose speed varies, as a CPU shared with other work
does. Each tenant carries a finish tag in virtual time; the tenant whose next job would start
earliest in virtual time goes next, and serving a job of estimated cost `c` moves its tenant's
tag on by `c / weight`. Virtual time is the start tag of the job last started, and a tenant
that comes back after being idle starts from it, so idleness is not saved up as credit. Over
any interval in which two tenants both have work waiting, the seconds of work started for each,
divided by its weight, differ by at most one job's cost over its weight for each of the two.
Costs are each job's expected seconds on a worker (`estimates.ServiceTimes`), so a pro 4K
render counts as eighty nano ones.

**Within a tenant**, the same between its accounts with equal weights: one account's batch of
64 does not stall another user of the same platform.

**Interactive before bulk, within a bound.** Each urgency has its own fair queue. A shared
worker takes interactive work first, but after `interactive_burst` interactive starts in a row
while bulk work was ready to start, the next start is bulk. So in any run of `burst + 1` starts
on shared workers during which bulk work is ready, at least one is bulk: bulk work cannot
starve, whatever interactive load arrives. A worker reserved for interactive work (a lane)
takes only interactive work and does not count against the bound.

**Work-conserving.** `next` returns a job whenever any waiting job is eligible (its group under
its running cap) for the kind of worker asking; the dispatcher asks whenever a worker is free.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from services.runtime.fairshare.settings import DEFAULT_INTERACTIVE_BURST, TenantWeights

__all__ = ["Claim", "FairOrder", "Lane", "Requester", "Urgency"]

_sequence = itertools.count()


class Urgency(enum.StrEnum):
    """How soon a person is waiting for a job: now (a sketch in the ideation loop), or later."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


class Lane(enum.StrEnum):
    """The kind of worker a job starts on: any work, or reserved for interactive work."""

    SHARED = "shared"
    INTERACTIVE = "interactive"


@dataclass(frozen=True)
class Requester:
    """Whom a job is for and how urgent it is, as the router tells the service.

    The router takes the tenant from the caller's credential, never from a request field. A
    caller that says nothing is the tenant "" and bulk: no one gets ahead by leaving it out.
    """

    tenant: str = ""
    account: str = ""
    urgency: Urgency = Urgency.BULK

    def claim(self, group: str, cost: float, work: str = "") -> Claim:
        """This requester's claim on a worker for one job."""
        return Claim(self.tenant, self.account, self.urgency, group, cost, work)


@dataclass(eq=False)
class Claim:
    """One job waiting for a worker: whose it is, how urgent, its group, what it will cost.

    Compared by identity: two renders with the same fields are two claims.
    """

    tenant: str
    account: str
    urgency: Urgency
    #: What bounds it besides the workers: a tier (the generator), or one group for all.
    group: str
    #: Expected seconds on a worker.
    cost: float
    #: The kind of work, for its service-time estimate ("pro/4K").
    work: str = ""
    #: Arrival order: ties go to the older claim, shedding takes the newest.
    sequence: int = field(default_factory=lambda: next(_sequence))


def _always(_claim: Claim) -> bool:
    return True


@dataclass
class _Account:
    finish: float = 0.0
    claims: deque[Claim] = field(default_factory=deque)


@dataclass
class _Tenant:
    finish: float = 0.0
    #: The tenant's own virtual time, between its accounts.
    virtual: float = 0.0
    accounts: dict[str, _Account] = field(default_factory=dict)

    def first_eligible(self, eligible: Callable[[Claim], bool]) -> tuple[_Account, Claim] | None:
        """The account that goes next within this tenant, and its oldest eligible claim."""
        best: tuple[float, int, _Account, Claim] | None = None
        for account in self.accounts.values():
            claim = next((c for c in account.claims if eligible(c)), None)
            if claim is None:
                continue
            start = max(self.virtual, account.finish)
            if best is None or (start, claim.sequence) < best[:2]:
                best = (start, claim.sequence, account, claim)
        return None if best is None else (best[2], best[3])


class _FairQueue:
    """One urgency's claims: start-time fair queueing over tenants, then over their accounts."""

    def __init__(self) -> None:
        self.virtual = 0.0
        self.tenants: dict[str, _Tenant] = {}

    def add(self, claim: Claim) -> None:
        tenant = self.tenants.setdefault(claim.tenant, _Tenant())
        tenant.accounts.setdefault(claim.account, _Account()).claims.append(claim)

    def remove(self, claim: Claim) -> bool:
        tenant = self.tenants.get(claim.tenant)
        account = None if tenant is None else tenant.accounts.get(claim.account)
        if account is None or claim not in account.claims:
            return False
        account.claims.remove(claim)
        return True

    def claims(self) -> Iterator[Claim]:
        for tenant in self.tenants.values():
            for account in tenant.accounts.values():
                yield from account.claims

    def ready(self, eligible: Callable[[Claim], bool]) -> bool:
        return any(eligible(claim) for claim in self.claims())

    def pick(
        self, eligible: Callable[[Claim], bool], weight: Callable[[str], float]
    ) -> Claim | None:
        """Takes the claim that starts next, and moves the virtual clocks past it."""
        best: tuple[float, int, str, _Account, Claim] | None = None
        for name, tenant in self.tenants.items():
            found = tenant.first_eligible(eligible)
            if found is None:
                continue
            account, claim = found
            start = max(self.virtual, tenant.finish)
            # Ties between tenants go to the one whose candidate arrived first.
            if best is None or (start, claim.sequence) < best[:2]:
                best = (start, claim.sequence, name, account, claim)
        if best is None:
            return None
        start, _, name, account, claim = best
        tenant = self.tenants[name]
        account_start = max(tenant.virtual, account.finish)
        account.claims.remove(claim)
        account.finish = account_start + claim.cost
        tenant.virtual = account_start
        tenant.finish = start + claim.cost / weight(name)
        self.virtual = start
        self._forget_idle()
        return claim

    def _forget_idle(self) -> None:
        """Drops flows with nothing waiting whose tags virtual time has passed: a newcomer would
        start from the same tag, so nothing is lost, and memory stays bounded by recent users."""
        for name in list(self.tenants):
            tenant = self.tenants[name]
            for account_name in list(tenant.accounts):
                account = tenant.accounts[account_name]
                if not account.claims and account.finish <= tenant.virtual:
                    del tenant.accounts[account_name]
            if not tenant.accounts and tenant.finish <= self.virtual:
                del self.tenants[name]

    def queued_by_tenant(self, group: str | None) -> dict[str, float]:
        """Seconds of work waiting per tenant (in `group` only, when given)."""
        totals: dict[str, float] = {}
        for claim in self.claims():
            if group is None or claim.group == group:
                totals[claim.tenant] = totals.get(claim.tenant, 0.0) + claim.cost
        return totals


class FairOrder:
    """Waiting claims of every urgency, and the rule choosing which starts on a free worker."""

    def __init__(
        self,
        weights: TenantWeights | None = None,
        interactive_burst: int = DEFAULT_INTERACTIVE_BURST,
    ) -> None:
        if interactive_burst < 1:
            raise ValueError("interactive_burst must be at least 1")
        self._weights = weights or TenantWeights()
        self._burst = interactive_burst
        self._queues = {urgency: _FairQueue() for urgency in Urgency}
        #: Interactive starts on shared workers since the last bulk start, counted only while
        #: bulk work was ready to start.
        self._passed_over = 0

    @property
    def weights(self) -> TenantWeights:
        return self._weights

    def weight(self, tenant: str) -> float:
        return self._weights.of(tenant)

    def add(self, claim: Claim) -> None:
        self._queues[claim.urgency].add(claim)

    def remove(self, claim: Claim) -> bool:
        """Withdraws a waiting claim (its caller left, or it was shed); False if not waiting."""
        return self._queues[claim.urgency].remove(claim)

    def __len__(self) -> int:
        return sum(1 for _ in self.claims())

    def claims(self) -> Iterator[Claim]:
        """Every waiting claim, interactive first."""
        for urgency in Urgency:
            yield from self._queues[urgency].claims()

    def next(self, lane: Lane, eligible: Callable[[Claim], bool] = _always) -> Claim | None:
        """Takes the claim that starts now on a free worker of `lane`, or None when no waiting
        claim is eligible there."""
        interactive = self._queues[Urgency.INTERACTIVE]
        bulk = self._queues[Urgency.BULK]
        if lane is Lane.INTERACTIVE:
            return interactive.pick(eligible, self.weight)
        bulk_ready = bulk.ready(eligible)
        if not bulk_ready or self._passed_over < self._burst:
            claim = interactive.pick(eligible, self.weight)
            if claim is not None:
                if bulk_ready:
                    self._passed_over += 1
                return claim
        claim = bulk.pick(eligible, self.weight)
        if claim is not None:
            self._passed_over = 0
        return claim

    def ahead(self, tenant: str, urgency: Urgency, group: str | None = None) -> float:
        """Seconds of waiting work that would start before a new claim of `tenant` at `urgency`
        (in `group` only, when given): an estimate for admission and for the wait metric.

        Within its urgency the new claim waits for its own tenant's queue and, from each other
        tenant, for as much work as that tenant gets in the same virtual time (the weights'
        proportion of it); bulk also waits for every interactive claim.
        """
        queued = self._queues[urgency].queued_by_tenant(group)
        own = queued.pop(tenant, 0.0)
        weight = self.weight(tenant)
        total = own + sum(
            min(seconds, own * self.weight(other) / weight) for other, seconds in queued.items()
        )
        if urgency is Urgency.BULK:
            total += sum(self._queues[Urgency.INTERACTIVE].queued_by_tenant(group).values())
        return total
