"""The webhook RPCs of RouterService: a tenant's administrators registering, listing, changing
deleting their own endpoints and rotating their signing secrets, and reading their deliveries.

Every call acts in the caller's tenant (`current_principal()`), never in one a request names:
another tenant's endpoint, or a delivery to it, is NOT_FOUND exactly like one that does not
exist. A URL is checked (`targets.check_target`) before it is saved, and again by the
dispatcher at every connection. A signing secret travels only in the response of CreateWebhook
or RotateWebhookSecret; every change is audited (`tiergen.audit`: `webhook.created`,
`webhook.updated`, `webhook.secret_rotated`, `webhook.deleted`) by endpoint id and host, never
a URL's path or query, never a secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import structlog
from google.protobuf import timestamp_pb2
from tiergen.router.v1 import router_pb2

from services.router.access.principal import current_principal
from services.router.webhooks.model import (
    Delivery,
    DeliveryFilter,
    DeliveryState,
    Webhook,
    WebhookChanges,
    WebhookState,
)
from services.router.webhooks.store import WebhookStore, parse_events
from services.router.webhooks.targets import Resolver, check_target, system_resolver
from services.runtime.errors import InvalidArgument
from services.runtime.identifiers import require_id
from services.runtime.tracing import current_trace_id

__all__ = [
    "DEFAULT_SECRET_GRACE_SECONDS",
    "MAX_SECRET_GRACE_SECONDS",
    "WebhookAdmin",
    "webhook_message",
]

#: How long a rotated-out secret keeps signing when RotateWebhookSecret does not say: 24 hours.
DEFAULT_SECRET_GRACE_SECONDS = 24 * 3600
#: The longest grace a rotation may give the old secret: 7 days.
MAX_SECRET_GRACE_SECONDS = 7 * 24 * 3600

_audit = structlog.get_logger("tiergen.audit")

_STATES = {
    WebhookState.ACTIVE: router_pb2.WEBHOOK_STATE_ACTIVE,
    WebhookState.PAUSED: router_pb2.WEBHOOK_STATE_PAUSED,
}
_DELIVERY_STATES = {
    DeliveryState.PENDING: router_pb2.DELIVERY_STATE_PENDING,
    DeliveryState.DELIVERED: router_pb2.DELIVERY_STATE_DELIVERED,
    DeliveryState.FAILED: router_pb2.DELIVERY_STATE_FAILED,
}
_DELIVERY_STATES_BACK = {int(value): state for state, value in _DELIVERY_STATES.items()}


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def webhook_message(webhook: Webhook) -> router_pb2.Webhook:
    """The listing of an endpoint: everything but its secret."""
    return router_pb2.Webhook(
        webhook_id=webhook.webhook_id,
        url=webhook.url,
        events=sorted(event.value for event in webhook.events),
        description=webhook.description,
        credits_low_threshold=webhook.credits_low_threshold or 0,
        state=_STATES[webhook.state],
        pause_reason=webhook.pause_reason,
        consecutive_failures=webhook.consecutive_failures,
        create_time=_timestamp(webhook.created_at),
        update_time=_timestamp(webhook.updated_at),
        pause_time=_timestamp(webhook.paused_at),
        secret_rotation_expire_time=_timestamp(webhook.rotation_grace_until),
    )


def _delivery_message(delivery: Delivery) -> router_pb2.WebhookDelivery:
    return router_pb2.WebhookDelivery(
        delivery_id=delivery.delivery_id,
        webhook_id=delivery.webhook_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type.value,
        state=_DELIVERY_STATES[delivery.state],
        attempts=delivery.attempts,
        last_status_code=delivery.last_status or 0,
        last_error=delivery.last_error,
        account_id=delivery.account_id,
        batch_id=delivery.batch_id or "",
        job_id=delivery.job_id or "",
        create_time=_timestamp(delivery.created_at),
        last_attempt_time=_timestamp(delivery.last_attempt_at),
        next_attempt_time=_timestamp(delivery.next_attempt_at),
        finish_time=_timestamp(delivery.finished_at),
    )


def _audit_change(action: str, webhook: Webhook, **facts: Any) -> None:
    caller = current_principal()
    _audit.info(
        "audit",
        action=action,
        tenant=caller.tenant,
        webhook_id=webhook.webhook_id,
        # The host only: a URL's path or query may hold the receiver's own token.
        host=urlsplit(webhook.url).hostname or "",
        by=caller.credential,
        trace_id=current_trace_id(),
        **facts,
    )


class WebhookAdmin:
    """The bodies of CreateWebhook, ListWebhooks, UpdateWebhook, DeleteWebhook,
    RotateWebhookSecret and ListWebhookDeliveries over `store`; URLs resolving to private
    addresses are refused unless `allow_private_targets`."""

    def __init__(
        self,
        store: WebhookStore,
        *,
        allow_private_targets: bool = False,
        resolve: Resolver = system_resolver,
    ) -> None:
        self._store = store
        self._allow_private = allow_private_targets
        self._resolve = resolve

    async def _checked_url(self, url: str) -> str:
        await check_target(url, allow_private=self._allow_private, resolve=self._resolve)
        return url

    async def CreateWebhook(
        self, request: router_pb2.CreateWebhookRequest
    ) -> router_pb2.CreateWebhookResponse:
        caller = current_principal()
        events = parse_events(request.events)
        if request.credits_low_threshold < 0:
            raise InvalidArgument(
                "credits_low_threshold must not be negative", field="credits_low_threshold"
            )
        url = await self._checked_url(request.url)
        issued = await self._store.create(
            caller.tenant,
            url,
            events,
            description=request.description,
            credits_low_threshold=request.credits_low_threshold or None,
        )
        _audit_change(
            "webhook.created",
            issued.webhook,
            events=sorted(event.value for event in events),
        )
        return router_pb2.CreateWebhookResponse(
            webhook=webhook_message(issued.webhook), secret=issued.secret
        )

    async def ListWebhooks(
        self, request: router_pb2.ListWebhooksRequest
    ) -> router_pb2.ListWebhooksResponse:
        webhooks = await self._store.list(current_principal().tenant)
        return router_pb2.ListWebhooksResponse(webhooks=[webhook_message(w) for w in webhooks])

    async def UpdateWebhook(
        self, request: router_pb2.UpdateWebhookRequest
    ) -> router_pb2.UpdateWebhookResponse:
        caller = current_principal()
        if not request.webhook_id:
            raise InvalidArgument("webhook_id is required", field="webhook_id")
        # Another tenant's endpoint is NOT_FOUND before its new URL is even looked at.
        await self._store.get(caller.tenant, request.webhook_id)
        threshold = None
        if request.HasField("credits_low_threshold"):
            threshold = request.credits_low_threshold
            if threshold < 1:
                raise InvalidArgument(
                    "credits_low_threshold must be at least 1", field="credits_low_threshold"
                )
        changes = WebhookChanges(
            url=await self._checked_url(request.url) if request.HasField("url") else None,
            events=parse_events(request.events) if request.events else None,
            description=request.description if request.HasField("description") else None,
            credits_low_threshold=threshold,
            paused=request.paused if request.HasField("paused") else None,
        )
        webhook = await self._store.update(caller.tenant, request.webhook_id, changes)
        _audit_change(
            "webhook.updated",
            webhook,
            changed=sorted(
                name
                for name in ("url", "events", "description", "credits_low_threshold", "paused")
                if getattr(changes, name) is not None
            ),
        )
        return router_pb2.UpdateWebhookResponse(webhook=webhook_message(webhook))

    async def DeleteWebhook(
        self, request: router_pb2.DeleteWebhookRequest
    ) -> router_pb2.DeleteWebhookResponse:
        if not request.webhook_id:
            raise InvalidArgument("webhook_id is required", field="webhook_id")
        webhook = await self._store.delete(current_principal().tenant, request.webhook_id)
        _audit_change("webhook.deleted", webhook)
        return router_pb2.DeleteWebhookResponse(webhook=webhook_message(webhook))

    async def RotateWebhookSecret(
        self, request: router_pb2.RotateWebhookSecretRequest
    ) -> router_pb2.RotateWebhookSecretResponse:
        caller = current_principal()
        require_id(request.webhook_id, "webhook_id")
        grace = DEFAULT_SECRET_GRACE_SECONDS
        if request.HasField("grace_seconds"):
            grace = request.grace_seconds
            if not 0 <= grace <= MAX_SECRET_GRACE_SECONDS:
                raise InvalidArgument(
                    f"grace_seconds must be 0 to {MAX_SECRET_GRACE_SECONDS} (7 days), not {grace}",
                    field="grace_seconds",
                    reason="OUT_OF_RANGE",
                )
        rotated = await self._store.rotate_secret(
            caller.tenant, request.webhook_id, grace_seconds=grace
        )
        _audit_change("webhook.secret_rotated", rotated.webhook, grace_seconds=grace)
        return router_pb2.RotateWebhookSecretResponse(
            webhook=webhook_message(rotated.webhook),
            secret=rotated.secret,
            previous_secret_expire_time=_timestamp(rotated.previous_expires_at),
        )

    async def ListWebhookDeliveries(
        self, request: router_pb2.ListWebhookDeliveriesRequest
    ) -> router_pb2.ListWebhookDeliveriesResponse:
        state = None
        if request.state:
            state = _DELIVERY_STATES_BACK.get(request.state)
            if state is None:
                raise InvalidArgument(f"state has an unknown value {request.state}", field="state")
        page = await self._store.deliveries(
            current_principal().tenant,
            DeliveryFilter(webhook_id=request.webhook_id or None, state=state),
            request.page_size,
            request.page_token,
        )
        return router_pb2.ListWebhookDeliveriesResponse(
            deliveries=[_delivery_message(d) for d in page.deliveries],
            next_page_token=page.next_page_token,
        )
