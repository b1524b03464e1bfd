"""In-memory stand-ins for every port of the router's domain (the ledger, the generator, the
upscaler, the job store, the asset store), a clock and a `sleep` the test moves by hand, and
`RouterDomain`, an `Orchestrator` over all of them that builds in a millisecond.

Accounts are `Owner`s: the ledger keeps each tenant's accounts, holds and keys apart, as the
real one does, and `MemoryLedger.open` opens an account in `TENANT` unless told another.

Each keeps what a test needs to look at. `MemoryJobStore` is held to the job store contract by
the contract suite itself (tests/router/test_router_jobs.py runs on it next to SQLite and
PostgreSQL), so it cannot drift from the real stores. Its leases are timed, as on the store
replicas share (PostgreSQL): a batch is abandoned once its lease has run out on the clock.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import itertools
import math
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

from PIL import Image as PILImage

from services.router.assets.store import (
    DEFAULT_CHUNK_SIZE,
    AssetInfo,
    AssetRef,
    check_asset_id,
    check_digest,
    check_new_asset,
    info_mismatch,
)
from services.router.downstream.ports import (
    Image,
    ProgressSink,
    RenderOrder,
    Reservation,
    UpscaleOrder,
)
from services.router.jobs.model import (
    Batch,
    BatchRecord,
    HoldBalance,
    HoldState,
    Job,
    JobError,
    JobFilter,
    JobPage,
    JobStatus,
    Lease,
    NewJob,
    Owner,
)
from services.router.jobs.rows import Listing, check_batch_request
from services.router.operations.events import BatchAccepted, BatchEvent, JobFinished
from services.router.operations.limits import OperationLimits
from services.router.operations.orchestrator import Orchestrator
from services.router.routing.admission import Admission
from services.router.routing.catalogue import ImageSize, pixel_size
from services.router.routing.policy import Decision, RouteRequest, RoutingPolicy
from services.router.routing.pricing import PriceTable
from services.runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    TiergenError,
)
from tests.router.generator_tiers import reported_tiers

__all__ = [
    "TENANT",
    "ManualClock",
    "MemoryAssetStore",
    "MemoryJobStore",
    "MemoryJobTables",
    "MemoryLedger",
    "PictureRenderer",
    "PictureUpscaler",
    "RouterDomain",
    "Sleeps",
    "default_policy",
    "finished",
    "finished_jobs",
    "picture",
]


#: The tenant the domain tests act in unless they name another.
TENANT = "tenant-a"


@functools.cache
def picture(width: int, height: int, seed: int) -> Image:
    """A solid-colour PNG of `width` x `height` whose colour follows from `seed`.

    One colour in a palette: even a 4K image encodes in milliseconds.
    """
    colour = list(hashlib.sha256(str(seed).encode()).digest()[:3])
    canvas = PILImage.new("P", (width, height), 0)
    canvas.putpalette(colour)
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=1)
    data = out.getvalue()
    return Image(data, width, height, "image/png", hashlib.sha256(data).hexdigest())


@functools.cache
def default_policy() -> RoutingPolicy:
    """The embedded routing policy and price table, routing to the generator's embedded tiers
    (immutable, so read once)."""
    return RoutingPolicy.load(prices=PriceTable.load(), catalogue=reported_tiers())


class ManualClock:
    """A clock that moves only when the test moves it."""

    def __init__(self, start: datetime = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Nap:
    """One call of an injected `sleep`, asleep until the test ends it."""

    seconds: float
    _done: asyncio.Future[None]

    def end(self) -> None:
        if not self._done.done():
            self._done.set_result(None)


class Sleeps:
    """An injected `sleep` the test drives: every call waits until the test ends it, so a
    background loop runs exactly the rounds the test lets it run, and never waits for time."""

    def __init__(self) -> None:
        self._naps: asyncio.Queue[Nap] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._naps.put_nowait(Nap(seconds, done))
        await done

    async def next(self) -> Nap:
        """The next call to begin (waiting for it): the loop's round before it is over."""
        return await asyncio.wait_for(self._naps.get(), timeout=5)


