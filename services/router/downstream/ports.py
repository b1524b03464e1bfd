"""What the router needs from the ledger, the generator and the upscaler, free of gRPC.

`services.router.downstream.grpc_clients` implements them over gRPC; tests may use real servers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.router.routing.catalogue import AspectRatio, ImageSize

__all__ = [
    "AccountBalance",
    "AccountGrant",
    "Accounts",
    "CreditLedger",
    "Image",
    "LedgerClient",
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
    """An encoded image and what is known about it; `sha256` is "" when not known (never
    unchecked: a digest announced with the bytes was verified on the way in)."""

    data: bytes
    width: int
    height: int
    media_type: str
    sha256: str
    #: How far it moved from the reference it was rendered from, as the generator measured it.
    drift: float | None = None


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
    #: SHA-256 of `reference` and of `mask` when known (an asset's address, a digest taken
    #: on the way in), so that they are not hashed again to announce them.
    reference_sha256: str = ""
    mask_sha256: str = ""


@dataclass(frozen=True)
class UpscaleOrder:
    """One image for the upscaler to enlarge."""

    data: bytes
    factor: float
    method: str
    output_format: str
    quality: int
    request_id: str


@dataclass(frozen=True)
class AccountBalance:
    """An account's credits as the ledger keeps them."""

    account_id: str
    available: int
    held: int
    total: int
    promotional_granted: int
    promotional_cap: int
    purchased: int
    consumed: int


@dataclass(frozen=True)
class AccountGrant:
    """What opening an account or checking in granted, and the balance after.

    `outcome` says why: "granted", "already_open" or "already_checked_in_this_week" (the
    ledger's GrantOutcome, lower-case). `iso_week` and `cap_reached` are a check-in's.
    """

    balance: AccountBalance
    granted: int
    replayed: bool
    outcome: str
    iso_week: str = ""
    cap_reached: bool = False


class Accounts(Protocol):
    """The ledger's account calls the router forwards for callers that only know the router."""

    async def open_account(self, account_id: str, idempotency_key: str) -> AccountGrant: ...

    async def balance(self, account_id: str) -> AccountBalance: ...

    async def check_in(self, account_id: str, idempotency_key: str) -> AccountGrant: ...


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


class LedgerClient(CreditLedger, Accounts, Protocol):
    """The ledger as the router calls it: credits for its operations, accounts for its callers."""


class Renderer(Protocol):
    """The generator."""

    async def render(self, order: RenderOrder, progress: ProgressSink) -> Image: ...


class Upscaler(Protocol):
    """The upscaler."""

    async def upscale(self, order: UpscaleOrder, progress: ProgressSink) -> Image: ...
