"""OpenTelemetry set-up: one tracer provider per process, exporter chosen by OTEL_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from services.runtime.settings import ConfigError, Env

__all__ = ["TRACING_VARIABLE", "configure_tracing", "current_trace_id"]

#: `off` turns tracing off altogether (for measuring what it costs); on by default.
TRACING_VARIABLE = "TIERGEN_TRACING"


def configure_tracing(
    service: str, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Installs the global tracer provider for `service`; None when tracing is off.

    With `TIERGEN_TRACING` on (the default), spans are always recorded, so trace ids reach logs
    and job records; where they go is `OTEL_TRACES_EXPORTER`: `none` (default), `console`, or
    `otlp` (configured by the standard `OTEL_EXPORTER_OTLP_*` variables, read by the exporter
    itself). `TIERGEN_TRACING=off` installs no SDK provider at all: nothing is recorded, and the
    trace context a caller sends still passes on to downstream calls and into the logs, because
    the API's no-op tracer hands the parent's span context on.
    """
    env = os.environ if environ is None else environ
    if not Env(env).flag(TRACING_VARIABLE, True):
        return None
    name = env.get("OTEL_SERVICE_NAME") or f"tiergen-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if e.strip()]
    for exporter in exporters:
        if exporter == "none":
            continue
        if exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: expected none, console or otlp")
    trace.set_tracer_provider(provider)
    return provider


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or "" outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
