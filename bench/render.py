"""Render benchmark: the built-in renderer per tier and size against a bare PNG encode, both
measured in one run, and nano 1K renders through the real service, concurrent vs sequential.

Run from the repository root: `python -m bench.render` prints a table, `--json` one JSON object.
It takes about a minute on two cores. Every figure is measured in this run on this machine:

- `render_p50_ms_<tier>_<size>`, `render_p99_ms_<tier>_<size>`: latency of one render in this
  process (painting plus the renderer's own PNG encode), over a handful of prompts and seeds at
  1:1. With at most 30 runs per case, p99 is the slowest run.
- `renders_per_s_<tier>_<size>`: runs divided by their total time, one render at a time on one
  core (a generator with two workers does about twice that).
- `encode_p50_ms_<size>`: a bare Pillow PNG encode (compress_level 1) of a nano-quality picture
  of the same prompts at that size, decoded beforehand: the content a nano render encodes, and
  the fastest, so the strictest, of the baselines. `encode_p50_ms_<size>_gradient` (a smooth
  gradient) and `encode_p50_ms_<size>_gradient_noise` (the gradient plus Gaussian noise of
  sigma 4, photograph-like) show how much an encode depends on the content.
- `nano_1K_sequential_16_s`, `nano_1K_concurrent_16_s`: 16 nano 1K renders over gRPC, one after
  another and all at once, against `python -m services.generator` started here with two
  workers; the median of a few rounds. `nano_1K_concurrency_speedup` is their ratio.
- `targets_met`: nano 1K p50 at most 2.5x `encode_p50_ms_1K`, and a speedup of at least 1.6.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc

from bench.processes import ProcessGroup
from services.generator.renderer import RenderSpec, render
from services.generator.tiers import Quality, RenderRequest, load_catalogue, validate_request
from services.runtime.resolution import ImageSize, Resolution

__all__ = ["main", "run"]

PROMPTS = (
    "a lighthouse on a cliff at sunset",
    "a neon city at night in the rain",
    "snowy mountains under a full moon and stars",
    "a sailboat on a calm lake with palms at golden hour",
)

#: (tier, size, timed runs): few of the slow cases, so the whole run stays near a minute.
CASES: tuple[tuple[str, ImageSize, int], ...] = (
    ("nano", ImageSize.K1, 30),
    ("standard", ImageSize.K1, 12),
    ("standard", ImageSize.K2, 5),
    ("pro", ImageSize.K1, 10),
    ("pro", ImageSize.K2, 4),
    ("pro", ImageSize.K4, 2),
)
ENCODE_RUNS = {ImageSize.K1: 16, ImageSize.K2: 6, ImageSize.K4: 3}

CONCURRENT_RENDERS = 16
ROUNDS = 3
WORKERS = 2
NANO_ENCODE_TARGET = 2.5
SPEEDUP_TARGET = 1.6

Figures = dict[str, Any]
_Input = TypeVar("_Input")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _p99(samples: Sequence[float]) -> float:
    """The nearest-rank 99th percentile: the slowest sample when there are fewer than 100."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def _seconds(action: Callable[[_Input], object], argument: _Input) -> float:
    started = time.perf_counter()
    action(argument)
    return time.perf_counter() - started


def _encode(picture: Image.Image) -> None:
    picture.save(io.BytesIO(), format="PNG", compress_level=1)


def _warm_up() -> None:
    """Pays the first render's one-off costs (fonts, caches) outside the timed runs."""
    for quality in Quality:
        render(RenderSpec('warm "up"', 0, 64, 64, quality, draw_text=True))


def measure_renders(figures: Figures) -> None:
    """Latency and rate of every case, rendered in this process one at a time."""
    catalogue = load_catalogue()
    for tier_name, size, runs in CASES:
        specs = []
        for index in range(runs):
            request = RenderRequest(
                tier_name, PROMPTS[index % len(PROMPTS)], index, Resolution(size)
            )
            specs.append(RenderSpec.for_request(validate_request(catalogue, request), request))
        samples = [_seconds(render, spec) for spec in specs]
        key = f"{tier_name}_{size}"
        figures[f"render_p50_ms_{key}"] = _ms(statistics.median(samples))
        figures[f"render_p99_ms_{key}"] = _ms(_p99(samples))
        figures[f"renders_per_s_{key}"] = round(runs / sum(samples), 2)


