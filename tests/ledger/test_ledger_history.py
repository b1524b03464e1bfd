"""History: paged, filtered entries with running balances, that the database keeps append-only."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.ledger.model import EntryKind, GrantKind
from services.runtime.errors import InvalidArgument, NotFound
from services.runtime.migrations import head
from tests.ledger.conftest import TENANT


@pytest.fixture
async def busy_alice(ledger, clock):
    """Alice's account with seven entries, one minute apart."""
    await ledger.open_account(TENANT, "alice", "open")  # 1 SIGNUP_BONUS
    clock.advance(minutes=1)
    await ledger.check_in(TENANT, "alice", "week")  # 2 CHECK_IN
    clock.advance(minutes=1)
    hold = (await ledger.reserve(TENANT, "alice", 100, "job")).hold  # 3 RESERVE
    clock.advance(minutes=1)
    await ledger.capture(TENANT, hold.hold_id, 70, "capture")  # 4 CAPTURE, 5 RELEASE
    clock.advance(minutes=1)
    await ledger.grant(TENANT, "alice", 20, GrantKind.PURCHASE, "order", "buy")  # 6 PURCHASE
    clock.advance(minutes=1)
    await ledger.reserve(TENANT, "alice", 50, "job-2")  # 7 RESERVE
    return ledger


async def test_entries_come_oldest_first_with_the_balance_after_each(busy_alice):
    page = await busy_alice.list_entries(TENANT, "alice")

    assert page.next_page_token == ""
    rows = [(e.sequence, e.kind, e.amount, e.available_after, e.held_after) for e in page.entries]
    assert rows == [
        (1, EntryKind.SIGNUP_BONUS, 400, 400, 0),
        (2, EntryKind.CHECK_IN, 40, 440, 0),
        (3, EntryKind.RESERVE, 100, 340, 100),
        (4, EntryKind.CAPTURE, 70, 340, 30),
        (5, EntryKind.RELEASE, 30, 370, 0),
        (6, EntryKind.PURCHASE, 20, 390, 0),
        (7, EntryKind.RESERVE, 50, 340, 50),
    ]
    assert [e.balance_after for e in page.entries] == [400, 440, 440, 370, 370, 390, 390]


async def test_pages_follow_one_another_to_the_end(busy_alice):
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = await busy_alice.list_entries(TENANT, "alice", page_size=3, page_token=token)
        seen.extend(entry.sequence for entry in page.entries)
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert pages == 3


async def test_a_page_exactly_at_the_end_has_no_token(busy_alice):
    page = await busy_alice.list_entries(TENANT, "alice", page_size=7)

    assert len(page.entries) == 7
    assert page.next_page_token == ""


async def test_entries_filter_by_kind(busy_alice):
    page = await busy_alice.list_entries(
        TENANT, "alice", kinds=[EntryKind.RESERVE, EntryKind.PURCHASE, EntryKind.RESERVE]
    )

    assert [e.sequence for e in page.entries] == [3, 6, 7]


async def test_entries_filter_by_time_start_inclusive_end_exclusive(busy_alice, clock):
    opened = clock.now() - timedelta(minutes=5)

    page = await busy_alice.list_entries(
        TENANT, "alice", start=opened + timedelta(minutes=1), end=opened + timedelta(minutes=3)
    )

    assert [e.sequence for e in page.entries] == [2, 3]


async def test_a_page_token_only_continues_its_own_listing(busy_alice):
    page = await busy_alice.list_entries(TENANT, "alice", page_size=2)

    with pytest.raises(InvalidArgument) as caught:
        await busy_alice.list_entries(
            TENANT, "alice", page_size=2, kinds=[EntryKind.RESERVE], page_token=page.next_page_token
        )

    assert caught.value.violations[0].field == "page_token"


@pytest.mark.parametrize("token", ["garbage", "eyJhZnRlciI6IC0xfQ", "e30", "!!!"])
async def test_forged_page_tokens_are_invalid(busy_alice, token):
    with pytest.raises(InvalidArgument) as caught:
        await busy_alice.list_entries(TENANT, "alice", page_token=token)

    assert caught.value.violations[0].field == "page_token"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"kinds": ["RESERVE"]}, "kinds"),
        ({"start": datetime(2026, 11, 23)}, "start"),
    ],
)
async def test_bad_listing_requests_are_invalid(busy_alice, arguments, field):
    with pytest.raises(InvalidArgument) as caught:
        await busy_alice.list_entries(TENANT, "alice", **arguments)

    assert caught.value.violations[0].field == field


async def test_an_end_before_the_start_is_invalid(busy_alice, clock):
    with pytest.raises(InvalidArgument) as caught:
        await busy_alice.list_entries(TENANT, "alice", start=clock.now(), end=clock.now())

    assert caught.value.violations[0].field == "end"


async def test_listing_an_unknown_account_is_not_found(ledger):
    with pytest.raises(NotFound):
        await ledger.list_entries(TENANT, "nobody")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET amount = amount + 1",
        "UPDATE entries SET memo = 'edited' WHERE sequence = 1",
        "DELETE FROM entries WHERE sequence = 2",
        "DELETE FROM entries",
    ],
)
async def test_the_database_refuses_to_change_or_delete_entries(harness, busy_alice, statement):
    before = await busy_alice.list_entries(TENANT, "alice")

    with pytest.raises(Exception, match="append-only"):
        await harness.execute_raw(statement)

    assert await busy_alice.list_entries(TENANT, "alice") == before


async def test_postgres_also_refuses_to_truncate_entries(harness, busy_alice):
    # SQLite has no TRUNCATE (its "DELETE FROM entries" is refused above), PostgreSQL has.
    statement = "TRUNCATE entries CASCADE" if harness.kind == "postgres" else "DELETE FROM entries"

    with pytest.raises(Exception, match="append-only"):
        await harness.execute_raw(statement)

    assert len((await busy_alice.list_entries(TENANT, "alice")).entries) == 7


async def test_migrations_are_recorded_and_applied_once(harness, busy_alice):
    reopened = await harness.open()

    rows = await harness.execute_raw("SELECT version_num FROM alembic_version_ledger")

    assert [row[0] for row in rows] == [head(LEDGER_SCHEMA)]
    assert (await reopened.get_balance(TENANT, "alice")).held == 50
    assert (await reopened.list_entries(TENANT, "alice")).entries[-1].sequence == 7
