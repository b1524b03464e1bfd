"""Server bootstrap shared by every service: the `create_server` factory, TLS, health (also on a
plaintext port of its own for the kubelet), reflection (v1 and v1alpha), and the process entry
point with graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
import uvloop
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from services.runtime.interceptors import Gate, ServerTelemetryInterceptor
from services.runtime.logging import configure_logging
from services.runtime.metrics import MetricsEndpoint, export_build_info
from services.runtime.settings import (
    CERT_FILE_VARIABLE,
    CLIENT_CA_FILE_VARIABLE,
    HEALTH_PORT_VARIABLE,
    INSECURE_VARIABLE,
    KEY_FILE_VARIABLE,
    ConfigError,
    Env,
    ServerSettings,
)
from services.runtime.startup import NotStarted, cannot_listen
from services.runtime.startup import report as report_start_failure
from services.runtime.tls import CertificateReloader, describe_certificate
from services.runtime.tracing import configure_tracing

__all__ = [
    "EVENT_LOOP_VARIABLE",
    "REFLECTION_V1",
    "Server",
    "ServiceRegistration",
    "check_transport",
    "create_server",
    "serve_forever",
]

#: `asyncio` runs a service on the standard library's event loop instead of uvloop.
EVENT_LOOP_VARIABLE = "TIERGEN_EVENT_LOOP"

_log = structlog.get_logger("tiergen.server")

StopHook = Callable[[], Awaitable[None]]
#: Called with the grace in seconds when a stop begins, before gRPC stops taking calls.
DrainHook = Callable[[float], Awaitable[None]]
#: Time gRPC keeps the calls still open after the drain hooks, whatever the grace: answers
#: already decided during the drain reach their callers instead of a cancellation.
_LAST_WORD_SECONDS = 1.0


@dataclass(frozen=True)
class ServiceRegistration:
    """One gRPC service to serve: its full name and the generated `add_*_to_server` call."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]


