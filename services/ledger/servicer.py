"""The ledger's gRPC edge: translates messages to the domain and back; nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from google.protobuf import timestamp_pb2
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.ledger.ledger import Ledger
from services.ledger.model import (
    Balance,
    Entry,
    EntryKind,
    GrantKind,
    GrantOutcome,
    Hold,
    HoldResult,
    HoldStatus,
    available_book,
    held_book,
)
from services.runtime.callers import peer_identities
from services.runtime.errors import InvalidArgument
from services.runtime.identifiers import DEFAULT_TENANT
from services.runtime.tracing import current_trace_id

__all__ = ["LedgerServicer"]

_audit = structlog.get_logger("tiergen.audit")
_HOLD_STATUSES = {
    HoldStatus.OPEN: ledger_pb2.HOLD_STATUS_OPEN,
    HoldStatus.CAPTURED: ledger_pb2.HOLD_STATUS_CAPTURED,
    HoldStatus.RELEASED: ledger_pb2.HOLD_STATUS_RELEASED,
    HoldStatus.EXPIRED: ledger_pb2.HOLD_STATUS_EXPIRED,
}
_ENTRY_KINDS: dict[EntryKind, ledger_pb2.EntryKind] = {
    EntryKind.SIGNUP_BONUS: ledger_pb2.ENTRY_KIND_SIGNUP_BONUS,
    EntryKind.CHECK_IN: ledger_pb2.ENTRY_KIND_CHECK_IN,
    EntryKind.PURCHASE: ledger_pb2.ENTRY_KIND_PURCHASE,
    EntryKind.ADJUSTMENT: ledger_pb2.ENTRY_KIND_ADJUSTMENT,
    EntryKind.RESERVE: ledger_pb2.ENTRY_KIND_RESERVE,
    EntryKind.CAPTURE: ledger_pb2.ENTRY_KIND_CAPTURE,
    EntryKind.RELEASE: ledger_pb2.ENTRY_KIND_RELEASE,
    EntryKind.EXPIRE: ledger_pb2.ENTRY_KIND_EXPIRE,
}
_ENTRY_KINDS_BACK = {int(value): kind for kind, value in _ENTRY_KINDS.items()}
_GRANT_OUTCOMES: dict[GrantOutcome, ledger_pb2.GrantOutcome] = {
    GrantOutcome.GRANTED: ledger_pb2.GRANT_OUTCOME_GRANTED,
    GrantOutcome.ALREADY_OPEN: ledger_pb2.GRANT_OUTCOME_ALREADY_OPEN,
    GrantOutcome.ALREADY_CHECKED_IN_THIS_WEEK: (
        ledger_pb2.GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK
    ),
}
_GRANT_KINDS = {
    ledger_pb2.GRANT_KIND_PURCHASE: GrantKind.PURCHASE,
    ledger_pb2.GRANT_KIND_ADJUSTMENT: GrantKind.ADJUSTMENT,
}


def _tenant(request: Any) -> str:
    """The tenant a request names; none means the default tenant, so that a client from before
    tenants reaches the accounts it always had."""
    tenant: str = request.tenant
    return tenant or DEFAULT_TENANT


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def balance_message(balance: Balance) -> ledger_pb2.Balance:
    return ledger_pb2.Balance(
        tenant=balance.tenant,
        account_id=balance.account_id,
        available=balance.available,
        held=balance.held,
        total=balance.total,
        promotional_granted=balance.promotional_granted,
        promotional_cap=balance.promotional_cap,
        purchased=balance.purchased + balance.adjusted,
        consumed=balance.consumed,
    )


def hold_message(hold: Hold) -> ledger_pb2.Hold:
    return ledger_pb2.Hold(
        hold_id=hold.hold_id,
        tenant=hold.tenant,
        account_id=hold.account_id,
        amount=hold.amount,
        captured_amount=hold.captured_amount,
        status=_HOLD_STATUSES[hold.status],
        memo=hold.memo,
        create_time=_timestamp(hold.created_at),
        expire_time=_timestamp(hold.expires_at),
        resolve_time=_timestamp(hold.resolved_at),
    )


def _delta(entry: Entry, book: str) -> int:
    """How much `entry` changed one of the account's books."""
    if entry.destination == book:
        return entry.amount
    if entry.source == book:
        return -entry.amount
    return 0


def entry_message(entry: Entry) -> ledger_pb2.Entry:
    return ledger_pb2.Entry(
        entry_id=f"{entry.account_id}/{entry.sequence}",
        tenant=entry.tenant,
        account_id=entry.account_id,
        kind=_ENTRY_KINDS[entry.kind],
        available_delta=_delta(entry, available_book(entry.account_id)),
        held_delta=_delta(entry, held_book(entry.account_id)),
        available_after=entry.available_after,
        held_after=entry.held_after,
        hold_id=entry.hold_id or "",
        memo=entry.memo,
        create_time=_timestamp(entry.created_at),
    )


