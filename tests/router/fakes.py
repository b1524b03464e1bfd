"""In-memory stand-ins for the router's ports (the ledger, the generator, the upscaler), so that
the router's domain runs in milliseconds; each keeps what a test needs to look at."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
from dataclasses import dataclass, field

from PIL import Image as PILImage

from services.router.downstream.ports import Image, ProgressSink, RenderOrder, UpscaleOrder
from services.router.routing.catalogue import pixel_size
from services.runtime.errors import FailedPrecondition, NotFound, TiergenError

__all__ = ["MemoryLedger", "PictureRenderer", "PictureUpscaler", "picture"]


def picture(width: int, height: int, seed: int) -> Image:
    """A solid-colour PNG of `width` x `height` whose colour follows from `seed`."""
    colour = tuple(hashlib.sha256(str(seed).encode()).digest()[:3])
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), colour).save(out, format="PNG", compress_level=1)
    data = out.getvalue()
    return Image(data, width, height, "image/png", hashlib.sha256(data).hexdigest())


@dataclass
class _Hold:
    account_id: str
    amount: int
    state: str = "open"
    captured: int = 0


@dataclass
class MemoryLedger:
    """Accounts, holds and their idempotency keys, as the ledger keeps them."""

    accounts: dict[str, int] = field(default_factory=dict)
    holds: dict[str, _Hold] = field(default_factory=dict)
    _keys: dict[str, str] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def open(self, account_id: str, credits: int = 400) -> str:
        self.accounts[account_id] = credits
        return account_id

    def held(self, account_id: str) -> int:
        holds = self.holds.values()
        return sum(h.amount for h in holds if h.account_id == account_id and h.state == "open")

    async def available(self, account_id: str) -> int:
        if account_id not in self.accounts:
            raise NotFound("account not found", reason="ACCOUNT_NOT_FOUND")
        return self.accounts[account_id]

    async def reserve(
        self, account_id: str, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> str:
        if idempotency_key in self._keys:
            return self._keys[idempotency_key]
        available = await self.available(account_id)
        if amount > available:
            raise FailedPrecondition(
                "insufficient credits",
                reason="INSUFFICIENT_CREDITS",
                metadata={"available": str(available), "required": str(amount)},
            )
        hold_id = f"hold_{next(self._ids)}"
        self.accounts[account_id] -= amount
        self.holds[hold_id] = _Hold(account_id, amount)
        self._keys[idempotency_key] = hold_id
        return hold_id

    async def capture(self, hold_id: str, amount: int, idempotency_key: str) -> None:
        hold = self.holds[hold_id]
        if hold.state == "captured" and hold.captured == amount:
            return
        if hold.state != "open" or amount > hold.amount:
            raise FailedPrecondition("cannot capture", reason="CAPTURE_EXCEEDS_HOLD")
        hold.state, hold.captured = "captured", amount
        self.accounts[hold.account_id] += hold.amount - amount

    async def release(self, hold_id: str, idempotency_key: str) -> None:
        hold = self.holds[hold_id]
        if hold.state == "released":
            return
        if hold.state != "open":
            raise FailedPrecondition("hold is settled", reason="HOLD_ALREADY_CAPTURED")
        hold.state = "released"
        self.accounts[hold.account_id] += hold.amount


@dataclass
class PictureRenderer:
    """Renders a solid colour per seed at the order's pixel size.

    `failures` are raised by the next renders, one each. While `gate` is set, every render
    after the first `ungated` waits for it to open; `entered` gets the request id of each
    render that reached the gate.
    """

    orders: list[RenderOrder] = field(default_factory=list)
    failures: list[TiergenError] = field(default_factory=list)
    gate: asyncio.Event | None = None
    ungated: int = 0
    entered: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def render(self, order: RenderOrder, progress: ProgressSink) -> Image:
        self.orders.append(order)
        if self.failures:
            raise self.failures.pop(0)
        if self.gate is not None and len(self.orders) > self.ungated:
            self.entered.put_nowait(order.request_id)
            await self.gate.wait()
        width, height = pixel_size(order.size, order.aspect_ratio)
        return picture(width, height, order.seed)


@dataclass
class PictureUpscaler:
    """Enlarges by painting a solid colour at the scaled size."""

    orders: list[UpscaleOrder] = field(default_factory=list)

    async def upscale(self, order: UpscaleOrder, progress: ProgressSink) -> Image:
        self.orders.append(order)
        with PILImage.open(io.BytesIO(order.data)) as source:
            width, height = source.size
        return picture(round(width * order.factor), round(height * order.factor), 0)
