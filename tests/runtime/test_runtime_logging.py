"""The log set-up, in a fresh process: one JSON format for structlog's lines and the stdlib's."""

from __future__ import annotations

import json
import subprocess
import sys

_PROGRAM = """
import logging, sys
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from services.runtime.logging import configure_logging

trace.set_tracer_provider(TracerProvider())
configure_logging("probe", sys.argv[1], json=True)
log = structlog.get_logger("tiergen.probe")
structlog.contextvars.bind_contextvars(job_id="job_1")
with trace.get_tracer("probe").start_as_current_span("step"):
    log.info("rpc", code="OK")
log.debug("too chatty")
logging.getLogger("grpc").warning("from the %s", "stdlib")
try:
    raise ValueError("broken")
except ValueError:
    log.exception("failed")
"""


def _lines(level: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, level],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_structlog_and_stdlib_lines_share_one_json_format():
    rpc, stdlib, failure = _lines("info")

    assert rpc["event"] == "rpc"
    assert rpc["code"] == "OK"
    assert rpc["level"] == "info"
    assert rpc["logger"] == "tiergen.probe"
    assert rpc["service"] == "probe"
    assert rpc["job_id"] == "job_1"
    assert len(str(rpc["trace_id"])) == 32
    assert len(str(rpc["span_id"])) == 16
    assert str(rpc["timestamp"]).endswith("Z")
    assert stdlib["event"] == "from the stdlib"
    assert stdlib["logger"] == "grpc"
    assert stdlib["level"] == "warning"
    assert stdlib["service"] == "probe"
    assert failure["level"] == "error"
    assert "ValueError: broken" in str(failure["exception"])
    assert "trace_id" not in failure


def test_the_level_filters_structlog_lines_too():
    lines = _lines("warning")

    assert [line["event"] for line in lines] == ["from the stdlib", "failed"]


def test_debug_level_lets_every_line_through():
    lines = _lines("debug")

    assert [line["event"] for line in lines] == ["rpc", "too chatty", "from the stdlib", "failed"]
