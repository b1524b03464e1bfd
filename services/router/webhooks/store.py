"""Webhook endpoints and the delivery outbox, in the router's database next to the job tables
(`jobs.schema`), on SQLite or PostgreSQL, over the job store's own `Database`.

Tenancy: every call a caller's request reaches names the tenant, and another tenant's endpoint
or delivery is NotFound with the very message of one that does not exist. The dispatcher's
calls (`fan_out`, `take_due`, `record`, `expire_paused`, `purge`) cross tenants: they are the
router's own bookkeeping, and each delivery carries its tenant.

The outbox, from event to receiver:

1. The job store's statements flag an event on the row that makes it (`jobs.event_pending`,
   `batches.completion_pending`, `batches.credits_low_pending`) when the tenant has an
   endpoint: the event commits with the job's final state.
2. `fan_out`, in one transaction, takes flagged rows (`FOR UPDATE SKIP LOCKED`: replicas take
   different ones), writes one delivery per endpoint that wants the event, with its JSON body,
   and clears the flags. A router that dies before this commits leaves the flags for any
   router's next round. The deliveries to active endpoints come back taken (see 3), to be
   sent at once.
3. `take_due` takes deliveries whose next attempt is due, by moving that time past the
   attempt's timeout (`RetryPolicy.lease_us`): a delivery is the taker's until then, and due
   again if its router died mid-attempt. That is why delivery is at least once, not exactly
   once: a receiver de-duplicates by the delivery id (the `webhook-id` header).
4. `record` writes each attempt's outcome, guarded by the attempt count it was taken with (a
   late outcome of a lease that ran out changes nothing), the next attempt or the final state,
   and the endpoint's run of failures, pausing it when `RetryPolicy.pause_reason` says so.

A job.failed of an attached batch waits until the batch's hold is settled: a batch refused
before any work is then forgotten, with its pending deliveries, and its caller retries with the
same key; the event of a job whose ids are about to vanish would only mislead.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import functools
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from services.router.jobs.databases import Database, Fetch, Mode, Script, Step
from services.router.jobs.model import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, JobStatus
from services.router.jobs.queries import Query, one_of
from services.router.jobs.rows import new_id, to_us
from services.router.jobs.schema import batches, jobs, webhook_deliveries, webhooks
from services.router.webhooks import payloads
from services.router.webhooks.model import (
    JOB_EVENTS,
    Attempt,
    Delivery,
    DeliveryFilter,
    DeliveryPage,
    DeliveryState,
    EventType,
    IssuedWebhook,
    Outcome,
    RotatedSecret,
    Webhook,
    WebhookChanges,
    WebhookState,
)
from services.router.webhooks.schedule import RetryPolicy
from services.router.webhooks.signing import new_secret
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.identifiers import require_id, require_tenant

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "Recorded",
    "WebhookStore",
    "parse_events",
]

#: Longest label of an endpoint.
MAX_DESCRIPTION_CHARS = 200
#: Longest reason a delivery's last error is kept with.
_MAX_ERROR_CHARS = 300

_p = sa.bindparam


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _from_us(micros: int | None) -> datetime | None:
    if micros is None:
        return None
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def _literal(value: str) -> sa.ColumnElement[Any]:
    return sa.literal_column(f"'{value}'", sa.Text)


# The checks of what a tenant asks for -----------------------------------------------------


def parse_events(names: Iterable[str], field: str = "events") -> frozenset[EventType]:
    """The event types `names` spell; InvalidArgument naming the first unknown one, or when
    there is none."""
    events: set[EventType] = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        try:
            events.add(EventType(name))
        except ValueError:
            known = ", ".join(event.value for event in EventType)
            raise InvalidArgument(
                f"unknown event {name[:40]!r}; events are {known}",
                field=field,
                reason="UNKNOWN_WEBHOOK_EVENT",
            ) from None
    if not events:
        raise InvalidArgument(
            "at least one event is required", field=field, reason="WEBHOOK_EVENTS_REQUIRED"
        )
    return frozenset(events)


def _check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_CHARS or not description.isprintable():
        raise InvalidArgument(
            f"description must be at most {MAX_DESCRIPTION_CHARS} printable characters on one line",
            field="description",
        )
    return description


def _check_threshold(events: frozenset[EventType], threshold: int | None) -> int | None:
    """The threshold kept for `events`: required (at least 1) with credits.low, none without."""
    if EventType.CREDITS_LOW not in events:
        return None
    if threshold is None or threshold < 1:
        raise InvalidArgument(
            "credits.low needs credits_low_threshold, at least 1: the available credits under"
            " which an account is low",
            field="credits_low_threshold",
            reason="WEBHOOK_THRESHOLD_REQUIRED",
        )
    if threshold > 2**62:
        raise InvalidArgument("credits_low_threshold is too large", field="credits_low_threshold")
    return threshold


def _encode_events(events: Iterable[EventType]) -> str:
    return " ".join(sorted(event.value for event in events))


def _decode_events(text: str) -> frozenset[EventType]:
    # An event this release does not know (written by a newer one mid-rollout) is not sent.
    known = {event.value for event in EventType}
    return frozenset(EventType(name) for name in text.split() if name in known)


def _not_found(webhook_id: str) -> NotFound:
    # One message whether the endpoint does not exist or is another tenant's.
    return NotFound(f"there is no webhook {webhook_id[:40]!r}", reason="WEBHOOK_NOT_FOUND")


def _previous_secret(row: Mapping[str, Any], now_us: int) -> str | None:
    """The endpoint's replaced secret while it still signs at `now_us`; None otherwise."""
    expire_us = row["previous_secret_expire_us"]
    if row["previous_secret"] is None or expire_us is None or expire_us <= now_us:
        return None
    return str(row["previous_secret"])