# The ledger, the generator and the upscaler -----------------------------------------------


@dataclass
class _Hold:
    owner: Owner
    amount: int
    state: str = "open"
    captured: int = 0


@dataclass
class MemoryLedger:
    """Accounts, holds and their idempotency keys, each tenant's apart, as the ledger keeps
    them; `settlements` records every capture and release asked for, as (operation, hold id)."""

    accounts: dict[Owner, int] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    settlements: list[tuple[str, str]] = field(default_factory=list)
    _keys: dict[tuple[str, str], Reservation] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def open(self, account_id: str, credits: int = 400, *, tenant: str = TENANT) -> Owner:
        owner = Owner(tenant, account_id)
        self.accounts[owner] = credits
        return owner

    def held(self, owner: Owner) -> int:
        holds = self.holds.values()
        return sum(h.amount for h in holds if h.owner == owner and h.state == "open")

    def balance(self, owner: Owner) -> tuple[int, int]:
        """(available, held), as the tests of a real ledger read them."""
        return self.accounts[owner], self.held(owner)

    async def available(self, owner: Owner) -> int:
        if owner not in self.accounts:
            raise NotFound("account not found", reason="ACCOUNT_NOT_FOUND")
        return self.accounts[owner]

    async def reserve(
        self, owner: Owner, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> Reservation:
        if (owner.tenant, idempotency_key) in self._keys:
            return self._keys[(owner.tenant, idempotency_key)]
        available = await self.available(owner)
        if amount > available:
            raise FailedPrecondition(
                "insufficient credits",
                reason="INSUFFICIENT_CREDITS",
                metadata={"available": str(available), "required": str(amount)},
            )
        hold_id = f"hold_{next(self._ids)}"
        self.accounts[owner] -= amount
        self.holds[hold_id] = _Hold(owner, amount)
        reservation = Reservation(hold_id, self.accounts[owner])
        self._keys[(owner.tenant, idempotency_key)] = reservation
        return reservation

    async def capture(self, owner: Owner, hold_id: str, amount: int, idempotency_key: str) -> None:
        self.settlements.append(("capture", hold_id))
        hold = self._hold(owner, hold_id)
        if hold.state == "captured" and hold.captured == amount:
            return
        if hold.state != "open" or amount > hold.amount:
            raise FailedPrecondition("cannot capture", reason="CAPTURE_EXCEEDS_HOLD")
        hold.state, hold.captured = "captured", amount
        self.accounts[hold.owner] += hold.amount - amount

    async def release(self, owner: Owner, hold_id: str, idempotency_key: str) -> None:
        self.settlements.append(("release", hold_id))
        hold = self._hold(owner, hold_id)
        if hold.state == "released":
            return
        if hold.state != "open":
            raise FailedPrecondition("hold is settled", reason="HOLD_ALREADY_CAPTURED")
        hold.state = "released"
        self.accounts[hold.owner] += hold.amount

    def _hold(self, owner: Owner, hold_id: str) -> _Hold:
        """The hold, settled only in its own tenant: another tenant's is NotFound."""
        hold = self.holds.get(hold_id)
        if hold is None or hold.owner.tenant != owner.tenant:
            raise NotFound(f"hold {hold_id} not found", reason="HOLD_NOT_FOUND")
        return hold


@dataclass
class PictureRenderer:
    """Renders a solid colour per seed at the order's pixel size; an image rendered from a
    reference reports `drift`, as the generator measures it.

    `failures` are raised by the next renders, one each. While `gate` is set, every render
    after the first `ungated` waits for it to open; `entered` gets the request id of each
    render that reached the gate.
    """

    orders: list[RenderOrder] = field(default_factory=list)
    failures: list[TiergenError] = field(default_factory=list)
    gate: asyncio.Event | None = None
    ungated: int = 0
    entered: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    drift: float = 0.125

    async def render(self, order: RenderOrder, progress: ProgressSink) -> Image:
        self.orders.append(order)
        if self.failures:
            raise self.failures.pop(0)
        if self.gate is not None and len(self.orders) > self.ungated:
            self.entered.put_nowait(order.request_id)
            await self.gate.wait()
        width, height = pixel_size(order.size, order.aspect_ratio)
        image = picture(width, height, order.seed)
        return image if order.reference is None else replace(image, drift=self.drift)


@dataclass
class PictureUpscaler:
    """Enlarges by painting a solid colour at the scaled size."""

    orders: list[UpscaleOrder] = field(default_factory=list)

    async def upscale(self, order: UpscaleOrder, progress: ProgressSink) -> Image:
        self.orders.append(order)
        with PILImage.open(io.BytesIO(order.data)) as source:
            width, height = source.size
        return picture(round(width * order.factor), round(height * order.factor), 0)


# The asset store ----------------------------------------------------------------------------


class MemoryAssetStore:
    """An `AssetStore` in a dict, addressed by content like the real ones."""

    def __init__(self) -> None:
        self.assets: dict[str, tuple[bytes, AssetInfo]] = {}
        self._closed = False

    async def put(
        self, data: bytes, *, width: int, height: int, media_type: str, sha256: str = ""
    ) -> AssetRef:
        self._check_open()
        check_new_asset(data, width, height, media_type)
        asset_id = hashlib.sha256(data).hexdigest()
        # A digest the caller announces must be the bytes' own: a wrong one would file the
        # image under another's address.
        assert sha256 in ("", asset_id), f"put announced {sha256} for bytes hashing to {asset_id}"
        info = AssetInfo(width, height, media_type, len(data))
        stored = self.assets.setdefault(asset_id, (data, info))
        if stored[1] != info:
            raise info_mismatch(AssetRef(asset_id, stored[1]), info)
        return AssetRef(asset_id, info)

    async def get_info(self, asset_id: str) -> AssetRef:
        return AssetRef(asset_id, self._stored(asset_id)[1])

    async def read_chunks(
        self, asset_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        data = self._stored(asset_id)[0]
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]
        check_digest(asset_id, hashlib.sha256(data).hexdigest())

    async def read(self, asset_id: str) -> bytes:
        data = self._stored(asset_id)[0]
        check_digest(asset_id, hashlib.sha256(data).hexdigest())
        return data

    async def exists(self, asset_id: str) -> bool:
        self._check_open()
        check_asset_id(asset_id)
        return asset_id in self.assets

    async def close(self) -> None:
        self._closed = True

    def _stored(self, asset_id: str) -> tuple[bytes, AssetInfo]:
        self._check_open()
        check_asset_id(asset_id)
        try:
            return self.assets[asset_id]
        except KeyError:
            raise NotFound(f"asset {asset_id} not found", reason="ASSET_NOT_FOUND") from None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the asset store is closed")


# The job store ------------------------------------------------------------------------------

#: For each status a job can move to, the statuses it may move from.
_MOVES = {
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING}),
}
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid(prefix: str, moment: datetime) -> str:
    value = (int(moment.timestamp() * 1000) << 80) | secrets.randbits(80)
    digits = []
    for _ in range(26):
        digits.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(digits))


