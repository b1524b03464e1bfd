"""The router's webhook dispatcher: one task that fans flagged events out into deliveries, sends
them over httpx, records what each attempt met, and keeps the outbox tidy.

A round, whenever the job store says it flagged an event (`wake`), an attempt ends, a retry
falls due, or `poll_seconds` pass: record the outcomes gathered since the last round, fan out
(`WebhookStore.fan_out`, whose new deliveries come back ready to send), and, when a retry is
due or a poll comes round, take the due deliveries there is room for (`take_due`). A round
starts `coalesce_seconds` after what woke it, so that a busy router's events and outcomes share
rounds (a few database statements each) instead of costing a round apiece. Every attempt is
its own task, so a slow receiver holds up only its own deliveries: at most `max_in_flight`
attempts run at once, at most `per_endpoint` of them to one endpoint. Rounds never wait for
attempts.

The render path never waits for webhooks either: a job's final state is one commit with its
flag, and the dispatcher runs beside the batches, not in them. Delivery costs the router's CPU
(an HTTPS POST is about 0.25 ms of it with httpx); docs/performance.md measures what that does
to throughput.

An attempt signs its body (`signing`) with the endpoint's secrets as the store read them when
it took the attempt (nothing is cached: a rotation counts from the next attempt on, retries of
earlier events included), POSTs it with a total timeout, and counts as delivered
on a 2xx answer; anything else, a redirect included (never followed), is a failure, recorded
with a reason the tenant may read: the status, or what went wrong, never the URL.

Metrics: `tiergen_router_webhook_deliveries_total{outcome}` (delivered, retried, failed),
`tiergen_router_webhook_outbox_age_seconds` (how old the oldest pending delivery's event is)
and `tiergen_router_webhooks_paused_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx
import structlog
from prometheus_client import Counter, Gauge

from services.router.webhooks.model import Attempt, Outcome
from services.router.webhooks.schedule import RetryPolicy
from services.router.webhooks.signing import Signer, signature_headers
from services.router.webhooks.store import Recorded, WebhookStore
from services.runtime.errors import TiergenError

__all__ = ["DeliveryMetrics", "DispatchLimits", "PrometheusMetrics", "WebhookDispatcher"]

_log = structlog.get_logger("tiergen.router.webhooks")

DELIVERIES = Counter(
    "tiergen_router_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retried (failed, to be tried again) and"
    " failed (the last attempt of its retry period failed).",
    ["outcome"],
)
OUTBOX_AGE = Gauge(
    "tiergen_router_webhook_outbox_age_seconds",
    "Age of the event of the oldest webhook delivery still pending; 0 when none is.",
)
PAUSED = Counter(
    "tiergen_router_webhooks_paused_total", "Webhook endpoints paused because they kept failing."
)

#: Bytes of an answer read before the connection is given up (the body is not used).
_MAX_ANSWER_BYTES = 16 * 1024
_USER_AGENT = "tiergen-webhooks/1"


class DeliveryMetrics(Protocol):
    """Where the dispatcher counts what it did: Prometheus here, or the router process's
    Prometheus when the dispatcher runs in a process of its own (`worker`)."""

    def recorded(self, recorded: Recorded) -> None:
        """A round of outcomes was written."""
        ...

    def expired(self, count: int) -> None:
        """Deliveries of paused endpoints failed at the end of their retry period."""
        ...

    def outbox_age(self, seconds: float) -> None:
        """The oldest pending delivery's event happened this long ago."""
        ...


class PrometheusMetrics:
    """`DeliveryMetrics` on this process's Prometheus metrics."""

    def recorded(self, recorded: Recorded) -> None:
        for outcome in ("delivered", "retried", "failed"):
            count = getattr(recorded, outcome)
            if count:
                DELIVERIES.labels(outcome).inc(count)
        for tenant, webhook_id, reason in recorded.paused:
            PAUSED.inc()
            _log.warning("webhook paused", tenant=tenant, webhook_id=webhook_id, reason=reason)

    def expired(self, count: int) -> None:
        if count:
            DELIVERIES.labels("failed").inc(count)

    def outbox_age(self, seconds: float) -> None:
        OUTBOX_AGE.set(seconds)


