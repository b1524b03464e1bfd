"""Webhook records: endpoints, events, deliveries and the outcomes of their attempts.

An endpoint (`Webhook`) belongs to one tenant and names the events it wants. An event happens
once (a job reaching a final state, a batch settling, a hold taking an account under a
credits.low threshold) and becomes one `Delivery` per endpoint that wants it; each delivery is
attempted until its endpoint answers 2xx, or until its retry period ends (then it failed). The
delivery's id is the `webhook-id` every attempt carries, so a receiver de-duplicates by it.

Secrets and URLs stay out of every repr: a URL may carry a receiver's token in its query.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from services.router.jobs.model import JobStatus

__all__ = [
    "JOB_EVENTS",
    "Attempt",
    "Delivery",
    "DeliveryFilter",
    "DeliveryPage",
    "DeliveryState",
    "EventType",
    "IssuedWebhook",
    "Outcome",
    "RotatedSecret",
    "Webhook",
    "WebhookChanges",
    "WebhookState",
]


class EventType(enum.StrEnum):
    """What an endpoint can be told about."""

    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    BATCH_COMPLETED = "batch.completed"
    CREDITS_LOW = "credits.low"


#: The event of a job reaching each final status.
JOB_EVENTS = {
    JobStatus.SUCCEEDED: EventType.JOB_SUCCEEDED,
    JobStatus.FAILED: EventType.JOB_FAILED,
    JobStatus.CANCELLED: EventType.JOB_CANCELLED,
}


class WebhookState(enum.StrEnum):
    """Whether an endpoint is being sent its deliveries."""

    ACTIVE = "active"
    #: No attempts are made: it kept failing, or its tenant paused it.
    PAUSED = "paused"


class DeliveryState(enum.StrEnum):
    """What became of a delivery."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Webhook:
    """An endpoint as listed: everything but its secret."""

    webhook_id: str
    tenant: str
    url: str = field(repr=False)
    events: frozenset[EventType]
    description: str
    #: Set exactly when it subscribes to credits.low.
    credits_low_threshold: int | None
    state: WebhookState
    pause_reason: str
    consecutive_failures: int
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime
    paused_at: datetime | None
    #: Until when the secret the last rotation replaced still signs beside the current one;
    #: None when no old secret does.
    rotation_grace_until: datetime | None = None


@dataclass(frozen=True)
class IssuedWebhook:
    """An endpoint just made, with its signing secret: the only time the secret is shown."""

    webhook: Webhook
    secret: str = field(repr=False)


@dataclass(frozen=True)
class RotatedSecret:
    """An endpoint just given a new signing secret, shown only here; the old one signs beside
    it until `previous_expires_at` (None: it stopped at once)."""

    webhook: Webhook
    secret: str = field(repr=False)
    previous_expires_at: datetime | None


@dataclass(frozen=True)
class WebhookChanges:
    """What an update changes; None keeps the field as it is."""

    url: str | None = field(default=None, repr=False)
    events: frozenset[EventType] | None = None
    description: str | None = None
    credits_low_threshold: int | None = None
    #: True pauses, False resumes.
    paused: bool | None = None


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one endpoint, as listed."""

    delivery_id: str
    webhook_id: str
    tenant: str
    event_id: str
    event_type: EventType
    state: DeliveryState
    attempts: int
    #: The HTTP status of the last attempt; None when it got no answer.
    last_status: int | None
    last_error: str
    account_id: str
    batch_id: str | None
    job_id: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries a listing returns; None matches every one."""

    webhook_id: str | None = None
    state: DeliveryState | None = None


@dataclass(frozen=True)
class DeliveryPage:
    """One page of deliveries, newest first; `next_page_token` is empty on the last page."""

    deliveries: tuple[Delivery, ...]
    next_page_token: str = ""


@dataclass(frozen=True)
class Attempt:
    """A delivery taken to be attempted now: what is sent, and where."""

    delivery_id: str
    webhook_id: str
    tenant: str
    event_type: EventType
    payload: bytes = field(repr=False)
    #: Attempts made before this one; recording its outcome requires it unchanged.
    attempts: int
    #: When the event happened, microseconds since the epoch: the retry period runs from it.
    created_us: int
    url: str = field(repr=False)
    secret: str = field(repr=False)
    #: The secret a rotation replaced, while it still signs (its grace had not ended when the
    #: attempt was taken); None otherwise.
    previous_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Outcome:
    """What one attempt met."""

    attempt: Attempt
    #: Microseconds since the epoch when the attempt ended.
    at_us: int
    delivered: bool
    #: The HTTP status; None when there was no answer.
    status: int | None = None
    #: Why it failed, said so that it can be shown to the tenant: no URL, no secret.
    error: str = ""
