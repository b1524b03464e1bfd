"""The quota limiter's state in the router's database (`jobs.schema.quota_rates`), on SQLite or
PostgreSQL, over the job store's own `Database`; and the count of a tenant's unfinished jobs,
read from the job table itself.

`take` admits or refuses one call against all its quotas at once, all or nothing: the rates it
draws on (GCRA, `quotas.rates`) and its concurrent jobs. How each database makes that atomic
is the one dialect difference here:

- PostgreSQL: one statement, one round trip. It locks the call's rate rows (`FOR UPDATE`, in
  subject order, so two calls never deadlock), so that every replica judges from the latest
  TAT; counts the tenant's unfinished jobs (the `jobs_unfinished` partial index); judges every
  quota; and moves the TATs forward only if all fit. Two replicas drawing on one subject queue
  on its row lock for the statement's duration: the rate is exact across replicas. A subject
  without a row (first use, or swept) makes the statement answer "incomplete"; the missing rows
  are inserted as idle and the statement runs again.
- SQLite: a script in one `BEGIN IMMEDIATE` transaction on the database's own thread (one
  router owns the file): read the TATs and the count, judge in Python, write the new TATs.

What `take` cannot make exact is concurrent jobs across replicas: it counts the jobs recorded,
while a call admitted on another replica has no jobs in the table until its batch is recorded,
after its hold (milliseconds later). Each router counts its own such calls (`QuotaLimiter`), so
one router is exact; docs/architecture.md states the tolerance across replicas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from services.router.jobs.databases import Database, Mode, Script, Step
from services.router.jobs.model import Owner
from services.router.jobs.queries import Query, insert_for, one_of
from services.router.jobs.schema import UNFINISHED_STATUSES, jobs, quota_rates, values_in
from services.router.quotas.rates import Draw, fits, jobs_fit
from services.runtime.errors import Aborted

__all__ = ["JobsAsk", "QuotaAsk", "QuotaStore", "SqlQuotaStore", "Verdict"]

_p = sa.bindparam
#: Rounds of inserting missing rows before `take` gives up (a sweep racing each time).
_SEED_ROUNDS = 3


@dataclass(frozen=True)
class JobsAsk:
    """The concurrent-jobs part of a call: `jobs` more for the owner, under these limits, beside
    `*_pending` admitted by this router whose batches are not recorded yet."""

    jobs: int
    tenant_limit: int | None
    account_limit: int | None
    tenant_pending: int = 0
    account_pending: int = 0

    def fit(self, tenant_jobs: int, account_jobs: int) -> tuple[bool, bool]:
        """Whether the call fits the tenant's limit and the account's, beside those counts."""
        return (
            jobs_fit(self.tenant_limit, tenant_jobs + self.tenant_pending, self.jobs),
            jobs_fit(self.account_limit, account_jobs + self.account_pending, self.jobs),
        )


@dataclass(frozen=True)
class QuotaAsk:
    """Everything one call asks of the quotas of its owner."""

    owner: Owner
    draws: Sequence[Draw] = ()
    jobs: JobsAsk | None = None


@dataclass(frozen=True)
class Verdict:
    """The store's answer: admitted or not, and what it judged from: each subject's
    max(TAT, now) before the call, and the owner's unfinished jobs (0 when not counted)."""

    admitted: bool
    bases_us: Mapping[str, int] = field(default_factory=dict)
    tenant_jobs: int = 0
    account_jobs: int = 0


class QuotaStore(Protocol):
    """Where the limiter's state is kept."""

    async def take(self, ask: QuotaAsk, now_us: int) -> Verdict:
        """Admits the call (moving every TAT it draws on) or refuses it (moving none)."""
        ...

    async def give_back(self, draws: Sequence[Draw]) -> None:
        """Returns what admitted `draws` took, for a call refused before any work."""
        ...

    async def sweep(self, before_us: int) -> int:
        """Forgets subjects idle since before `before_us`; how many."""
        ...


def judge(ask: QuotaAsk, bases_us: Mapping[str, int], now_us: int, counts: tuple[int, int]) -> bool:
    """Whether every quota of `ask` fits: the rule `take` applies, in Python (SQLite, fakes)."""
    if not all(fits(draw, bases_us[draw.subject], now_us) for draw in ask.draws):
        return False
    return ask.jobs is None or all(ask.jobs.fit(*counts))