def _webhook(row: Mapping[str, Any], now_us: int) -> Webhook:
    return Webhook(
        webhook_id=row["webhook_id"],
        tenant=row["tenant"],
        url=row["url"],
        events=_decode_events(row["events"]),
        description=row["description"],
        credits_low_threshold=row["credits_low_threshold"],
        state=WebhookState(row["state"]),
        pause_reason=row["pause_reason"] or "",
        consecutive_failures=row["consecutive_failures"],
        failing_since=_from_us(row["failing_since_us"]),
        created_at=_from_us(row["create_us"]) or datetime.min,
        updated_at=_from_us(row["update_us"]) or datetime.min,
        paused_at=_from_us(row["pause_us"]),
        rotation_grace_until=(
            _from_us(row["previous_secret_expire_us"])
            if _previous_secret(row, now_us) is not None
            else None
        ),
    )


def _delivery(row: Mapping[str, Any]) -> Delivery:
    state = DeliveryState(row["state"])
    return Delivery(
        delivery_id=row["delivery_id"],
        webhook_id=row["webhook_id"],
        tenant=row["tenant"],
        event_id=row["event_id"],
        event_type=EventType(row["event_type"]),
        state=state,
        attempts=row["attempts"],
        last_status=row["last_status"],
        last_error=row["last_error"] or "",
        account_id=row["account_id"],
        batch_id=row["batch_id"],
        job_id=row["job_id"],
        created_at=_from_us(row["create_us"]) or datetime.min,
        last_attempt_at=_from_us(row["last_attempt_us"]),
        next_attempt_at=(
            _from_us(row["next_attempt_us"]) if state is DeliveryState.PENDING else None
        ),
        finished_at=_from_us(row["finish_us"]),
    )


# Statements ---------------------------------------------------------------------------------

_NEWEST_FIRST = (webhooks.c.create_us.desc(), webhooks.c.webhook_id.desc())
_OWN_WEBHOOK = (webhooks.c.webhook_id == _p("webhook_id"), webhooks.c.tenant == _p("tenant"))

INSERT_WEBHOOK = Query.of(
    "insert webhook",
    sa.insert(webhooks)
    .values(
        {
            column: _p(column)
            for column in (
                "webhook_id",
                "tenant",
                "url",
                "events",
                "description",
                "credits_low_threshold",
                "secret",
                "state",
                "create_us",
                "update_us",
            )
        }
    )
    .returning(*webhooks.c),
)
WEBHOOKS_OF_TENANT = Query.of(
    "webhooks of tenant",
    sa.select(webhooks).where(webhooks.c.tenant == _p("tenant")).order_by(*_NEWEST_FIRST),
)
WEBHOOK_BY_ID = Query.of("webhook by id", sa.select(webhooks).where(*_OWN_WEBHOOK))
LOCK_WEBHOOK = Query.of("lock webhook", sa.select(webhooks).where(*_OWN_WEBHOOK).with_for_update())
UPDATE_WEBHOOK = Query.of(
    "update webhook",
    sa.update(webhooks)
    .values(
        {
            column: _p(f"new_{column}")
            for column in (
                "url",
                "events",
                "description",
                "credits_low_threshold",
                "state",
                "pause_reason",
                "pause_us",
                "consecutive_failures",
                "failing_since_us",
                "update_us",
            )
        }
    )
    .where(*_OWN_WEBHOOK)
    .returning(*webhooks.c),
)
#: A new secret in place of the current one, which is kept to sign beside it until
#: `previous_expire_us` when `keep_previous`, dropped otherwise (with any older one). One
#: statement: the right-hand `secret` is the row's value before the update, on both dialects.
ROTATE_SECRET = Query.of(
    "rotate webhook secret",
    sa.update(webhooks)
    .values(
        previous_secret=sa.case(
            (_p("keep_previous", type_=sa.Boolean), webhooks.c.secret), else_=sa.null()
        ),
        previous_secret_expire_us=_p("previous_expire_us", type_=sa.BigInteger),
        secret=_p("secret"),
        update_us=_p("now"),
    )
    .where(*_OWN_WEBHOOK)
    .returning(*webhooks.c),
)
DELETE_DELIVERIES_OF_WEBHOOK = Query.of(
    "delete deliveries of webhook",
    sa.delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == _p("webhook_id")),
)
DELETE_WEBHOOK = Query.of("delete webhook", sa.delete(webhooks).where(*_OWN_WEBHOOK))
WEBHOOKS_OF_TENANTS = Query.of(
    "webhooks of tenants", sa.select(webhooks).where(one_of(webhooks.c.tenant, "tenants"))
)
WEBHOOKS_BY_IDS = Query.of(
    "webhooks by ids", sa.select(webhooks).where(one_of(webhooks.c.webhook_id, "webhook_ids"))
)

