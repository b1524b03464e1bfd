"""Idempotency records: the fingerprint of a request and its answer, kept so a retry replays it.

An answer is kept without its tenant: a record belongs to one tenant (its row says which), and
everything its answer names belongs to that tenant too. That is also what lets records written
before tenants, all of the default tenant, replay unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from services.ledger.model import (
    Balance,
    CheckInResult,
    Entry,
    EntryKind,
    GrantOutcome,
    GrantResult,
    Hold,
    HoldResult,
    HoldStatus,
    OpenAccountResult,
    Outcome,
    from_micros,
    to_micros,
)
from services.runtime.errors import FailedPrecondition, NotFound, TiergenError

__all__ = ["decode_outcome", "encode_outcome", "fingerprint", "is_recorded"]

# Only errors that follow from the ledger's state are recorded: retrying such a request must
# keep failing the same way. Invalid input is refused before it is recorded, and transient
# failures (Aborted, Unavailable) are never recorded so that a retry can succeed.
_RECORDED_ERRORS: Mapping[str, type[TiergenError]] = {
    "FailedPrecondition": FailedPrecondition,
    "NotFound": NotFound,
}


def is_recorded(outcome: Outcome | TiergenError) -> bool:
    """Whether an idempotency record keeps this outcome (every answer; state-derived failures)."""
    return not isinstance(outcome, TiergenError) or type(outcome).__name__ in _RECORDED_ERRORS


def fingerprint(operation: str, fields: Mapping[str, object]) -> str:
    """A digest of everything a request asks for, so a reused key with other fields is caught.

    Its text is the json module's, ASCII only: records written by every earlier version keep
    matching their retries.
    """
    canonical = json.dumps(
        {"operation": operation, "fields": fields}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_outcome(outcome: Outcome | TiergenError) -> str:
    """The JSON text an idempotency record keeps for an answer or a recorded failure."""
    body: dict[str, Any]
    if isinstance(outcome, TiergenError):
        name = type(outcome).__name__
        if name not in _RECORDED_ERRORS:
            raise TypeError(f"{name} is not an outcome the ledger records")
        body = {
            "error": name,
            "message": outcome.message,
            "reason": outcome.reason,
            "metadata": outcome.metadata,
        }
    elif isinstance(outcome, OpenAccountResult):
        body = {
            "result": "open_account",
            "balance": _balance_fields(outcome.balance),
            "granted": outcome.granted,
            "outcome": outcome.outcome.value,
        }
    elif isinstance(outcome, CheckInResult):
        body = {
            "result": "check_in",
            "balance": _balance_fields(outcome.balance),
            "granted": outcome.granted,
            "outcome": outcome.outcome.value,
            "iso_week": outcome.iso_week,
            "cap_reached": outcome.cap_reached,
        }
    elif isinstance(outcome, HoldResult):
        body = {
            "result": "hold",
            "hold": _hold_fields(outcome.hold),
            "balance": _balance_fields(outcome.balance),
        }
    elif isinstance(outcome, GrantResult):
        body = {
            "result": "grant",
            "entry": _entry_fields(outcome.entry),
            "balance": _balance_fields(outcome.balance),
        }
    else:
        raise TypeError(f"{type(outcome).__name__} answers are not replayed")
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()


def decode_outcome(text: str, tenant: str) -> Outcome | TiergenError:
    """The recorded answer, marked as a replay, or the recorded failure to raise again; `tenant`
    is the record's."""
    body = orjson.loads(text)
    if "error" in body:
        error_type = _RECORDED_ERRORS[body["error"]]
        return error_type(body["message"], reason=body["reason"], metadata=body["metadata"])
    kind = body["result"]
    balance = Balance(tenant=tenant, **body["balance"])
    # Records written before answers said why carry none: each was the answer of the call that
    # granted (or a copy of it kept under another key).
    grant_outcome = GrantOutcome(body.get("outcome", GrantOutcome.GRANTED.value))
    outcome: Outcome
    if kind == "open_account":
        outcome = OpenAccountResult(balance=balance, granted=body["granted"], outcome=grant_outcome)
    elif kind == "check_in":
        outcome = CheckInResult(
            balance=balance,
            granted=body["granted"],
            outcome=grant_outcome,
            iso_week=body["iso_week"],
            cap_reached=body["cap_reached"],
        )
    elif kind == "hold":
        outcome = HoldResult(hold=_hold_from(body["hold"], tenant), balance=balance)
    elif kind == "grant":
        outcome = GrantResult(entry=_entry_from(body["entry"], tenant), balance=balance)
    else:
        raise ValueError(f"unknown recorded result {kind!r}")
    return replace(outcome, replayed=True)


def _balance_fields(balance: Balance) -> dict[str, Any]:
    return {
        "account_id": balance.account_id,
        "available": balance.available,
        "held": balance.held,
        "promotional_granted": balance.promotional_granted,
        "promotional_cap": balance.promotional_cap,
        "purchased": balance.purchased,
        "adjusted": balance.adjusted,
        "consumed": balance.consumed,
    }


def _hold_fields(hold: Hold) -> dict[str, Any]:
    return {
        "hold_id": hold.hold_id,
        "account_id": hold.account_id,
        "amount": hold.amount,
        "captured_amount": hold.captured_amount,
        "status": hold.status.value,
        "memo": hold.memo,
        "created_at": to_micros(hold.created_at),
        "expires_at": to_micros(hold.expires_at),
        "resolved_at": None if hold.resolved_at is None else to_micros(hold.resolved_at),
    }


def _hold_from(fields: Mapping[str, Any], tenant: str) -> Hold:
    resolved_at = fields["resolved_at"]
    return Hold(
        hold_id=fields["hold_id"],
        tenant=tenant,
        account_id=fields["account_id"],
        amount=fields["amount"],
        captured_amount=fields["captured_amount"],
        status=HoldStatus(fields["status"]),
        memo=fields["memo"],
        created_at=from_micros(fields["created_at"]),
        expires_at=from_micros(fields["expires_at"]),
        resolved_at=None if resolved_at is None else from_micros(resolved_at),
    )


def _entry_fields(entry: Entry) -> dict[str, Any]:
    return {
        "account_id": entry.account_id,
        "sequence": entry.sequence,
        "kind": entry.kind.value,
        "amount": entry.amount,
        "source": entry.source,
        "destination": entry.destination,
        "hold_id": entry.hold_id,
        "memo": entry.memo,
        "created_at": to_micros(entry.created_at),
        "available_after": entry.available_after,
        "held_after": entry.held_after,
    }


def _entry_from(fields: Mapping[str, Any], tenant: str) -> Entry:
    return Entry(
        tenant=tenant,
        account_id=fields["account_id"],
        sequence=fields["sequence"],
        kind=EntryKind(fields["kind"]),
        amount=fields["amount"],
        source=fields["source"],
        destination=fields["destination"],
        hold_id=fields["hold_id"],
        memo=fields["memo"],
        created_at=from_micros(fields["created_at"]),
        available_after=fields["available_after"],
        held_after=fields["held_after"],
    )
