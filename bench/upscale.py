"""Benchmark of the upscaler service against plain Pillow, and of its peak memory at 4K.

    python -m bench.upscale [--runs 7] [--warmup 2] [--json]

In one run, alternating the variants so that changes in machine load hit them alike:

(a) the service, started as a separate process (`python -m services.upscaler`, port 0, its
    address read from TIERGEN_READY_FILE) and called over gRPC with the input streamed up and
    the output streamed down, upscaling a 1024x1024 PNG 4x with Lanczos to PNG and to JPEG;
(b) the same decode, resize and encode in plain Pillow in this process, at the encoder settings
    the service uses (TIERGEN_UPSCALER_* from the environment, as the service reads them).

The service's peak memory is the sum of the peak RSS (VmHWM) of its process tree: the server
and its worker processes, read from /proc before the service stops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from PIL import Image
from tiergen.common.v1 import common_pb2
from tiergen.upscaler.v1 import upscaler_pb2, upscaler_pb2_grpc

from bench.processes import ProcessGroup, ServerProcess
from bench.upscale_gallery import draw_scene
from services.runtime.chunks import split
from services.runtime.tls import channel_credentials
from services.upscaler.settings import UpscalerSettings

__all__ = ["main", "measure"]

_INPUT_SIDE = 1024
_FACTOR = 4
_OUTPUT_SIDE = _INPUT_SIDE * _FACTOR
#: The targets of issue 5: the service within 1.25x of plain Pillow, under 400 MB at 4K.
_MAX_RATIO = 1.25
_MAX_RSS_MB = 400.0
_CALL_TIMEOUT = 120.0
_FORMATS = {"png": common_pb2.IMAGE_FORMAT_PNG, "jpeg": common_pb2.IMAGE_FORMAT_JPEG}


@dataclass(frozen=True)
class _Process:
    pid: int
    role: str
    peak_rss_mb: float


class UpscalerProcess:
    """`python -m services.upscaler` on a free port, `environ` added; stopped on exit."""

    def __init__(self, environ: dict[str, str]) -> None:
        self._environ = environ
        self._directory = tempfile.TemporaryDirectory(prefix="tiergen-bench-")
        self._processes = ProcessGroup(Path(self._directory.name))
        self._server: ServerProcess | None = None
        self.address = ""

    def channel(self) -> grpc.Channel:
        """A blocking TLS channel to the service, calling as the router does."""
        credentials = channel_credentials(self._processes.client_security())
        return grpc.secure_channel(self.address, credentials)

    def __enter__(self) -> UpscalerProcess:
        try:
            self._server = self._processes.spawn(
                "upscaler",
                "services.upscaler",
                {**self._processes.tls_env("upscaler"), **self._environ},
            )
            self.address = self._server.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._processes.stop()
        self._directory.cleanup()

    def processes(self) -> list[_Process]:
        """The server and every process under it, with their peak RSS so far."""
        if self._server is None:
            return []
        found = []
        pending = [(self._server.pid, "server")]
        while pending:
            pid, role = pending.pop()
            found.append(_Process(pid, role, _peak_rss_mb(pid)))
            pending += [(child, _role(child)) for child in _children(pid)]
        return found


def _children(pid: int) -> list[int]:
    children = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(child) for child in listing.read_text().split()]
    return children


def _role(pid: int) -> str:
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    if b"resource_tracker" in command:
        return "resource tracker"
    return "worker" if b"spawn_main" in command else "other"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _through_service(stub: Any, data: bytes, output_format: str) -> bytes:
    spec = upscaler_pb2.UpscaleSpec(
        factor=_FACTOR,
        method=common_pb2.UPSCALE_METHOD_LANCZOS,
        output_format=_FORMATS[output_format],
        input_size_bytes=len(data),
    )
    messages = [upscaler_pb2.UpscaleRequest(spec=spec)]
    messages += [upscaler_pb2.UpscaleRequest(chunk=chunk) for chunk in split(data)]
    parts = []
    expected = ""
    for message in stub.Upscale(iter(messages), timeout=_CALL_TIMEOUT):
        kind = message.WhichOneof("payload")
        if kind == "result":
            expected = message.result.image.sha256
        elif kind == "chunk":
            parts.append(message.chunk.data)
    output = b"".join(parts)
    if hashlib.sha256(output).hexdigest() != expected:
        raise RuntimeError("the service's output does not match its announced sha256")
    return output


def _with_pillow(data: bytes, output_format: str, settings: UpscalerSettings) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.load()
    upscaled = image.resize((_OUTPUT_SIDE, _OUTPUT_SIDE), Image.Resampling.LANCZOS)
    sink = io.BytesIO()
    if output_format == "png":
        upscaled.save(sink, "PNG", compress_level=settings.png_compress_level)
    else:
        upscaled.save(sink, "JPEG", quality=settings.jpeg_quality)
    return sink.getvalue()


def _check(output: bytes, variant: str) -> int:
    with Image.open(io.BytesIO(output)) as image:
        if image.size != (_OUTPUT_SIDE, _OUTPUT_SIDE):
            raise RuntimeError(f"{variant} gave {image.size}, not {_OUTPUT_SIDE} px square")
    return len(output)


def measure(runs: int = 7, warmup: int = 2) -> dict[str, Any]:
    """Run the benchmark and return its figures (the document `--json` prints)."""
    settings = UpscalerSettings.from_env(os.environ)
    buffer = io.BytesIO()
    draw_scene(_INPUT_SIDE).save(buffer, "PNG")
    data = buffer.getvalue()
    samples: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    with UpscalerProcess({}) as service:
        with service.channel() as channel:
            stub = upscaler_pb2_grpc.UpscalerServiceStub(channel)  # type: ignore[no-untyped-call]
            variants: dict[str, Callable[[], bytes]] = {}
            for name in _FORMATS:
                variants[f"service_{name}"] = partial(_through_service, stub, data, name)
                variants[f"pillow_{name}"] = partial(_with_pillow, data, name, settings)
            order = list(variants)
            for round_number in range(warmup + runs):
                # Rotate the order each round, so no variant always runs after the same one.
                shift = round_number % len(order)
                for variant in order[shift:] + order[:shift]:
                    started = time.perf_counter()
                    output = variants[variant]()
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    sizes[variant] = _check(output, variant)
                    if round_number >= warmup:
                        samples.setdefault(variant, []).append(round(elapsed_ms, 1))
        processes = service.processes()
    p50 = {variant: statistics.median(values) for variant, values in samples.items()}
    rss = round(sum(process.peak_rss_mb for process in processes), 1)
    ratio_png = p50["service_png"] / p50["pillow_png"]
    ratio_jpeg = p50["service_jpeg"] / p50["pillow_jpeg"]
    return {
        "service_p50_ms_png": round(p50["service_png"], 1),
        "pillow_p50_ms_png": round(p50["pillow_png"], 1),
        "service_p50_ms_jpeg": round(p50["service_jpeg"], 1),
        "pillow_p50_ms_jpeg": round(p50["pillow_jpeg"], 1),
        "service_peak_rss_mb_4k": rss,
        "ratio_png": round(ratio_png, 3),
        "ratio_jpeg": round(ratio_jpeg, 3),
        "targets_met": {
            "png_within_1.25x_of_pillow": ratio_png <= _MAX_RATIO,
            "jpeg_within_1.25x_of_pillow": ratio_jpeg <= _MAX_RATIO,
            "peak_rss_under_400_mb": rss < _MAX_RSS_MB,
        },
        "runs": runs,
        "warmup_runs": warmup,
        "input": f"{_INPUT_SIDE}x{_INPUT_SIDE} PNG, {len(data)} bytes, upscaled {_FACTOR}x lanczos",
        "encoder": {
            "png_compress_level": settings.png_compress_level,
            "jpeg_quality": settings.jpeg_quality,
        },
        "workers": settings.workers,
        "output_bytes": {"png": sizes["service_png"], "jpeg": sizes["service_jpeg"]},
        "service_processes": [
            {"role": process.role, "peak_rss_mb": round(process.peak_rss_mb, 1)}
            for process in processes
        ],
        "samples_ms": samples,
    }


def _report(figures: dict[str, Any]) -> str:
    met = figures["targets_met"]
    lines = [
        f"input: {figures['input']}; {figures['runs']} runs after {figures['warmup_runs']} "
        f"warm-up, {figures['workers']} workers",
        f"{'output':<8}{'service p50':>14}{'Pillow p50':>14}{'ratio':>9}   target <= 1.25x",
    ]
    for name in _FORMATS:
        lines.append(
            f"{name:<8}{figures[f'service_p50_ms_{name}']:>11.1f} ms"
            f"{figures[f'pillow_p50_ms_{name}']:>11.1f} ms{figures[f'ratio_{name}']:>8.2f}x"
            f"   {'met' if met[f'{name}_within_1.25x_of_pillow'] else 'MISSED'}"
        )
    processes = ", ".join(
        f"{process['role']} {process['peak_rss_mb']:.0f}"
        for process in figures["service_processes"]
    )
    lines.append(
        f"service peak RSS at 4K: {figures['service_peak_rss_mb_4k']:.0f} MB ({processes})"
        f"   target < 400 MB: {'met' if met['peak_rss_under_400_mb'] else 'MISSED'}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7, help="measured runs per variant")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured runs per variant")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args(argv)
    if options.runs < 1 or options.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    figures = measure(options.runs, options.warmup)
    print(json.dumps(figures, indent=2) if options.json else _report(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
