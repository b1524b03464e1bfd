"""What a service process that did not start printed: its one `cannot start` line, checked."""

from __future__ import annotations

import json
from typing import Any


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
