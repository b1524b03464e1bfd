"""What the router needs from the ledger, the generator and the upscaler, free of gRPC.

`services.router.downstream.grpc_clients` implements them over gRPC; tests may use real servers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.router.routing.catalogue import AspectRatio, ImageSize

__all__ = [
    "CreditLedger",
    "Image",
    "ProgressSink",
    "RenderOrder",
    "Renderer",
    "UpscaleOrder",
    "Upscaler",
]

#: Receives (stage, fraction done) while a render or upscale runs.
ProgressSink = Callable[[str, float], None]


@dataclass(frozen=True)
class Image:
    """An encoded image and what is known about it."""

    data: bytes
    width: int
    height: int
    media_type: str
    sha256: str


@dataclass(frozen=True)
class RenderOrder:
    """One image for the generator to render."""

    tier: str
    size: ImageSize
    aspect_ratio: AspectRatio
    prompt: str
    seed: int
    request_id: str
    reference: bytes | None = None
    strength: float = 0.0
    #: In-painting: white where `reference` (the image to edit) is rendered again.
    mask: bytes | None = None


@dataclass(frozen=True)
class UpscaleOrder:
    """One image for the upscaler to enlarge."""

    data: bytes
    factor: float
    method: str
    output_format: str
    quality: int
    request_id: str


class CreditLedger(Protocol):
    """Credits as the router uses them: look, hold, settle."""

    async def available(self, account_id: str) -> int: ...

    async def reserve(
        self, account_id: str, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> str:
        """Holds `amount`; returns the hold id. Raises FailedPrecondition when unaffordable."""
        ...

    async def capture(self, hold_id: str, amount: int, idempotency_key: str) -> None: ...

    async def release(self, hold_id: str, idempotency_key: str) -> None: ...


class Renderer(Protocol):
    """The generator."""

    async def render(self, order: RenderOrder, progress: ProgressSink) -> Image: ...


class Upscaler(Protocol):
    """The upscaler."""

    async def upscale(self, order: UpscaleOrder, progress: ProgressSink) -> Image: ...