class Server:
    """A gRPC server with health, reflection and an orderly stop."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        settings: ServerSettings,
        services: Sequence[str],
        on_stop: Sequence[StopHook],
        *,
        certificates: CertificateReloader | None = None,
        health_server: grpc.aio.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.grpc_server = server
        self.health = health_servicer
        self.settings = settings
        #: The TLS certificate and its reloading; None when serving plaintext.
        self.certificates = certificates
        self._health_server = health_server
        #: The plaintext health-only port once bound (TIERGEN_HEALTH_PORT); None when there is
        #: none.
        self.health_port = health_port
        self._services = list(services)
        self._on_stop = list(on_stop)
        self._on_drain: list[DrainHook] = []
        self._background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics: MetricsEndpoint | None = None
        self._stopped = False
        #: What keeps readiness NOT_SERVING now (a dependency down, a catalogue not known yet).
        self._not_ready: set[str] = set()

    @property
    def metrics_port(self) -> int | None:
        """The port of the Prometheus endpoint once started; None when metrics are off."""
        return None if self._metrics is None else self._metrics.port

    def add_stop_hook(self, hook: StopHook) -> None:
        """Runs `hook` after the server stops (close stores, channels, pools); last added first."""
        self._on_stop.append(hook)

    def add_drain_hook(self, hook: DrainHook) -> None:
        """Runs `hook(grace)` when a stop begins, health already NOT_SERVING and calls still
        connected: it finishes or ends the service's own work within the grace."""
        self._on_drain.append(hook)

    def add_background(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Runs `work` as a task from start until stop (watchers, sweepers, reloaders)."""
        self._background.append(work)

    async def start(self) -> None:
        """Serve gRPC, and the metrics endpoint when configured; ConfigError if it cannot listen."""
        export_build_info(self.settings.service)
        port = self.settings.metrics_port
        if port is not None:
            try:
                self._metrics = MetricsEndpoint.start(self.settings.host, port)
            except OSError as exc:
                raise ConfigError(
                    f"TIERGEN_METRICS_PORT={port}: cannot listen on {self.settings.host}: {exc}"
                ) from None
            _log.info("metrics listening", host=self.settings.host, port=self._metrics.port)
        await self.grpc_server.start()
        if self._health_server is not None:
            await self._health_server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.set_serving(True)
        self._tasks = [asyncio.create_task(work()) for work in self._background]

    async def set_serving(self, serving: bool, *, cause: str = "dependencies") -> None:
        """Flips the per-service health (readiness) while a hard dependency is down.

        Readiness is SERVING only when no `cause` holds it down: each watcher (dependencies, the
        router's tier catalogue) sets its own, and one clearing its cause does not hide another's.
        A cause set before `start` holds readiness down from the first moment.
        The overall "" status (liveness) stays SERVING: restarting a healthy process would not
        bring its dependency back. It turns NOT_SERVING only at shutdown.
        """
        if serving:
            self._not_ready.discard(cause)
        else:
            self._not_ready.add(cause)
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if self._not_ready
            else health_pb2.HealthCheckResponse.SERVING
        )
        for name in self._services:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, drain in-flight RPCs for `grace` seconds, then run the stop hooks."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.health.enter_graceful_shutdown()
        grace = self.settings.grace_seconds if grace is None else grace
        if self._on_drain:
            started = time.monotonic()
            await asyncio.gather(*(hook(grace) for hook in self._on_drain))
            grace = max(grace - (time.monotonic() - started), _LAST_WORD_SECONDS)
        await self.grpc_server.stop(grace)
        # The probes' port goes last: until the main port is closed it says NOT_SERVING.
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._metrics is not None:
            await self._metrics.stop()
        for hook in reversed(self._on_stop):
            try:
                await hook()
            except Exception:
                _log.exception("stop hook failed", hook=getattr(hook, "__qualname__", repr(hook)))

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(
    settings: ServerSettings,
    services: Sequence[ServiceRegistration],
    *,
    on_stop: Sequence[StopHook] = (),
    gate: Gate | None = None,
) -> tuple[Server, int]:
    """Builds (but does not start) a server for `services`; returns it and its bound port.

    `gate`, when given, admits or refuses every call but health and reflection before its
    handler runs (the router's access checks, the backends' caller identities).

    The port serves TLS from `settings.tls` (ConfigError naming the setting of a bad file), or
    plaintext when `settings.insecure` says so; with neither the service refuses to start.
    With `settings.health_port`, a second server on that port serves grpc.health.v1 only, in
    plaintext, with the main port's statuses (the kubelet's gRPC probes speak no TLS).

    Tests pass port 0 and use the returned port.
    """
    certificates = _certificates(settings)
    taken = cannot_listen(settings.host, settings.port)
    if taken is not None:
        raise taken
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # Clients re-resolve when a connection ages out, so new replicas behind a headless
        # Service receive traffic.
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]
    server = grpc.aio.server(interceptors=[ServerTelemetryInterceptor(gate)], options=options)
    for registration in services:
        registration.add_to_server(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [registration.name for registration in services]
    _enable_reflection(server, [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    try:
        if certificates is None:
            port = server.add_insecure_port(settings.address)
        else:
            port = server.add_secure_port(settings.address, certificates.credentials())
    except RuntimeError as exc:
        raise ConfigError(
            f"TIERGEN_PORT={settings.port}: cannot listen on {settings.address}: {exc}"
        ) from None
    if port == 0:
        raise ConfigError(
            f"TIERGEN_PORT={settings.port}: cannot listen on {settings.address}: address in use"
            " or unavailable"
        )
    health_server, health_port = _health_only(settings, health_servicer)
    return Server(
        server,
        health_servicer,
        settings,
        names,
        on_stop,
        certificates=certificates,
        health_server=health_server,
        health_port=health_port,
    ), port


def check_transport(settings: ServerSettings) -> None:
    """ConfigError naming the setting when the server could not serve as `settings` say: no
    TLS and no plaintext asked for, or a certificate, key or CA file that is unusable.

    A service calls it first, so that a bad file stops it before it opens its database or its
    worker processes, with nothing but the one line that says why.
    """
    if settings.tls is not None:
        CertificateReloader(settings.tls)
    elif not settings.insecure:
        _certificates(settings)


def _certificates(settings: ServerSettings) -> CertificateReloader | None:
    """The server's certificate from its files (checked now), None for plaintext asked for
    explicitly; ConfigError when neither is configured."""
    if settings.tls is not None:
        certificates = CertificateReloader(settings.tls)
        _log.info(
            "serving TLS",
            client_certificates="required" if certificates.requires_client_certificates else "no",
            **describe_certificate(certificates.certificate),
        )
        return certificates
    if settings.insecure:
        _log.warning(
            "PLAINTEXT: this port serves without TLS; only a mesh that encrypts and authenticates"
            " every hop makes that safe",
            setting=f"{INSECURE_VARIABLE}=true",
        )
        return None
    raise ConfigError(
        f"no TLS certificate: set {CERT_FILE_VARIABLE} and {KEY_FILE_VARIABLE} (and"
        f" {CLIENT_CA_FILE_VARIABLE} to require client certificates), or {INSECURE_VARIABLE}=true"
        " to serve plaintext behind a mesh that encrypts the hops"
    )


def _health_only(
    settings: ServerSettings, health_servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server | None, int | None]:
    """A plaintext server of `health_servicer` alone on TIERGEN_HEALTH_PORT, if set.

    It shares the main server's servicer, so it answers with the same statuses at every moment.
    It has no reflection and no other service: a prober learns nothing else from it.
    """
    if settings.health_port is None:
        return None, None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host = settings.address.rpartition(":")[0]
    address = f"{host}:{settings.health_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        port = 0
        problem = str(exc)
    else:
        problem = "address in use or unavailable"
    if port == 0:
        raise ConfigError(
            f"{HEALTH_PORT_VARIABLE}={settings.health_port}: cannot listen on {address}: {problem}"
        )
    return server, port


#: Reflection as grpcurl and Postman ask for it first; v1alpha stays for older tools.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.aio.Server, services: Sequence[str]) -> None:
    """Serves reflection of `services` as grpc.reflection.v1 and as v1alpha.

    grpcio-reflection (1.85) serves only v1alpha (grpc/grpc#38576). The messages of the two
    versions are the same field for field, so one servicer, with v1alpha's message classes,
    answers both.
    """
    _add_reflection_v1_file()
    servicer = reflection.aio.ReflectionServicer(
        [*services, reflection.SERVICE_NAME, REFLECTION_V1]
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))


def _add_reflection_v1_file() -> None:
    """Puts grpc/reflection/v1/reflection.proto in the default descriptor pool, so reflection
    can describe its own v1 service (`grpcurl describe` asks for every service listed).

    It is v1alpha's file under v1's names and options, as in grpc-proto.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1)
        return  # a grpcio-reflection that ships v1 has put its own there
    except KeyError:
        pass
    alpha = reflection_pb2.DESCRIPTOR.package
    v1 = REFLECTION_V1.rpartition(".")[0]
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = v1
    proto.options.Clear()
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{alpha}.", f".{v1}.", 1)

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool.Add(proto)


def _write_ready_file(path: Path, address: str) -> None:
    # Written atomically: a supervisor polling for the file never reads half an address.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(address + "\n")
    partial.replace(path)


async def _serve(service: str, factory: Callable[[], Awaitable[tuple[Server, int]]]) -> None:
    try:
        server, port = await factory()
    except Exception as error:
        raise NotStarted(error) from None
    try:
        await server.start()
    except Exception as error:
        # Its stores and worker processes are open: closed before the process ends.
        await server.stop(0)
        raise NotStarted(error) from None
    host = server.settings.host
    address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    _log.info(
        "listening",
        address=address,
        tls=server.certificates is not None,
        health_port=server.health_port,
        event_loop=type(asyncio.get_running_loop()).__module__,
    )
    ready_file = os.environ.get("TIERGEN_READY_FILE")
    if ready_file:
        _write_ready_file(Path(ready_file), address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    _log.info("shutting down", grace_seconds=server.settings.grace_seconds)
    await server.stop()
    _log.info("stopped")


def serve_forever(service: str, factory: Callable[[], Awaitable[tuple[Server, int]]]) -> None:
    """Process entry point: logging, tracing, serve until SIGTERM/SIGINT, drain, flush telemetry.

    A start that fails logs one `cannot start` line naming the setting or address at fault and
    exits with status 2 for a configuration error, 1 for a dependency out of reach
    (`services.runtime.startup`).
    """
    configure_logging(service, os.environ.get("TIERGEN_LOG_LEVEL", "info"))
    try:
        provider = configure_tracing(service)
        loop_factory = _loop_factory(os.environ)
    except ConfigError as exc:
        raise SystemExit(report_start_failure(service, exc)) from None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(service, factory))
    except NotStarted as failure:
        raise SystemExit(report_start_failure(service, failure.cause)) from None
    finally:
        if provider is not None:
            provider.shutdown()


def _loop_factory(environ: Mapping[str, str]) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop a service runs on: uvloop unless TIERGEN_EVENT_LOOP=asyncio.

    uvloop takes about a tenth off the CPU time of every RPC, on grpc.aio and on our own tasks.
    """
    name = Env(environ).choice(EVENT_LOOP_VARIABLE, "uvloop", ("uvloop", "asyncio"))
    return uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop
