"""API keys in the router's database, on SQLite and PostgreSQL: their format, what is stored of
them, and how they are created, listed, rotated and revoked, each within its tenant."""

from __future__ import annotations

import hashlib
import sqlite3
import string
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.router.access.keys import (
    PREFIX_CHARS,
    KeyStore,
    hash_key,
    is_api_key,
    is_key_prefix,
    new_key,
)
from services.router.access.scopes import Scope
from services.router.jobs.migrations import SCHEMA
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.migrations import upgrade
from services.runtime.settings import ConfigError
from tests.postgres import Schemas, require_postgres, with_search_path

START = datetime(2030, 1, 1, tzinfo=UTC)
_URLSAFE = string.ascii_letters + string.digits + "-_"


class Clock:
    """The stores' time, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def postgres_schemas() -> Iterator[Schemas]:
    schemas = Schemas(require_postgres("the API key store tests"), "router_keys")
    yield schemas
    schemas.drop_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def dsn(request: pytest.FixtureRequest, tmp_path) -> str:
    """The router's database: a file, or a fresh schema brought up to date as an operator would."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'router.db'}"
    schemas: Schemas = request.getfixturevalue("postgres_schemas")
    dsn = with_search_path(schemas.create())
    upgrade(SCHEMA, dsn)
    return dsn


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def keys(dsn: str, clock: Clock) -> AsyncIterator[KeyStore]:
    store = await KeyStore.open(dsn, clock=clock, pool_size=2)
    yield store
    await store.close()


