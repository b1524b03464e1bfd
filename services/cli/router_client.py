"""The router as the `tiergen` command sees it: calls, streamed events and asset downloads."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.cli.progress import LineProgress, ProgressView
from services.runtime.channels import open_channel
from services.runtime.credentials import BearerToken
from services.runtime.settings import ChannelSecurity

__all__ = [
    "DEFAULT_ROUTER_PORT",
    "EventSink",
    "RouterAddressError",
    "RouterClient",
    "new_key",
    "router_address",
    "router_target",
]

EventSink = Callable[[str], None]

#: The router's port when `--router` names none: the port it listens on by default.
DEFAULT_ROUTER_PORT = 50051

_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
_FINAL = (
    router_pb2.JOB_STATUS_SUCCEEDED,
    router_pb2.JOB_STATUS_FAILED,
    router_pb2.JOB_STATUS_CANCELLED,
)


def new_key(prefix: str) -> str:
    """A fresh idempotency key."""
    return f"{prefix}-{uuid.uuid4().hex}"


class RouterAddressError(ValueError):
    """A `--router` (or TIERGEN_ROUTER) value that is no address; the message says why."""


def router_address(text: str) -> str:
    """One router address as gRPC dials it: `host` and `[v6]` get DEFAULT_ROUTER_PORT,
    `host:port` and `[v6]:port` stay as they are, a bare IPv6 address (`::1`) is bracketed.

    A gRPC target with a scheme (`dns:///host:port`, `unix:/path`) is left to gRPC.
    RouterAddressError says what is wrong with any other shape (empty, a port that is no number
    or out of range).
    """
    entry = text.strip()
    if not entry:
        raise RouterAddressError("--router is empty: expected HOST or HOST:PORT")
    if "://" in entry or entry.startswith(("unix:", "unix-abstract:", "ipv4:", "ipv6:")):
        return entry
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise RouterAddressError(f"--router {text!r}: expected [IPV6] or [IPV6]:PORT")
        port = rest.removeprefix(":") if rest else str(DEFAULT_ROUTER_PORT)
        host = f"[{host}]"
    elif entry.count(":") > 1:
        host, port = f"[{entry}]", str(DEFAULT_ROUTER_PORT)  # a bare IPv6 address
    else:
        host, _, port = entry.partition(":")
        port = port or str(DEFAULT_ROUTER_PORT)
        if not host:
            raise RouterAddressError(f"--router {text!r}: expected HOST or HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RouterAddressError(f"--router {text!r}: the port must be a number from 1 to 65535")
    return f"{host}:{port}"


def router_target(text: str) -> str:
    """`text` as gRPC dials it: one address or a comma-separated list of them, each read by
    `router_address`."""
    return ",".join(router_address(entry) for entry in text.split(","))


def _view(sink: EventSink | ProgressView) -> ProgressView:
    return sink if isinstance(sink, ProgressView) else LineProgress(sink)


class RouterClient:
    """An open channel to one router, secured as `security` says, every call sent with
    `token`, and the calls the command line needs."""

    def __init__(
        self,
        address: str,
        token: BearerToken,
        security: ChannelSecurity,
        timeout: float = 300.0,
    ) -> None:
        #: What is dialled: `address` with the default port where it names none.
        self.address = router_target(address)
        self._channel = open_channel(
            self.address,
            security=security,
            services=[_SERVICE],
            default_timeout=timeout,
            token=token,
        )
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._timeout = timeout

    async def __aenter__(self) -> RouterClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def open_account(self, account: str) -> router_pb2.OpenAccountResponse:
        request = router_pb2.OpenAccountRequest(
            account_id=account, idempotency_key=f"open-{account}"
        )
        return await self._stub.OpenAccount(request, timeout=30)

    async def balance(self, account: str) -> ledger_pb2.Balance:
        reply = await self._stub.GetBalance(
            router_pb2.GetBalanceRequest(account_id=account), timeout=30
        )
        return reply.balance

    async def check_in(self, account: str, key: str) -> router_pb2.CheckInResponse:
        request = router_pb2.CheckInRequest(account_id=account, idempotency_key=key)
        return await self._stub.CheckIn(request, timeout=30)

    async def quote(
        self, account: str, spec: router_pb2.GenerationSpec
    ) -> router_pb2.QuoteResponse:
        request = router_pb2.QuoteRequest(account_id=account, spec=spec)
        return await self._stub.Quote(request, timeout=30)

    async def generate(
        self,
        account: str,
        spec: router_pb2.GenerationSpec,
        key: str,
        sink: EventSink | ProgressView,
    ) -> tuple[router_pb2.Batch, list[router_pb2.Job]]:
        """Runs a batch to the end, showing its events on `sink` (a view, or a function given
        one line per event); returns it and its jobs in their final states."""
        view = _view(sink)
        request = router_pb2.GenerateRequest(account_id=account, idempotency_key=key, spec=spec)
        batch = router_pb2.Batch()
        finished: dict[str, router_pb2.Job] = {}
        async for event in self._stub.Generate(request, timeout=self._timeout):
            kind = event.WhichOneof("event")
            if kind == "batch":
                batch = event.batch
                view.batch(batch)
            elif kind == "progress":
                view.progress(event.progress)
            elif kind == "job":
                finished[event.job.job_id] = event.job
                view.finished(event.job)
        order = [job.job_id for job in batch.jobs]
        return batch, sorted(
            finished.values(), key=lambda j: order.index(j.job_id) if j.job_id in order else 0
        )

    async def promote(
        self, request: router_pb2.PromoteRequest, sink: EventSink | ProgressView
    ) -> router_pb2.Job:
        return await self._single(self._stub.Promote(request, timeout=self._timeout), sink)

    async def upscale(
        self, request: router_pb2.UpscaleRequest, sink: EventSink | ProgressView
    ) -> router_pb2.Job:
        return await self._single(self._stub.Upscale(request, timeout=self._timeout), sink)

    @staticmethod
    async def _single(call: object, sink: EventSink | ProgressView) -> router_pb2.Job:
        view = _view(sink)
        job = router_pb2.Job()
        async for event in call:  # type: ignore[attr-defined]
            kind = event.WhichOneof("event")
            if kind == "accepted":
                job = event.accepted
                view.accepted(job)
            elif kind == "progress":
                view.progress(event.progress)
            elif kind == "job":
                job = event.job
                view.finished(job)
        if job.status not in _FINAL:
            raise RuntimeError(f"stream ended before job {job.job_id or '?'} finished")
        return job

    async def get_job(self, account: str, job_id: str) -> router_pb2.Job:
        reply = await self._stub.GetJob(
            router_pb2.GetJobRequest(account_id=account, job_id=job_id), timeout=30
        )
        return reply.job

    async def list_jobs(self, request: router_pb2.ListJobsRequest) -> router_pb2.ListJobsResponse:
        return await self._stub.ListJobs(request, timeout=30)

    async def cancel(self, account: str, job_id: str) -> list[router_pb2.Job]:
        reply = await self._stub.CancelJob(
            router_pb2.CancelJobRequest(account_id=account, job_id=job_id), timeout=30
        )
        return list(reply.jobs)

    async def download(self, account: str, asset_id: str, path: Path) -> str:
        """Streams an asset into `path` (atomically) and returns its verified sha256."""
        digest = hashlib.sha256()
        info = common_pb2.ImageInfo()
        partial = path.with_name(path.name + ".partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        request = router_pb2.GetAssetRequest(account_id=account, asset_id=asset_id)
        with partial.open("wb") as out:
            async for message in self._stub.GetAsset(request, timeout=self._timeout):
                if message.WhichOneof("payload") == "info":
                    info = message.info
                else:
                    out.write(message.chunk.data)
                    digest.update(message.chunk.data)
        if digest.hexdigest() != info.sha256:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"asset {asset_id} arrived corrupted (sha256 mismatch)")
        partial.replace(path)
        return digest.hexdigest()

    async def create_api_key(
        self, scopes: Sequence[str], name: str, ttl_seconds: int | None
    ) -> router_pb2.CreateApiKeyResponse:
        request = router_pb2.CreateApiKeyRequest(
            scopes=scopes, name=name, ttl_seconds=ttl_seconds or 0
        )
        return await self._stub.CreateApiKey(request, timeout=30)

    async def list_api_keys(self, include_inactive: bool) -> list[router_pb2.ApiKey]:
        request = router_pb2.ListApiKeysRequest(include_inactive=include_inactive)
        reply = await self._stub.ListApiKeys(request, timeout=30)
        return list(reply.api_keys)

    async def rotate_api_key(
        self, prefix: str, grace_seconds: int
    ) -> router_pb2.RotateApiKeyResponse:
        request = router_pb2.RotateApiKeyRequest(prefix=prefix, grace_seconds=grace_seconds)
        return await self._stub.RotateApiKey(request, timeout=30)

    async def revoke_api_key(self, prefix: str) -> router_pb2.ApiKey:
        reply = await self._stub.RevokeApiKey(
            router_pb2.RevokeApiKeyRequest(prefix=prefix), timeout=30
        )
        return reply.api_key

    async def create_webhook(
        self, request: router_pb2.CreateWebhookRequest
    ) -> router_pb2.CreateWebhookResponse:
        return await self._stub.CreateWebhook(request, timeout=30)

    async def list_webhooks(self) -> list[router_pb2.Webhook]:
        reply = await self._stub.ListWebhooks(router_pb2.ListWebhooksRequest(), timeout=30)
        return list(reply.webhooks)

    async def update_webhook(self, request: router_pb2.UpdateWebhookRequest) -> router_pb2.Webhook:
        reply = await self._stub.UpdateWebhook(request, timeout=30)
        return reply.webhook

    async def delete_webhook(self, webhook_id: str) -> router_pb2.Webhook:
        reply = await self._stub.DeleteWebhook(
            router_pb2.DeleteWebhookRequest(webhook_id=webhook_id), timeout=30
        )
        return reply.webhook

    async def rotate_webhook_secret(
        self, request: router_pb2.RotateWebhookSecretRequest
    ) -> router_pb2.RotateWebhookSecretResponse:
        return await self._stub.RotateWebhookSecret(request, timeout=30)

    async def list_webhook_deliveries(
        self, request: router_pb2.ListWebhookDeliveriesRequest
    ) -> router_pb2.ListWebhookDeliveriesResponse:
        return await self._stub.ListWebhookDeliveries(request, timeout=30)
