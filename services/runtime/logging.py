"""structlog set-up: JSON off a terminal, console on one, trace ids on every line, stdlib routed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

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
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    # structlog's own lines skip the stdlib: a LogRecord, its copy in ProcessorFormatter and
    # the caller lookup cost about half of each canonical line (docs/performance-router.md).
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
        logger_factory=_NamedWriterFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(root.level),
        cache_logger_on_first_use=True,
    )


class _NamedWriter(structlog.WriteLogger):
    """Writes rendered lines to a file; carries its name for `add_logger_name`."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriterFactory:
    """`structlog.get_logger(name)` gets a `_NamedWriter` called `name`, all on one file."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriter:
        return _NamedWriter(self._file, str(args[0]) if args else "")


def _identity(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    return event
