"""The webhook dispatcher in a process of its own, beside the router: `DispatcherProcess` in the
router, `python -m services.router.webhooks.worker` for the process.

Why a process: an HTTPS POST costs the event loop about a quarter of a millisecond of CPU with
httpx, and each of a one-image Generate's two events is one; in the router's own process that
is a tenth of what a Generate costs it, taken from the render path (docs/performance.md). In a
process of its own the dispatcher uses another core, and the router's part of a webhook is the
flag its job store writes anyway and one byte down a pipe.

The router starts the process the first time its job store flags an event, or at start (and
every `_LOOK_SECONDS` after, which also restarts a process that exited) when the outbox holds
work: a router whose tenants have no endpoints never starts one. The process reaches the
router's database itself (its own SQLite connection, or a pool of two PostgreSQL connections),
and is told:

- through its standard input, once, its settings as JSON (the DSN among them: no command
  line, no environment, so `ps` shows no password);
- through a pipe, one byte per wake-up; the pipe's end is its signal to stop, whether the router
  stops (it closes the pipe, then waits for the process, which lets attempts under way finish)
  or dies (the kernel closes it);
- back through a second pipe, one JSON line a second with what it counted, which the router
  adds to its own Prometheus metrics, so that `/metrics` shows them where they always are.

Its log lines go to the router's standard error, as `service: router-webhooks`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from services.router.jobs.databases import Database, PostgresDatabase, SqliteDatabase
from services.router.settings import WebhookSettings
from services.router.webhooks.dispatcher import (
    DeliveryMetrics,
    DispatchLimits,
    PrometheusMetrics,
    WebhookDispatcher,
)
from services.router.webhooks.schedule import RetryPolicy
from services.router.webhooks.store import Recorded, WebhookStore
from services.router.webhooks.targets import DeliveryTransport, client_ssl_context

__all__ = ["DispatcherProcess", "WorkerConfig", "main", "open_dispatcher"]

_log = structlog.get_logger("tiergen.router.webhooks")

#: How often a router without a dispatcher process looks whether the outbox holds work (left
#: by a router that died, or flagged by another replica for this one's tenants' endpoints).
_LOOK_SECONDS = 30.0
#: How often the process reports what it counted.
_REPORT_SECONDS = 1.0
_SERVICE = "router-webhooks"


@dataclass(frozen=True)
class WorkerConfig:
    """What the process needs: where the router's database is, and how to send."""

    dsn: str = field(repr=False)
    webhooks: WebhookSettings
    db_timeout_seconds: float = 5.0

    def to_json(self) -> bytes:
        document = asdict(self)
        ca_file = self.webhooks.ca_file
        document["webhooks"]["ca_file"] = None if ca_file is None else str(ca_file)
        return json.dumps(document).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WorkerConfig:
        document = json.loads(data)
        webhooks = document["webhooks"]
        if webhooks["ca_file"] is not None:
            webhooks["ca_file"] = Path(webhooks["ca_file"])
        return cls(
            dsn=document["dsn"],
            webhooks=WebhookSettings(**webhooks),
            db_timeout_seconds=document["db_timeout_seconds"],
        )


def open_dispatcher(
    settings: WebhookSettings, store: WebhookStore, metrics: DeliveryMetrics | None = None
) -> WebhookDispatcher:
    """A dispatcher of `store`'s outbox as `settings` say; ValueError or OSError for a CA file
    that holds no certificate."""
    policy = RetryPolicy(
        timeout_seconds=settings.timeout_seconds,
        base_seconds=settings.retry_base_seconds,
        max_delay_seconds=settings.retry_max_delay_seconds,
        period_seconds=settings.retry_period_seconds,
        pause_after_failures=settings.pause_after_failures,
        pause_after_seconds=settings.pause_after_seconds,
    )
    return WebhookDispatcher(
        store,
        DeliveryTransport(
            client_ssl_context(settings.ca_file),
            allow_private=settings.allow_private_targets,
            max_connections=settings.max_in_flight,
        ),
        policy=policy,
        limits=DispatchLimits(
            max_in_flight=settings.max_in_flight,
            poll_seconds=settings.poll_seconds,
            retention_seconds=settings.retention_seconds,
        ),
        metrics=metrics,
    )