#: Flagged jobs, oldest first, with what their events need of their batches; a job.failed of an
#: attached batch whose hold is still open waits (see the module's docstring).
PENDING_JOB_EVENTS = Query.of(
    "pending job events",
    sa.select(
        jobs,
        batches.c.detached,
        batches.c.webhook_id.label("batch_webhook_id"),
    )
    .join_from(jobs, batches, jobs.c.batch_id == batches.c.batch_id)
    .where(
        sa.text("jobs.event_pending"),
        ~sa.and_(
            jobs.c.status == _literal(JobStatus.FAILED),
            batches.c.detached == sa.false(),
            batches.c.hold_state == _literal("open"),
        ),
    )
    .order_by(jobs.c.seq)
    .limit(_p("limit"))
    .with_for_update(of=jobs, skip_locked=True),
)
PENDING_BATCH_EVENTS = Query.of(
    "pending batch events",
    sa.select(batches)
    .where(sa.text("(batches.completion_pending OR batches.credits_low_pending)"))
    .order_by(batches.c.create_us)
    .limit(_p("limit"))
    .with_for_update(skip_locked=True),
)
JOBS_OF_BATCHES = Query.of(
    "jobs of batches for events",
    sa.select(jobs.c.job_id, jobs.c.batch_id, jobs.c.status, jobs.c.finish_us)
    .where(one_of(jobs.c.batch_id, "batch_ids"))
    .order_by(jobs.c.batch_id, jobs.c.variation, jobs.c.seq),
)
CLEAR_JOB_FLAGS = Query.of(
    "clear job flags",
    sa.update(jobs).values(event_pending=sa.false()).where(one_of(jobs.c.job_id, "job_ids")),
)
CLEAR_BATCH_FLAGS = Query.of(
    "clear batch flags",
    sa.update(batches)
    .values(completion_pending=sa.false(), credits_low_pending=sa.false())
    .where(one_of(batches.c.batch_id, "batch_ids")),
)
_DELIVERY_COLUMNS = (
    "delivery_id",
    "tenant",
    "webhook_id",
    "event_id",
    "event_type",
    "account_id",
    "batch_id",
    "job_id",
    "payload",
    "state",
    "create_us",
    "next_attempt_us",
)
INSERT_DELIVERY = Query.of(
    "insert delivery",
    sa.insert(webhook_deliveries)
    .values({column: _p(column) for column in _DELIVERY_COLUMNS})
    .returning(webhook_deliveries.c.delivery_id),
)


def _take_due() -> sa.ClauseElement:
    """Due deliveries to active endpoints, soonest first, moved past the attempt's lease."""
    chosen = (
        sa.select(webhook_deliveries.c.delivery_id)
        .join_from(
            webhook_deliveries, webhooks, webhook_deliveries.c.webhook_id == webhooks.c.webhook_id
        )
        .where(
            sa.text("webhook_deliveries.state = 'pending'"),
            webhook_deliveries.c.next_attempt_us <= _p("now"),
            webhooks.c.state == _literal(WebhookState.ACTIVE),
        )
        .order_by(webhook_deliveries.c.next_attempt_us)
        .limit(_p("limit"))
        .with_for_update(of=webhook_deliveries, skip_locked=True)
        .correlate(None)
    )
    return (
        sa.update(webhook_deliveries)
        .values(next_attempt_us=_p("until"))
        .where(webhook_deliveries.c.delivery_id.in_(chosen.scalar_subquery()))
        .returning(*webhook_deliveries.c)
    )


TAKE_DUE = Query.of("take due deliveries", _take_due())
#: One attempt's outcome, if the delivery is still as it was taken.
RECORD_ATTEMPT = Query.of(
    "record attempt",
    sa.update(webhook_deliveries)
    .values(
        state=_p("new_state"),
        attempts=webhook_deliveries.c.attempts + 1,
        last_attempt_us=_p("at"),
        last_status=_p("status"),
        last_error=_p("error"),
        next_attempt_us=_p("next_attempt"),
        finish_us=_p("finish"),
    )
    .where(
        webhook_deliveries.c.delivery_id == _p("delivery_id"),
        webhook_deliveries.c.attempts == _p("attempts_seen"),
        webhook_deliveries.c.state == _literal(DeliveryState.PENDING),
    )
    .returning(webhook_deliveries.c.delivery_id),
)
#: An endpoint's run of failures after a round of outcomes: reset by a success, lengthened by
#: each failure after it.
COUNT_FAILURES = Query.of(
    "count webhook failures",
    sa.update(webhooks)
    .values(
        consecutive_failures=sa.case(
            (_p("reset", type_=sa.Boolean), _p("failures", type_=sa.Integer)),
            else_=webhooks.c.consecutive_failures + _p("failures", type_=sa.Integer),
        ),
        failing_since_us=sa.case(
            (_p("failures", type_=sa.Integer) == 0, sa.null()),
            (
                sa.or_(_p("reset", type_=sa.Boolean), webhooks.c.failing_since_us.is_(None)),
                _p("first_failure_us", type_=sa.BigInteger),
            ),
            else_=webhooks.c.failing_since_us,
        ),
    )
    .where(webhooks.c.webhook_id == _p("webhook_id"))
    .returning(
        webhooks.c.webhook_id,
        webhooks.c.tenant,
        webhooks.c.state,
        webhooks.c.consecutive_failures,
        webhooks.c.failing_since_us,
    ),
)
PAUSE_WEBHOOK = Query.of(
    "pause webhook",
    sa.update(webhooks)
    .values(state=_literal(WebhookState.PAUSED), pause_reason=_p("reason"), pause_us=_p("now"))
    .where(
        webhooks.c.webhook_id == _p("webhook_id"),
        webhooks.c.state == _literal(WebhookState.ACTIVE),
    )
    .returning(webhooks.c.webhook_id),
)
#: Pending deliveries of paused endpoints whose retry period has ended: failed unsent.
EXPIRE_PAUSED = Query.of(
    "expire deliveries of paused webhooks",
    sa.update(webhook_deliveries)
    .values(
        state=_literal(DeliveryState.FAILED),
        finish_us=_p("now"),
        last_error=_p("error"),
    )
    .where(
        sa.text("webhook_deliveries.state = 'pending'"),
        webhook_deliveries.c.create_us < _p("expired_before"),
        webhook_deliveries.c.webhook_id.in_(
            sa.select(webhooks.c.webhook_id)
            .where(webhooks.c.state == _literal(WebhookState.PAUSED))
            .scalar_subquery()
        ),
    )
    .returning(webhook_deliveries.c.delivery_id),
)
PURGE = Query.of(
    "purge finished deliveries",
    sa.delete(webhook_deliveries).where(
        webhook_deliveries.c.state != _literal(DeliveryState.PENDING),
        webhook_deliveries.c.finish_us < _p("before"),
    ),
)
#: Whether anything waits for a dispatcher: a flagged job or batch, or a pending delivery.
HAS_WORK = Query.of(
    "webhook work waiting",
    sa.select(
        sa.or_(
            sa.exists(sa.select(jobs.c.seq).where(sa.text("jobs.event_pending"))),
            sa.exists(
                sa.select(batches.c.batch_id).where(
                    sa.text("(batches.completion_pending OR batches.credits_low_pending)")
                )
            ),
            sa.exists(
                sa.select(webhook_deliveries.c.delivery_id).where(
                    sa.text("webhook_deliveries.state = 'pending'")
                )
            ),
        ).label("waiting")
    ),
)
OLDEST_PENDING = Query.of(
    "oldest pending delivery",
    sa.select(sa.func.min(webhook_deliveries.c.create_us).label("oldest")).where(
        sa.text("webhook_deliveries.state = 'pending'")
    ),
)


