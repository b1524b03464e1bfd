"""Every service of a running suite serves Prometheus metrics that follow the work it did."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.cli.demo import run_demo
from services.cli.suite import Suite

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _four_free_ports() -> int:
    """The first of four consecutive ports free on loopback right now."""
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            if base + 3 > 65535:
                continue
            try:
                for offset in (1, 2, 3):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", base + offset))
            except OSError:
                continue
            return base
    raise RuntimeError("no four consecutive free ports on loopback")


def _scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _handled(samples: Samples, service: str, method: str, code: str = "OK") -> float:
    wanted = {("grpc_service", service), ("grpc_method", method), ("grpc_code", code)}
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "grpc_server_handled_total" and wanted <= labels
    )


async def test_each_service_counts_what_the_pipeline_did(tmp_path: Path) -> None:
    base = _four_free_ports()
    suite = Suite(tmp_path / "data", metrics_port_base=base)
    await asyncio.to_thread(suite.start)
    try:
        document = await run_demo(
            suite.router,
            tmp_path / "out",
            lambda _line: None,
            token=suite.api_key,
            security=suite.client_security,
            variations=2,
        )
        router, generator, ledger, upscaler = [
            await asyncio.to_thread(_scrape, base + offset) for offset in range(4)
        ]
    finally:
        codes = await asyncio.to_thread(suite.stop)
    assert all(code == 0 for code in codes.values()), codes

    assert _handled(router, "tiergen.router.v1.RouterService", "Generate") == 1
    assert _handled(router, "tiergen.router.v1.RouterService", "Promote") == 1
    assert _handled(router, "tiergen.router.v1.RouterService", "Upscale") == 1
    generator_service = "tiergen.generator.v1.GeneratorService"
    assert _handled(generator, generator_service, "Render") == 3  # two sketches, one promotion
    assert _value(generator, "tiergen_generator_renders", tier="nano", state="waiting") == 0
    assert _handled(upscaler, "tiergen.upscaler.v1.UpscalerService", "Upscale") == 1
    assert _value(upscaler, "tiergen_upscaler_jobs") == 0

    # The ledger counted exactly the credits the account was charged.
    balances = document["balances"]
    opened, before_check_in = balances[0], balances[-2]
    spent = int(opened["available"]) - int(before_check_in["available"])
    assert spent > 0
    assert _value(ledger, "tiergen_ledger_credits_total", kind="capture") == spent
    assert _handled(ledger, "tiergen.ledger.v1.LedgerService", "Capture") == 3


def test_tiergen_up_serves_metrics_where_it_says(tmp_path: Path) -> None:
    base = _four_free_ports()
    up = subprocess.Popen(
        [
            sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(tmp_path / "data"),
            "--port-base", "0", "--metrics-port-base", str(base),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        started = [up.stdout.readline().split()[0] for _ in range(4)]
        assert started == ["router", "generator", "ledger", "upscaler"]
        assert ("tiergen_upscaler_jobs", frozenset()) in _scrape(base + 3)
        generator = _scrape(base + 1)
        assert (
            "tiergen_generator_renders",
            frozenset({("tier", "nano"), ("state", "running")}),
        ) in generator
    finally:
        up.send_signal(signal.SIGINT)
        _, stderr = up.communicate(timeout=60)
    assert up.returncode == 0, stderr
    assert f"metrics at http://127.0.0.1:{base}..{base + 3}/metrics" in stderr