@dataclass
class _StoredBatch:
    batch: Batch
    job_ids: list[str]
    #: The router process running the batch (its lease's owner), not the batch's `Owner`.
    router: str | None
    lease_until: datetime | None


@dataclass
class MemoryJobTables:
    """The batches and jobs every `MemoryJobStore` opened on them shares, as the processes
    sharing one database do. Jobs are kept without their batch's hold id, joined on reading."""

    batches: dict[str, _StoredBatch] = field(default_factory=dict)
    #: (owner, idempotency key) -> batch id.
    keys: dict[tuple[Owner, str], str] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class MemoryJobStore:
    """A `JobStore` over `MemoryJobTables`. Every call is one atomic step after a suspension
    point, as a call to a database is; `clock` stamps times and judges leases."""

    #: Not a SQL store: its leases are timed, as on a database replicas share.
    dialect = "memory"

    def __init__(
        self, tables: MemoryJobTables | None = None, *, clock: Callable[[], datetime]
    ) -> None:
        self.tables = tables if tables is not None else MemoryJobTables()
        self._clock = clock
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    async def create_batch(
        self,
        *,
        owner: Owner,
        idempotency_key: str,
        fingerprint: str,
        jobs: Sequence[NewJob],
        decision: Decision | None = None,
        hold_id: str | None = None,
        lease: Lease | None = None,
        detached: bool = False,
        webhook_id: str | None = None,
        balance: HoldBalance | None = None,
    ) -> BatchRecord:
        # No webhook outbox here (see `JobStore`): `balance` is only ever told to one.
        check_batch_request(owner, idempotency_key, jobs)
        await self._step()
        existing = self.tables.keys.get((owner, idempotency_key))
        if existing is not None:
            stored = self.tables.batches[existing]
            if stored.batch.fingerprint != fingerprint:
                raise AlreadyExists(
                    f"idempotency key {idempotency_key!r} was used for another request",
                    reason="IDEMPOTENCY_KEY_REUSED",
                    metadata={"batch_id": existing},
                )
            return self._record(existing, replayed=True)
        for new in jobs:
            if new.parent_job_id is not None:
                self._job(owner, new.parent_job_id)
        now = self._clock()
        batch = Batch(
            batch_id=_ulid("bat_", now),
            owner=owner,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            decision=decision,
            hold_id=hold_id,
            hold_state=HoldState.NONE if hold_id is None else HoldState.OPEN,
            captured=0,
            create_time=now,
            detached=detached,
            webhook_id=webhook_id,
        )
        job_ids = []
        for new in jobs:
            job = _queued(new, _ulid("job_", now), batch, now)
            self.tables.jobs[job.job_id] = job
            self.tables.seq[job.job_id] = next(self.tables.counter)
            job_ids.append(job.job_id)
        until = None if lease is None else now + timedelta(seconds=lease.seconds)
        router = None if lease is None else lease.owner
        self.tables.batches[batch.batch_id] = _StoredBatch(batch, job_ids, router, until)
        self.tables.keys[(owner, idempotency_key)] = batch.batch_id
        return self._record(batch.batch_id)

    async def find_batch(self, owner: Owner, idempotency_key: str) -> BatchRecord | None:
        await self._step()
        batch_id = self.tables.keys.get((owner, idempotency_key))
        return None if batch_id is None else self._record(batch_id, replayed=True)

    async def batch(self, owner: Owner, batch_id: str) -> BatchRecord:
        await self._step()
        return self._record(self._stored_batch(owner, batch_id).batch.batch_id)

    async def attach_hold(self, batch_id: str, hold_id: str) -> Batch:
        await self._step()
        stored = self._stored_batch(None, batch_id)
        if stored.batch.hold_id == hold_id:
            return stored.batch
        if stored.batch.hold_id is not None:
            raise FailedPrecondition(
                f"batch {batch_id} is already paid for by hold {stored.batch.hold_id}",
                reason="HOLD_ALREADY_ATTACHED",
            )
        stored.batch = replace(stored.batch, hold_id=hold_id, hold_state=HoldState.OPEN)
        return stored.batch

    async def settle_hold(self, batch_id: str, state: HoldState, captured: int = 0) -> Batch:
        if state not in (HoldState.CAPTURED, HoldState.RELEASED):
            raise ValueError(f"a hold settles as captured or released, not {state}")
        if captured < 0 or (state is HoldState.RELEASED and captured):
            raise ValueError(f"cannot record {captured} credits captured for a {state} hold")
        await self._step()
        stored = self._stored_batch(None, batch_id)
        if stored.batch.hold_state == state and stored.batch.captured == captured:
            return stored.batch
        if stored.batch.hold_state != HoldState.OPEN:
            raise FailedPrecondition(
                f"the hold of batch {batch_id} is {stored.batch.hold_state}, not open",
                reason="HOLD_NOT_OPEN",
            )
        stored.batch = replace(stored.batch, hold_state=state, captured=captured)
        return stored.batch

    async def forget_batch(self, batch_id: str) -> bool:
        await self._step()
        stored = self.tables.batches.get(batch_id)
        if stored is None or stored.batch.hold_state == HoldState.OPEN:
            return False
        statuses = {self.tables.jobs[job_id].status for job_id in stored.job_ids}
        if not statuses <= {JobStatus.FAILED, JobStatus.CANCELLED}:
            return False
        for job_id in stored.job_ids:
            del self.tables.jobs[job_id]
            del self.tables.seq[job_id]
        del self.tables.batches[batch_id]
        del self.tables.keys[(stored.batch.owner, stored.batch.idempotency_key)]
        return True

    async def renew_leases(self, lease: Lease, batch_ids: Sequence[str]) -> frozenset[str]:
        await self._step()
        until = self._clock() + timedelta(seconds=lease.seconds)
        renewed = set()
        for batch_id in batch_ids:
            stored = self.tables.batches.get(batch_id)
            if stored is not None and stored.router == lease.owner:
                stored.lease_until = until
                renewed.add(batch_id)
        return frozenset(renewed)

    async def claim_abandoned(
        self, lease: Lease, *, unleased_seconds: float, limit: int
    ) -> tuple[BatchRecord, ...]:
        await self._step()
        now = self._clock()
        unleased_before = now - timedelta(seconds=unleased_seconds)

        def abandoned(stored: _StoredBatch) -> bool:
            unfinished = stored.batch.hold_state == HoldState.OPEN or any(
                not self.tables.jobs[job_id].status.is_final for job_id in stored.job_ids
            )
            if stored.lease_until is None:
                return unfinished and stored.batch.create_time < unleased_before
            return unfinished and stored.lease_until < now

        claimed = sorted(
            (stored for stored in self.tables.batches.values() if abandoned(stored)),
            key=lambda stored: (stored.batch.create_time, stored.batch.batch_id),
        )[:limit]
        for stored in claimed:
            stored.router = lease.owner
            stored.lease_until = now + timedelta(seconds=lease.seconds)
        return tuple(self._record(stored.batch.batch_id) for stored in claimed)

    async def mark_running(self, job_id: str) -> Job:
        return await self._move(job_id, JobStatus.RUNNING)

    async def mark_succeeded(
        self,
        job_id: str,
        asset: AssetRef,
        cost: int,
        drift: float | None = None,
        fallback: tuple[str, tuple[str, ...]] | None = None,
    ) -> Job:
        if drift is not None and not (math.isfinite(drift) and 0.0 <= drift <= 1.0):
            raise ValueError(f"drift {drift} is outside 0..1")
        if cost < 0:
            raise ValueError(f"cost {cost} is negative")
        changes: dict[str, object] = {"asset": asset, "cost": cost, "drift": drift}
        if fallback is not None:
            changes.update(tier=fallback[0], reasons=tuple(fallback[1]))
        return await self._move(job_id, JobStatus.SUCCEEDED, charged=cost, **changes)

    async def mark_failed(self, job_id: str, code: str, reason: str, message: str) -> Job:
        return await self._move(job_id, JobStatus.FAILED, error=JobError(code, reason, message))

    async def mark_cancelled(self, job_id: str, message: str = "cancelled by the caller") -> Job:
        error = JobError("CANCELLED", "CANCELLED", message)
        return await self._move(job_id, JobStatus.CANCELLED, error=error)

    async def cancel_job(
        self, owner: Owner, job_id: str, message: str = "cancelled by the caller"
    ) -> Job:
        job = await self.get(owner, job_id)
        if job.status.is_final:
            return job
        return await self.mark_cancelled(job_id, message)

    async def cancel_batch(
        self, owner: Owner, batch_id: str, message: str = "cancelled by the caller"
    ) -> tuple[Job, ...]:
        await self._step()
        stored = self._stored_batch(owner, batch_id)
        now = self._clock()
        for job_id in stored.job_ids:
            job = self.tables.jobs[job_id]
            if not job.status.is_final:
                self.tables.jobs[job_id] = replace(
                    job,
                    status=JobStatus.CANCELLED,
                    error=JobError("CANCELLED", "CANCELLED", message),
                    finish_time=now,
                )
        return self._record(batch_id).jobs

    async def get(self, owner: Owner, job_id: str) -> Job:
        await self._step()
        return self._job(owner, job_id)

    async def children(self, owner: Owner, job_id: str) -> tuple[Job, ...]:
        await self._step()
        self._job(owner, job_id)
        return tuple(
            self._view(job) for job in self.tables.jobs.values() if job.parent_job_id == job_id
        )

    async def list(
        self,
        owner: Owner,
        filters: JobFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> JobPage:
        # The SQL store's checks and page tokens, so that the two cannot drift apart.
        listing = Listing.of(owner, filters, page_size, page_token)
        before, limit = listing.before, listing.limit
        await self._step()
        wanted = {
            name: value
            for name, value in asdict(filters or JobFilter()).items()
            if value is not None
        }
        matching = [
            job
            for job in reversed(self.tables.jobs.values())
            if job.owner == owner
            and (before is None or self.tables.seq[job.job_id] < before)
            and all(getattr(job, name) == value for name, value in wanted.items())
        ]
        page = tuple(self._view(job) for job in matching[:limit])
        if len(matching) <= limit:
            return JobPage(page)
        return JobPage(page, listing.token(self.tables.seq[page[-1].job_id]))

    async def has_asset(self, owner: Owner, asset_id: str) -> bool:
        await self._step()
        return any(
            job.asset is not None and job.asset.asset_id == asset_id
            for job in self.tables.jobs.values()
            if job.owner == owner
        )

    async def set_shortlisted(self, owner: Owner, job_id: str, shortlisted: bool) -> Job:
        await self._step()
        job = self._job(owner, job_id)
        self.tables.jobs[job_id] = replace(job, shortlisted=shortlisted, hold_id=None)
        return self._job(owner, job_id)

    # Reading and moving --------------------------------------------------------------------

    async def _step(self) -> None:
        if self._closed:
            raise RuntimeError("the job store is closed")
        await asyncio.sleep(0)
        if self._closed:
            raise RuntimeError("the job store is closed")

    async def _move(
        self, job_id: str, target: JobStatus, *, charged: int | None = None, **changes: object
    ) -> Job:
        await self._step()
        job = self._job(None, job_id)
        if job.status not in _MOVES[target]:
            raise FailedPrecondition(
                f"job {job_id} is {job.status}; it cannot become {target}",
                reason="JOB_FINAL" if job.status.is_final else "ILLEGAL_TRANSITION",
                metadata={"job_id": job_id, "status": job.status.value, "target": target.value},
            )
        if charged is not None and charged > job.quoted_cost:
            raise ValueError(
                f"cost {charged} exceeds the {job.quoted_cost} credits quoted for {job_id}"
            )
        moment = {"start_time" if target is JobStatus.RUNNING else "finish_time": self._clock()}
        moved = replace(job, status=target, hold_id=None, **moment, **changes)
        self.tables.jobs[job_id] = moved
        return self._view(moved)

    def _stored_batch(self, owner: Owner | None, batch_id: str) -> _StoredBatch:
        stored = self.tables.batches.get(batch_id)
        if stored is None or (owner is not None and stored.batch.owner != owner):
            raise NotFound(f"batch {batch_id!r} not found", reason="BATCH_NOT_FOUND")
        return stored

    def _job(self, owner: Owner | None, job_id: str) -> Job:
        job = self.tables.jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND")
        return self._view(job)

    def _view(self, job: Job) -> Job:
        return replace(job, hold_id=self.tables.batches[job.batch_id].batch.hold_id)

    def _record(self, batch_id: str, *, replayed: bool = False) -> BatchRecord:
        stored = self.tables.batches[batch_id]
        jobs = sorted(
            (self._view(self.tables.jobs[job_id]) for job_id in stored.job_ids),
            key=lambda job: (job.variation, self.tables.seq[job.job_id]),
        )
        return BatchRecord(stored.batch, tuple(jobs), replayed)


def _queued(new: NewJob, job_id: str, batch: Batch, now: datetime) -> Job:
    return Job(
        job_id=job_id,
        batch_id=batch.batch_id,
        owner=batch.owner,
        kind=new.kind,
        status=JobStatus.QUEUED,
        tier=new.tier,
        stage=new.stage,
        prompt=new.prompt,
        seed=new.seed,
        variation=new.variation,
        size=new.size,
        aspect_ratio=new.aspect_ratio,
        width=new.width,
        height=new.height,
        quoted_cost=new.quoted_cost,
        cost=0,
        parent_job_id=new.parent_job_id,
        asset=None,
        reasons=tuple(new.reasons),
        strength=new.strength,
        drift=None,
        upscale_factor=new.upscale_factor,
        upscale_method=new.upscale_method,
        error=None,
        hold_id=None,
        create_time=now,
        start_time=None,
        finish_time=None,
        trace_id=new.trace_id,
    )


# The domain over all of them ----------------------------------------------------------------

#: Every progress event at once, and a replay that looks again at once: no waiting on time.
QUICK_LIMITS = OperationLimits(progress_interval_seconds=0, replay_poll_seconds=0)


@dataclass
class RouterDomain:
    """An `Orchestrator` over in-memory ports, and a handle on each port.

    `replica()` is another router process over the same job tables, assets and ledger, with
    a lease, a renderer and a `sleep` of its own.
    """

    router: Orchestrator
    tables: MemoryJobTables
    jobs: MemoryJobStore
    assets: MemoryAssetStore
    ledger: MemoryLedger
    renderer: PictureRenderer
    upscaler: PictureUpscaler
    clock: ManualClock
    sleeps: Sleeps
    policy: RoutingPolicy
    limits: OperationLimits

    @classmethod
    def build(
        cls,
        *,
        policy: RoutingPolicy | None = None,
        limits: OperationLimits = QUICK_LIMITS,
        tables: MemoryJobTables | None = None,
        clock: ManualClock | None = None,
        assets: MemoryAssetStore | None = None,
        ledger: MemoryLedger | None = None,
    ) -> RouterDomain:
        clock = clock or ManualClock()
        tables = tables if tables is not None else MemoryJobTables()
        jobs = MemoryJobStore(tables, clock=clock)
        assets = assets or MemoryAssetStore()
        ledger = ledger or MemoryLedger()
        renderer, upscaler, sleeps = PictureRenderer(), PictureUpscaler(), Sleeps()
        policy = policy or default_policy()
        router = Orchestrator(
            jobs=jobs,
            assets=assets,
            ledger=ledger,
            renderer=renderer,
            upscaler=upscaler,
            policy=policy,
            limits=limits,
            admission=Admission(),
            sleep=sleeps,
        )
        return cls(
            router, tables, jobs, assets, ledger, renderer, upscaler, clock, sleeps, policy, limits
        )

    async def delivered(
        self, owner: Owner, tier: str = "nano", *, prompt: str = "a harbour town at dusk"
    ) -> Job:
        """One 1K image rendered on `tier` for the owner, charged: a parent for handovers."""
        request = RouteRequest(prompt=prompt, tier=tier, size=ImageSize.K1)
        key = f"parent-{secrets.token_hex(4)}"
        _, (job,) = await finished(self.router.generate(owner, key, request))
        assert job.status is JobStatus.SUCCEEDED, job
        return job

    def replica(self) -> RouterDomain:
        return RouterDomain.build(
            policy=self.policy,
            limits=self.limits,
            tables=self.tables,
            clock=self.clock,
            assets=self.assets,
            ledger=self.ledger,
        )


async def finished(events: AsyncIterator[BatchEvent]) -> tuple[BatchRecord, list[Job]]:
    """Reads a call's events to the end: the batch it accepted, and each job as it finished.

    An error the call ends with is raised, as the caller would see it.
    """
    record: BatchRecord | None = None
    jobs: list[Job] = []
    async for event in events:
        if isinstance(event, BatchAccepted):
            record = event.record
        elif isinstance(event, JobFinished):
            jobs.append(event.job)
    assert record is not None, "the call accepted no batch"
    return record, jobs


async def finished_jobs(events: AsyncIterator[BatchEvent]) -> list[Job]:
    """The jobs the rest of a call's events finished (after its batch was read)."""
    return [event.job async for event in events if isinstance(event, JobFinished)]