@functools.cache
def _listing(by_webhook: bool, by_state: bool, paged: bool) -> Query:
    """The tenant's deliveries, newest first, at most `limit`: of one endpoint, in one state,
    and after a page token's position, as asked."""
    conditions = [webhook_deliveries.c.tenant == _p("tenant")]
    if by_webhook:
        conditions.append(webhook_deliveries.c.webhook_id == _p("webhook_id"))
    if by_state:
        conditions.append(webhook_deliveries.c.state == _p("state"))
    if paged:
        conditions.append(
            sa.tuple_(webhook_deliveries.c.create_us, webhook_deliveries.c.delivery_id)
            < sa.tuple_(_p("before_us", type_=sa.BigInteger), _p("before_id", type_=sa.Text))
        )
    statement = (
        sa.select(webhook_deliveries)
        .where(*conditions)
        .order_by(webhook_deliveries.c.create_us.desc(), webhook_deliveries.c.delivery_id.desc())
        .limit(_p("limit"))
    )
    return Query.of(f"deliveries by {by_webhook, by_state, paged}", statement)


# Page tokens ---------------------------------------------------------------------------------


def _scope(tenant: str, filters: DeliveryFilter) -> str:
    """A digest of what a listing is over, so that its token continues no other."""
    over = [tenant, filters.webhook_id, None if filters.state is None else filters.state.value]
    return hashlib.sha256(json.dumps(over).encode()).hexdigest()[:16]


