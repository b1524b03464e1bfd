"""`tiergen webhooks`: add, list, remove, pause and resume a tenant's webhook endpoints, rotate
their signing secrets, and read their deliveries, through a running router.

Every command calls the router with a `webhooks:admin` key of the tenant (`--api-key`,
TIERGEN_API_KEY, or the dev key of `--data-dir`): the router takes the tenant from that key, so
a command only ever sees and changes its caller's tenant's endpoints. A signing secret is
printed once, by `add` for a new endpoint and by `rotate` for a new secret of an existing one
(the old one keeps signing beside it for `--grace-seconds`); listings never show one.

    tiergen webhooks add --url https://hooks.example.com/tiergen \\
        --events job.succeeded,job.failed,batch.completed
    tiergen webhooks list
    tiergen webhooks deliveries --webhook wh_01J... --state failed
    tiergen webhooks resume wh_01J...
    tiergen webhooks rotate wh_01J... --grace-seconds 3600
    tiergen webhooks remove wh_01J...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2
from tiergen.router.v1 import router_pb2

from services.cli.credentials import add_transport_arguments, resolve_api_key, resolve_security
from services.cli.router_client import RouterClient

__all__ = ["WebhookCommandError", "add_webhooks_commands"]

_ROUTER_VARIABLE = "TIERGEN_ROUTER"
_EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "batch.completed", "credits.low")
_STATES = {
    router_pb2.WEBHOOK_STATE_ACTIVE: "active",
    router_pb2.WEBHOOK_STATE_PAUSED: "paused",
}
_DELIVERY_STATES = {
    "pending": router_pb2.DELIVERY_STATE_PENDING,
    "delivered": router_pb2.DELIVERY_STATE_DELIVERED,
    "failed": router_pb2.DELIVERY_STATE_FAILED,
}
_DELIVERY_NAMES = {value: name for name, value in _DELIVERY_STATES.items()}


class WebhookCommandError(RuntimeError):
    """A `tiergen webhooks` failure, told as one line."""


def _iso(stamp: timestamp_pb2.Timestamp, present: bool = True) -> str | None:
    if not present:
        return None
    moment = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _webhook_document(webhook: router_pb2.Webhook) -> dict[str, Any]:
    return {
        "webhook_id": webhook.webhook_id,
        "url": webhook.url,
        "events": list(webhook.events),
        "description": webhook.description,
        "credits_low_threshold": webhook.credits_low_threshold or None,
        "state": _STATES.get(webhook.state, "unknown"),
        "pause_reason": webhook.pause_reason or None,
        "consecutive_failures": webhook.consecutive_failures,
        "created": _iso(webhook.create_time, webhook.HasField("create_time")),
        "paused": _iso(webhook.pause_time, webhook.HasField("pause_time")),
        "secret_rotation_expires": _iso(
            webhook.secret_rotation_expire_time, webhook.HasField("secret_rotation_expire_time")
        ),
    }


def _webhook_line(webhook: router_pb2.Webhook) -> str:
    parts = [
        f"{webhook.webhook_id}  {_STATES.get(webhook.state, 'unknown'):<7} {webhook.url}",
        ",".join(webhook.events),
    ]
    if webhook.credits_low_threshold:
        parts.append(f"credits.low under {webhook.credits_low_threshold}")
    if webhook.description:
        parts.append(repr(webhook.description))
    if webhook.pause_reason:
        parts.append(f"paused: {webhook.pause_reason}")
    return "  ".join(parts)


def _delivery_document(delivery: router_pb2.WebhookDelivery) -> dict[str, Any]:
    return {
        "delivery_id": delivery.delivery_id,
        "webhook_id": delivery.webhook_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "state": _DELIVERY_NAMES.get(delivery.state, "unknown"),
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code or None,
        "last_error": delivery.last_error or None,
        "account_id": delivery.account_id,
        "batch_id": delivery.batch_id or None,
        "job_id": delivery.job_id or None,
        "created": _iso(delivery.create_time, delivery.HasField("create_time")),
        "next_attempt": _iso(delivery.next_attempt_time, delivery.HasField("next_attempt_time")),
    }


def _delivery_line(delivery: router_pb2.WebhookDelivery) -> str:
    document = _delivery_document(delivery)
    parts = [
        f"{delivery.delivery_id}  {document['state']:<9} {delivery.event_type:<15}",
        f"attempts {delivery.attempts}",
        delivery.job_id or delivery.batch_id or delivery.account_id,
    ]
    if delivery.last_error:
        parts.append(f"last: {delivery.last_error}")
    if document["next_attempt"]:
        parts.append(f"next {document['next_attempt']}")
    return "  ".join(parts)


def _events(text: str) -> list[str]:
    events = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(events) - set(_EVENTS))
    if not events or unknown:
        raise WebhookCommandError(
            f"--events {text!r}: name some of {', '.join(_EVENTS)}, separated by commas"
        )
    return events


def _print(options: argparse.Namespace, document: Any, human: str) -> None:
    print(json.dumps(document, indent=2, sort_keys=True) if options.json else human)


async def _command(options: argparse.Namespace) -> None:
    token = resolve_api_key(options.api_key, options.data_dir)
    security = resolve_security(
        ca_file=options.ca_file,
        cert_file=options.cert_file,
        key_file=options.key_file,
        insecure=options.insecure,
        data_dir=options.data_dir,
    )
    client = RouterClient(options.router, token, security, timeout=30)
    try:
        action = options.webhooks_command
        if action == "add":
            reply = await client.create_webhook(
                router_pb2.CreateWebhookRequest(
                    url=options.url,
                    events=_events(options.events),
                    description=options.description,
                    credits_low_threshold=options.credits_low_threshold or 0,
                )
            )
            document = {**_webhook_document(reply.webhook), "secret": reply.secret}
            _print(options, document, f"{_webhook_line(reply.webhook)}\n{reply.secret}")
            print(
                "the signing secret is shown only now: keep it to verify every delivery",
                file=sys.stderr,
            )
        elif action == "list":
            webhooks = await client.list_webhooks()
            human = "\n".join(_webhook_line(w) for w in webhooks) or "no webhooks"
            _print(options, {"webhooks": [_webhook_document(w) for w in webhooks]}, human)
        elif action == "remove":
            removed = await client.delete_webhook(options.webhook_id)
            _print(options, _webhook_document(removed), f"removed {removed.webhook_id}")
        elif action == "rotate":
            rotated = await client.rotate_webhook_secret(
                router_pb2.RotateWebhookSecretRequest(
                    webhook_id=options.webhook_id, grace_seconds=options.grace_seconds
                )
            )
            until = _iso(
                rotated.previous_secret_expire_time,
                rotated.HasField("previous_secret_expire_time"),
            )
            document = {
                **_webhook_document(rotated.webhook),
                "secret": rotated.secret,
                "previous_secret_expires": until,
            }
            old = f"the old secret signs too until {until}" if until else "the old secret stopped"
            _print(options, document, f"{_webhook_line(rotated.webhook)}\n{rotated.secret}\n{old}")
            print(
                "the new signing secret is shown only now: give it to the receiver",
                file=sys.stderr,
            )
        elif action in ("pause", "resume"):
            changed = await client.update_webhook(
                router_pb2.UpdateWebhookRequest(
                    webhook_id=options.webhook_id, paused=action == "pause"
                )
            )
            _print(options, _webhook_document(changed), _webhook_line(changed))
        else:
            page = await client.list_webhook_deliveries(
                router_pb2.ListWebhookDeliveriesRequest(
                    webhook_id=options.webhook or "",
                    state=_DELIVERY_STATES.get(options.state or ""),
                    page_size=options.limit,
                )
            )
            deliveries = list(page.deliveries)
            human = "\n".join(_delivery_line(d) for d in deliveries) or "no deliveries"
            _print(options, {"deliveries": [_delivery_document(d) for d in deliveries]}, human)
    finally:
        await client.close()


def add_webhooks_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `webhooks add|list|remove|pause|resume|rotate|deliveries` under the `tiergen`
    command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--router",
        default=os.environ.get(_ROUTER_VARIABLE, "127.0.0.1:50051"),
        metavar="HOST:PORT",
        help=f"the router (env {_ROUTER_VARIABLE})",
    )
    common.add_argument(
        "--api-key",
        metavar="KEY",
        help="a webhooks:admin key of the tenant (env TIERGEN_API_KEY, which keeps it out of ps)",
    )
    common.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="a `tiergen up` data directory: its dev key and certificates",
    )
    common.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_transport_arguments(common)

    webhooks = commands.add_parser(
        "webhooks",
        help="add, list and remove webhook endpoints; rotate their secrets; read deliveries",
        description="Manage the caller's tenant's webhook endpoints through a running router,"
        " with a webhooks:admin key: the events they are sent, signed as Standard Webhooks"
        " says (docs/api.md#webhooks).",
    )
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="COMMAND")
    add = actions.add_parser(
        "add", parents=[common], help="register an endpoint; its signing secret is shown once"
    )
    add.add_argument("--url", required=True, help="an https:// URL that events are POSTed to")
    add.add_argument(
        "--events",
        required=True,
        help=f"comma-separated, some of {', '.join(_EVENTS)}",
    )
    add.add_argument(
        "--credits-low-threshold",
        type=int,
        metavar="CREDITS",
        help="with credits.low: tell when a hold takes an account under this many credits",
    )
    add.add_argument("--description", default="", help="a label, e.g. render-farm")
    actions.add_parser("list", parents=[common], help="list the endpoints, never their secrets")
    for name, help_text in (
        ("remove", "delete an endpoint and its deliveries still to be made"),
        ("pause", "stop sending to an endpoint; its events wait"),
        ("resume", "send to a paused endpoint again, what waited first"),
    ):
        action = actions.add_parser(name, parents=[common], help=help_text)
        action.add_argument("webhook_id", metavar="WEBHOOK_ID", help="e.g. wh_01J...")
    rotate = actions.add_parser(
        "rotate",
        parents=[common],
        help="give an endpoint a new signing secret, shown once; the old one signs for a grace",
    )
    rotate.add_argument("webhook_id", metavar="WEBHOOK_ID", help="e.g. wh_01J...")
    rotate.add_argument(
        "--grace-seconds",
        type=int,
        default=24 * 3600,
        metavar="SECONDS",
        help="how long the old secret keeps signing beside the new one: 0 stops it at once"
        " (a leaked secret), at most 604800 (7 days); default 86400",
    )
    deliveries = actions.add_parser(
        "deliveries", parents=[common], help="list deliveries, newest first, with their outcomes"
    )
    deliveries.add_argument("--webhook", metavar="WEBHOOK_ID", help="only this endpoint's")
    deliveries.add_argument("--state", choices=sorted(_DELIVERY_STATES), help="only these")
    deliveries.add_argument("--limit", type=int, default=50, help="at most this many (max 500)")
    webhooks.set_defaults(handler=_handle)


def _handle(options: argparse.Namespace) -> None:
    asyncio.run(_command(options))
