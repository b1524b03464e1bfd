"""The PostgreSQL store commits waiting commands in groups; each keeps its own answer."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from services.ledger import rules
from services.ledger.postgres_store import PostgresStore
from services.ledger.store import Decision, Snapshot
from services.runtime.errors import Internal
from tests.ledger.commands import PROMOTIONS, reserve, run
from tests.ledger.conftest import START, TENANT

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(postgres_harness):
    # One group in flight: what arrives meanwhile waits and forms the next group.
    store = await PostgresStore.open(postgres_harness.dsn, pool_size=2)
    for name in ("alice", "bob", "carol", "zed"):
        await run(store, rules.OpenAccount(TENANT, name, "open", START))
    yield store
    await store.close()


async def _behind_a_locked_account(harness, store, commands):
    """Runs `commands` while a first command waits for a lock, so that they queue up together."""
    async with harness.account_locked("zed"):
        first = asyncio.ensure_future(run(store, reserve("zed", "first")))
        await asyncio.sleep(0.1)
        queued = asyncio.gather(*commands, return_exceptions=True)
        await asyncio.sleep(0.1)
    await first
    return await queued


async def _held(store: PostgresStore) -> dict[str, int]:
    return dict(await store.audit("SELECT account_id, held FROM accounts"))


async def test_a_group_commits_every_command_once(postgres_harness, store):
    reserves = [reserve(name, f"job-{n}") for n in range(3) for name in ("alice", "bob")]

    answers = await _behind_a_locked_account(
        postgres_harness, store, [run(store, command) for command in reserves]
    )

    assert all(isinstance(answer, Decision) for answer in answers), answers
    assert [answer.outcome.hold.hold_id for answer in answers] == [c.hold_id for c in reserves]
    assert await _held(store) == {"alice": 21, "bob": 21, "carol": 0, "zed": 7}
    # Rows written by one transaction share its id: one per group of an alice and a bob.
    transactions = await store.audit(
        "SELECT xmin::text, count(*) FROM holds WHERE account_id IN ('alice', 'bob')"
        " GROUP BY xmin::text"
    )
    assert sorted(count for _, count in transactions) == [2, 2, 2]


async def test_a_command_that_breaks_a_constraint_fails_alone(postgres_harness, store):
    broken = reserve("carol", "broken")

    def break_a_constraint(snapshot: Snapshot) -> Decision:
        decision = rules.decide(broken, snapshot, PROMOTIONS)
        # An entry of zero credits: the entries table refuses it.
        entries = tuple(replace(entry, amount=0) for entry in decision.changes.entries)
        return replace(decision, changes=replace(decision.changes, entries=entries))

    answers = await _behind_a_locked_account(
        postgres_harness,
        store,
        [
            run(store, reserve("alice", "job")),
            store.transact(rules.lookup(broken), break_a_constraint),
            run(store, reserve("bob", "job")),
        ],
    )

    alice, failure, bob = answers
    assert isinstance(failure, Internal), failure
    assert isinstance(alice, Decision) and isinstance(bob, Decision)
    assert await _held(store) == {"alice": 7, "bob": 7, "carol": 0, "zed": 7}


@pytest.mark.parametrize("failure", ["raises", "decides nonsense"])
async def test_a_rule_that_fails_decides_nothing_and_the_rest_commit(
    postgres_harness, store, failure
):
    def fail(snapshot: Snapshot) -> Decision:
        if failure == "raises":
            raise RuntimeError("a rule failed")
        return Decision(changes=None, outcome=None)  # type: ignore[arg-type]

    answers = await _behind_a_locked_account(
        postgres_harness,
        store,
        [
            run(store, reserve("alice", "job")),
            store.transact(rules.lookup(reserve("carol", "x")), fail),
            run(store, reserve("bob", "job")),
        ],
    )

    assert isinstance(answers[1], RuntimeError | AttributeError), answers[1]
    assert isinstance(answers[0], Decision) and isinstance(answers[2], Decision)
    assert await _held(store) == {"alice": 7, "bob": 7, "carol": 0, "zed": 7}


async def test_commands_on_one_account_see_each_other_across_groups(postgres_harness, store):
    held = (await run(store, reserve("alice", "held", amount=10))).outcome.hold
    # A capture of alice's hold names the hold, not the account: the group learns its account
    # only when it reads, and leaves it for the next group beside alice's reserve.
    capture = rules.Capture(
        tenant=TENANT, hold_id=held.hold_id, amount=4, idempotency_key="settle", now=START
    )
    reserves = [reserve("alice", f"job-{n}", amount=100) for n in range(4)]

    answers = await _behind_a_locked_account(
        postgres_harness,
        store,
        [run(store, reserves[0]), run(store, capture), *(run(store, r) for r in reserves[1:])],
    )

    assert all(isinstance(answer, Decision) for answer in answers), answers
    outcomes = [answer.outcome for answer in answers]
    kinds = [type(outcome).__name__ for outcome in outcomes]
    assert kinds == ["HoldResult"] * 4 + ["FailedPrecondition"]
    # In order: 390 available, 100 held, 6 of the hold back, 100 and 100 more held; the last
    # reserve finds 96.
    rows = await store.audit(
        "SELECT available, held, consumed FROM accounts WHERE account_id = 'alice'"
    )
    assert rows == [(400 - 4 - 300, 300, 4)]