@dataclass(frozen=True)
class DispatchLimits:
    """How the dispatcher paces itself."""

    #: Attempts running at once, over every endpoint.
    max_in_flight: int = 64
    #: Attempts running at once to one endpoint: its connections, kept open between attempts.
    per_endpoint: int = 4
    #: How long a round waits after what woke it, gathering what follows.
    coalesce_seconds: float = 0.05
    #: Longest time between two rounds when nothing wakes the dispatcher.
    poll_seconds: float = 1.0
    #: How often the outbox's age is measured and paused endpoints' expired deliveries failed.
    housekeeping_seconds: float = 5.0
    #: How long delivered and failed deliveries are kept for ListWebhookDeliveries.
    retention_seconds: float = 7 * 86_400.0
    #: How long a stopping router lets attempts under way finish.
    stop_grace_seconds: float = 2.0


def _now_us() -> int:
    return time.time_ns() // 1000


class WebhookDispatcher:
    """Delivers the outbox of `store` through `transport`, retrying as `policy` says."""

    def __init__(
        self,
        store: WebhookStore,
        transport: httpx.AsyncBaseTransport,
        *,
        policy: RetryPolicy,
        limits: DispatchLimits | None = None,
        metrics: DeliveryMetrics | None = None,
        clock_us: Callable[[], int] = _now_us,
    ) -> None:
        self._store = store
        self._metrics = metrics or PrometheusMetrics()
        self._transport = transport
        self._policy = policy
        self._limits = limits or DispatchLimits()
        self._clock_us = clock_us
        self._wake = asyncio.Event()
        self._events = True  # look for flagged events in the first round
        self._outcomes: list[Outcome] = []
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(self._limits.max_in_flight)
        self._per_endpoint = max(1, min(self._limits.per_endpoint, self._limits.max_in_flight))
        #: Whether the next round takes due deliveries: at start, on a retry's time, on a poll.
        self._due = True
        self._due_check_at = 0.0
        #: Each endpoint's slots, and how many attempts use or wait for them.
        self._endpoint_slots: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._retry_timer: asyncio.TimerHandle | None = None
        self._housekeeping_at = 0.0
        self._purged_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """An event was flagged: fan it out now rather than at the next poll."""
        self._events = True
        self._wake.set()

    def start(self) -> None:
        """Runs the rounds in a task of their own until `stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stops taking work, lets attempts under way finish for a moment (the rest are
        cancelled, and due again once their lease runs out), records their outcomes, and closes
        the transport."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        pending = list(self._sending.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._limits.stop_grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(TiergenError, RuntimeError):
            await self._record()
        await self._transport.aclose()

    async def run_round(self) -> None:
        """One round (see the module's docstring); the loop's body, and the tests'."""
        outcomes, self._outcomes = self._outcomes, []
        fan_out, self._events = self._events, False
        room = 0
        if self._due or time.monotonic() >= self._due_check_at:
            self._due = False
            self._due_check_at = time.monotonic() + self._limits.poll_seconds
            room = self._limits.max_in_flight - len(self._sending)
        if outcomes or fan_out or room > 0:
            try:
                recorded, attempts = await self._store.round(
                    self._policy, outcomes, fan_out=fan_out, take=room
                )
            except BaseException:
                # Kept for the next round: an outcome is never dropped while it can be written,
                # and the flags stay set.
                self._outcomes[:0] = outcomes
                self._events = self._events or fan_out
                raise
            self._count(recorded)
            for attempt in attempts:
                if attempt.delivery_id not in self._sending:
                    self._send(attempt)
        if time.monotonic() >= self._housekeeping_at:
            self._housekeeping_at = time.monotonic() + self._limits.housekeeping_seconds
            await self._housekeeping()

    async def idle(self) -> None:
        """Waits until no attempt is under way and no outcome is left unrecorded (tests)."""
        while self._sending or self._outcomes:
            if self._sending:
                await asyncio.gather(*self._sending.values(), return_exceptions=True)
            await self._record()

    async def _run(self) -> None:
        while True:
            try:
                await self.run_round()
            except TiergenError as error:
                # The database is away: the flags and deliveries wait for it.
                _log.error("webhook round failed", error=str(error)[:300])
                self._events = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._limits.poll_seconds):
                    await self._wake.wait()
            if self._wake.is_set() and self._limits.coalesce_seconds > 0:
                await asyncio.sleep(self._limits.coalesce_seconds)
            self._wake.clear()

    async def _record(self) -> None:
        if not self._outcomes:
            return
        outcomes, self._outcomes = self._outcomes, []
        try:
            recorded = await self._store.record(outcomes, self._policy)
        except BaseException:
            # Kept for the next round: an attempt's outcome is never dropped while it can be
            # written.
            self._outcomes[:0] = outcomes
            raise
        self._count(recorded)

    def _count(self, recorded: Recorded) -> None:
        self._metrics.recorded(recorded)
        if recorded.soonest_retry_us is not None:
            self._wake_at(recorded.soonest_retry_us)

    def _wake_at(self, due_us: int) -> None:
        delay = max(0.0, (due_us - self._clock_us()) / 1_000_000)
        if delay >= self._limits.poll_seconds:
            return
        loop = asyncio.get_running_loop()
        if self._retry_timer is not None and self._retry_timer.when() <= loop.time() + delay:
            return
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_timer = loop.call_later(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._retry_timer = None
        self._due = True
        self._wake.set()

    async def _housekeeping(self) -> None:
        self._metrics.expired(await self._store.expire_paused(self._policy))
        self._metrics.outbox_age(await self._store.outbox_age_seconds())
        if time.monotonic() >= self._purged_at:
            self._purged_at = time.monotonic() + 3600.0
            await self._store.purge(self._limits.retention_seconds)

    def _send(self, attempt: Attempt) -> None:
        task = asyncio.create_task(self._deliver(attempt), name=f"webhook-{attempt.delivery_id}")
        self._sending[attempt.delivery_id] = task
        task.add_done_callback(lambda _: self._sending.pop(attempt.delivery_id, None))

    async def _deliver(self, attempt: Attempt) -> None:
        webhook_id = attempt.webhook_id
        slots, users = self._endpoint_slots.get(webhook_id, (None, 0))
        if slots is None:
            slots = asyncio.Semaphore(self._per_endpoint)
        self._endpoint_slots[webhook_id] = (slots, users + 1)
        try:
            # The endpoint's own slot first: waiting for it holds none of the shared ones.
            async with slots, self._slots:
                outcome = await self._attempt(attempt)
        finally:
            slots, users = self._endpoint_slots[webhook_id]
            if users == 1:
                del self._endpoint_slots[webhook_id]
            else:
                self._endpoint_slots[webhook_id] = (slots, users - 1)
        self._outcomes.append(outcome)
        self._wake.set()

    async def _attempt(self, attempt: Attempt) -> Outcome:
        timeout = self._policy.timeout_seconds
        previous = attempt.previous_secret
        headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            **signature_headers(
                Signer(attempt.secret),
                attempt.delivery_id,
                int(time.time()),
                attempt.payload,
                previous=None if previous is None else Signer(previous),
            ),
        }
        request = httpx.Request(
            "POST",
            attempt.url,
            content=attempt.payload,
            headers=headers,
            extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)},
        )
        status: int | None = None
        error = ""
        try:
            async with asyncio.timeout(timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    status = response.status_code
                    await _discard(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            error = f"timed out after {timeout:g} s"
        except httpx.TimeoutException:
            error = f"timed out after {timeout:g} s"
        except httpx.HTTPError as failure:
            error = _said(failure, attempt.url)
        except OSError:
            error = "the connection failed"
        except Exception:
            # Whatever went wrong, the attempt has an outcome: a delivery left without one
            # would wait out its lease before anyone tried it again.
            _log.exception("webhook attempt broke", delivery_id=attempt.delivery_id)
            error = "the router could not make the attempt"
        delivered = status is not None and 200 <= status < 300
        if status is not None and not delivered:
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += ": redirects are not followed"
        if not delivered:
            _log.info(
                "webhook attempt failed",
                tenant=attempt.tenant,
                webhook_id=attempt.webhook_id,
                delivery_id=attempt.delivery_id,
                attempt=attempt.attempts + 1,
                error=error,
            )
        return Outcome(attempt, self._clock_us(), delivered, status, error)


async def _discard(response: httpx.Response) -> None:
    """Reads a little of the answer (so that its connection can serve the next attempt), and
    gives up the connection rather than read a large one."""
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen > _MAX_ANSWER_BYTES:
            break


def _said(failure: httpx.HTTPError, url: str) -> str:
    """What went wrong, for the tenant: the transport's own words, with the URL taken out."""
    text = str(failure) or type(failure).__name__
    if url in text:
        text = text.replace(url, "<url>")
    if isinstance(failure, httpx.ConnectError):
        return text if text.startswith(("refused", "the ", "its ")) else f"connect: {text}"
    if isinstance(failure, httpx.RemoteProtocolError):
        return f"the receiver broke HTTP: {text}"
    return f"{type(failure).__name__}: {text}"