_UNFINISHED = values_in("status", UNFINISHED_STATUSES)

# PostgreSQL: the whole judgement in one statement (see the module's docstring). `judged` is
# each subject's max(TAT, now) from its locked row; `verdict` applies `rates.fits` and
# `rates.jobs_fit` to all of them; `moved` advances the TATs only when the verdict admits.
_TAKE_POSTGRES = f"""
WITH wanted AS (
    SELECT w.subject, w.increment_us, w.allowance_us
    FROM unnest(
        CAST(:subjects AS TEXT[]), CAST(:increments AS BIGINT[]), CAST(:allowances AS BIGINT[])
    ) AS w (subject, increment_us, allowance_us)
),
locked AS (
    SELECT r.subject, r.tat_us FROM quota_rates AS r
    WHERE r.subject = ANY(CAST(:subjects AS TEXT[]))
    ORDER BY r.subject
    FOR UPDATE
),
judged AS (
    SELECT w.subject, w.increment_us, w.allowance_us, l.subject IS NOT NULL AS present,
           GREATEST(l.tat_us, CAST(:now_us AS BIGINT)) AS base_us
    FROM wanted AS w LEFT JOIN locked AS l ON l.subject = w.subject
),
running AS (
    SELECT count(*) AS tenant_jobs,
           count(*) FILTER (WHERE j.account_id = :account_id) AS account_jobs
    FROM jobs AS j
    WHERE CAST(:count_jobs AS BOOLEAN) AND j.tenant = :tenant AND j.{_UNFINISHED}
),
verdict AS (
    SELECT
        coalesce(bool_and(judged.present), TRUE) AS complete,
        coalesce(bool_and(judged.present), TRUE)
        AND coalesce(
            bool_and(judged.base_us + judged.increment_us - :now_us <= judged.allowance_us), TRUE
        )
        AND (
            CAST(:tenant_limit AS BIGINT) IS NULL
            OR running.tenant_jobs + :tenant_pending = 0
            OR running.tenant_jobs + :tenant_pending + :jobs <= CAST(:tenant_limit AS BIGINT)
        )
        AND (
            CAST(:account_limit AS BIGINT) IS NULL
            OR running.account_jobs + :account_pending = 0
            OR running.account_jobs + :account_pending + :jobs <= CAST(:account_limit AS BIGINT)
        ) AS admitted,
        running.tenant_jobs,
        running.account_jobs
    FROM running LEFT JOIN judged ON TRUE
    GROUP BY running.tenant_jobs, running.account_jobs
),
moved AS (
    UPDATE quota_rates AS r SET tat_us = judged.base_us + judged.increment_us
    FROM judged, verdict
    WHERE r.subject = judged.subject AND verdict.admitted
    RETURNING r.subject
)
SELECT verdict.complete, verdict.admitted, verdict.tenant_jobs, verdict.account_jobs,
       (SELECT count(*) FROM moved) AS moved, judged.subject, judged.base_us
FROM verdict LEFT JOIN judged ON TRUE
"""

TAKE_POSTGRES = Query.of("quota take", sa.text(_TAKE_POSTGRES))

#: A missing subject's row, idle (TAT 0); nothing when a racing call made it first.
SEED = Query(
    "quota seed",
    lambda dialect: (
        insert_for(dialect, quota_rates)
        .values(subject=_p("subject"), tenant=_p("tenant"), tat_us=0)
        .on_conflict_do_nothing()
    ),
)

#: SQLite: the call's subjects' TATs.
READ_RATES = Query.of(
    "quota read",
    sa.select(quota_rates.c.subject, quota_rates.c.tat_us).where(
        one_of(quota_rates.c.subject, "subjects")
    ),
)

#: SQLite: the owner's tenant's unfinished jobs, and the account's among them.
COUNT_UNFINISHED = Query.of(
    "quota running",
    sa.select(
        sa.func.count().label("tenant_jobs"),
        sa.func.coalesce(
            sa.func.sum(sa.case((jobs.c.account_id == _p("account_id"), 1), else_=0)), 0
        ).label("account_jobs"),
    ).where(jobs.c.tenant == _p("tenant"), sa.text(_UNFINISHED)),
)


