"""The router's OpenAccount and CheckIn answer what the ledger answered, outcome included."""

from __future__ import annotations

from tiergen.ledger.v1 import ledger_pb2
from tiergen.router.v1 import router_pb2


async def test_open_account_passes_on_what_the_call_granted_and_why(suite):
    router = suite.router

    async def open_account(key: str) -> router_pb2.OpenAccountResponse:
        return await router.OpenAccount(
            router_pb2.OpenAccountRequest(account_id="ann", idempotency_key=key)
        )

    first = await open_account("signup")
    again = await open_account("signup-from-another-device")
    retried = await open_account("signup-from-another-device")

    assert (first.granted, first.replayed, first.outcome) == (
        400,
        False,
        ledger_pb2.GRANT_OUTCOME_GRANTED,
    )
    assert (again.granted, again.replayed, again.outcome) == (
        0,
        False,
        ledger_pb2.GRANT_OUTCOME_ALREADY_OPEN,
    )
    assert again.balance == await suite.balance("ann")
    assert (retried.replayed, retried.outcome, retried.balance) == (
        True,
        ledger_pb2.GRANT_OUTCOME_ALREADY_OPEN,
        again.balance,
    )


async def test_check_in_passes_on_what_the_call_granted_and_why(suite):
    account = await suite.open_account()
    router = suite.router

    async def check_in(key: str) -> router_pb2.CheckInResponse:
        return await router.CheckIn(
            router_pb2.CheckInRequest(account_id=account, idempotency_key=key)
        )

    # The suite runs on the wall clock: three taps span one ISO week, or two if a week ends
    # between them, so at least one tap comes in a week already checked in.
    taps = [await check_in(f"tap-{i}") for i in range(3)]
    retried = await check_in("tap-0")

    weeks_seen: set[str] = set()
    for tap in taps:
        if tap.iso_week in weeks_seen:
            assert (tap.granted, tap.outcome) == (
                0,
                ledger_pb2.GRANT_OUTCOME_ALREADY_CHECKED_IN_THIS_WEEK,
            )
        else:
            assert (tap.granted, tap.outcome) == (40, ledger_pb2.GRANT_OUTCOME_GRANTED)
        assert not tap.replayed
        weeks_seen.add(tap.iso_week)
    assert len(weeks_seen) < len(taps)
    assert (retried.replayed, retried.outcome, retried.granted) == (
        True,
        ledger_pb2.GRANT_OUTCOME_GRANTED,
        40,
    )
