"""The router's authenticator and access gate: keys checked against their stored hash, cached
per prefix within the revocation bound (reads counted at the store, not timed), OIDC-shaped
tokens handed on, bearer tokens parsed, and refusals audited and throttled per peer."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from services.router.access.authenticator import RouterAuthenticator, looks_like_jwt
from services.router.access.gate import (
    AccessGate,
    CredentialRejected,
    Throttle,
    bearer_token,
    peer_host,
)
from services.router.access.keys import KeyStore, StoredKey, new_key
from services.router.access.principal import Principal, current_principal
from services.router.access.scopes import Scope
from services.runtime.errors import PermissionDenied, Unauthenticated, Unavailable

START = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    """Wall-clock time for the store and the authenticator, and the cache's timer."""

    def __init__(self) -> None:
        self.now = START
        self.elapsed = 0.0

    def __call__(self) -> datetime:
        return self.now

    def timer(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.elapsed += seconds


class CountingKeys:
    """The key store, with its reads counted."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.reads = 0

    async def stored(self, prefix: str) -> StoredKey | None:
        self.reads += 1
        return await self.store.stored(prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path, clock: Clock) -> AsyncIterator[KeyStore]:
    keys = await KeyStore.open(f"sqlite:///{tmp_path / 'router.db'}", clock=clock)
    yield keys
    await keys.close()


@pytest.fixture
def counted(store: KeyStore) -> CountingKeys:
    return CountingKeys(store)


def authenticator(counted: CountingKeys, clock: Clock, **options: Any) -> RouterAuthenticator:
    return RouterAuthenticator(counted, clock=clock, timer=clock.timer, **options)


async def _cause(auth: RouterAuthenticator, token: str) -> CredentialRejected:
    with pytest.raises(CredentialRejected) as rejected:
        await auth.authenticate(token)
    return rejected.value


class TestKeys:
    async def test_a_key_is_its_tenants_principal(self, store, counted, clock) -> None:
        issued = await store.create("acme", ["images:write"])
        principal = await authenticator(counted, clock).authenticate(issued.secret)
        assert principal == Principal("acme", frozenset({Scope.IMAGES_WRITE}), issued.prefix)

    async def test_a_key_already_seen_costs_no_store_read(self, store, counted, clock) -> None:
        issued = await store.create("acme", ["images:write"])
        auth = authenticator(counted, clock)
        for _ in range(100):
            await auth.authenticate(issued.secret)
            clock.advance(0.01)
        assert counted.reads == 1

    async def test_an_entry_past_the_bound_is_read_again(self, store, counted, clock) -> None:
        issued = await store.create("acme", ["images:write"])
        auth = authenticator(counted, clock, cache_seconds=2.0)
        await auth.authenticate(issued.secret)
        await store.revoke("acme", issued.prefix)
        clock.advance(1.9)
        # Within the bound the revocation may not be seen yet...
        await auth.authenticate(issued.secret)
        assert counted.reads == 1
        # ...past it, it is.
        clock.advance(0.1)
        assert (await _cause(auth, issued.secret)).cause == "revoked"
        assert counted.reads == 2

    async def test_a_bound_of_zero_reads_every_call(self, store, counted, clock) -> None:
        issued = await store.create("acme", ["images:write"])
        auth = authenticator(counted, clock, cache_seconds=0)
        for _ in range(3):
            await auth.authenticate(issued.secret)
        assert counted.reads == 3

    async def test_a_burst_for_one_prefix_does_one_read(self, clock) -> None:
        secret = new_key()
        release = asyncio.Event()

        class SlowKeys:
            reads = 0

            async def stored(self, prefix: str) -> StoredKey | None:
                self.reads += 1
                await release.wait()
                return None

        keys = SlowKeys()
        auth = RouterAuthenticator(keys, clock=clock, timer=clock.timer)
        calls = [asyncio.create_task(auth.authenticate(secret)) for _ in range(50)]
        await asyncio.sleep(0)
        release.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert keys.reads == 1
        assert {o.cause for o in outcomes if isinstance(o, CredentialRejected)} == {"unknown"}
        assert len(outcomes) == 50

    async def test_a_caller_giving_up_does_not_cancel_the_read_of_others(self, clock) -> None:
        issued_secret = new_key()
        release = asyncio.Event()

        class SlowKeys:
            async def stored(self, prefix: str) -> StoredKey | None:
                await release.wait()
                return None

        auth = RouterAuthenticator(SlowKeys(), clock=clock, timer=clock.timer)
        impatient = asyncio.create_task(auth.authenticate(issued_secret))
        patient = asyncio.create_task(auth.authenticate(issued_secret))
        await asyncio.sleep(0)
        impatient.cancel()
        release.set()
        with pytest.raises(CredentialRejected):
            await patient

    async def test_a_change_made_here_is_read_at_once(self, store, counted, clock) -> None:
        issued = await store.create("acme", ["images:write"])
        auth = authenticator(counted, clock)
        await auth.authenticate(issued.secret)
        await store.revoke("acme", issued.prefix)
        auth.forget(issued.prefix)
        assert (await _cause(auth, issued.secret)).cause == "revoked"

    async def test_a_store_that_cannot_be_read_fails_the_call(self, clock) -> None:
        class DownKeys:
            async def stored(self, prefix: str) -> StoredKey | None:
                raise Unavailable("the database is down")

        auth = RouterAuthenticator(DownKeys(), clock=clock, timer=clock.timer)
        with pytest.raises(Unavailable):
            await auth.authenticate(new_key())

    async def test_at_most_max_entries_prefixes_are_kept(self, store, counted, clock) -> None:
        issued = [await store.create("acme", ["images:read"]) for _ in range(3)]
        auth = authenticator(counted, clock, max_entries=2)
        for key in issued:
            await auth.authenticate(key.secret)
        await auth.authenticate(issued[2].secret)
        assert counted.reads == 3
        await auth.authenticate(issued[0].secret)
        assert counted.reads == 4


class TestRefusals:
    async def test_each_refusal_has_its_cause(self, store, counted, clock) -> None:
        auth = authenticator(counted, clock)
        good = await store.create("acme", ["images:write"])
        expiring = await store.create("acme", ["images:write"], ttl_seconds=5)
        revoked = await store.create("acme", ["images:write"])
        await store.revoke("acme", revoked.prefix)
        await auth.authenticate(expiring.secret)
        clock.advance(5)
        wrong = good.prefix + "_" + new_key()[13:]
        unknown = new_key()
        found = {
            "unknown": await _cause(auth, unknown),
            "mismatch": await _cause(auth, wrong),
            "expired": await _cause(auth, expiring.secret),
            "revoked": await _cause(auth, revoked.secret),
            "malformed": await _cause(auth, good.secret[:-1]),
        }
        assert {cause: rejected.cause for cause, rejected in found.items()} == {
            cause: cause for cause in found
        }
        assert found["unknown"].credential == unknown[:12] and not found["unknown"].tenant
        assert (found["mismatch"].credential, found["mismatch"].tenant) == (good.prefix, "acme")
        for rejected in found.values():
            assert good.secret not in str(rejected) and good.secret not in repr(rejected)

    async def test_an_unknown_prefix_is_compared_like_a_wrong_key(
        self, store, counted, clock, monkeypatch
    ) -> None:
        compared: list[int] = []
        real = hmac.compare_digest

        def counting(a: bytes, b: bytes) -> bool:
            compared.append(len(b))
            return real(a, b)

        monkeypatch.setattr(hmac, "compare_digest", counting)
        auth = authenticator(counted, clock)
        good = await store.create("acme", ["images:write"])
        await _cause(auth, new_key())
        await _cause(auth, good.prefix + "_" + new_key()[13:])
        assert compared == [32, 32]

    async def test_jwt_shaped_tokens_go_to_the_oidc_verifier(self, counted, clock) -> None:
        seen: list[str] = []

        class Oidc:
            async def authenticate(self, token: str) -> Principal:
                seen.append(token)
                return Principal("acme", frozenset({Scope.IMAGES_READ}), "oidc:issuer#sub")

        token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
        with_oidc = authenticator(counted, clock, oidc=Oidc())
        assert (await with_oidc.authenticate(token)).credential == "oidc:issuer#sub"
        assert seen == [token]
        without = authenticator(counted, clock)
        assert (await _cause(without, token)).cause == "oidc-not-configured"
        assert (await _cause(with_oidc, "just-some-text")).cause == "unknown"
        assert counted.reads == 0

    @given(st.text(max_size=100))
    def test_jwt_shape(self, text: str) -> None:
        parts = text.split(".")
        alphabet = re.compile(r"[A-Za-z0-9_-]*")
        expected = (
            len(parts) == 3
            and all(alphabet.fullmatch(part) for part in parts)
            and bool(parts[0])
            and bool(parts[1])
        )
        assert looks_like_jwt(text) == expected


_WS = st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2003", ""])
_TOKEN_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))


@st.composite
def _authorization_values(draw: st.DrawFn) -> str:
    """Mostly values close to well formed, each part perhaps spoiled."""
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer:", ""]))
    gap = draw(st.sampled_from([" ", "  ", " \t", "\t", ""]))
    token = draw(
        st.one_of(
            st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=60),
            st.text(max_size=20),
            st.just("x" * 8193),
        )
    )
    return draw(_WS) + scheme + gap + token + draw(_WS)


def _well_formed(metadata: list[tuple[str, Any]]) -> str | None:
    """The token of `metadata` as the docs define it, or None."""
    values = [value for key, value in metadata if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    match = re.fullmatch(r"\s*[Bb][Ee][Aa][Rr][Ee][Rr] \s*([!-~]{1,8192})\s*", values[0])
    return match[1] if match else None


class TestBearerToken:
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["authorization", "x-other", "authorization-bin"]),
                st.one_of(_authorization_values(), st.text(max_size=30), st.binary(max_size=8)),
            ),
            max_size=3,
        )
    )
    def test_accepts_exactly_one_well_formed_bearer_token(
        self, metadata: list[tuple[str, Any]]
    ) -> None:
        expected = _well_formed(metadata)
        try:
            token = bearer_token(metadata)
        except Unauthenticated as refused:
            assert expected is None, metadata
            assert refused.reason in ("CREDENTIAL_MISSING", "CREDENTIAL_MALFORMED")
            return
        assert token == expected

    def test_no_metadata_is_a_missing_credential(self) -> None:
        for metadata in (None, [], [("x-other", "Bearer abc")]):
            with pytest.raises(Unauthenticated) as refused:
                bearer_token(metadata)
            assert refused.value.reason == "CREDENTIAL_MISSING"


class TestThrottle:
    def test_refusals_past_the_free_ones_wait_ever_longer(self) -> None:
        throttle = Throttle(free=5, window=60, base=0.1, cap=1.0)
        delays = [throttle.refused("ipv4:10.0.0.7:5000", now=i) for i in range(10)]
        assert delays == [0, 0, 0, 0, 0, 0.1, 0.2, 0.4, 0.8, 1.0]

    def test_a_peer_is_its_host_whatever_its_port(self) -> None:
        throttle = Throttle(free=1)
        assert throttle.refused("ipv4:10.0.0.7:5000", now=0) == 0
        assert throttle.refused("ipv4:10.0.0.7:5001", now=0) > 0
        assert throttle.refused("ipv6:[::1]:5001", now=0) == 0
        assert peer_host("ipv6:[::1]:5001") == "ipv6:[::1]"

    def test_other_peers_are_not_slowed(self) -> None:
        throttle = Throttle(free=2)
        for _ in range(10):
            throttle.refused("ipv4:10.0.0.7:1", now=0)
        assert throttle.refused("ipv4:10.0.0.8:1", now=0) == 0

    def test_the_count_starts_again_after_the_window(self) -> None:
        throttle = Throttle(free=2, window=60)
        for _ in range(5):
            throttle.refused("ipv4:10.0.0.7:1", now=0)
        assert throttle.refused("ipv4:10.0.0.7:1", now=61) == 0

    def test_at_most_max_peers_are_remembered(self) -> None:
        throttle = Throttle(free=1, max_peers=2)
        for host in ("a", "b", "c"):
            throttle.refused(host, now=0)
        # "a" was forgotten: its next refusal is its first again.
        assert throttle.refused("a", now=0) == 0


class _Context:
    """What the gate reads of a call."""

    def __init__(self, metadata: list[tuple[str, str]], peer: str = "ipv4:10.1.2.3:40000"):
        self._metadata = metadata
        self._peer = peer

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return self._peer


def _context(metadata: list[tuple[str, str]], peer: str = "ipv4:10.1.2.3:40000") -> Any:
    """A call's context, as far as the gate reads it."""
    return _Context(metadata, peer)


_GENERATE = "/tiergen.router.v1.RouterService/Generate"


class TestGate:
    async def test_a_refused_peer_is_answered_after_a_delay(
        self, store, counted, clock, monkeypatch
    ) -> None:
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        monkeypatch.setattr(asyncio, "sleep", sleep)
        gate = AccessGate(authenticator(counted, clock), Throttle(free=2, base=0.5, cap=4))
        bad = _context([("authorization", f"Bearer {new_key()}")])
        for _ in range(5):
            with pytest.raises(Unauthenticated):
                await gate(_GENERATE, bad)
        assert slept == [0.5, 1.0, 2.0]
        # A good key from another peer is let through at once.
        issued = await store.create("acme", ["images:write"])
        await gate(
            _GENERATE, _context([("authorization", f"Bearer {issued.secret}")], "ipv4:9.9.9.9:1")
        )
        assert current_principal().tenant == "acme"
        assert slept == [0.5, 1.0, 2.0]

    async def test_a_refusal_is_audited_with_its_cause_and_never_the_key(
        self, store, counted, clock
    ) -> None:
        gate = AccessGate(authenticator(counted, clock))
        issued = await store.create("acme", ["images:read"])
        await store.revoke("acme", issued.prefix)
        with structlog.testing.capture_logs() as logs, pytest.raises(Unauthenticated) as refused:
            await gate(_GENERATE, _context([("authorization", f"Bearer {issued.secret}")]))
        assert refused.value.reason == "CREDENTIAL_INVALID"
        (event,) = [log for log in logs if log.get("action") == "call.refused"]
        assert (event["cause"], event["credential"], event["tenant"]) == (
            "revoked",
            issued.prefix,
            "acme",
        )
        assert issued.secret not in repr(logs) and issued.secret not in str(refused.value)

    async def test_a_key_without_the_scope_is_denied(self, store, counted, clock) -> None:
        gate = AccessGate(authenticator(counted, clock))
        issued = await store.create("acme", ["images:read"])
        with pytest.raises(PermissionDenied) as refused:
            await gate(_GENERATE, _context([("authorization", f"Bearer {issued.secret}")]))
        assert refused.value.reason == "SCOPE_MISSING"
