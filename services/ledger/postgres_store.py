"""The clustered ledger store: PostgreSQL through a psycopg 3 connection pool.

Several ledger processes may share one database. Every command runs in one READ COMMITTED
transaction that first locks its account's row (`SELECT ... FOR UPDATE`); that is the only lock
a command takes, so there is no lock order to get wrong, and every later read in the transaction
sees what the previous holder of the lock committed. Should a write ever rest on a stale read
anyway, it cannot commit: the account update is guarded by the sequence number the command read,
and the (tenant, account, sequence) key of the command's first entry is already taken.
Conflicts that do happen (two first-time commands racing to insert the same account or
idempotency record, deadlocks, serialization failures, lock waits past `lock_timeout`) roll
back and are retried here; only a conflict that outlasts the retries reaches the caller, as
Aborted.

Commands that arrive while others are in flight are committed in groups: one transaction locks
every account of the group in (tenant, account) order (so groups never deadlock each other), and
may mix tenants, each command still reading only its own tenant's rows; it reads what
all of its commands need in one round trip, decides each, and writes all of them with one
commit, in one more. A group holds at most one command per account; a command whose account
is already in the group waits for the next. Should anything but the database's absence fail a
group, each of its commands runs again in a transaction of its own, so that a failure stays
the failing command's.

The schema must be current at open: the replicas share the database, so upgrading it is an
operator's step before a rollout (`tiergen migrate`), never a replica's. A schema behind or
ahead of this code is refused with one line naming that command (SchemaNotCurrent).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import pq

from services.ledger import tables
from services.ledger.migrations import SCHEMA
from services.ledger.model import Account, Entry, Hold, to_micros
from services.ledger.store import (
    AccountKey,
    Changes,
    Decide,
    Decision,
    EntryQuery,
    Lookup,
    Snapshot,
)
from services.runtime.collectors import PoolFigures, forget_pool, psycopg_pool_figures, track_pool
from services.runtime.errors import Aborted, Internal, Unavailable
from services.runtime.migrations import require_current

__all__ = ["PostgresStore"]

_T = TypeVar("_T")
_Connection = psycopg.AsyncConnection[tuple[Any, ...]]
_ClientCursor = psycopg.AsyncClientCursor[tuple[Any, ...]]

#: Rolled back and retried; what a concurrent transaction can cause, never the caller.
_CONFLICTS = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.UniqueViolation,
)
_CONFLICT_ATTEMPTS = 8
#: A connection lost mid-command (for example to a server restart) is retried once on a new one.
_CONNECTION_ATTEMPTS = 2


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


_LOCK_ACCOUNT = _pg(tables.SELECT_ACCOUNT) + " FOR UPDATE"
_LOCK_ACCOUNT_OF_HOLD = _pg(tables.SELECT_ACCOUNT_OF_HOLD) + " FOR UPDATE"
_SELECT_ACCOUNT_WITH_EXPIRY = _pg(tables.SELECT_ACCOUNT_WITH_EXPIRY)
_SELECT_HOLD = _pg(tables.SELECT_HOLD)
_SELECT_EXPIRED_HOLDS = _pg(tables.SELECT_EXPIRED_HOLDS)
_SELECT_EXPIRED_HOLDS_OF_HOLD = _pg(tables.SELECT_EXPIRED_HOLDS_OF_HOLD)
_SELECT_ACCOUNTS_WITH_EXPIRED_HOLDS = _pg(tables.SELECT_ACCOUNTS_WITH_EXPIRED_HOLDS)
_INSERT_ACCOUNT = _pg(tables.INSERT_ACCOUNT)
_UPDATE_ACCOUNT = _pg(tables.UPDATE_ACCOUNT)
_UPSERT_HOLD = _pg(tables.UPSERT_HOLD)
_INSERT_ENTRY = _pg(tables.INSERT_ENTRY)
_INSERT_RECORD = _pg(tables.INSERT_RECORD)
# A group's (tenant, name) pairs travel as two parallel arrays: `_pairs` makes them.
_GROUP_HOLDS = "(tenant, hold_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
#: A group's accounts: those its commands name and those of the holds they name (each within
#: the command's tenant), locked in (tenant, account) order, the same order in every group. One
#: list of pairs, so that each is looked up by its key (an OR of the two would scan every row).
_GROUP_ACCOUNTS = (
    "(tenant, account_id) IN (SELECT * FROM unnest(%s::text[], %s::text[])"
    f" UNION SELECT tenant, account_id FROM holds WHERE {_GROUP_HOLDS})"
)
_LOCK_GROUP_ACCOUNTS = (
    _pg(tables.SELECT_ACCOUNTS) + f" WHERE {_GROUP_ACCOUNTS} ORDER BY tenant, account_id FOR UPDATE"
)
_SELECT_GROUP_HOLDS = _pg(tables.SELECT_HOLDS) + f" WHERE {_GROUP_HOLDS}"
_SELECT_GROUP_EXPIRED_HOLDS = (
    _pg(tables.SELECT_HOLDS)
    + f" WHERE status = 'open' AND expires_at_us <= %s AND {_GROUP_ACCOUNTS}"
    + " ORDER BY expires_at_us, hold_id"
)
#: Commands in one group at the most.
_MAX_GROUP = 64


class PostgresStore:
    """The ledger on a PostgreSQL database (tables in the first schema of the search path)."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[_Connection],
        timeout_seconds: float,
        groups_in_flight: int,
    ) -> None:
        self._pool = pool
        self._timeout = timeout_seconds
        self._groups_in_flight = groups_in_flight
        self._waiting: collections.deque[_Command] = collections.deque()
        self._running_groups: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pool_size: int = 10,
        timeout_seconds: float = 5.0,
        lock_timeout_seconds: float = 5.0,
    ) -> PostgresStore:
        """Connect to a database whose schema is current, keeping a pool of up to `pool_size`
        connections. Replicas share the database, so upgrading its schema is an operator's step
        (`tiergen migrate`), never a replica's: a schema behind or ahead is a ConfigError."""
        lock_timeout_ms = str(max(1, round(lock_timeout_seconds * 1000)))

        async def configure(connection: _Connection) -> None:
            await connection.execute(
                "SELECT set_config('lock_timeout', %s, false)", (lock_timeout_ms,)
            )

        pool: psycopg_pool.AsyncConnectionPool[_Connection] = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            configure=configure,
            timeout=timeout_seconds,
            name="ledger",
        )
        try:
            await pool.open(wait=True, timeout=timeout_seconds)
            # Commands queue up behind a few groups at a time, which is what makes groups; the
            # rest of the pool serves reads.
            store = cls(pool, timeout_seconds, max(1, pool_size // 2))
            await asyncio.to_thread(require_current, SCHEMA, dsn)
        except BaseException as error:
            await pool.close()
            if isinstance(error, psycopg_pool.PoolTimeout):
                raise Unavailable(
                    f"cannot connect to the ledger database within {timeout_seconds} s"
                ) from error
            raise
        track_pool("ledger", store)
        return store

    def pool_figures(self) -> PoolFigures:
        """The pool's connections in use and idle, and the callers waiting for one."""
        return psycopg_pool_figures(self._pool)

    async def transact(self, lookup: Lookup, decide: Decide) -> Decision:
        command = _Command(lookup, decide, asyncio.get_running_loop().create_future())
        self._waiting.append(command)
        self._start_groups()
        return await command.answer

    async def _transact_alone(self, lookup: Lookup, decide: Decide) -> Decision:
        conflicts = 0
        while True:
            try:
                return await self._run(lambda connection: _transact(connection, lookup, decide))
            except Aborted:
                conflicts += 1
                if conflicts >= _CONFLICT_ATTEMPTS:
                    raise
                # Jittered so that commands that just collided do not collide again.
                await asyncio.sleep(random.uniform(0, 0.002 * 2**conflicts))

    def _start_groups(self) -> None:
        while self._waiting and len(self._running_groups) < self._groups_in_flight:
            task = asyncio.create_task(self._run_group(self._take_group()))
            self._running_groups.add(task)
            task.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._running_groups.discard(task)
        self._start_groups()

    def _take_group(self) -> list[_Command]:
        """The waiting commands, oldest first, at most one per account or hold named."""
        group: list[_Command] = []
        names: set[str] = set()
        passed_over: list[_Command] = []
        while self._waiting and len(group) < _MAX_GROUP:
            command = self._waiting.popleft()
            own = command.names()
            if names & own:
                passed_over.append(command)
                continue
            names |= own
            group.append(command)
        self._waiting.extendleft(reversed(passed_over))
        return group

    async def _run_group(self, group: list[_Command]) -> None:
        live = [command for command in group if not command.answer.done()]
        try:
            if len(live) == 1:
                await _settle(live[0], self._transact_alone(live[0].lookup, live[0].decide))
            elif live:
                await self._commit_group(live)
        except BaseException as error:
            # Whatever ended the group, no caller waits for an answer that never comes.
            for command in live:
                if not command.answer.done():
                    command.answer.set_exception(error)
            if not isinstance(error, Exception):
                raise

    async def _commit_group(self, live: list[_Command]) -> None:
        try:
            decided, later = await self._run(lambda connection: _transact_group(connection, live))
        except (Aborted, Internal):
            await asyncio.gather(
                *(_settle(c, self._transact_alone(c.lookup, c.decide)) for c in live)
            )
            return
        for command, result in decided:
            if command.answer.done():
                continue
            if isinstance(result, BaseException):
                command.answer.set_exception(result)
            else:
                command.answer.set_result(result)
        self._waiting.extendleft(reversed(later))

    async def account(
        self, tenant: str, account_id: str, now: datetime
    ) -> tuple[Account | None, bool]:
        async def read(connection: _Connection) -> tuple[Account | None, bool]:
            cursor = await connection.execute(
                _SELECT_ACCOUNT_WITH_EXPIRY, (to_micros(now), tenant, account_id)
            )
            row = await cursor.fetchone()
            if row is None:
                return None, False
            return tables.account_from_row(row), bool(row[-1])

        return await self._run(read)

    async def hold(self, tenant: str, hold_id: str) -> Hold | None:
        async def read(connection: _Connection) -> Hold | None:
            row = await (await connection.execute(_SELECT_HOLD, (tenant, hold_id))).fetchone()
            return None if row is None else tables.hold_from_row(row)

        return await self._run(read)

    async def entries(self, query: EntryQuery) -> list[Entry]:
        sql, params = tables.entries_statement(query)

        async def read(connection: _Connection) -> list[Entry]:
            cursor = await connection.execute(_pg(sql), params)
            return [tables.entry_from_row(row) for row in await cursor.fetchall()]

        return await self._run(read)

    async def accounts_with_expired_holds(self, now: datetime, limit: int) -> list[AccountKey]:
        async def read(connection: _Connection) -> list[AccountKey]:
            cursor = await connection.execute(
                _SELECT_ACCOUNTS_WITH_EXPIRED_HOLDS, (to_micros(now), limit)
            )
            return [(row[0], row[1]) for row in await cursor.fetchall()]

        return await self._run(read)

    async def audit(self, sql: str) -> list[tuple[Any, ...]]:
        async def read(connection: _Connection) -> list[tuple[Any, ...]]:
            return list(await (await connection.execute(sql)).fetchall())

        return await self._run(read)

    async def close(self) -> None:
        forget_pool(self)
        await asyncio.gather(*self._running_groups, return_exceptions=True)
        await self._pool.close()

    async def _run(self, work: Callable[[_Connection], Awaitable[_T]]) -> _T:
        """Run `work` on a pooled connection, translating database failures for the caller."""
        for attempt in range(1, _CONNECTION_ATTEMPTS + 1):
            try:
                async with self._pool.connection(timeout=self._timeout) as connection:
                    return await work(connection)
            except _CONFLICTS as error:
                raise Aborted(
                    "the ledger account was changed concurrently; retry", reason="WRITE_CONFLICT"
                ) from error
            except psycopg_pool.PoolTimeout as error:
                raise Unavailable(
                    f"no ledger database connection within {self._timeout} s", retry_after=1.0
                ) from error
            except psycopg.OperationalError as error:
                if attempt == _CONNECTION_ATTEMPTS:
                    raise Unavailable(
                        f"the ledger database is unreachable: {error}", retry_after=1.0
                    ) from error
            except psycopg.Error as error:
                raise Internal(f"the ledger database refused a change: {error}") from error
        raise AssertionError("unreachable: the last attempt either returns or raises")


async def _transact(connection: _Connection, lookup: Lookup, decide: Decide) -> Decision:
    """One transaction in two round trips: lock and read, then write and commit.

    Each round trip is one simple query of several statements with its parameters bound on
    the client: psycopg's pipeline mode costs as few round trips but several times the client
    CPU per statement, and the ledger's throughput is bound by that CPU.
    """
    cursor = psycopg.AsyncClientCursor(connection)
    async with _rolled_back_on_error(connection):
        snapshot = await _load(cursor, lookup)
        decision = decide(snapshot)
        await _apply(cursor, decision.changes)
    return decision


@contextlib.asynccontextmanager
async def _rolled_back_on_error(connection: _Connection) -> AsyncIterator[None]:
    """Rolls back a transaction left open by an error, which then goes on."""
    try:
        yield
    except Exception:
        if connection.info.transaction_status != pq.TransactionStatus.IDLE:
            # A connection that broke mid-command cannot roll back; the pool discards it.
            with contextlib.suppress(psycopg.Error):
                await connection.execute("ROLLBACK")
        raise


_Statement = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class _Command:
    """A command waiting for its group, and where its answer goes."""

    lookup: Lookup
    decide: Decide
    answer: asyncio.Future[Decision]

    def names(self) -> set[str]:
        """The account and hold it names, as far as known before reading."""
        names = set()
        if self.lookup.account_id is not None:
            names.add(f"account:{self.lookup.tenant}/{self.lookup.account_id}")
        if self.lookup.hold_id is not None:
            names.add(f"hold:{self.lookup.hold_id}")
        return names


async def _settle(command: _Command, work: Awaitable[Decision]) -> None:
    try:
        result = await work
    except Exception as error:
        if not command.answer.done():
            command.answer.set_exception(error)
        return
    if not command.answer.done():
        command.answer.set_result(result)


_Decided = list[tuple[_Command, Decision | BaseException]]


async def _transact_group(
    connection: _Connection, group: list[_Command]
) -> tuple[_Decided, list[_Command]]:
    """One transaction for `group`, in two round trips: lock and read all, then write all.

    The answers of the commands that ran, and the commands passed over because a hold they name
    turned out to belong to an account another command of the group already had.
    """
    cursor = psycopg.AsyncClientCursor(connection)
    async with _rolled_back_on_error(connection):
        snapshots, later = await _load_group(cursor, group)
        decided: _Decided = []
        writes: list[_Statement] = []
        for command, snapshot in snapshots:
            try:
                decision = command.decide(snapshot)
                own_writes = _writes(decision.changes)
            except Exception as error:
                # A rule that failed decides nothing and writes nothing; the others go on.
                decided.append((command, error))
                continue
            decided.append((command, decision))
            writes.extend(own_writes)
        writes.append(("COMMIT", ()))
        await _script(cursor, writes)
    return decided, later


async def _load_group(
    cursor: _ClientCursor, group: list[_Command]
) -> tuple[list[tuple[_Command, Snapshot]], list[_Command]]:
    """Lock every account of the group in (tenant, account) order, then read the rest as it
    now is."""
    accounts_named = _pairs(
        (c.lookup.tenant, c.lookup.account_id) for c in group if c.lookup.account_id is not None
    )
    holds_named = _pairs(
        (c.lookup.tenant, c.lookup.hold_id) for c in group if c.lookup.hold_id is not None
    )
    latest = to_micros(max(command.lookup.now for command in group))
    keys = [key for command in group for key in command.lookup.record_keys]
    reads: list[_Statement] = [
        ("BEGIN", ()),
        (_LOCK_GROUP_ACCOUNTS, (*accounts_named, *holds_named)),
        (_SELECT_GROUP_HOLDS, holds_named),
        (_SELECT_GROUP_EXPIRED_HOLDS, (latest, *accounts_named, *holds_named)),
    ]
    if keys:
        sql, params = tables.records_statement(keys)
        reads.append((_pg(sql), tuple(params)))
    _, account_rows, hold_rows, expired_rows, *rest = await _script(cursor, reads)
    accounts: dict[AccountKey, Account] = {}
    for row in account_rows:
        account = tables.account_from_row(row)
        accounts[account.tenant, account.account_id] = account
    # Each read only its commands' own tenants' holds, and hold ids are unique across tenants.
    holds = {hold.hold_id: hold for hold in map(tables.hold_from_row, hold_rows)}
    expired: dict[AccountKey, list[Hold]] = {}
    for row in expired_rows:
        overdue = tables.hold_from_row(row)
        expired.setdefault((overdue.tenant, overdue.account_id), []).append(overdue)
    records = {}
    for row in rest[0] if rest else []:
        record = tables.record_from_row(row)
        records[record.key] = record
    snapshots: list[tuple[_Command, Snapshot]] = []
    later: list[_Command] = []
    taken: set[AccountKey] = set()
    for command in group:
        lookup = command.lookup
        hold = None if lookup.hold_id is None else holds.get(lookup.hold_id)
        if hold is not None and hold.tenant != lookup.tenant:
            # Another command of the group named it, in its own tenant.
            hold = None
        account_id = lookup.account_id if hold is None else hold.account_id
        key = None if account_id is None else (lookup.tenant, account_id)
        if key is not None:
            if key in taken:
                later.append(command)
                continue
            taken.add(key)
        now_us = to_micros(lookup.now)
        overdue_of_account = () if key is None else expired.get(key, ())
        snapshot = Snapshot(
            account=None if key is None else accounts.get(key),
            hold=hold,
            expired_holds=tuple(
                due for due in overdue_of_account if to_micros(due.expires_at) <= now_us
            ),
            records={key: records[key] for key in lookup.record_keys if key in records},
        )
        snapshots.append((command, snapshot))
    return snapshots, later


def _pairs(pairs: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(tenant, name) pairs, each once, as the two parallel arrays `unnest` takes."""
    unique = sorted(set(pairs))
    return [tenant for tenant, _ in unique], [name for _, name in unique]


async def _script(cursor: _ClientCursor, statements: list[_Statement]) -> list[list[Any]]:
    """Run `statements` in one round trip; the rows of each, in order.

    psycopg has every result by the time `execute` returns, so a failing statement raises
    there, and the statements after it never ran.
    """
    await cursor.execute(
        "; ".join(sql for sql, _ in statements),
        [value for _, params in statements for value in params],
    )
    results = []
    while True:
        result = cursor.pgresult
        has_rows = result is not None and result.status == pq.ExecStatus.TUPLES_OK
        results.append(await cursor.fetchall() if has_rows else [])
        if not cursor.nextset():
            return results


async def _load(cursor: _ClientCursor, lookup: Lookup) -> Snapshot:
    """Lock the account, then read the rest as the previous holder of the lock left it."""
    now_us = to_micros(lookup.now)
    reads: list[_Statement] = [("BEGIN", ())]
    tenant = lookup.tenant
    if lookup.account_id is not None:
        reads.append((_LOCK_ACCOUNT, (tenant, lookup.account_id)))
        reads.append((_SELECT_EXPIRED_HOLDS, (tenant, lookup.account_id, now_us)))
    else:
        reads.append((_LOCK_ACCOUNT_OF_HOLD, (tenant, lookup.hold_id)))
        reads.append((_SELECT_EXPIRED_HOLDS_OF_HOLD, (tenant, lookup.hold_id, now_us)))
    if lookup.hold_id is not None:
        reads.append((_SELECT_HOLD, (tenant, lookup.hold_id)))
    if lookup.record_keys:
        sql, params = tables.records_statement(lookup.record_keys)
        reads.append((_pg(sql), tuple(params)))
    _, account_rows, expired_rows, *rest = await _script(cursor, reads)
    hold_rows = rest.pop(0) if lookup.hold_id is not None else []
    record_rows = rest.pop(0) if lookup.record_keys else []
    records = {}
    for row in record_rows:
        record = tables.record_from_row(row)
        records[record.key] = record
    return Snapshot(
        account=tables.account_from_row(account_rows[0]) if account_rows else None,
        hold=tables.hold_from_row(hold_rows[0]) if hold_rows else None,
        expired_holds=tuple(tables.hold_from_row(row) for row in expired_rows),
        records=records,
    )


async def _apply(cursor: _ClientCursor, changes: Changes) -> None:
    """Write and commit at once, unchecked: a write based on a stale read cannot commit anyway,
    since the (tenant, account, sequence) key of its first entry is already taken."""
    await _script(cursor, [*_writes(changes), ("COMMIT", ())])


def _writes(changes: Changes) -> list[_Statement]:
    """The statements that write one command's changes."""
    writes: list[_Statement] = []
    if changes.account is not None:
        if changes.previous_sequence is None:
            writes.append((_INSERT_ACCOUNT, tables.account_insert_params(changes.account)))
        else:
            params = tables.account_update_params(changes.account, changes.previous_sequence)
            writes.append((_UPDATE_ACCOUNT, params))
    writes.extend((_UPSERT_HOLD, tables.hold_params(hold)) for hold in changes.holds)
    writes.extend((_INSERT_ENTRY, tables.entry_params(entry)) for entry in changes.entries)
    now_us = to_micros(changes.now)
    writes.extend(
        (_INSERT_RECORD, tables.record_params(record, now_us)) for record in changes.records
    )
    return writes