def _raw(dsn: str, statement: str) -> list[tuple[object, ...]]:
    if dsn.startswith("sqlite:///"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as db:
            return [tuple(row) for row in db.execute(statement)]
    with psycopg.connect(dsn) as db:
        return [tuple(row) for row in db.execute(statement.encode()).fetchall()]


class TestFormat:
    def test_a_new_key_has_the_documented_shape(self) -> None:
        key = new_key()
        assert is_api_key(key)
        assert key.startswith("tgk_") and key[12] == "_" and len(key) == 56
        assert is_key_prefix(key[:PREFIX_CHARS])

    def test_keys_differ(self) -> None:
        assert len({new_key() for _ in range(200)}) == 200

    def test_the_hash_is_sha256_of_the_whole_key(self) -> None:
        key = new_key()
        assert hash_key(key) == hashlib.sha256(key.encode()).digest()

    @given(
        st.text(alphabet="0123456789abcdef", min_size=8, max_size=8),
        st.text(alphabet=_URLSAFE, min_size=43, max_size=43),
    )
    def test_every_well_formed_key_is_accepted(self, digits: str, secret: str) -> None:
        key = f"tgk_{digits}_{secret}"
        assert is_api_key(key)
        assert is_key_prefix(key[:PREFIX_CHARS])

    @given(st.text(max_size=80))
    def test_any_text_is_judged_without_a_crash_and_only_keys_pass(self, text: str) -> None:
        if is_api_key(text):
            assert len(text) == 56 and text.startswith("tgk_") and text[12] == "_"
            assert set(text[4:12]) <= set("0123456789abcdef")
            assert set(text[13:]) <= set(_URLSAFE)
        if is_key_prefix(text):
            assert len(text) == 12 and set(text[4:]) <= set("0123456789abcdef")

    @given(st.data())
    def test_a_key_with_one_character_changed_to_a_foreign_one_is_refused(
        self, data: st.DataObject
    ) -> None:
        key = new_key()
        position = data.draw(st.integers(0, len(key) - 1))
        allowed = (
            "tgk_"[position]
            if position < 4
            else "0123456789abcdef"
            if position < 12
            else "_"
            if position == 12
            else _URLSAFE
        )
        foreign = data.draw(st.characters().filter(lambda c: c not in allowed))
        assert not is_api_key(key[:position] + foreign + key[position + 1 :])

    @given(st.data())
    def test_a_key_cut_or_extended_is_refused(self, data: st.DataObject) -> None:
        key = new_key()
        cut = data.draw(st.integers(0, len(key) - 1))
        assert not is_api_key(key[:cut])
        assert not is_api_key(key + data.draw(st.text(alphabet=_URLSAFE, min_size=1)))


class TestStore:
    async def test_a_created_key_is_stored_as_its_hash_only(self, keys: KeyStore, dsn: str):
        issued = await keys.create("acme", ["images:write", "images:read"], name="web")
        assert issued.secret.startswith(issued.prefix + "_")
        record = issued.record
        assert record.tenant == "acme"
        assert record.scopes == {Scope.IMAGES_WRITE, Scope.IMAGES_READ}
        assert (record.name, record.created_at) == ("web", START)
        assert record.expires_at is None and record.revoked_at is None
        assert record.replaces is None
        ((stored_hash, scopes),) = _raw(
            dsn, f"SELECT key_hash, scopes FROM api_keys WHERE prefix = '{issued.prefix}'"
        )
        assert stored_hash == hashlib.sha256(issued.secret.encode()).hexdigest()
        assert scopes == "images:read images:write"
        rows = _raw(dsn, "SELECT * FROM api_keys")
        assert issued.secret not in repr(rows)

    async def test_the_secret_never_shows_in_a_repr(self, keys: KeyStore) -> None:
        issued = await keys.create("acme", ["images:read"])
        assert issued.secret not in repr(issued) and issued.secret not in str(issued)
        stored = await keys.stored(issued.prefix)
        assert stored is not None
        assert stored.key_hash.hex() not in repr(stored)
        assert stored.record == issued.record

    async def test_a_ttl_sets_the_expiry(self, keys: KeyStore, clock: Clock) -> None:
        issued = await keys.create("acme", ["images:read"], ttl_seconds=60)
        assert issued.record.expires_at == START + timedelta(seconds=60)
        assert issued.record.active(clock.now)
        clock.advance(60)
        assert not issued.record.active(clock.now)
        assert await keys.list("acme") == []
        assert await keys.list("acme", include_inactive=True) == [issued.record]

    async def test_listings_are_per_tenant_newest_first(self, keys: KeyStore, clock: Clock):
        first = await keys.create("acme", ["images:read"])
        clock.advance(1)
        second = await keys.create("acme", ["images:write"])
        clock.advance(1)
        other = await keys.create("globex", ["images:read"])
        assert await keys.list("acme") == [second.record, first.record]
        assert await keys.list("globex") == [other.record]
        assert await keys.list(None) == [other.record, second.record, first.record]

    async def test_revoked_keys_are_listed_only_when_asked(self, keys: KeyStore, clock: Clock):
        kept = await keys.create("acme", ["images:read"])
        gone = await keys.create("acme", ["images:read"])
        clock.advance(5)
        revoked = await keys.revoke("acme", gone.prefix)
        assert revoked.revoked_at == START + timedelta(seconds=5)
        assert await keys.list("acme") == [kept.record]
        assert {r.prefix for r in await keys.list("acme", include_inactive=True)} == {
            kept.prefix,
            gone.prefix,
        }
        # Revoking again changes nothing.
        clock.advance(5)
        assert await keys.revoke("acme", gone.prefix) == revoked
        assert await keys.find(gone.prefix) == revoked

    async def test_rotation_keeps_the_old_key_for_the_grace_only(
        self, keys: KeyStore, clock: Clock
    ):
        old = await keys.create("acme", ["images:write"], name="worker", ttl_seconds=3600)
        clock.advance(100)
        new, replaced = await keys.rotate("acme", old.prefix, grace_seconds=30)
        assert new.record.replaces == old.prefix
        assert new.record.scopes == old.record.scopes and new.record.name == "worker"
        # The new key lives as long as the old one was meant to.
        assert new.record.expires_at == clock.now + timedelta(seconds=3600)
        assert replaced.expires_at == clock.now + timedelta(seconds=30)
        assert replaced.active(clock.now + timedelta(seconds=29))
        assert not replaced.active(clock.now + timedelta(seconds=30))
        assert await keys.find(old.prefix) == replaced

    async def test_rotation_never_lengthens_the_old_keys_life(self, keys: KeyStore, clock: Clock):
        old = await keys.create("acme", ["images:write"], ttl_seconds=10)
        _, replaced = await keys.rotate("acme", old.prefix)
        assert replaced.expires_at == START + timedelta(seconds=10)

    async def test_a_revoked_or_expired_key_cannot_be_rotated(self, keys: KeyStore, clock: Clock):
        revoked = await keys.create("acme", ["images:write"])
        await keys.revoke("acme", revoked.prefix)
        expired = await keys.create("acme", ["images:write"], ttl_seconds=1)
        clock.advance(1)
        for prefix in (revoked.prefix, expired.prefix):
            with pytest.raises(FailedPrecondition) as refused:
                await keys.rotate("acme", prefix)
            assert refused.value.reason == "API_KEY_INACTIVE"

    async def test_another_tenants_key_is_not_found_like_an_unknown_one(self, keys: KeyStore):
        theirs = await keys.create("globex", ["images:write"])
        unknown = "tgk_00000000"
        answers = []
        for prefix in (theirs.prefix, unknown):
            for act in (keys.revoke, keys.rotate):
                with pytest.raises(NotFound) as refused:
                    await act("acme", prefix)
                answers.append(
                    (refused.value.reason, refused.value.message.replace(prefix, "PREFIX"))
                )
        assert len(set(answers)) == 1
        # Nothing changed.
        assert await keys.list("globex") == [theirs.record]

    @pytest.mark.parametrize(
        ("arguments", "field", "reason"),
        [
            ({"tenant": "Acme"}, "tenant", "MALFORMED_TENANT"),
            ({"scopes": []}, "scopes", "SCOPES_REQUIRED"),
            ({"scopes": ["images:paint"]}, "scopes", "UNKNOWN_SCOPE"),
            ({"name": "x" * 101}, "name", "KEY_NAME_MALFORMED"),
            ({"name": "two\nlines"}, "name", "KEY_NAME_MALFORMED"),
            ({"ttl_seconds": 0}, "ttl_seconds", "OUT_OF_RANGE"),
            ({"ttl_seconds": 10**12}, "ttl_seconds", "OUT_OF_RANGE"),
        ],
    )
    async def test_bad_input_is_refused_and_nothing_stored(
        self, keys: KeyStore, arguments: dict[str, object], field: str, reason: str
    ):
        call: dict[str, object] = {"tenant": "acme", "scopes": ["images:read"], **arguments}
        tenant, scopes = call.pop("tenant"), call.pop("scopes")
        with pytest.raises(InvalidArgument) as refused:
            await keys.create(tenant, scopes, **call)  # type: ignore[arg-type]
        assert (refused.value.violations[0].field, refused.value.reason) == (field, reason)
        assert await keys.list(None, include_inactive=True) == []

    async def test_a_malformed_prefix_is_refused(self, keys: KeyStore) -> None:
        for prefix in ("", "tgk_", "tgk_ABCDEF12", "tgk_0000000000", "key_00000000"):
            with pytest.raises(InvalidArgument) as refused:
                await keys.revoke("acme", prefix)
            assert refused.value.reason == "MALFORMED_KEY_PREFIX"

    async def test_two_stores_on_one_database_see_each_others_changes(
        self, keys: KeyStore, dsn: str, clock: Clock
    ):
        other = await KeyStore.open(dsn, clock=clock, pool_size=1)
        try:
            issued = await keys.create("acme", ["images:read"])
            await other.revoke("acme", issued.prefix)
            found = await keys.find(issued.prefix)
            assert found is not None and found.revoked_at == START
        finally:
            await other.close()


async def test_sqlite_is_made_and_brought_up_to_date_at_open(tmp_path) -> None:
    path = tmp_path / "new" / "dir" / "router.db"
    store = await KeyStore.open(f"sqlite:///{path}")
    try:
        assert await store.list(None) == []
    finally:
        await store.close()
    assert path.exists()


@pytest.mark.postgres
async def test_postgres_that_is_not_current_is_refused(postgres_schemas: Schemas) -> None:
    dsn = with_search_path(postgres_schemas.create())
    with pytest.raises(ConfigError, match="tiergen migrate"):
        await KeyStore.open(dsn, pool_size=1)


async def test_a_dsn_of_another_kind_is_refused() -> None:
    with pytest.raises(ConfigError):
        await KeyStore.open("mysql://localhost/router")