def _upsert(dialect: str) -> sa.ClauseElement:
    insert = insert_for(dialect, quota_rates).values(
        subject=_p("subject"), tenant=_p("tenant"), tat_us=_p("tat_us")
    )
    return insert.on_conflict_do_update(
        index_elements=[quota_rates.c.subject], set_={"tat_us": insert.excluded.tat_us}
    )


#: SQLite: a subject's new TAT.
WRITE_RATE = Query("quota write", _upsert)

#: What an admitted draw took, returned.
GIVE_BACK = Query.of(
    "quota give back",
    sa.update(quota_rates)
    .where(quota_rates.c.subject == _p("subject"))
    .values(tat_us=quota_rates.c.tat_us - _p("increment_us")),
)

#: Subjects idle since before a moment: the same as no row, so forgotten.
SWEEP = Query.of(
    "quota sweep",
    sa.delete(quota_rates)
    .where(quota_rates.c.tat_us < _p("before_us"))
    .returning(quota_rates.c.subject),
)


class SqlQuotaStore:
    """A `QuotaStore` in the router's database."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._postgres = database.dialect.name == "postgresql"

    async def take(self, ask: QuotaAsk, now_us: int) -> Verdict:
        script = self._take_postgres if self._postgres else self._take_sqlite
        return await self._database.run(Mode.WRITE, lambda: script(ask, now_us))

    async def give_back(self, draws: Sequence[Draw]) -> None:
        def script() -> Script[None]:
            for draw in draws:
                yield Step.run(GIVE_BACK, subject=draw.subject, increment_us=draw.increment_us)

        if draws:
            await self._database.run(Mode.WRITE, script)

    async def sweep(self, before_us: int) -> int:
        def script() -> Script[int]:
            rows = yield Step.all(SWEEP, before_us=before_us)
            return len(rows)

        return await self._database.run(Mode.WRITE, script)

    def _take_postgres(self, ask: QuotaAsk, now_us: int) -> Script[Verdict]:
        jobs_ask = ask.jobs
        params: dict[str, Any] = {
            "subjects": [draw.subject for draw in ask.draws],
            "increments": [draw.increment_us for draw in ask.draws],
            "allowances": [draw.allowance_us for draw in ask.draws],
            "now_us": now_us,
            "tenant": ask.owner.tenant,
            "account_id": ask.owner.account_id,
            "count_jobs": jobs_ask is not None,
            "jobs": jobs_ask.jobs if jobs_ask else 0,
            "tenant_limit": jobs_ask.tenant_limit if jobs_ask else None,
            "account_limit": jobs_ask.account_limit if jobs_ask else None,
            "tenant_pending": jobs_ask.tenant_pending if jobs_ask else 0,
            "account_pending": jobs_ask.account_pending if jobs_ask else 0,
        }
        for _ in range(_SEED_ROUNDS):
            rows = yield Step.all(TAKE_POSTGRES, **params)
            first = rows[0]
            if first["complete"]:
                bases = {row["subject"]: row["base_us"] for row in rows if row["subject"]}
                return Verdict(
                    admitted=bool(first["admitted"]),
                    bases_us=bases,
                    tenant_jobs=first["tenant_jobs"],
                    account_jobs=first["account_jobs"],
                )
            # First use of a subject (or swept meanwhile): make its row, then judge again.
            for draw in ask.draws:
                yield Step.run(SEED, subject=draw.subject, tenant=ask.owner.tenant)
        raise Aborted("the quota state kept changing; retry", reason="WRITE_CONFLICT")

    def _take_sqlite(self, ask: QuotaAsk, now_us: int) -> Script[Verdict]:
        rows = yield Step.all(READ_RATES, subjects=[draw.subject for draw in ask.draws])
        tats = {row["subject"]: row["tat_us"] for row in rows}
        bases = {draw.subject: max(tats.get(draw.subject, 0), now_us) for draw in ask.draws}
        counts = (0, 0)
        if ask.jobs is not None:
            running = yield Step.one(
                COUNT_UNFINISHED, tenant=ask.owner.tenant, account_id=ask.owner.account_id
            )
            counts = (int(running["tenant_jobs"]), int(running["account_jobs"]))
        admitted = judge(ask, bases, now_us, counts)
        if admitted:
            for draw in ask.draws:
                yield Step.run(
                    WRITE_RATE,
                    subject=draw.subject,
                    tenant=ask.owner.tenant,
                    tat_us=bases[draw.subject] + draw.increment_us,
                )
        return Verdict(admitted, bases, *counts)
