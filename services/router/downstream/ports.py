"""What the router needs from the ledger, the generator and the upscaler, free of gRPC.

Every ledger call names the `Owner` it acts for, and the ledger keeps each tenant's accounts,
holds and keys apart: the tenant always travels with the account (and with a hold's settlement,
which is the owner's of the batch it pays for).

`services.router.downstream.grpc_clients` implements them over gRPC; tests may use real servers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.router.jobs.model import Owner
from services.router.routing.catalogue import AspectRatio, ImageSize
from services.runtime.fairshare import Urgency

__all__ = [
    "AccountBalance",
    "AccountGrant",
    "Accounts",
    "CreditGrant",
    "CreditLedger",
    "GrantKind",
    "Image",
    "LedgerClient",
    "LedgerEntry",
    "ProgressSink",
    "RenderOrder",
    "Renderer",
    "Reservation",
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
    #: Whom the render is for and how soon (`routing.urgency`): the generator shares its
    #: workers between tenants and serves interactive work first by them.
    owner: Owner | None = None
    urgency: Urgency = Urgency.BULK


@dataclass(frozen=True)
class UpscaleOrder:
    """One image for the upscaler to enlarge."""

    data: bytes
    factor: float
    method: str
    output_format: str
    quality: int
    request_id: str
    #: Whom the upscale is for and how soon: the upscaler shares its workers by them.
    owner: Owner | None = None
    urgency: Urgency = Urgency.BULK


@dataclass(frozen=True)
class AccountBalance:
    """An account's credits as the ledger keeps them."""

    owner: Owner
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


class GrantKind(enum.StrEnum):
    """What credits a grant adds: bought by the account, or an operator's correction."""

    PURCHASE = "purchase"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True)
class LedgerEntry:
    """One movement in an account's history, as the ledger recorded it."""

    entry_id: str
    owner: Owner
    #: The ledger's EntryKind, lower-case without its prefix ("purchase", "adjustment").
    kind: str
    available_delta: int
    held_delta: int
    available_after: int
    held_after: int
    #: The hold the movement belongs to; "" for a grant.
    hold_id: str
    #: A grant's reason, or a hold's memo.
    memo: str
    create_time: datetime


@dataclass(frozen=True)
class CreditGrant:
    """What granting purchased or adjusted credits recorded, and the balance after."""

    entry: LedgerEntry
    balance: AccountBalance
    replayed: bool


class Accounts(Protocol):
    """The ledger's account calls the router forwards for callers that only know the router."""

    async def open_account(self, owner: Owner, idempotency_key: str) -> AccountGrant: ...

    async def balance(self, owner: Owner) -> AccountBalance: ...

    async def check_in(self, owner: Owner, idempotency_key: str) -> AccountGrant: ...

    async def grant(
        self, owner: Owner, amount: int, kind: GrantKind, reason: str, idempotency_key: str
    ) -> CreditGrant:
        """Adds `amount` credits of `kind` to the owner's open account, recording `reason`."""
        ...


@dataclass(frozen=True)
class Reservation:
    """A hold placed, and the account's available credits just after it (None when the ledger
    did not say): what a credits.low webhook compares with its threshold."""

    hold_id: str
    available: int | None = None


class CreditLedger(Protocol):
    """Credits as the router uses them: look, hold, settle."""

    async def available(self, owner: Owner) -> int: ...

    async def reserve(
        self, owner: Owner, amount: int, idempotency_key: str, memo: str, ttl_seconds: int
    ) -> Reservation:
        """Holds `amount`; returns the hold and the balance it left. Raises FailedPrecondition
        when unaffordable."""
        ...

    async def capture(self, owner: Owner, hold_id: str, amount: int, idempotency_key: str) -> None:
        """Consumes `amount` of the owner's hold; the rest returns to the account."""
        ...

    async def release(self, owner: Owner, hold_id: str, idempotency_key: str) -> None:
        """Returns all of the owner's hold to the account."""
        ...


class LedgerClient(CreditLedger, Accounts, Protocol):
    """The ledger as the router calls it: credits for its operations, accounts for its callers."""


class Renderer(Protocol):
    """The generator."""

    async def render(self, order: RenderOrder, progress: ProgressSink) -> Image: ...


class Upscaler(Protocol):
    """The upscaler."""

    async def upscale(self, order: UpscaleOrder, progress: ProgressSink) -> Image: ...
