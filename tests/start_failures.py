"""What a service process that did not start printed: its one `cannot start` line, checked."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The repository's root, where `python -m services...` finds the package.
_ROOT = Path(__file__).resolve().parents[1]


def cannot_start(output: str, *, alone: bool = False) -> dict[str, Any]:
    """The `cannot start` line of a failed start's `output` (stdout and stderr), parsed.

    Every line must be a JSON log line (no traceback, no stray line from gRPC's core), and
    exactly one of them an error: that one. With `alone`, it must be the only line.
    """
    assert "Traceback" not in output, output[-3000:]
    lines = output.strip().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    errors = [record for record in records if record.get("level") == "error"]
    assert len(errors) == 1, lines
    (record,) = errors
    assert record["event"] == "cannot start", record
    if alone:
        assert len(records) == 1, lines
    return record


def refused_start(module: str, environ: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """Runs `python -m MODULE` with `environ` (in full) and expects it to refuse to start, as a
    configuration error does (status 2) with its one line alone on stderr: that line, parsed,
    and everything the process printed (for a test that looks for a planted secret)."""
    finished = subprocess.run(
        [sys.executable, "-m", module],
        cwd=_ROOT,
        env=dict(environ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2, finished.stderr[-3000:]
    return cannot_start(finished.stderr, alone=True), finished.stdout + finished.stderr
