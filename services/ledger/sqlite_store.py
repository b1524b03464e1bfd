"""The embedded ledger store: one SQLite file in WAL mode, written by one thread.

Every command goes through a single writer thread. SQLite allows one writer at a time anyway, and
several writer threads only add lock retries that can starve a writer for seconds; one thread
that takes whatever commands are queued and commits them together gives the throughput of group
commit with `synchronous=FULL` durability. Callers are answered only after the commit that holds
their command. Should one command of a group fail to write (a constraint the rules should never
break), the group is rolled back and each of its commands runs again in a transaction of its
own, so that the failure stays that command's. Reads use their own read-only connections.

The schema is brought up to date at open (`services.runtime.migrations.upgrade`), never per
command: one process owns the file, so nothing else would. A file already current costs one
read of its version table.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

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
    WriteConflict,
)
from services.runtime.collectors import PoolFigures, forget_pool, track_pool
from services.runtime.errors import Aborted, Internal, TiergenError, Unavailable
from services.runtime.migrations import upgrade

__all__ = ["SqliteStore"]

_T = TypeVar("_T")

#: Commands committed together at most; bounds the latency a full queue adds to one command.
_MAX_BATCH = 128
_READERS = 2


_Answer = tuple[asyncio.Future[Decision], Decision | BaseException]


@dataclass
class _Job:
    lookup: Lookup
    decide: Decide
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Decision]


class SqliteStore:
    """The ledger on one SQLite database file."""

    def __init__(self, path: Path, lock_timeout_seconds: float) -> None:
        self._path = path
        self._lock_timeout = lock_timeout_seconds
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(
            max_workers=_READERS, thread_name_prefix="ledger-sqlite-reader"
        )
        self._reader_local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._closed = False
        #: Commands and reads submitted and not yet answered, for `pool_figures`.
        self._writes = 0
        self._reads = 0

    @classmethod
    async def open(cls, path: Path, *, lock_timeout_seconds: float = 5.0) -> SqliteStore:
        """Open (creating if needed) the database, upgrade its schema and start the writer: one
        process owns the file, so nothing else would upgrade it."""
        store = cls(path, lock_timeout_seconds)
        try:
            connection = await asyncio.to_thread(store._connect_writer)
        except BaseException as error:
            store._readers.shutdown()
            if isinstance(error, sqlite3.Error | OSError):
                raise Unavailable(f"cannot open the ledger database {path}: {error}") from error
            raise
        # A daemon, so that a process that never closes the store can still exit: a commit cut
        # short rolls back as a whole, and its callers were never answered.
        store._writer = threading.Thread(
            target=store._write_forever,
            args=(connection,),
            name="ledger-sqlite-writer",
            daemon=True,
        )
        store._writer.start()
        track_pool("ledger", store)
        return store

    def pool_figures(self) -> PoolFigures:
        """The writer's connection in use while it has commands, the readers' while they read;
        waiting: commands the writer has not taken yet and reads beyond the readers."""
        if self._closed:
            return PoolFigures(0, 0, 0)
        in_use = min(1, self._writes) + min(_READERS, self._reads)
        waiting = self._jobs.qsize() + max(0, self._reads - _READERS)
        return PoolFigures(in_use=in_use, idle=1 + _READERS - in_use, waiting=waiting)

    async def transact(self, lookup: Lookup, decide: Decide) -> Decision:
        if self._closed:
            raise Unavailable("the ledger store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        self._jobs.put(_Job(lookup, decide, loop, future))
        self._writes += 1
        try:
            return await future
        finally:
            self._writes -= 1

    async def account(
        self, tenant: str, account_id: str, now: datetime
    ) -> tuple[Account | None, bool]:
        def read(connection: sqlite3.Connection) -> tuple[Account | None, bool]:
            sql = tables.SELECT_ACCOUNT_WITH_EXPIRY
            row = connection.execute(sql, (to_micros(now), tenant, account_id)).fetchone()
            if row is None:
                return None, False
            return tables.account_from_row(row), bool(row[-1])

        return await self._read(read)

    async def hold(self, tenant: str, hold_id: str) -> Hold | None:
        def read(connection: sqlite3.Connection) -> Hold | None:
            row = connection.execute(tables.SELECT_HOLD, (tenant, hold_id)).fetchone()
            return None if row is None else tables.hold_from_row(row)

        return await self._read(read)

    async def entries(self, query: EntryQuery) -> list[Entry]:
        sql, params = tables.entries_statement(query)

        def read(connection: sqlite3.Connection) -> list[Entry]:
            return [tables.entry_from_row(row) for row in connection.execute(sql, params)]

        return await self._read(read)

    async def accounts_with_expired_holds(self, now: datetime, limit: int) -> list[AccountKey]:
        params = (to_micros(now), limit)

        def read(connection: sqlite3.Connection) -> list[AccountKey]:
            rows = connection.execute(tables.SELECT_ACCOUNTS_WITH_EXPIRED_HOLDS, params)
            return [(row[0], row[1]) for row in rows]

        return await self._read(read)

    async def audit(self, sql: str) -> list[tuple[Any, ...]]:
        def read(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in connection.execute(sql)]

        return await self._read(read)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        forget_pool(self)
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._readers.shutdown)
        for connection in self._reader_connections:
            connection.close()

    def _connect_writer(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self._path, timeout=self._lock_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            # WAL is set first: the migration's own connection then shares the same journal.
            upgrade(SCHEMA, f"sqlite:///{self._path}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _write_forever(self, connection: sqlite3.Connection) -> None:
        try:
            stopping = False
            while not stopping:
                job = self._jobs.get()
                if job is None:
                    break
                batch = [job]
                while len(batch) < _MAX_BATCH:
                    try:
                        queued = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if queued is None:
                        stopping = True
                        break
                    batch.append(queued)
                self._commit(connection, batch)
        finally:
            connection.close()

    def _commit(self, connection: sqlite3.Connection, batch: list[_Job]) -> None:
        try:
            results = _run_in_one_transaction(connection, batch)
        except _GroupFailed:
            results = [_run_in_one_transaction(connection, [job])[0] for job in batch]
        # One wake-up per event loop for the whole batch: each call_soon_threadsafe writes to
        # the loop's self-pipe, a system call per caller otherwise.
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for job, result in zip(batch, results, strict=True):
            answers.setdefault(job.loop, []).append((job.future, result))
        for loop, settled in answers.items():
            # A caller whose event loop has already closed no longer waits for an answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_all, settled)

    async def _read(self, read: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise Unavailable("the ledger store is closed")
        loop = asyncio.get_running_loop()

        def in_reader_thread() -> _T:
            connection = self._reader_connection()
            try:
                return read(connection)
            except sqlite3.Error as error:
                raise _translate(error) from error

        self._reads += 1
        try:
            return await loop.run_in_executor(self._readers, in_reader_thread)
        finally:
            self._reads -= 1

    def _reader_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._reader_local, "connection", None)
        if connection is None:
            uri = f"file:{quote(str(self._path.resolve()))}?mode=ro"
            # Closed by close() from another thread, once the reader threads have stopped.
            connection = sqlite3.connect(
                uri, uri=True, timeout=self._lock_timeout, check_same_thread=False
            )
            self._reader_local.connection = connection
            with self._reader_lock:
                self._reader_connections.append(connection)
        return connection


class _GroupFailed(Exception):
    """One command of a group failed to write; nothing of the group was committed."""


def _run_in_one_transaction(
    connection: sqlite3.Connection, batch: list[_Job]
) -> list[Decision | BaseException]:
    """Run `batch` in one transaction; each command's answer, in order.

    Raises _GroupFailed when one command of several failed to write. A database that cannot be
    used fails every command.
    """
    try:
        connection.execute("BEGIN IMMEDIATE")
        decisions: list[Decision | BaseException] = [
            _run(connection, job.lookup, job.decide) for job in batch
        ]
        connection.execute("COMMIT")
    except Exception as error:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        if len(batch) > 1 and not isinstance(error, sqlite3.OperationalError):
            raise _GroupFailed from error
        return [_translate(error)] * len(batch)
    return decisions


def _run(connection: sqlite3.Connection, lookup: Lookup, decide: Decide) -> Decision:
    decision = decide(_load(connection, lookup))
    _apply(connection, decision.changes)
    return decision


def _load(connection: sqlite3.Connection, lookup: Lookup) -> Snapshot:
    tenant = lookup.tenant
    hold: Hold | None = None
    account_id = lookup.account_id
    if lookup.hold_id is not None:
        row = connection.execute(tables.SELECT_HOLD, (tenant, lookup.hold_id)).fetchone()
        if row is not None:
            hold = tables.hold_from_row(row)
            account_id = hold.account_id
    account: Account | None = None
    expired: tuple[Hold, ...] = ()
    if account_id is not None:
        now_us = to_micros(lookup.now)
        sql = tables.SELECT_ACCOUNT_WITH_EXPIRY
        row = connection.execute(sql, (now_us, tenant, account_id)).fetchone()
        if row is not None:
            account = tables.account_from_row(row)
            if row[-1]:
                sql = tables.SELECT_EXPIRED_HOLDS
                rows = connection.execute(sql, (tenant, account_id, now_us))
                expired = tuple(tables.hold_from_row(row) for row in rows)
    records = {}
    if lookup.record_keys:
        sql, params = tables.records_statement(lookup.record_keys)
        for row in connection.execute(sql, params):
            record = tables.record_from_row(row)
            records[record.key] = record
    return Snapshot(account=account, hold=hold, expired_holds=expired, records=records)


def _apply(connection: sqlite3.Connection, changes: Changes) -> None:
    if changes.account is not None:
        if changes.previous_sequence is None:
            connection.execute(tables.INSERT_ACCOUNT, tables.account_insert_params(changes.account))
        else:
            params = tables.account_update_params(changes.account, changes.previous_sequence)
            if connection.execute(tables.UPDATE_ACCOUNT, params).rowcount != 1:
                raise WriteConflict(changes.account.account_id)
    for hold in changes.holds:
        connection.execute(tables.UPSERT_HOLD, tables.hold_params(hold))
    for entry in changes.entries:
        connection.execute(tables.INSERT_ENTRY, tables.entry_params(entry))
    now_us = to_micros(changes.now)
    for record in changes.records:
        connection.execute(tables.INSERT_RECORD, tables.record_params(record, now_us))


def _translate(error: BaseException) -> BaseException:
    """The domain error a caller gets for a store failure; bugs pass through unchanged."""
    if isinstance(error, TiergenError):
        return error
    if isinstance(error, WriteConflict):
        return Aborted("another process changed the account at the same time; retry")
    if isinstance(error, sqlite3.OperationalError):
        text = str(error)
        if "locked" in text or "busy" in text:
            return Aborted(f"the ledger database is locked by another process: {text}")
        return Unavailable(f"the ledger database cannot be used: {text}")
    if isinstance(error, sqlite3.Error):
        return Internal(f"the ledger database refused a change: {error}")
    return error


def _settle_all(settled: list[_Answer]) -> None:
    for future, result in settled:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