def _hold_reply(cls: Any, result: HoldResult) -> Any:
    return cls(
        hold=hold_message(result.hold),
        balance=balance_message(result.balance),
        replayed=result.replayed,
    )


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """LedgerService over the domain `Ledger`.

    A Grant by an operator (a caller among `admin_identities`: `tiergen ledger grant`) writes a
    `credits.granted` event to the audit trail, as the router does for the grants of its
    tenants' credentials; the router's own calls are audited by the router.
    """

    def __init__(self, ledger: Ledger, admin_identities: frozenset[str] = frozenset()) -> None:
        self._ledger = ledger
        self._admins = admin_identities

    async def OpenAccount(
        self, request: ledger_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.OpenAccountResponse:
        result = await self._ledger.open_account(
            _tenant(request), request.account_id, request.idempotency_key
        )
        return ledger_pb2.OpenAccountResponse(
            balance=balance_message(result.balance),
            granted=result.granted,
            replayed=result.replayed,
            outcome=_GRANT_OUTCOMES[result.outcome],
        )

    async def CheckIn(
        self, request: ledger_pb2.CheckInRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.CheckInResponse:
        result = await self._ledger.check_in(
            _tenant(request), request.account_id, request.idempotency_key
        )
        return ledger_pb2.CheckInResponse(
            balance=balance_message(result.balance),
            granted=result.granted,
            iso_week=result.iso_week,
            cap_reached=result.cap_reached,
            replayed=result.replayed,
            outcome=_GRANT_OUTCOMES[result.outcome],
        )

    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.GetBalanceResponse:
        balance = await self._ledger.get_balance(_tenant(request), request.account_id)
        return ledger_pb2.GetBalanceResponse(balance=balance_message(balance))

    async def Reserve(
        self, request: ledger_pb2.ReserveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.ReserveResponse:
        result = await self._ledger.reserve(
            _tenant(request),
            request.account_id,
            request.amount,
            request.idempotency_key,
            ttl_seconds=request.ttl_seconds or None,
            memo=request.memo,
        )
        return _hold_reply(ledger_pb2.ReserveResponse, result)

    async def Capture(
        self, request: ledger_pb2.CaptureRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.CaptureResponse:
        result = await self._ledger.capture(
            _tenant(request), request.hold_id, request.amount, request.idempotency_key
        )
        return _hold_reply(ledger_pb2.CaptureResponse, result)

    async def Release(
        self, request: ledger_pb2.ReleaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.ReleaseResponse:
        result = await self._ledger.release(
            _tenant(request), request.hold_id, request.idempotency_key
        )
        return _hold_reply(ledger_pb2.ReleaseResponse, result)

    async def Grant(
        self, request: ledger_pb2.GrantRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.GrantResponse:
        kind = _GRANT_KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument(
                "kind must be GRANT_KIND_PURCHASE or GRANT_KIND_ADJUSTMENT", field="kind"
            )
        tenant = _tenant(request)
        result = await self._ledger.grant(
            tenant,
            request.account_id,
            request.amount,
            kind,
            request.reason,
            request.idempotency_key,
        )
        identities, identity = peer_identities(context)
        if identities & self._admins:
            # A replay is audited too, marked so: whoever sums the grants counts each once.
            _audit.info(
                "audit",
                action="credits.granted",
                tenant=tenant,
                identity=identity,
                account_id=request.account_id,
                amount=request.amount,
                # Spelled as the router's event spells it.
                kind=kind.value.lower(),
                reason=request.reason,
                replayed=result.replayed,
                trace_id=current_trace_id(),
            )
        return ledger_pb2.GrantResponse(
            entry=entry_message(result.entry),
            balance=balance_message(result.balance),
            replayed=result.replayed,
        )

    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ledger_pb2.ListEntriesResponse:
        kinds = []
        for value in request.kinds:
            if value == ledger_pb2.ENTRY_KIND_UNSPECIFIED:
                continue
            if value not in _ENTRY_KINDS_BACK:
                raise InvalidArgument(f"kinds has an unknown value {value}", field="kinds")
            kinds.append(_ENTRY_KINDS_BACK[value])
        if request.kinds and not kinds:
            # The contract: ENTRY_KIND_UNSPECIFIED as a filter matches nothing. The account
            # must still exist.
            await self._ledger.get_balance(_tenant(request), request.account_id)
            return ledger_pb2.ListEntriesResponse()
        page = await self._ledger.list_entries(
            _tenant(request),
            request.account_id,
            start=request.start_time.ToDatetime(tzinfo=UTC)
            if request.HasField("start_time")
            else None,
            end=request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None,
            kinds=kinds,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ledger_pb2.ListEntriesResponse(
            entries=[entry_message(entry) for entry in page.entries],
            next_page_token=page.next_page_token,
        )