def _gradient(width: int, height: int, noise_sigma: float) -> Image.Image:
    """Three diagonal ramps, one per channel, plus Gaussian noise of `noise_sigma` levels."""
    rng = np.random.default_rng(1)
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    ramps = (xs * 0.8 + ys * 0.2, xs * 0.3 + ys * 0.7, 1 - (xs + ys) / 2)
    pixels = np.empty((height, width, 3), np.uint8)
    for channel, ramp in enumerate(ramps):
        values = 30 + ramp * 200
        if noise_sigma:
            values = values + rng.standard_normal((height, width), dtype=np.float32) * noise_sigma
        pixels[..., channel] = np.clip(values, 0, 255)
    return Image.fromarray(pixels)


def _nano_pictures(width: int, height: int) -> list[Image.Image]:
    pictures = []
    for prompt in PROMPTS:
        encoded = render(RenderSpec(prompt, 0, width, height, Quality.LOW)).image
        with Image.open(io.BytesIO(encoded)) as picture:
            pictures.append(picture.convert("RGB"))
    return pictures


def _encode_p50_ms(pictures: Sequence[Image.Image], runs: int) -> float:
    samples = [_seconds(_encode, pictures[index % len(pictures)]) for index in range(runs)]
    return _ms(statistics.median(samples))


def measure_encodes(figures: Figures) -> None:
    """A bare PNG encode at every size, of three kinds of content."""
    for size, runs in ENCODE_RUNS.items():
        width, height = Resolution(size).width, Resolution(size).height
        figures[f"encode_p50_ms_{size}"] = _encode_p50_ms(_nano_pictures(width, height), runs)
        figures[f"encode_p50_ms_{size}_gradient"] = _encode_p50_ms(
            [_gradient(width, height, 0.0)], runs
        )
        figures[f"encode_p50_ms_{size}_gradient_noise"] = _encode_p50_ms(
            [_gradient(width, height, 4.0)], runs
        )


async def _render_over_grpc(stub: Any, index: int) -> None:
    spec = generator_pb2.RenderSpec(
        tier="nano",
        resolution=common_pb2.Resolution(
            size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
        ),
        prompt=PROMPTS[index % len(PROMPTS)],
        seed=index,
    )
    received = 0
    expected = -1
    async for message in stub.Render(iter([generator_pb2.RenderRequest(spec=spec)]), timeout=60):
        if message.WhichOneof("payload") == "result":
            expected = message.result.image.size_bytes
        elif message.WhichOneof("payload") == "chunk":
            received += len(message.chunk.data)
    if received != expected:
        raise RuntimeError(f"render {index}: {received} bytes arrived, {expected} announced")


async def _rounds(address: str, processes: ProcessGroup) -> tuple[list[float], list[float]]:
    async with processes.aio_channel(address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)  # type: ignore[no-untyped-call]
        # Untimed: the connection, and every worker's first render.
        await asyncio.gather(*(_render_over_grpc(stub, i) for i in range(2 * WORKERS)))
        sequential, concurrent = [], []
        for round_number in range(ROUNDS):
            first = (round_number + 1) * 1000
            started = time.perf_counter()
            for index in range(first, first + CONCURRENT_RENDERS):
                await _render_over_grpc(stub, index)
            sequential.append(time.perf_counter() - started)
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    _render_over_grpc(stub, index)
                    for index in range(first, first + CONCURRENT_RENDERS)
                )
            )
            concurrent.append(time.perf_counter() - started)
    return sequential, concurrent


