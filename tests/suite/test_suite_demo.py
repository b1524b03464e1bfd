"""End to end: `tiergen demo --json` across four real service processes on loopback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_demo_pipeline_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "demo", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(result.stdout)  # stdout holds the JSON document and nothing else
    assert set(document) == {"account", "jobs", "balances"}

    jobs = document["jobs"]
    kinds = [job["kind"] for job in jobs]
    assert kinds == ["generate"] * 8 + ["promote", "upscale"]
    explored, promoted, upscaled = jobs[:8], jobs[8], jobs[9]
    assert {(j["tier"], j["width"], j["height"]) for j in explored} == {("nano", 1024, 1024)}
    assert len({j["seed"] for j in explored}) == 8
    assert (promoted["tier"], promoted["width"], promoted["height"]) == ("standard", 2048, 2048)
    assert promoted["parent_id"] == explored[0]["id"]
    assert promoted["seed"] == explored[0]["seed"]  # the handover keeps the parent's seed
    assert (upscaled["width"], upscaled["height"]) == (4096, 4096)
    assert upscaled["parent_id"] == promoted["id"]

    for job in jobs:
        path = Path(job["path"])
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == job["sha256"]
        with Image.open(path) as image:
            assert image.size == (job["width"], job["height"])
        assert job["cost"] > 0
    assert len({job["sha256"] for job in explored}) == 8

    # One trace across the whole pipeline: every job records the demo's trace id.
    assert len({job["trace_id"] for job in jobs}) == 1
    assert len(jobs[0]["trace_id"]) == 32

    steps = {step["step"]: step for step in document["balances"]}
    assert list(steps) == ["open_account", "explore", "promote", "upscale", "check_in"]
    assert steps["open_account"]["available"] == 400
    explore_cost = sum(job["cost"] for job in explored)
    assert steps["explore"]["available"] == 400 - explore_cost
    assert steps["promote"]["available"] == steps["explore"]["available"] - promoted["cost"]
    assert steps["upscale"]["available"] == steps["promote"]["available"] - upscaled["cost"]
    assert steps["check_in"]["available"] > steps["upscale"]["available"]
    assert all(step["held"] == 0 for step in document["balances"])
