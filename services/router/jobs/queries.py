"""SQLAlchemy Core statements compiled once per dialect and run on the plain drivers.

The job store builds every statement with SQLAlchemy Core against `jobs.schema`, compiles it
on first use for the database at hand, and hands the SQL text to sqlite3 or psycopg itself:
a `Query` is that statement with its compilations. SQLAlchemy's execution layer (engines,
connections, result objects) is not used: the drivers the stores always had run the SQL, so a
call costs what it cost before, and psycopg's async pool keeps the checks and timeouts the
store relies on. What that costs: parameters are plain driver values (no SQLAlchemy type
processing), so the store passes each column's value as its driver takes it.

Parameters are named (`:name` for sqlite3, `%(name)s` for psycopg), so a call passes one dict
on both databases. Two dialect seams live here:

- `one_of(column, name)`: membership in a list parameter, one compiled statement for any
  length of list. PostgreSQL takes the list as an array (`column = ANY(%(name)s)`); SQLite has
  no arrays, so the list travels as JSON text and is unpacked by `json_each`.
- `insert_for(dialect)`: the dialect's INSERT, for `ON CONFLICT DO NOTHING`, which SQLAlchemy
  builds per dialect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["POSTGRESQL", "SQLITE", "Compiled", "Query", "insert_for", "one_of"]

#: The dialects the statements are compiled for, with the parameter style of each driver.
SQLITE: Dialect = sqlite.dialect(paramstyle="named")
POSTGRESQL: Dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


class _OneOf(sa.sql.expression.ColumnElement[Any]):
    """`column` is one of the values of the list parameter `name` (see `one_of`)."""

    __visit_name__ = "one_of"
    inherit_cache = False
    # Not BOOLEAN: SQLite's compiler would write a boolean element in a WHERE as `... = 1`,
    # which no index serves.
    type = sa.types.NullType()

    def __init__(self, column: sa.ColumnElement[Any], name: str) -> None:
        self.column = column
        self.name = name

    def get_children(self, **kw: Any) -> tuple[sa.ColumnElement[Any], ...]:
        return (self.column,)


def one_of(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[Any]:
    """`column` is one of the list parameter `name`, passed as a Python sequence of text."""
    return _OneOf(column, name)


@compiles(_OneOf, "postgresql")
def _one_of_array(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    values = sa.bindparam(element.name, type_=postgresql.ARRAY(sa.Text))
    column = compiler.process(element.column, **kw)
    return f"{column} = ANY({compiler.process(values, **kw)})"


@compiles(_OneOf, "sqlite")
def _one_of_json(element: _OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    values = compiler.process(sa.bindparam(element.name, type_=sa.Text), **kw)
    column = compiler.process(element.column, **kw)
    return f"{column} IN (SELECT value FROM json_each({values}))"


def insert_for(dialect: str, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """The INSERT of `dialect`, the one that has `on_conflict_do_nothing`."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement compiled for one dialect: its SQL and how to make its parameters."""

    sql: str
    #: Values SQLAlchemy bound itself (a LIMIT's OFFSET 0 on SQLite), merged under each call's.
    defaults: Mapping[str, Any]
    #: The list parameters (`one_of`), which SQLite takes as JSON text.
    lists: tuple[str, ...]
    #: Whether the driver gets lists as JSON text (SQLite) or as they are (PostgreSQL).
    lists_as_json: bool

    def parameters(self, given: Mapping[str, Any]) -> Mapping[str, Any]:
        """The parameters of one execution."""
        if not self.defaults and not (self.lists and self.lists_as_json):
            return given
        merged = {**self.defaults, **given}
        if self.lists_as_json:
            for name in self.lists:
                merged[name] = json.dumps(list(merged[name]))
        return merged


class Query:
    """A statement, built by a function of the dialect's name where dialects differ, compiled
    once for each dialect it runs on."""

    __slots__ = ("_build", "_compiled", "name")

    def __init__(self, name: str, build: Callable[[str], sa.ClauseElement]) -> None:
        self.name = name
        self._build = build
        self._compiled: dict[str, Compiled] = {}

    @classmethod
    def of(cls, name: str, statement: sa.ClauseElement) -> Query:
        """A statement that is the same on every dialect."""
        return cls(name, lambda _: statement)

    def __repr__(self) -> str:
        return f"Query({self.name!r})"

    def compiled(self, dialect: Dialect) -> Compiled:
        """The statement compiled for `dialect`, compiling it the first time."""
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = self._compile(dialect)
        return compiled

    def _compile(self, dialect: Dialect) -> Compiled:
        statement = self._build(dialect.name)
        result = statement.compile(dialect=dialect)
        lists = tuple(
            element.name for element in visitors.iterate(statement) if isinstance(element, _OneOf)
        )
        return Compiled(
            sql=result.string,
            defaults={name: value for name, value in result.params.items() if value is not None},
            lists=lists,
            lists_as_json=dialect.name == "sqlite",
        )