class DispatcherProcess:
    """The router's side of the dispatcher's process: starts it when there is work, wakes it,
    turns its reports into this process's metrics, and stops it."""

    def __init__(self, config: WorkerConfig, store: WebhookStore) -> None:
        self._config = config
        self._store = store
        self._metrics = PrometheusMetrics()
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None
        self._wake_fd: int | None = None
        self._report_fd: int | None = None
        self._report = b""
        self._looking: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def wake(self) -> None:
        """An event was flagged: tell the process, starting it first if need be (again, if it
        exited)."""
        if self._stopped:
            return
        if self._process is not None and self._process.returncode is not None:
            _log.error(
                "the webhook dispatcher process exited; starting another",
                code=self._process.returncode,
            )
            self._forget_process()
        if self._wake_fd is not None:
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                # One byte is enough: a full pipe already holds a wake-up.
                os.write(self._wake_fd, b"w")
            return
        if self._starting is None:
            self._starting = asyncio.create_task(self._start(), name="webhook-process-start")
            self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # The flags stay set: the next event, or the next look, tries again.
            _log.error("could not start the webhook dispatcher process", error=str(error)[:300])

    async def watch(self) -> None:
        """Starts the process now if the outbox holds work, and looks again every
        `_LOOK_SECONDS` while it is not running (not started yet, or exited); cancel it to stop
        looking."""
        while not self._stopped:
            try:
                if not self.running and self._starting is None and await self._store.has_work():
                    self.wake()
            except Exception as error:
                # The next look may find the database.
                _log.warning("could not look for webhook work", error=str(error)[:200])
            await asyncio.sleep(_LOOK_SECONDS)

    async def _start(self) -> None:
        wake_read, wake_write = os.pipe()
        report_read, report_write = os.pipe()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.router.webhooks.worker",
                "--wake-fd",
                str(wake_read),
                "--report-fd",
                str(report_write),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(wake_read, report_write),
            )
        except BaseException:
            for fd in (wake_read, wake_write, report_read, report_write):
                os.close(fd)
            self._starting = None
            raise
        finally:
            if self._process is not None:
                os.close(wake_read)
                os.close(report_write)
        assert self._process.stdin is not None
        self._process.stdin.write(self._config.to_json())
        await self._process.stdin.drain()
        self._process.stdin.close()
        os.set_blocking(wake_write, False)
        os.set_blocking(report_read, False)
        self._wake_fd, self._report_fd = wake_write, report_read
        asyncio.get_running_loop().add_reader(report_read, self._read_report)
        _log.info("webhook dispatcher process started", pid=self._process.pid)
        # The events flagged while it started are found by its first round.
        self.wake()

    def _forget_process(self) -> None:
        if self._report_fd is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._report_fd)
            os.close(self._report_fd)
        if self._wake_fd is not None:
            os.close(self._wake_fd)
        self._process, self._starting = None, None
        self._wake_fd, self._report_fd, self._report = None, None, b""

    def _read_report(self) -> None:
        assert self._report_fd is not None
        try:
            chunk = os.read(self._report_fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            asyncio.get_running_loop().remove_reader(self._report_fd)
            return
        self._report += chunk
        *lines, self._report = self._report.split(b"\n")
        for line in lines:
            if line:
                self._apply(json.loads(line))

    def _apply(self, report: dict[str, Any]) -> None:
        recorded = Recorded(
            delivered=report["delivered"],
            retried=report["retried"],
            failed=report["failed"],
            paused=[(p[0], p[1], p[2]) for p in report["paused"]],
        )
        self._metrics.recorded(recorded)
        self._metrics.expired(report["expired"])
        if report["outbox_age"] is not None:
            self._metrics.outbox_age(report["outbox_age"])

    async def stop(self) -> None:
        """Ends the process: it lets attempts under way finish for a moment, records their
        outcomes and exits; killed if it has not after a while."""
        self._stopped = True
        if self._looking is not None:
            self._looking.cancel()
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        if self._wake_fd is not None:
            os.close(self._wake_fd)
            self._wake_fd = None
        if self._process is not None:
            try:
                async with asyncio.timeout(self._config.webhooks.timeout_seconds + 10):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._report_fd is not None:
            self._read_report()
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._report_fd)
            os.close(self._report_fd)
            self._report_fd = None

    def look(self) -> None:
        """Starts looking for work in the background (see `watch`)."""
        if self._looking is None:
            self._looking = asyncio.create_task(self.watch(), name="webhook-process-look")


