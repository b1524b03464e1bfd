"""A service process runs on uvloop unless told otherwise, and refuses an unknown loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.start_failures import cannot_start
from tests.tls import session_pki

#: The smallest runtime server there is: health and reflection only.
_ECHO = "from bench.ledger import serve_echo; serve_echo()"
_ROOT = Path(__file__).resolve().parents[2]


def _serve(environ: dict[str, str], ready: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _ECHO],
        cwd=_ROOT,
        env={
            **os.environ,
            **session_pki().env("ledger"),
            "TIERGEN_PORT": "0",
            "TIERGEN_READY_FILE": str(ready),
            **environ,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(("setting", "module"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_the_service_runs_on_the_event_loop_it_is_given(
    tmp_path: Path, setting: str | None, module: str
) -> None:
    ready = tmp_path / "echo.addr"
    # Empty is unset: the default.
    process = _serve({"TIERGEN_EVENT_LOOP": setting or ""}, ready)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert listening["event_loop"].split(".")[0] == module


def test_an_unknown_event_loop_is_a_configuration_error(tmp_path: Path) -> None:
    process = _serve({"TIERGEN_EVENT_LOOP": "trio"}, tmp_path / "echo.addr")
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 2
    line = cannot_start(stderr, alone=True)
    assert (line["service"], line["setting"], line["error"]) == (
        "echo",
        "TIERGEN_EVENT_LOOP",
        "TIERGEN_EVENT_LOOP='trio': expected one of uvloop, asyncio",
    )
