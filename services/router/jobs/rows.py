"""Rows of the job database and the records they hold: conversion both ways, ids, page tokens,
and the checks and errors of the job store.

Times are stored as integer microseconds since the epoch, the reasons and the routing decision
as JSON text (written and read only here), and each job's `seq` orders jobs by creation and is
what a page token remembers, together with a digest of the listing it continues (its owner
and filters), so that a token is refused anywhere else. The checks run before any database
work, so a bad request never reaches the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from services.router.assets.store import AssetInfo, AssetRef
from services.router.jobs.model import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Batch,
    HoldState,
    Job,
    JobError,
    JobFilter,
    JobKind,
    JobPage,
    JobStatus,
    NewJob,
    Owner,
    UpscaleMethod,
)
from services.router.routing.catalogue import AspectRatio, ImageSize, Stage
from services.router.routing.policy import Decision
from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.runtime.identifiers import DEFAULT_TENANT

__all__ = [
    "Listing",
    "Row",
    "batch_from_row",
    "batch_not_found",
    "cancelled_changes",
    "check_batch_request",
    "check_charge",
    "check_settlement",
    "encode_decision",
    "encode_reasons",
    "failed_changes",
    "hold_already_attached",
    "hold_not_open",
    "job_from_row",
    "job_not_found",
    "key_reused",
    "new_id",
    "new_job_row",
    "refusal",
    "succeeded_changes",
    "to_us",
]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: The columns `JobFilter` fields match, in the order a listing applies them.
_FILTER_COLUMNS = (
    "stage",
    "tier",
    "status",
    "kind",
    "batch_id",
    "parent_job_id",
    "shortlisted",
)


class Row(Protocol):
    """A database row read by column name (`sqlite3.Row`, or psycopg's `dict_row`)."""

    def __getitem__(self, column: str, /) -> Any: ...


def check_batch_request(owner: Owner, idempotency_key: str, jobs: Sequence[NewJob]) -> None:
    """InvalidArgument without a key or for text with U+0000 in it (which PostgreSQL cannot
    hold, so neither store takes it); ValueError for no jobs or a job no store can hold."""
    if not idempotency_key:
        raise InvalidArgument("an idempotency key is required", field="idempotency_key")
    if not jobs:
        raise ValueError("a batch needs at least one job")
    texts = [("account_id", owner.account_id), ("idempotency_key", idempotency_key)]
    texts.extend(("prompt", new.prompt) for new in jobs)
    for field, text in texts:
        if "\x00" in text:
            raise InvalidArgument(f"{field} contains the character U+0000", field=field)
    for new in jobs:
        if not 0 <= new.seed < 2**64:
            raise ValueError(f"seed {new.seed} is outside 0..2^64-1")
        if new.width < 1 or new.height < 1 or new.quoted_cost < 0:
            raise ValueError(f"job has size {new.width}x{new.height} and cost {new.quoted_cost}")


def check_settlement(state: HoldState, captured: int) -> None:
    """ValueError unless `state` settles a hold and `captured` fits it."""
    if state not in (HoldState.CAPTURED, HoldState.RELEASED):
        raise ValueError(f"a hold settles as captured or released, not {state}")
    if captured < 0 or (state is HoldState.RELEASED and captured):
        raise ValueError(f"cannot record {captured} credits captured for a {state} hold")


def check_charge(job: Job, charged: int | None) -> None:
    """ValueError when a job would be charged more than it was quoted."""
    if charged is not None and charged > job.quoted_cost:
        raise ValueError(
            f"cost {charged} exceeds the {job.quoted_cost} credits quoted for {job.job_id}"
        )


def succeeded_changes(
    asset: AssetRef,
    cost: int,
    drift: float | None,
    fallback: tuple[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """The columns a success sets; ValueError for a negative cost or a drift outside 0..1.

    `fallback` is the tier that rendered instead of the one routed to, and the job's reasons
    with why.
    """
    if drift is not None and not (math.isfinite(drift) and 0.0 <= drift <= 1.0):
        raise ValueError(f"drift {drift} is outside 0..1")
    if cost < 0:
        raise ValueError(f"cost {cost} is negative")
    rendered_by = (
        {}
        if fallback is None
        else {
            "tier": fallback[0],
            "reasons": json.dumps(list(fallback[1])),
        }
    )
    return {
        **rendered_by,
        "cost": cost,
        "drift": drift,
        "asset_id": asset.asset_id,
        "asset_width": asset.info.width,
        "asset_height": asset.info.height,
        "asset_media_type": asset.info.media_type,
        "asset_size_bytes": asset.info.size_bytes,
    }


def failed_changes(code: str, reason: str, message: str) -> dict[str, Any]:
    """The columns a failure sets."""
    return {"error_code": code, "error_reason": reason, "error_message": message}


def cancelled_changes(message: str) -> dict[str, Any]:
    """The columns a cancellation sets."""
    return failed_changes("CANCELLED", "CANCELLED", message)


def refusal(job: Job, target: JobStatus) -> FailedPrecondition:
    """The error for a move the lifecycle does not allow."""
    return FailedPrecondition(
        f"job {job.job_id} is {job.status}; it cannot become {target}",
        reason="JOB_FINAL" if job.status.is_final else "ILLEGAL_TRANSITION",
        metadata={"job_id": job.job_id, "status": job.status, "target": target},
    )


def key_reused(idempotency_key: str, batch_id: str) -> AlreadyExists:
    """The error for an idempotency key that created another request's batch."""
    return AlreadyExists(
        f"idempotency key {idempotency_key!r} was used for another request",
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"batch_id": batch_id},
    )


def job_not_found(job_id: str) -> NotFound:
    """The error for a missing job, and for another owner's job alike (another account's, or
    another tenant's)."""
    return NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND")


def batch_not_found(batch_id: str) -> NotFound:
    """The error for a missing batch, and for another owner's batch alike."""
    return NotFound(f"batch {batch_id!r} not found", reason="BATCH_NOT_FOUND")


def hold_already_attached(batch_id: str, hold_id: str) -> FailedPrecondition:
    """The error for a second hold attached to a batch."""
    return FailedPrecondition(
        f"batch {batch_id} is already paid for by hold {hold_id}", reason="HOLD_ALREADY_ATTACHED"
    )


def hold_not_open(batch_id: str, state: str) -> FailedPrecondition:
    """The error for settling a hold that is not open."""
    return FailedPrecondition(
        f"the hold of batch {batch_id} is {state}, not open", reason="HOLD_NOT_OPEN"
    )


def new_id(prefix: str, now_us: int) -> str:
    """`prefix` and a ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32.

    Ids sort by creation time to the millisecond; the stores order listings by `seq`.
    """
    value = ((now_us // 1000) << 80) | secrets.randbits(80)
    digits = []
    for _ in range(26):
        digits.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(digits))


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch, as stored."""
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _from_us(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def _optional_time(micros: int | None) -> datetime | None:
    return None if micros is None else _from_us(micros)


def encode_reasons(reasons: Sequence[str]) -> str:
    """The reasons column of a job."""
    return json.dumps(list(reasons))


def encode_decision(decision: Decision) -> str:
    """The decision column of a batch."""
    return json.dumps(asdict(decision))


def _decode_decision(text: str) -> Decision:
    fields = json.loads(text)
    return Decision(
        **{
            **fields,
            "size": ImageSize(fields["size"]),
            "aspect_ratio": AspectRatio(fields["aspect_ratio"]),
            "reasons": tuple(fields["reasons"]),
        }
    )


def job_from_row(row: Row) -> Job:
    """A job from a row of `jobs` with its batch's `hold_id`."""
    asset = None
    if row["asset_id"] is not None:
        asset = AssetRef(
            row["asset_id"],
            AssetInfo(
                width=row["asset_width"],
                height=row["asset_height"],
                media_type=row["asset_media_type"],
                size_bytes=row["asset_size_bytes"],
            ),
        )
    error = None
    if row["error_code"] is not None:
        error = JobError(row["error_code"], row["error_reason"], row["error_message"])
    return Job(
        job_id=row["job_id"],
        batch_id=row["batch_id"],
        owner=Owner(row["tenant"], row["account_id"]),
        kind=JobKind(row["kind"]),
        status=JobStatus(row["status"]),
        tier=row["tier"],
        stage=Stage(row["stage"]),
        prompt=row["prompt"],
        # Text in SQLite, NUMERIC(20) in PostgreSQL: a uint64 overflows both databases' BIGINT.
        seed=int(row["seed"]),
        variation=row["variation"],
        size=None if row["size"] is None else ImageSize(row["size"]),
        aspect_ratio=AspectRatio(row["aspect_ratio"]),
        width=row["width"],
        height=row["height"],
        quoted_cost=row["quoted_cost"],
        cost=row["cost"],
        parent_job_id=row["parent_job_id"],
        asset=asset,
        reasons=tuple(json.loads(row["reasons"])),
        strength=row["strength"],
        drift=row["drift"],
        upscale_factor=row["upscale_factor"],
        upscale_method=(
            None if row["upscale_method"] is None else UpscaleMethod(row["upscale_method"])
        ),
        error=error,
        hold_id=row["hold_id"],
        create_time=_from_us(row["create_us"]),
        start_time=_optional_time(row["start_us"]),
        finish_time=_optional_time(row["finish_us"]),
        trace_id=row["trace_id"],
        shortlisted=bool(row["shortlisted"]),
    )


def new_job_row(new: NewJob, batch_id: str, owner: Owner, now_us: int) -> dict[str, Any]:
    """The row of a new, queued job: its columns but those left to their defaults."""
    return {
        "job_id": new_id("job_", now_us),
        "batch_id": batch_id,
        "tenant": owner.tenant,
        "account_id": owner.account_id,
        "kind": new.kind.value,
        "status": JobStatus.QUEUED.value,
        "tier": new.tier,
        "stage": new.stage.value,
        "prompt": new.prompt,
        # Decimal text on both: SQLite keeps it as TEXT, PostgreSQL reads it as NUMERIC.
        "seed": str(new.seed),
        "variation": new.variation,
        "size": None if new.size is None else new.size.value,
        "aspect_ratio": new.aspect_ratio.value,
        "width": new.width,
        "height": new.height,
        "quoted_cost": new.quoted_cost,
        "parent_job_id": new.parent_job_id,
        "reasons": encode_reasons(new.reasons),
        "strength": new.strength,
        "upscale_factor": new.upscale_factor,
        "upscale_method": None if new.upscale_method is None else new.upscale_method.value,
        "create_us": now_us,
        "trace_id": new.trace_id,
    }


def batch_from_row(row: Row) -> Batch:
    """A batch from a row of `batches`."""
    return Batch(
        batch_id=row["batch_id"],
        owner=Owner(row["tenant"], row["account_id"]),
        idempotency_key=row["idempotency_key"],
        fingerprint=row["fingerprint"],
        decision=None if row["decision"] is None else _decode_decision(row["decision"]),
        hold_id=row["hold_id"],
        hold_state=HoldState(row["hold_state"]),
        captured=row["captured"],
        create_time=_from_us(row["create_us"]),
        detached=bool(row["detached"]),
        webhook_id=row["webhook_id"],
    )


@dataclass(frozen=True)
class Listing:
    """One `JobStore.list` request, checked: how many jobs, which, and from where.

    The store selects the owner's jobs matching `conditions`, with `seq` below `before` when
    it is set, newest first, at most `limit + 1` of them, and hands the rows to `page`.
    """

    owner: Owner
    #: `(column, value)` pairs every listed job matches.
    conditions: tuple[tuple[str, str | bool], ...]
    limit: int
    before: int | None
    scope: str

    @classmethod
    def of(
        cls, owner: Owner, filters: JobFilter | None, page_size: int, page_token: str
    ) -> Listing:
        """Check the paging arguments; InvalidArgument on "page_size" or "page_token"."""
        filters = filters or JobFilter()
        if page_size < 0:
            raise InvalidArgument(f"page size {page_size} is negative", field="page_size")
        scope = _listing_scope(owner, filters)
        values = asdict(filters)
        return cls(
            owner=owner,
            conditions=tuple(
                (
                    column,
                    values[column] if isinstance(values[column], bool) else str(values[column]),
                )
                for column in _FILTER_COLUMNS
                if values[column] is not None
            ),
            limit=min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
            before=_decode_page_token(page_token, scope) if page_token else None,
            scope=scope,
        )

    def page(self, rows: Sequence[Row]) -> JobPage:
        """The page the selected rows make, with a token when there are more."""
        jobs = tuple(job_from_row(row) for row in rows[: self.limit])
        more = len(rows) > self.limit
        return JobPage(jobs, self.token(rows[self.limit - 1]["seq"]) if more else "")

    def token(self, before_seq: int) -> str:
        """The page token that continues this listing below `before_seq`."""
        return _encode_page_token(before_seq, self.scope)


def _listing_scope(owner: Owner, filters: JobFilter) -> str:
    """A digest of what a listing is over (whose jobs, which of them), so that a page token
    cannot continue another listing: not another filter's, not another account's, not another
    tenant's.

    The default tenant's listings digest as they did before tenants, so that a token handed out
    then still continues its listing; no other tenant's digest can equal one of them (a list
    of two and a list of three never serialise alike).
    """
    over: list[Any] = [owner.account_id, asdict(filters)]
    if owner.tenant != DEFAULT_TENANT:
        over.append(owner.tenant)
    canonical = json.dumps(over, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode_page_token(before_seq: int, scope: str) -> str:
    payload = json.dumps({"before": before_seq, "scope": scope}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_page_token(token: str, scope: str) -> int:
    invalid = InvalidArgument(
        "page token is not one this listing returned", field="page_token", reason="BAD_PAGE_TOKEN"
    )
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if not isinstance(payload, dict) or payload.get("scope") != scope:
        raise invalid
    before = payload.get("before")
    if not isinstance(before, int) or isinstance(before, bool) or before < 1:
        raise invalid
    return before
