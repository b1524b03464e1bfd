"""The SQLite store commits queued commands together; one command's failure stays its own."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace

import pytest

from services.ledger import rules
from services.ledger.sqlite_store import SqliteStore
from services.ledger.store import Decision, Snapshot
from services.runtime.errors import Aborted, Internal
from tests.ledger.commands import PROMOTIONS, reserve, run
from tests.ledger.conftest import START


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "ledger.db", now=START)
    yield store
    await store.close()


async def test_a_command_that_breaks_a_constraint_fails_alone_in_a_group(store):
    for name in ("alice", "bob"):
        await run(store, rules.OpenAccount(name, "open", START))
    expire = rules.ExpireHolds("alice", START)

    def slow(snapshot: Snapshot) -> Decision:
        # Holds the writer while the commands below queue up behind it, so that they are
        # committed as one group.
        time.sleep(0.3)
        return rules.decide(expire, snapshot, PROMOTIONS)

    broken = reserve("bob", "broken")

    def break_a_constraint(snapshot: Snapshot) -> Decision:
        decision = rules.decide(broken, snapshot, PROMOTIONS)
        # An entry of zero credits: the entries table refuses it.
        entries = tuple(replace(entry, amount=0) for entry in decision.changes.entries)
        return replace(decision, changes=replace(decision.changes, entries=entries))

    first = asyncio.ensure_future(store.transact(rules.lookup(expire), slow))
    await asyncio.sleep(0.05)
    good = [reserve(name, f"job-{n}") for n in range(4) for name in ("alice", "bob")]
    answers = await asyncio.gather(
        *(run(store, command) for command in good[:4]),
        store.transact(rules.lookup(broken), break_a_constraint),
        *(run(store, command) for command in good[4:]),
        return_exceptions=True,
    )
    await first

    failure = answers.pop(4)
    assert isinstance(failure, Internal), failure
    assert "refused a change" in failure.message
    assert all(isinstance(answer, Decision) for answer in answers), answers
    holds = await store.audit("SELECT hold_id FROM holds ORDER BY hold_id")
    assert sorted(row[0] for row in holds) == sorted(command.hold_id for command in good)
    accounts = dict(await store.audit("SELECT account_id, held FROM accounts"))
    assert accounts == {"alice": 28, "bob": 28}


async def test_an_unusable_database_fails_the_whole_group(store, tmp_path):
    await run(store, rules.OpenAccount("alice", "open", START))
    impatient = await SqliteStore.open(tmp_path / "ledger.db", now=START, lock_timeout_seconds=0.05)
    # Another connection holds the write lock past the store's lock timeout.
    blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        answers = await asyncio.gather(
            *(run(impatient, reserve("alice", f"job-{n}")) for n in range(3)),
            return_exceptions=True,
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        await impatient.close()

    assert all(isinstance(answer, Aborted) for answer in answers), answers
    accounts = dict(await store.audit("SELECT account_id, held FROM accounts"))
    assert accounts == {"alice": 0}
