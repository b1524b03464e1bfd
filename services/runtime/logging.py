"""structlog set-up: JSON off a terminal, console on one, trace ids on every line, stdlib routed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from opentelemetry import trace

__all__ = ["add_trace_context", "configure_logging"]


def add_trace_context(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Adds `trace_id`/`span_id` of the current OpenTelemetry span, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure_logging(service: str, level: str = "info", *, json: bool | None = None) -> None:
    """Configures structlog and the stdlib root logger to write one format to stderr.

    `json=None` picks JSON unless stderr is a terminal.
    """
    use_json = (not sys.stderr.isatty()) if json is None else json

    def add_service(
        _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
        add_trace_context,
    ]
    if use_json:
        # orjson renders a line in a third of the time the json module takes; structlog's own
        # lines go out as bytes, the stdlib's through ProcessorFormatter as text.
        renderer: Any = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        stdlib_renderer: Any = structlog.processors.JSONRenderer(serializer=_dumps_text)
        factory: Any = _NamedWriterFactory(sys.stderr.buffer, structlog.BytesLogger)
    else:
        renderer = stdlib_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = _NamedWriterFactory(sys.stderr, structlog.WriteLogger)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            stdlib_renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    # structlog's own lines skip the stdlib: a LogRecord, its copy in ProcessorFormatter and
    # the caller lookup cost about half of each canonical line.
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
        logger_factory=factory,
        wrapper_class=structlog.make_filtering_bound_logger(root.level),
        cache_logger_on_first_use=True,
    )


def _dumps_text(value: Any, **options: Any) -> str:
    return orjson.dumps(value, **options).decode()


class _NamedWriterFactory:
    """`structlog.get_logger(name)` gets a writer of `kind` called `name`, all on one file.

    The name is what `add_logger_name` reads.
    """

    def __init__(
        self, file: Any, kind: type[structlog.WriteLogger | structlog.BytesLogger]
    ) -> None:
        self._file = file
        self._kind = kind

    def __call__(self, *args: Any) -> Any:
        writer: Any = self._kind(self._file)
        writer.name = str(args[0]) if args else ""
        return writer


def _identity(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    return event
