"""The test PostgreSQL server: where it is, whether it answers, and fresh schemas on it.

Tests that need it fail when it cannot be reached under CI (`CI=true`) and skip with a loud
reason elsewhere, so a laptop without PostgreSQL still runs everything else.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

__all__ = ["POSTGRES_DSN", "Schemas", "fresh_schema", "require_postgres", "with_search_path"]

POSTGRES_DSN = os.environ.get(
    "TIERGEN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


def require_postgres(what: str) -> str:
    """The test server's DSN once it answers; fails (CI) or skips saying `what` needs it."""
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.OperationalError as error:
        message = (
            f"PostgreSQL at {POSTGRES_DSN} is unreachable ({error}); "
            f"set TIERGEN_TEST_POSTGRES_DSN to run {what}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(f"SKIPPING {what.upper()}: {message}")
    return POSTGRES_DSN


def with_search_path(
    schema: str, dsn: str = POSTGRES_DSN, *, application_name: str | None = None
) -> str:
    """`dsn` with `schema` first on the search path, and its connections named when asked."""
    separator = "&" if "?" in dsn else "?"
    named = "" if application_name is None else f"&application_name={application_name}"
    return f"{dsn}{separator}options=-csearch_path%3D{schema}{named}"


class Schemas:
    """Throwaway schemas on the test server, for a whole session; `drop_all` removes them."""

    def __init__(self, server_dsn: str, prefix: str) -> None:
        self._server_dsn = server_dsn
        self._prefix = prefix
        self._created: list[str] = []

    def create(self) -> str:
        """A fresh, empty schema's name."""
        name = f"{self._prefix}_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self._server_dsn, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{name}"')
        self._created.append(name)
        return name

    def drop_all(self) -> None:
        with psycopg.connect(self._server_dsn, autocommit=True) as connection:
            for name in self._created:
                connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        self._created.clear()


@contextlib.contextmanager
def fresh_schema(prefix: str, what: str) -> Iterator[str]:
    """A new schema on the test server, dropped afterwards; its name."""
    server = require_postgres(what)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(server, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{name}" CASCADE')
