"""The SQLite store commits queued commands together; one command's failure stays its own."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace

import pytest

from services.ledger import rules
from services.ledger.sqlite_store import SqliteStore
from services.ledger.store import Decide, Decision, Snapshot
from services.runtime.errors import Aborted, Internal
from tests.ledger.commands import PROMOTIONS, reserve, run
from tests.ledger.conftest import START, TENANT


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "ledger.db")
    yield store
    await store.close()


async def test_a_command_that_breaks_a_constraint_fails_alone_in_a_group(store):
    for name in ("alice", "bob"):
        await run(store, rules.OpenAccount(TENANT, name, "open", START))
    expire = rules.ExpireHolds(TENANT, "alice", START)
    writing, release = threading.Event(), threading.Event()
    #: The commands in the order the writer thread decided them, each time it did.
    decided: list[str] = []

    def hold_the_writer(snapshot: Snapshot) -> Decision:
        # The writer waits here while the commands below queue up behind it.
        writing.set()
        assert release.wait(10), "the test never let the writer go on"
        return rules.decide(expire, snapshot, PROMOTIONS)

    def deciding(name: str, command: rules.Command, broken: bool = False) -> Decide:
        def decide(snapshot: Snapshot) -> Decision:
            decided.append(name)
            decision = rules.decide(command, snapshot, PROMOTIONS)
            if not broken:
                return decision
            # An entry of zero credits: the entries table refuses it.
            entries = tuple(replace(entry, amount=0) for entry in decision.changes.entries)
            return replace(decision, changes=replace(decision.changes, entries=entries))

        return decide

    first = asyncio.ensure_future(store.transact(rules.lookup(expire), hold_the_writer))
    assert await asyncio.to_thread(writing.wait, 10), "the writer never took the first command"
    good = [reserve(name, f"job-{n}") for n in range(4) for name in ("alice", "bob")]
    broken = reserve("bob", "broken")
    commands = [*good[:4], broken, *good[4:]]
    names = [f"{command.account_id}/{command.idempotency_key}" for command in commands]
    queued = 0
    all_queued = asyncio.Event()

    async def submit(name: str, command: rules.Command) -> Decision:
        nonlocal queued
        queued += 1
        if queued == len(commands):
            all_queued.set()
        # Queued by this step of the task, before the event's waiter runs again.
        return await store.transact(
            rules.lookup(command), deciding(name, command, broken=command is broken)
        )

    calls = asyncio.gather(
        *(submit(name, command) for name, command in zip(names, commands, strict=True)),
        return_exceptions=True,
    )
    await all_queued.wait()
    release.set()
    answers = await calls
    await first

    # One group: decided up to the broken command, rolled back, then each command alone.
    assert decided == [*names[:5], *names], decided
    failure = answers.pop(4)
    assert isinstance(failure, Internal), failure
    assert "refused a change" in failure.message
    assert all(isinstance(answer, Decision) for answer in answers), answers
    holds = await store.audit("SELECT hold_id FROM holds ORDER BY hold_id")
    assert sorted(row[0] for row in holds) == sorted(command.hold_id for command in good)
    accounts = dict(await store.audit("SELECT account_id, held FROM accounts"))
    assert accounts == {"alice": 28, "bob": 28}


async def test_an_unusable_database_fails_the_whole_group(store, tmp_path):
    await run(store, rules.OpenAccount(TENANT, "alice", "open", START))
    impatient = await SqliteStore.open(tmp_path / "ledger.db", lock_timeout_seconds=0.05)
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