class _ReportedMetrics:
    """`DeliveryMetrics` of the process: counted here, reported to the router every second."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = self._empty()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {
            "delivered": 0,
            "retried": 0,
            "failed": 0,
            "expired": 0,
            "paused": [],
            "outbox_age": None,
        }

    def recorded(self, recorded: Recorded) -> None:
        self._pending["delivered"] += recorded.delivered
        self._pending["retried"] += recorded.retried
        self._pending["failed"] += recorded.failed
        self._pending["paused"].extend(recorded.paused)
        for tenant, webhook_id, reason in recorded.paused:
            _log.warning("webhook paused", tenant=tenant, webhook_id=webhook_id, reason=reason)

    def expired(self, count: int) -> None:
        self._pending["expired"] += count

    def outbox_age(self, seconds: float) -> None:
        self._pending["outbox_age"] = seconds

    def flush(self) -> None:
        if self._pending == self._empty():
            return
        report, self._pending = self._pending, self._empty()
        with contextlib.suppress(OSError):
            os.write(self._fd, json.dumps(report).encode() + b"\n")


def _sqlite_path(dsn: str) -> Path | None:
    if not dsn.startswith("sqlite:///"):
        return None
    return Path(dsn.removeprefix("sqlite:///")).expanduser()


async def _open_database(config: WorkerConfig) -> Database:
    path = _sqlite_path(config.dsn)
    if path is not None:
        # The router brought the schema up to date before it started this process.
        return await SqliteDatabase.open(path, lambda: None)
    return await PostgresDatabase.open(
        config.dsn, pool_size=2, timeout_seconds=config.db_timeout_seconds
    )


async def _serve(config: WorkerConfig, wake_fd: int, report_fd: int) -> None:
    database = await _open_database(config)
    metrics = _ReportedMetrics(report_fd)
    dispatcher = open_dispatcher(config.webhooks, WebhookStore(database), metrics)
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def woken() -> None:
        try:
            data = os.read(wake_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            # The router closed its end, or is gone.
            loop.remove_reader(wake_fd)
            ended.set()
            return
        dispatcher.wake()

    os.set_blocking(wake_fd, False)
    loop.add_reader(wake_fd, woken)
    dispatcher.start()
    try:
        while not ended.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REPORT_SECONDS):
                    await ended.wait()
            metrics.flush()
    finally:
        await dispatcher.stop()
        metrics.flush()
        await database.close()


def main(argv: list[str] | None = None) -> None:
    """The process: settings on standard input, wake-ups and reports on the pipes named."""
    import uvloop

    from services.runtime.logging import configure_logging

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--wake-fd", type=int, required=True)
    parser.add_argument("--report-fd", type=int, required=True)
    arguments = parser.parse_args(argv)
    # No tracing: a delivery belongs to no call's trace, and spans would cost every one of them.
    configure_logging(_SERVICE, os.environ.get("TIERGEN_LOG_LEVEL", "info"))
    config = WorkerConfig.from_json(sys.stdin.buffer.read())
    uvloop.run(_serve(config, arguments.wake_fd, arguments.report_fd))


if __name__ == "__main__":
    main()