def measure_service(figures: Figures) -> None:
    """16 nano 1K renders over gRPC, one after another and all at once."""
    with tempfile.TemporaryDirectory(prefix="tiergen-bench-") as scratch:
        processes = ProcessGroup(Path(scratch))
        environ = {
            **processes.tls_env("generator"),
            "TIERGEN_GENERATOR_WORKERS": str(WORKERS),
            "OTEL_TRACES_EXPORTER": "none",
        }
        # The embedded tier catalogue, whatever this shell has configured.
        environ["TIERGEN_GENERATOR_TIERS_FILE"] = ""
        try:
            generator = processes.spawn("generator", "services.generator", environ)
            sequential, concurrent = asyncio.run(_rounds(generator.wait_ready(), processes))
        finally:
            processes.stop()
    figures["nano_1K_sequential_16_s"] = round(statistics.median(sequential), 3)
    figures["nano_1K_concurrent_16_s"] = round(statistics.median(concurrent), 3)
    figures["nano_1K_concurrency_speedup"] = round(
        statistics.median(sequential) / statistics.median(concurrent), 2
    )


def run() -> Figures:
    """Every measurement, as the JSON document prints it."""
    figures: Figures = {"cpu_count": os.cpu_count()}
    _warm_up()
    measure_renders(figures)
    measure_encodes(figures)
    nano = figures["render_p50_ms_nano_1K"]
    for suffix in ("", "_gradient", "_gradient_noise"):
        figures[f"nano_1K_render_over_encode{suffix}"] = round(
            nano / figures[f"encode_p50_ms_1K{suffix}"], 2
        )
    measure_service(figures)
    targets = {
        "nano_1K_p50_at_most_2.5x_encode": (
            figures["nano_1K_render_over_encode"] <= NANO_ENCODE_TARGET
        ),
        "nano_1K_concurrency_speedup_at_least_1.6": (
            figures["nano_1K_concurrency_speedup"] >= SPEEDUP_TARGET
        ),
    }
    figures["targets"] = targets
    figures["targets_met"] = all(targets.values())
    return figures


def _print_table(figures: Figures) -> None:
    print(f"{'tier':<9} {'size':<4} {'runs':>4} {'p50 ms':>8} {'p99 ms':>8} {'renders/s':>10}")
    for tier_name, size, runs in CASES:
        key = f"{tier_name}_{size}"
        print(
            f"{tier_name:<9} {size!s:<4} {runs:>4} {figures[f'render_p50_ms_{key}']:>8}"
            f" {figures[f'render_p99_ms_{key}']:>8} {figures[f'renders_per_s_{key}']:>10}"
        )
    print("\nbare Pillow PNG encode, compress_level 1, p50 ms")
    print(f"{'size':<4} {'nano picture':>13} {'gradient':>9} {'gradient+noise':>15}")
    for size in ENCODE_RUNS:
        print(
            f"{size!s:<4} {figures[f'encode_p50_ms_{size}']:>13}"
            f" {figures[f'encode_p50_ms_{size}_gradient']:>9}"
            f" {figures[f'encode_p50_ms_{size}_gradient_noise']:>15}"
        )
    print(
        f"\nnano 1K p50 / encode p50: {figures['nano_1K_render_over_encode']}x of a nano picture"
        f" (target <= {NANO_ENCODE_TARGET}x); {figures['nano_1K_render_over_encode_gradient']}x"
        f" of a gradient; {figures['nano_1K_render_over_encode_gradient_noise']}x of a"
        " gradient with noise"
    )
    print(
        f"gRPC, {CONCURRENT_RENDERS} nano 1K renders, {WORKERS} workers:"
        f" one after another {figures['nano_1K_sequential_16_s']} s,"
        f" all at once {figures['nano_1K_concurrent_16_s']} s,"
        f" speedup {figures['nano_1K_concurrency_speedup']}x (target >= {SPEEDUP_TARGET}x)"
    )
    met = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in figures["targets"].items())
    print(f"targets: {met}")


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark and prints its figures, as a table or with --json as JSON."""
    parser = argparse.ArgumentParser(
        description="Renderer latency per tier and size against a bare PNG encode, and nano"
        " concurrency through the real service."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args(argv)
    figures = run()
    if arguments.json:
        print(json.dumps(figures, indent=2))
    else:
        _print_table(figures)


if __name__ == "__main__":
    main()
