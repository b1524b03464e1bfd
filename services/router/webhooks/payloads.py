"""The JSON body of each event, as Standard Webhooks lays it out: `type`, `timestamp` (when the
event happened, RFC 3339 in UTC with microseconds) and `data`.

Bodies are small and name ids only, all of the tenant's own (job, batch, account, asset): never
image bytes, a URL, a key or a secret. A receiver fetches an image with GetAsset. Each body is
made once, when its event is fanned out, and stored: every attempt sends the same bytes.

    {"type": "job.succeeded", "timestamp": "2026-03-01T12:00:00.123456Z",
     "data": {"event_id": "evt_...", "job_id": "job_...", "batch_id": "bat_...",
              "account_id": "alice", "kind": "generate", "status": "succeeded",
              "tier": "nano", "width": 1024, "height": 1024, "cost": 2,
              "asset_id": "<sha-256>", "detached": true, "finish_time": "..."}}

`job.failed` and `job.cancelled` carry `error` (`code`, `reason`, `message`) instead of the
asset; `batch.completed` the batch's counts of jobs by final status, its job ids and the credits
charged; `credits.low` the account, its available credits after the hold, the threshold crossed
and the batch whose hold crossed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from services.router.webhooks.model import EventType

__all__ = ["batch_completed", "credits_low", "iso", "job_event"]

#: Longest error message a body repeats.
_MAX_MESSAGE_CHARS = 500


def iso(micros: int) -> str:
    """Microseconds since the epoch as RFC 3339 in UTC, to the microsecond."""
    moment = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(
        microsecond=micros % 1_000_000
    )
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _body(event_type: EventType, at_us: int, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": event_type.value, "timestamp": iso(at_us), "data": data})


def job_event(
    event_type: EventType, event_id: str, job: Mapping[str, Any], detached: bool
) -> bytes:
    """The body of a job's final state, from its row of `jobs`."""
    data: dict[str, Any] = {
        "event_id": event_id,
        "job_id": job["job_id"],
        "batch_id": job["batch_id"],
        "account_id": job["account_id"],
        "kind": job["kind"],
        "status": job["status"],
        "tier": job["tier"],
        "width": job["width"],
        "height": job["height"],
        "cost": job["cost"],
    }
    if job["parent_job_id"] is not None:
        data["parent_job_id"] = job["parent_job_id"]
    if job["asset_id"] is not None:
        data["asset_id"] = job["asset_id"]
    if job["error_code"] is not None:
        data["error"] = {
            "code": job["error_code"],
            "reason": job["error_reason"],
            "message": (job["error_message"] or "")[:_MAX_MESSAGE_CHARS],
        }
    data["detached"] = detached
    data["finish_time"] = iso(job["finish_us"])
    return _body(event_type, job["finish_us"], data)


def batch_completed(
    event_id: str, batch: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]], at_us: int
) -> bytes:
    """The body of a batch settled, from its row of `batches` and its jobs' rows."""
    counts = {"succeeded": 0, "failed": 0, "cancelled": 0}
    for job in jobs:
        if job["status"] in counts:
            counts[job["status"]] += 1
    data = {
        "event_id": event_id,
        "batch_id": batch["batch_id"],
        "account_id": batch["account_id"],
        "detached": bool(batch["detached"]),
        "jobs": counts,
        "job_ids": [job["job_id"] for job in jobs],
        "charged": batch["captured"],
        "hold": batch["hold_state"],
    }
    return _body(EventType.BATCH_COMPLETED, at_us, data)


def credits_low(event_id: str, batch: Mapping[str, Any], threshold: int) -> bytes:
    """The body of a hold taking an account's credits under `threshold`."""
    data = {
        "event_id": event_id,
        "account_id": batch["account_id"],
        "available": batch["available_after"],
        "threshold": threshold,
        "batch_id": batch["batch_id"],
    }
    return _body(EventType.CREDITS_LOW, batch["create_us"], data)