def _token(create_us: int, delivery_id: str, scope: str) -> str:
    payload = json.dumps([create_us, delivery_id, scope], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _position(token: str, scope: str) -> tuple[int, str]:
    invalid = InvalidArgument(
        "page token is not one this listing returned", field="page_token", reason="BAD_PAGE_TOKEN"
    )
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    if (
        not isinstance(payload, list)
        or len(payload) != 3
        or payload[2] != scope
        or not isinstance(payload[0], int)
        or not isinstance(payload[1], str)
    ):
        raise invalid
    return payload[0], payload[1]


# What the dispatcher gets back -----------------------------------------------------------------


@dataclass
class Recorded:
    """What a round of outcomes changed."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    #: Endpoints paused by this round: (tenant, webhook id, reason).
    paused: list[tuple[str, str, str]] = field(default_factory=list)
    #: The soonest retry this round scheduled, microseconds since the epoch.
    soonest_retry_us: int | None = None


@dataclass
class _Run:
    """An endpoint's outcomes in one round, in the order they ended."""

    reset: bool = False
    failures: int = 0
    first_failure_us: int | None = None
    last_error: str = ""

    def add(self, outcome: Outcome) -> None:
        if outcome.delivered:
            self.reset, self.failures, self.first_failure_us = True, 0, None
            return
        if self.failures == 0:
            self.first_failure_us = outcome.at_us
        self.failures += 1
        self.last_error = outcome.error


@dataclass(frozen=True)
class _Event:
    """An event being fanned out: what it is, about whom, and its body but for its id."""

    event_type: EventType
    tenant: str
    account_id: str
    batch_id: str | None
    job_id: str | None
    at_us: int
    #: Makes the body, given the event's id.
    body: Callable[[str], bytes]
    #: Only this endpoint (the one the batch named), when set.
    only: str | None = None
    #: credits.low: the balance the hold crossed from and to.
    crossed: tuple[int, int] | None = None

    def wanted_by(self, webhook: Mapping[str, Any]) -> bool:
        if self.only is not None and webhook["webhook_id"] != self.only:
            return False
        if webhook["create_us"] > self.at_us:
            # An endpoint made after the event is not told of it.
            return False
        if self.event_type.value not in webhook["events"].split():
            return False
        if self.crossed is not None:
            before, after = self.crossed
            threshold = webhook["credits_low_threshold"]
            return threshold is not None and after < threshold <= before
        return True


class WebhookStore:
    """The tenants' endpoints and the outbox, on `database` (the job store's); `clock` stamps
    creations, attempts and outcomes."""

    def __init__(self, database: Database, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._database = database
        self._clock = clock

    def _now_us(self) -> int:
        return to_us(self._clock())

    # A tenant's endpoints ------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        url: str,
        events: frozenset[EventType],
        *,
        description: str = "",
        credits_low_threshold: int | None = None,
    ) -> IssuedWebhook:
        """A new, active endpoint of `tenant` with a new secret. The URL must have been checked
        (`targets.check_target`); InvalidArgument for no events, a bad description, or
        credits.low without a threshold."""
        require_tenant(tenant)
        if not events:
            raise InvalidArgument(
                "at least one event is required", field="events", reason="WEBHOOK_EVENTS_REQUIRED"
            )
        _check_description(description)
        threshold = _check_threshold(events, credits_low_threshold)
        secret = new_secret()

        def create() -> Script[IssuedWebhook]:
            now_us = self._now_us()
            row = yield Step.one(
                INSERT_WEBHOOK,
                webhook_id=new_id("wh_", now_us),
                tenant=tenant,
                url=url,
                events=_encode_events(events),
                description=description,
                credits_low_threshold=threshold,
                secret=secret,
                state=WebhookState.ACTIVE.value,
                create_us=now_us,
                update_us=now_us,
            )
            return IssuedWebhook(_webhook(row, now_us), secret)

        return await self._database.run(Mode.WRITE, create, durable=True)

    async def list(self, tenant: str) -> builtins.list[Webhook]:
        """`tenant`'s endpoints, newest first."""
        require_tenant(tenant)
        now_us = self._now_us()

        def read() -> Script[builtins.list[Webhook]]:
            found = yield Step.all(WEBHOOKS_OF_TENANT, tenant=tenant)
            return [_webhook(row, now_us) for row in found]

        return await self._database.run(Mode.READ, read)

    async def get(self, tenant: str, webhook_id: str) -> Webhook:
        """`tenant`'s endpoint; NotFound (WEBHOOK_NOT_FOUND) for one of another tenant too."""
        require_id(webhook_id, "webhook_id")
        now_us = self._now_us()

        def read() -> Script[Webhook]:
            row = yield Step.one(WEBHOOK_BY_ID, webhook_id=webhook_id, tenant=tenant)
            if row is None:
                raise _not_found(webhook_id)
            return _webhook(row, now_us)

        return await self._database.run(Mode.READ, read)

    async def update(self, tenant: str, webhook_id: str, changes: WebhookChanges) -> Webhook:
        """`tenant`'s endpoint with `changes` made (a checked URL); NotFound as `get`.

        Resuming clears the run of failures and the pause's reason; pausing records that the
        tenant paused it. Events without credits.low drop the threshold; with it, one is
        required (kept from before when not given).
        """
        require_id(webhook_id, "webhook_id")
        if changes.description is not None:
            _check_description(changes.description)

        def update() -> Script[Webhook]:
            now_us = self._now_us()
            row = yield Step.one(LOCK_WEBHOOK, webhook_id=webhook_id, tenant=tenant)
            if row is None:
                raise _not_found(webhook_id)
            events = changes.events or _decode_events(row["events"])
            threshold = (
                changes.credits_low_threshold
                if changes.credits_low_threshold is not None
                else row["credits_low_threshold"]
            )
            values = {
                "url": row["url"] if changes.url is None else changes.url,
                "events": _encode_events(events),
                "description": (
                    row["description"] if changes.description is None else changes.description
                ),
                "credits_low_threshold": _check_threshold(events, threshold),
                "state": row["state"],
                "pause_reason": row["pause_reason"],
                "pause_us": row["pause_us"],
                "consecutive_failures": row["consecutive_failures"],
                "failing_since_us": row["failing_since_us"],
                "update_us": now_us,
            }
            if changes.paused is True and row["state"] != WebhookState.PAUSED:
                values.update(
                    state=WebhookState.PAUSED.value,
                    pause_reason="paused by its tenant",
                    pause_us=now_us,
                )
            elif changes.paused is False:
                values.update(
                    state=WebhookState.ACTIVE.value,
                    pause_reason=None,
                    pause_us=None,
                    consecutive_failures=0,
                    failing_since_us=None,
                )
            updated = yield Step.one(
                UPDATE_WEBHOOK,
                webhook_id=webhook_id,
                tenant=tenant,
                **{f"new_{column}": value for column, value in values.items()},
            )
            return _webhook(updated, now_us)

        return await self._database.run(Mode.ATOMIC, update, durable=True)

    async def rotate_secret(
        self, tenant: str, webhook_id: str, *, grace_seconds: int
    ) -> RotatedSecret:
        """Gives `tenant`'s endpoint a new secret; the current one keeps signing beside it for
        `grace_seconds` (0: it stops at once). A secret an earlier rotation kept stops now. One
        statement; NotFound as `get`."""
        require_id(webhook_id, "webhook_id")
        if grace_seconds < 0:
            raise InvalidArgument("grace_seconds must not be negative", field="grace_seconds")
        secret = new_secret()

        def rotate() -> Script[RotatedSecret]:
            now_us = self._now_us()
            expire_us = now_us + grace_seconds * 1_000_000 if grace_seconds else None
            row = yield Step.one(
                ROTATE_SECRET,
                webhook_id=webhook_id,
                tenant=tenant,
                keep_previous=expire_us is not None,
                previous_expire_us=expire_us,
                secret=secret,
                now=now_us,
            )
            if row is None:
                raise _not_found(webhook_id)
            return RotatedSecret(_webhook(row, now_us), secret, _from_us(expire_us))

        return await self._database.run(Mode.WRITE, rotate, durable=True)

    async def delete(self, tenant: str, webhook_id: str) -> Webhook:
        """Deletes `tenant`'s endpoint and its deliveries; the endpoint as it was. NotFound as
        `get`."""
        require_id(webhook_id, "webhook_id")

        def delete() -> Script[Webhook]:
            now_us = self._now_us()
            row = yield Step.one(LOCK_WEBHOOK, webhook_id=webhook_id, tenant=tenant)
            if row is None:
                raise _not_found(webhook_id)
            yield Step.run(DELETE_DELIVERIES_OF_WEBHOOK, webhook_id=webhook_id)
            yield Step.run(DELETE_WEBHOOK, webhook_id=webhook_id, tenant=tenant)
            return _webhook(row, now_us)

        return await self._database.run(Mode.ATOMIC, delete, durable=True)

    async def deliveries(
        self,
        tenant: str,
        filters: DeliveryFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> DeliveryPage:
        """`tenant`'s deliveries matching `filters`, newest first, a page at a time (sizes as
        `JobStore.list`). A filter naming an endpoint that is not the tenant's is NotFound."""
        require_tenant(tenant)
        filters = filters or DeliveryFilter()
        if filters.webhook_id is not None:
            require_id(filters.webhook_id, "webhook_id")
        if page_size < 0:
            raise InvalidArgument(f"page size {page_size} is negative", field="page_size")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        scope = _scope(tenant, filters)
        position = _position(page_token, scope) if page_token else None
        query = _listing(filters.webhook_id is not None, filters.state is not None, bool(position))
        params: dict[str, Any] = {
            "tenant": tenant,
            "webhook_id": filters.webhook_id,
            "state": None if filters.state is None else filters.state.value,
            "limit": limit + 1,
        }
        if position is not None:
            params.update(before_us=position[0], before_id=position[1])

        def read() -> Script[DeliveryPage]:
            if filters.webhook_id is not None:
                own = yield Step.one(WEBHOOK_BY_ID, webhook_id=filters.webhook_id, tenant=tenant)
                if own is None:
                    raise _not_found(filters.webhook_id)
            found = yield Step(query, params, Fetch.ALL)
            page = tuple(_delivery(row) for row in found[:limit])
            if len(found) <= limit:
                return DeliveryPage(page)
            last = found[limit - 1]
            return DeliveryPage(page, _token(last["create_us"], last["delivery_id"], scope))

        return await self._database.run(Mode.READ, read)

    # The dispatcher's ------------------------------------------------------------------------

    async def fan_out(self, policy: RetryPolicy, *, limit: int = 200) -> builtins.list[Attempt]:
        """Turns up to `limit` flagged jobs and batches into deliveries and clears their flags,
        in one transaction; the new deliveries to active endpoints, taken for an attempt now."""
        return await self._database.run(Mode.ATOMIC, lambda: self._fan_out(policy, limit))

    async def take_due(self, policy: RetryPolicy, *, limit: int) -> builtins.list[Attempt]:
        """Takes up to `limit` deliveries to active endpoints whose next attempt is due, for an
        attempt now (leased for `policy.lease_us`)."""
        if limit <= 0:
            return []
        return await self._database.run(Mode.WRITE, lambda: self._take_due(policy, limit))

    async def record(
        self,
        outcomes: Sequence[Outcome],
        policy: RetryPolicy,
        rand: Callable[[], float] = random.random,
    ) -> Recorded:
        """Writes each attempt's outcome (the next attempt, or the final state) and each
        endpoint's run of failures, pausing an endpoint when `policy` says; one transaction."""
        if not outcomes:
            return Recorded()
        return await self._database.run(Mode.ATOMIC, lambda: self._record(outcomes, policy, rand))

    async def round(
        self,
        policy: RetryPolicy,
        outcomes: Sequence[Outcome],
        *,
        fan_out: bool,
        take: int,
        rand: Callable[[], float] = random.random,
    ) -> tuple[Recorded, builtins.list[Attempt]]:
        """A dispatcher's round in one transaction: `record` the outcomes, then `fan_out` (when
        asked) and `take_due` up to `take` deliveries (when positive); what was recorded, and the
        attempts to make now."""

        def round_() -> Script[tuple[Recorded, builtins.list[Attempt]]]:
            recorded = Recorded()
            if outcomes:
                recorded = yield from self._record(outcomes, policy, rand)
            attempts: builtins.list[Attempt] = []
            if fan_out:
                attempts.extend((yield from self._fan_out(policy, 200)))
            if take > 0:
                attempts.extend((yield from self._take_due(policy, take)))
            return recorded, attempts

        return await self._database.run(Mode.ATOMIC, round_)

    def _fan_out(self, policy: RetryPolicy, limit: int) -> Script[builtins.list[Attempt]]:
        now_us = self._now_us()
        job_rows = yield Step.all(PENDING_JOB_EVENTS, limit=limit)
        batch_rows = yield Step.all(PENDING_BATCH_EVENTS, limit=limit)
        if not job_rows and not batch_rows:
            return []
        events = [_job_event(row) for row in job_rows]
        completed = [row for row in batch_rows if row["completion_pending"]]
        if completed:
            members = yield Step.all(
                JOBS_OF_BATCHES, batch_ids=[row["batch_id"] for row in completed]
            )
            events.extend(_batch_completed(row, members, now_us) for row in completed)
        events.extend(_credits_low(row) for row in batch_rows if row["credits_low_pending"])
        tenants = sorted({event.tenant for event in events})
        endpoint_rows = yield Step.all(WEBHOOKS_OF_TENANTS, tenants=tenants)
        by_tenant: dict[str, builtins.list[Mapping[str, Any]]] = {}
        for endpoint in endpoint_rows:
            by_tenant.setdefault(endpoint["tenant"], []).append(endpoint)
        new_rows, attempts = _deliveries(events, by_tenant, now_us, policy.lease_us)
        if new_rows:
            yield Step(INSERT_DELIVERY, new_rows, Fetch.EACH)
        if job_rows:
            yield Step.run(CLEAR_JOB_FLAGS, job_ids=[row["job_id"] for row in job_rows])
        if batch_rows:
            yield Step.run(CLEAR_BATCH_FLAGS, batch_ids=[row["batch_id"] for row in batch_rows])
        return attempts

    def _take_due(self, policy: RetryPolicy, limit: int) -> Script[builtins.list[Attempt]]:
        now_us = self._now_us()
        taken = yield Step.all(TAKE_DUE, now=now_us, until=now_us + policy.lease_us, limit=limit)
        if not taken:
            return []
        ids = sorted({row["webhook_id"] for row in taken})
        found = yield Step.all(WEBHOOKS_BY_IDS, webhook_ids=ids)
        endpoints = {row["webhook_id"]: row for row in found}
        return [
            _attempt(row, endpoints[row["webhook_id"]], now_us)
            for row in taken
            if row["webhook_id"] in endpoints
        ]

    def _record(
        self, outcomes: Sequence[Outcome], policy: RetryPolicy, rand: Callable[[], float]
    ) -> Script[Recorded]:
        recorded = Recorded()
        params: builtins.list[dict[str, Any]] = []
        kinds: builtins.list[str] = []
        runs: dict[str, _Run] = {}
        for outcome in outcomes:
            attempt = outcome.attempt
            runs.setdefault(attempt.webhook_id, _Run()).add(outcome)
            made = attempt.attempts + 1
            error = None if outcome.delivered else outcome.error[:_MAX_ERROR_CHARS]
            state, next_attempt = DeliveryState.DELIVERED, outcome.at_us
            finish: int | None = outcome.at_us
            kind = "delivered"
            if not outcome.delivered:
                due = policy.next_attempt_us(attempt.created_us, outcome.at_us, made, rand)
                if due is None:
                    state, kind = DeliveryState.FAILED, "failed"
                else:
                    state, next_attempt, finish, kind = DeliveryState.PENDING, due, None, "retried"
            kinds.append(kind)
            params.append(
                {
                    "delivery_id": attempt.delivery_id,
                    "attempts_seen": attempt.attempts,
                    "new_state": state.value,
                    "at": outcome.at_us,
                    "status": outcome.status,
                    "error": error,
                    "next_attempt": next_attempt,
                    "finish": finish,
                }
            )
        now_us = self._now_us()
        written = yield Step(RECORD_ATTEMPT, params, Fetch.EACH)
        for row, kind, values in zip(written, kinds, params, strict=True):
            if row is None:
                # Its lease ran out and another attempt was taken meanwhile: that one counts.
                continue
            setattr(recorded, kind, getattr(recorded, kind) + 1)
            if kind == "retried" and (
                recorded.soonest_retry_us is None
                or values["next_attempt"] < recorded.soonest_retry_us
            ):
                recorded.soonest_retry_us = values["next_attempt"]
        counted = yield Step(
            COUNT_FAILURES,
            [
                {
                    "webhook_id": webhook_id,
                    "reset": run.reset,
                    "failures": run.failures,
                    "first_failure_us": run.first_failure_us,
                }
                for webhook_id, run in sorted(runs.items())
            ],
            Fetch.EACH,
        )
        for row in counted:
            if row is None or row["state"] != WebhookState.ACTIVE:
                continue
            run = runs[row["webhook_id"]]
            reason = policy.pause_reason(
                row["consecutive_failures"], row["failing_since_us"], now_us, run.last_error
            )
            if reason is None:
                continue
            paused = yield Step.one(
                PAUSE_WEBHOOK, webhook_id=row["webhook_id"], reason=reason, now=now_us
            )
            if paused is not None:
                recorded.paused.append((row["tenant"], row["webhook_id"], reason))
        return recorded

    async def expire_paused(self, policy: RetryPolicy) -> int:
        """Marks failed, unsent, the pending deliveries of paused endpoints whose retry period
        has ended; how many."""
        now_us = self._now_us()

        def expire() -> Script[int]:
            expired = yield Step.all(
                EXPIRE_PAUSED,
                now=now_us,
                expired_before=now_us - round(policy.period_seconds * 1_000_000),
                error="its endpoint was paused until its retry period ended",
            )
            return len(expired)

        return await self._database.run(Mode.WRITE, expire)

    async def purge(self, older_than_seconds: float) -> None:
        """Deletes the deliveries delivered or failed more than `older_than_seconds` ago."""
        before = self._now_us() - round(older_than_seconds * 1_000_000)
        await self._database.run(Mode.WRITE, lambda: _run(Step.run(PURGE, before=before)))

    async def has_work(self) -> bool:
        """Whether a flagged event or a pending delivery waits for a dispatcher."""

        def read() -> Script[bool]:
            row = yield Step.one(HAS_WORK)
            return bool(row is not None and row["waiting"])

        return await self._database.run(Mode.READ, read)

    async def outbox_age_seconds(self) -> float:
        """How long ago the oldest delivery still pending's event happened; 0 when none is."""
        now_us = self._now_us()

        def read() -> Script[float]:
            row = yield Step.one(OLDEST_PENDING)
            oldest = None if row is None else row["oldest"]
            return 0.0 if oldest is None else max(0.0, (now_us - oldest) / 1_000_000)

        return await self._database.run(Mode.READ, read)


def _run(step: Step) -> Script[None]:
    yield step


def _job_event(row: Mapping[str, Any]) -> _Event:
    event_type = JOB_EVENTS[JobStatus(row["status"])]
    detached = bool(row["detached"])
    return _Event(
        event_type=event_type,
        tenant=row["tenant"],
        account_id=row["account_id"],
        batch_id=row["batch_id"],
        job_id=row["job_id"],
        at_us=row["finish_us"],
        body=lambda event_id: payloads.job_event(event_type, event_id, row, detached),
        only=row["batch_webhook_id"],
    )


def _batch_completed(
    batch: Mapping[str, Any], members: Sequence[Mapping[str, Any]], now_us: int
) -> _Event:
    own = [job for job in members if job["batch_id"] == batch["batch_id"]]
    # When it completed: as its last job finished, which is just before its hold settled.
    finished = [job["finish_us"] for job in own if job["finish_us"] is not None]
    at_us = max(finished) if finished else now_us
    return _Event(
        event_type=EventType.BATCH_COMPLETED,
        tenant=batch["tenant"],
        account_id=batch["account_id"],
        batch_id=batch["batch_id"],
        job_id=None,
        at_us=at_us,
        body=lambda event_id: payloads.batch_completed(event_id, batch, own, at_us),
        only=batch["webhook_id"],
    )


def _credits_low(batch: Mapping[str, Any]) -> _Event:
    return _Event(
        event_type=EventType.CREDITS_LOW,
        tenant=batch["tenant"],
        account_id=batch["account_id"],
        batch_id=batch["batch_id"],
        job_id=None,
        at_us=batch["create_us"],
        body=lambda event_id: b"",  # one per endpoint: its own threshold (`_deliveries`)
        crossed=(batch["available_before"], batch["available_after"]),
    )


def _deliveries(
    events: Sequence[_Event],
    endpoints: Mapping[str, Sequence[Mapping[str, Any]]],
    now_us: int,
    lease_us: int,
) -> tuple[builtins.list[dict[str, Any]], builtins.list[Attempt]]:
    """The rows of the deliveries `events` make, and the attempts to make at once: those to
    active endpoints, whose rows are written already taken."""
    rows: builtins.list[dict[str, Any]] = []
    attempts: builtins.list[Attempt] = []
    for event in events:
        wanting = [e for e in endpoints.get(event.tenant, ()) if event.wanted_by(e)]
        if not wanting:
            continue
        event_id = new_id("evt_", now_us)
        shared = event.body(event_id) if event.crossed is None else b""
        for endpoint in wanting:
            body = shared
            if event.crossed is not None:
                body = payloads.credits_low(
                    event_id, _credits_batch(event), endpoint["credits_low_threshold"]
                )
            active = endpoint["state"] == WebhookState.ACTIVE
            row = {
                "delivery_id": new_id("msg_", now_us),
                "tenant": event.tenant,
                "webhook_id": endpoint["webhook_id"],
                "event_id": event_id,
                "event_type": event.event_type.value,
                "account_id": event.account_id,
                "batch_id": event.batch_id,
                "job_id": event.job_id,
                "payload": body.decode("utf-8"),
                "state": DeliveryState.PENDING.value,
                "create_us": event.at_us,
                "next_attempt_us": now_us + lease_us if active else now_us,
            }
            rows.append(row)
            if active:
                attempts.append(_attempt({**row, "attempts": 0}, endpoint, now_us))
    return rows, attempts


def _credits_batch(event: _Event) -> dict[str, Any]:
    assert event.crossed is not None
    return {
        "account_id": event.account_id,
        "available_after": event.crossed[1],
        "batch_id": event.batch_id,
        "create_us": event.at_us,
    }


def _attempt(delivery: Mapping[str, Any], endpoint: Mapping[str, Any], now_us: int) -> Attempt:
    return Attempt(
        delivery_id=delivery["delivery_id"],
        webhook_id=delivery["webhook_id"],
        tenant=delivery["tenant"],
        event_type=EventType(delivery["event_type"]),
        payload=delivery["payload"].encode("utf-8"),
        attempts=delivery["attempts"],
        created_us=delivery["create_us"],
        url=endpoint["url"],
        secret=endpoint["secret"],
        previous_secret=_previous_secret(endpoint, now_us),
    )
