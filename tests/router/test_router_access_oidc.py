"""OIDC bearer tokens at the router: real RS256 and ES256 tokens signed with keys made here,
checked against a JWKS file and a JWKS URL served on 127.0.0.1; every refusal and its audit
cause; key rotation and its refetch limit counted at the server; the issuers file's errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import ssl
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from services.router.access.gate import Authenticator, CredentialRejected
from services.router.access.oidc import (
    JWKS_MAX_AGE_SECONDS,
    MAX_JWKS_BYTES,
    OidcVerifier,
    load_oidc,
)
from services.router.access.scopes import Scope
from services.runtime.settings import ConfigError
from tests.router.jwks_server import serving_jwks
from tests.tls import session_pki

CLUSTER = "https://kubernetes.default.svc.cluster.local"
PARTNER = "https://oidc.partner.example"
WEB = "system:serviceaccount:acme:web"
READ, WRITE = Scope.IMAGES_READ, Scope.IMAGES_WRITE

CONFIG = f"""
[[issuers]]
issuer = "{CLUSTER}"
audience = "tiergen"
jwks_file = "jwks.json"
tenant_claim = ["kubernetes.io", "namespace"]
tenants = ["acme", "globex"]
[issuers.subjects]
"{WEB}" = ["images:write", "images:read"]
"system:serviceaccount:globex:batch" = ["images:read"]

[[issuers]]
issuer = "{PARTNER}"
audience = "tiergen-partner"
jwks_file = "jwks.json"
algorithms = ["ES256"]
leeway_seconds = 0
tenant = "initech"
scopes = ["images:read"]
[issuers.subjects]
"ci" = ["images:write"]
"""


@dataclass(frozen=True)
class SigningKey:
    """An issuer's private key and the JWK its JWKS publishes."""

    kid: str
    algorithm: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        codec = ECAlgorithm if self.algorithm.startswith("ES") else RSAAlgorithm
        public = codec.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, **header}
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers)


@cache
def rsa_key(kid: str, bits: int = 2048) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=bits))


@cache
def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def claims(**changes: Any) -> dict[str, Any]:
    """A projected ServiceAccount token's claims, valid now; a change to None drops the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": CLUSTER,
        "aud": ["tiergen"],
        "sub": WEB,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "kubernetes.io": {"namespace": "acme", "serviceaccount": {"name": "web"}},
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT put together by hand, for the tokens PyJWT will not make."""
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_jwks(path: Path, *keys: SigningKey) -> None:
    """Replaces the file as a ConfigMap update does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps({"keys": [key.jwk() for key in keys]}), encoding="utf-8")
    os.replace(fresh, path)


def write_config(directory: Path, text: str) -> Path:
    path = directory / "oidc.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def verifier(tmp_path: Path) -> OidcVerifier:
    write_jwks(tmp_path / "jwks.json", rsa_key("rsa-a"), ec_key("ec-a"))
    return load_oidc(write_config(tmp_path, CONFIG))


async def rejection(verifier: OidcVerifier, token: str) -> CredentialRejected:
    with pytest.raises(CredentialRejected) as caught:
        await verifier.authenticate(token)
    rejected = caught.value
    # The audit event carries the cause, credential and tenant: none may repeat the token.
    for said in (rejected.cause, rejected.credential, rejected.tenant, str(rejected)):
        assert token not in said or not token
    return rejected


# Valid tokens.


async def test_an_rs256_token_takes_its_tenant_from_the_namespace_claim(
    verifier: OidcVerifier,
) -> None:
    authenticator: Authenticator = verifier
    principal = await authenticator.authenticate(rsa_key("rsa-a").sign(claims()))

    assert principal.tenant == "acme"
    assert principal.scopes == {WRITE, READ}
    assert principal.credential == f"oidc:{CLUSTER}#{WEB}"


async def test_another_allowed_namespace_and_subject_map_to_their_tenant_and_scopes(
    verifier: OidcVerifier,
) -> None:
    token = rsa_key("rsa-a").sign(
        claims(
            sub="system:serviceaccount:globex:batch", **{"kubernetes.io": {"namespace": "globex"}}
        )
    )
    principal = await verifier.authenticate(token)

    assert (principal.tenant, principal.scopes) == ("globex", frozenset({READ}))


async def test_an_es256_token_of_a_fixed_tenant_issuer_gets_the_issuer_wide_scopes(
    verifier: OidcVerifier,
) -> None:
    partner = claims(iss=PARTNER, aud="tiergen-partner", sub="reporting")
    principal = await verifier.authenticate(ec_key("ec-a").sign(partner))
    assert (principal.tenant, principal.scopes) == ("initech", frozenset({READ}))
    assert principal.credential == f"oidc:{PARTNER}#reporting"

    # A subject with its own row gets those scopes on top.
    ci = await verifier.authenticate(ec_key("ec-a").sign({**partner, "sub": "ci"}))
    assert ci.scopes == {READ, WRITE}


async def test_a_token_just_past_its_expiry_passes_within_the_leeway(
    verifier: OidcVerifier,
) -> None:
    token = rsa_key("rsa-a").sign(claims(exp=int(time.time()) - 10))
    assert (await verifier.authenticate(token)).tenant == "acme"


async def test_the_credential_name_of_a_very_long_subject_is_bounded(
    verifier: OidcVerifier,
) -> None:
    partner = claims(iss=PARTNER, aud="tiergen-partner", sub="s" * 1000)
    principal = await verifier.authenticate(ec_key("ec-a").sign(partner))
    assert len(principal.credential) == 256
    assert principal.credential.startswith(f"oidc:{PARTNER}#sss")


# Refusals, each with its own audit cause.


def _hmac_token(secret: bytes, kid: str = "rsa-a") -> str:
    header = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def _public_pem() -> bytes:
    public: rsa.RSAPublicKey = rsa_key("rsa-a").private.public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _tampered() -> str:
    header, _, signature = rsa_key("rsa-a").sign(claims()).split(".")
    payload = b64(json.dumps(claims(sub="system:serviceaccount:acme:admin")).encode())
    return f"{header}.{payload}.{signature}"


REFUSALS: dict[str, tuple[str, Any]] = {
    "alg none": ("alg-none", lambda: compact({"alg": "none", "kid": "rsa-a"}, claims())),
    "alg None": ("alg-none", lambda: compact({"alg": "None", "kid": "rsa-a"}, claims())),
    "no alg": ("alg-none", lambda: compact({"kid": "rsa-a"}, claims(), b"sig")),
    "HS256": (
        "alg-hmac",
        lambda: jwt.encode(claims(), "a-shared-secret-of-32-bytes-long", "HS256", {"kid": "x"}),
    ),
    "RS256 public key as HS256 secret": ("alg-hmac", lambda: _hmac_token(_public_pem())),
    "algorithm not configured": (
        "alg-not-allowed",
        lambda: jwt.encode(claims(), rsa_key("rsa-a").private, "RS512", {"kid": "rsa-a"}),
    ),
    "ES256 token naming an RSA key": (
        "alg-key-mismatch",
        lambda: ec_key("ec-a").sign(claims(), kid="rsa-a"),
    ),
    "RS256 to an ES256-only issuer": (
        "alg-not-allowed",
        lambda: rsa_key("rsa-a").sign(claims(iss=PARTNER, aud="tiergen-partner")),
    ),
    "wrong audience": ("wrong-audience", lambda: rsa_key("rsa-a").sign(claims(aud="other"))),
    "no audience": ("missing-aud", lambda: rsa_key("rsa-a").sign(claims(aud=None))),
    "unknown issuer": (
        "unknown-issuer",
        lambda: rsa_key("rsa-a").sign(claims(iss="https://evil.example")),
    ),
    "no issuer": ("unknown-issuer", lambda: rsa_key("rsa-a").sign(claims(iss=None))),
    "expired": ("expired", lambda: rsa_key("rsa-a").sign(claims(exp=int(time.time()) - 100))),
    "not before in the future": (
        "not-yet-valid",
        lambda: rsa_key("rsa-a").sign(claims(nbf=int(time.time()) + 3600)),
    ),
    "issued in the future": (
        "not-yet-valid",
        lambda: rsa_key("rsa-a").sign(claims(iat=int(time.time()) + 3600)),
    ),
    "no expiry": ("missing-exp", lambda: rsa_key("rsa-a").sign(claims(exp=None))),
    "no subject": ("missing-sub", lambda: rsa_key("rsa-a").sign(claims(sub=None))),
    "empty subject": ("bad-subject", lambda: rsa_key("rsa-a").sign(claims(sub=""))),
    "subject with a newline": ("bad-subject", lambda: rsa_key("rsa-a").sign(claims(sub="a\nb"))),
    "numeric subject": ("malformed-claims", lambda: rsa_key("rsa-a").sign(claims(sub=42))),
    "expiry not a number": ("malformed-claims", lambda: rsa_key("rsa-a").sign(claims(exp="soon"))),
    "tampered payload": ("bad-signature", _tampered),
    "signed by another key under a known kid": (
        "bad-signature",
        lambda: rsa_key("rsa-intruder").sign(claims(), kid="rsa-a"),
    ),
    "unknown kid": ("unknown-kid", lambda: rsa_key("rsa-a").sign(claims(), kid="rsa-z")),
    "no kid": ("no-kid", lambda: jwt.encode(claims(), rsa_key("rsa-a").private, "RS256")),
    "namespace not allowed": (
        "tenant-not-allowed",
        lambda: rsa_key("rsa-a").sign(claims(**{"kubernetes.io": {"namespace": "evil"}})),
    ),
    "no namespace claim": (
        "tenant-claim-missing",
        lambda: rsa_key("rsa-a").sign(claims(**{"kubernetes.io": None})),
    ),
    "namespace not a string": (
        "tenant-claim-missing",
        lambda: rsa_key("rsa-a").sign(claims(**{"kubernetes.io": {"namespace": ["acme"]}})),
    ),
    "subject without scopes": (
        "no-scopes",
        lambda: rsa_key("rsa-a").sign(claims(sub="system:serviceaccount:acme:other")),
    ),
    "not a JWT": ("malformed", lambda: "tgk_3f9a2c1d.not-a-jwt"),
    "three junk segments": ("malformed", lambda: "a.b.c"),
    "payload not JSON": (
        "malformed",
        lambda: ".".join([b64(b'{"alg": "RS256", "kid": "rsa-a"}'), b64(b"[1,"), b64(b"x")]),
    ),
    "not ASCII": ("malformed", lambda: "é.é.é"),
    "a lone surrogate": ("malformed", lambda: "\ud800.e30.e30"),
    "too long": ("malformed", lambda: "a" * 10_000),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_token_is_refused_with_a_cause_naming_the_failed_check(
    verifier: OidcVerifier, case: str
) -> None:
    cause, make = REFUSALS[case]
    assert (await rejection(verifier, make())).cause == cause


async def test_a_refusal_after_the_signature_names_the_subject_before_it_only_the_issuer(
    verifier: OidcVerifier,
) -> None:
    before = await rejection(verifier, rsa_key("rsa-a").sign(claims(aud="other")))
    assert before.credential == f"oidc:{CLUSTER}"
    assert before.tenant == ""
    after = await rejection(
        verifier, rsa_key("rsa-a").sign(claims(sub="system:serviceaccount:acme:other"))
    )
    assert after.credential == f"oidc:{CLUSTER}#system:serviceaccount:acme:other"
    assert after.tenant == "acme"


async def test_a_token_signed_with_a_short_rsa_key_is_refused(tmp_path: Path) -> None:
    weak = rsa_key("rsa-weak", bits=1024)
    write_jwks(tmp_path / "jwks.json", weak)
    verifier = load_oidc(write_config(tmp_path, CONFIG))
    with warnings.catch_warnings():
        # PyJWT warns when signing with it, which is what the issuer would have done.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = weak.sign(claims())
    assert (await rejection(verifier, token)).cause == "weak-key"


# JWKS file.


async def test_a_changed_jwks_file_is_read_again_and_a_broken_one_keeps_the_last_keys(
    verifier: OidcVerifier, tmp_path: Path
) -> None:
    old, new = rsa_key("rsa-a"), rsa_key("rsa-b")
    assert (await verifier.authenticate(old.sign(claims()))).tenant == "acme"

    write_jwks(tmp_path / "jwks.json", new)
    assert (await verifier.authenticate(new.sign(claims()))).tenant == "acme"
    assert (await rejection(verifier, old.sign(claims()))).cause == "unknown-kid"

    broken = tmp_path / "broken.json"
    broken.write_text('{"keys": [', encoding="utf-8")
    os.replace(broken, tmp_path / "jwks.json")
    assert (await verifier.authenticate(new.sign(claims()))).tenant == "acme"

    (tmp_path / "jwks.json").unlink()
    assert (await verifier.authenticate(new.sign(claims()))).tenant == "acme"

    write_jwks(tmp_path / "jwks.json", old)
    assert (await verifier.authenticate(old.sign(claims()))).tenant == "acme"
    assert (await rejection(verifier, new.sign(claims()))).cause == "unknown-kid"


async def test_symmetric_and_unsigned_keys_in_a_jwks_are_never_used(tmp_path: Path) -> None:
    secret = b"a-shared-secret-of-32-bytes-long"
    jwks = {
        "keys": [
            {"kty": "oct", "kid": "oct", "k": b64(secret)},
            {**rsa_key("rsa-a").jwk(), "kid": "alg-none", "alg": "none"},
            {**rsa_key("rsa-a").jwk(), "kid": "for-encryption", "use": "enc"},
            rsa_key("rsa-a").jwk(),
        ]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(jwks), encoding="utf-8")
    verifier = load_oidc(write_config(tmp_path, CONFIG))

    assert (await rejection(verifier, _hmac_token(secret, kid="oct"))).cause == "alg-hmac"
    for kid in ("alg-none", "for-encryption"):
        token = rsa_key("rsa-a").sign(claims(), kid=kid)
        assert (await rejection(verifier, token)).cause == "unknown-kid"
    assert (await verifier.authenticate(rsa_key("rsa-a").sign(claims()))).tenant == "acme"


# JWKS URL.


def url_config(url: str) -> str:
    return f"""
[[issuers]]
issuer = "{CLUSTER}"
audience = "tiergen"
jwks_url = "{url}"
jwks_refetch_seconds = 30
tenant = "acme"
scopes = ["images:read"]
"""


async def test_keys_are_fetched_once_and_a_rotated_key_after_one_refetch(tmp_path: Path) -> None:
    clock = Clock()
    old, new = rsa_key("rsa-a"), ec_key("ec-a")
    with serving_jwks([old.jwk()]) as server:
        verifier = load_oidc(write_config(tmp_path, url_config(server.url)), clock=clock)
        assert server.requests == 0

        for _ in range(5):
            assert (await verifier.authenticate(old.sign(claims()))).tenant == "acme"
        assert server.requests == 1

        # The issuer rotates; within the refetch interval the new key is not asked for yet.
        server.keys = [old.jwk(), new.jwk()]
        assert (await rejection(verifier, new.sign(claims()))).cause == "unknown-kid"
        assert server.requests == 1

        clock.now += 30
        # Callers arriving together wait for the one fetch the first of them starts.
        principals = await asyncio.gather(
            *(verifier.authenticate(new.sign(claims())) for _ in range(20))
        )
        assert {principal.scopes for principal in principals} == {frozenset({READ})}
        assert (await verifier.authenticate(old.sign(claims()))).scopes == {READ}
        assert server.requests == 2


async def test_a_caller_giving_up_does_not_cancel_the_fetch_others_need(tmp_path: Path) -> None:
    clock = Clock()
    old, new = rsa_key("rsa-a"), rsa_key("rsa-b")
    with serving_jwks([old.jwk()]) as server:
        verifier = load_oidc(write_config(tmp_path, url_config(server.url)), clock=clock)
        await verifier.authenticate(old.sign(claims()))
        server.keys = [old.jwk(), new.jwk()]
        clock.now += 30

        impatient = asyncio.create_task(verifier.authenticate(new.sign(claims())))
        await asyncio.sleep(0)  # it starts the fetch and waits for it
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient

        assert (await verifier.authenticate(new.sign(claims()))).tenant == "acme"
        assert server.requests == 2


async def test_a_flood_of_made_up_kids_costs_the_issuer_one_request_per_interval(
    tmp_path: Path,
) -> None:
    clock = Clock()
    key = rsa_key("rsa-a")
    garbage = [key.sign(claims(), kid=f"garbage-{n}") for n in range(40)]
    with serving_jwks([key.jwk()]) as server:
        verifier = load_oidc(write_config(tmp_path, url_config(server.url)), clock=clock)
        await verifier.authenticate(key.sign(claims()))
        assert server.requests == 1

        for token in garbage:
            assert (await rejection(verifier, token)).cause == "unknown-kid"
        assert server.requests == 1

        for interval in (2, 3):
            clock.now += 30
            # Concurrent callers share the one fetch in flight.
            outcomes = await asyncio.gather(
                *(verifier.authenticate(token) for token in garbage), return_exceptions=True
            )
            assert all(isinstance(o, CredentialRejected) for o in outcomes)
            assert {o.cause for o in outcomes if isinstance(o, CredentialRejected)} == {
                "unknown-kid"
            }
            assert server.requests == interval


async def test_a_failed_fetch_keeps_the_last_good_keys(tmp_path: Path) -> None:
    clock = Clock()
    key = rsa_key("rsa-a")
    with serving_jwks([key.jwk()]) as server:
        verifier = load_oidc(write_config(tmp_path, url_config(server.url)), clock=clock)
        await verifier.authenticate(key.sign(claims()))

        server.failing = True
        clock.now += 30
        assert (await rejection(verifier, key.sign(claims(), kid="new"))).cause == "unknown-kid"
        assert server.requests == 2
        assert (await verifier.authenticate(key.sign(claims()))).tenant == "acme"

        server.keys = []  # an empty set is no better than an error page
        server.failing = False
        clock.now += 30
        assert (await rejection(verifier, key.sign(claims(), kid="new"))).cause == "unknown-kid"
        assert server.requests == 3
        assert (await verifier.authenticate(key.sign(claims()))).tenant == "acme"


async def test_an_issuer_that_never_answered_refuses_every_token(tmp_path: Path) -> None:
    with serving_jwks([]) as server:
        url = server.url
    # The server is stopped: its port refuses connections.
    verifier = load_oidc(write_config(tmp_path, url_config(url)), clock=Clock())
    token = rsa_key("rsa-a").sign(claims())
    assert (await rejection(verifier, token)).cause == "unknown-kid"


async def test_old_keys_are_refetched_in_the_background_and_a_dropped_key_refused(
    tmp_path: Path,
) -> None:
    clock = Clock()
    old, new = rsa_key("rsa-a"), rsa_key("rsa-b")
    with serving_jwks([old.jwk()]) as server:
        verifier = load_oidc(write_config(tmp_path, url_config(server.url)), clock=clock)
        await verifier.authenticate(old.sign(claims()))
        server.keys = [new.jwk()]

        clock.now += JWKS_MAX_AGE_SECONDS
        # Still known, so accepted at once; the refetch it starts does not hold it up.
        assert (await verifier.authenticate(old.sign(claims()))).tenant == "acme"
        # An unknown kid waits for the fetch in flight rather than starting another.
        assert (await rejection(verifier, new.sign(claims(), kid="x"))).cause == "unknown-kid"
        assert server.requests == 2

        assert (await rejection(verifier, old.sign(claims()))).cause == "unknown-kid"
        assert (await verifier.authenticate(new.sign(claims()))).tenant == "acme"
        assert server.requests == 2


async def test_a_jwks_larger_than_the_limit_is_refused_unread(tmp_path: Path) -> None:
    key = rsa_key("rsa-a")
    with serving_jwks([key.jwk()]) as server:
        # A valid set padded past the limit: refused by its size, whatever it holds.
        server.body = json.dumps({"keys": [key.jwk()], "pad": "x" * MAX_JWKS_BYTES}).encode()
        verifier = load_oidc(write_config(tmp_path, url_config(server.url)), clock=Clock())
        with structlog.testing.capture_logs() as logs:
            assert (await rejection(verifier, key.sign(claims()))).cause == "unknown-kid"
        (warning,) = [line for line in logs if line["event"].startswith("OIDC JWKS fetch")]
        assert f"larger than {MAX_JWKS_BYTES} bytes" in warning["error"]


def https_config(url: str, **files: Path) -> str:
    lines = "".join(f'{key} = "{path}"\n' for key, path in files.items())
    return url_config(url).replace(
        "jwks_refetch_seconds = 30\n", f"jwks_refetch_seconds = 30\n{lines}"
    )


async def test_an_issuer_in_the_cluster_is_trusted_by_its_ca_and_read_with_a_token(
    tmp_path: Path,
) -> None:
    # The API server's JWKS behind the cluster's CA, readable with a ServiceAccount token.
    pki = session_pki()
    certificate, private_key = pki.issue(None, hosts=("127.0.0.1",))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate, private_key)
    token_file = tmp_path / "token"
    token_file.write_text("first-token-value\n")
    clock, key, rotated = Clock(), rsa_key("rsa-a"), rsa_key("rsa-b")
    with serving_jwks([key.jwk()], tls) as server:
        config = https_config(server.url, jwks_ca_file=pki.ca_file, jwks_token_file=token_file)
        with structlog.testing.capture_logs() as logs:
            verifier = load_oidc(write_config(tmp_path, config), clock=clock)
            assert (await verifier.authenticate(key.sign(claims()))).tenant == "acme"
            # The kubelet rotates the token: the next fetch sends the new one.
            token_file.write_text("second-token-value\n")
            server.keys = [key.jwk(), rotated.jwk()]
            clock.now += 30
            assert (await verifier.authenticate(rotated.sign(claims()))).tenant == "acme"
        assert server.authorizations == ["Bearer first-token-value", "Bearer second-token-value"]
        assert "token-value" not in repr(logs)

        # Without the cluster's CA the issuer's certificate is not trusted: nothing is fetched.
        (tmp_path / "plain").mkdir()
        untrusting = load_oidc(
            write_config(tmp_path / "plain", https_config(server.url)), clock=Clock()
        )
        with structlog.testing.capture_logs() as logs:
            assert (await rejection(untrusting, key.sign(claims()))).cause == "unknown-kid"
        assert any("CERTIFICATE_VERIFY_FAILED" in line.get("error", "") for line in logs), logs
        assert server.requests == 2


# The issuers file.

VALID_ISSUER = f"""
[[issuers]]
issuer = "{CLUSTER}"
audience = "tiergen"
jwks_file = "jwks.json"
tenant = "acme"
scopes = ["images:read"]
"""


def _without(line: str) -> str:
    return VALID_ISSUER.replace(line + "\n", "")


def _plus(lines: str) -> str:
    return VALID_ISSUER.replace("[[issuers]]\n", f"[[issuers]]\n{lines}\n")


CONFIG_ERRORS: dict[str, tuple[str, str]] = {
    "missing audience": (_without('audience = "tiergen"'), "audience: missing"),
    "empty audience": (VALID_ISSUER.replace('"tiergen"', '""'), "audience: expected"),
    "missing issuer": (_without(f'issuer = "{CLUSTER}"'), "issuer: missing"),
    "both jwks_file and jwks_url": (
        _plus('jwks_url = "https://issuer.example/jwks"'),
        "exactly one of jwks_file",
    ),
    "neither jwks_file nor jwks_url": (
        _without('jwks_file = "jwks.json"'),
        "exactly one of jwks_file",
    ),
    "missing jwks file": (VALID_ISSUER.replace("jwks.json", "nowhere.json"), "cannot read"),
    "jwks file not a JWKS": (VALID_ISSUER.replace("jwks.json", "oidc.toml"), "jwks_file"),
    "plain http to a remote host": (
        _without('jwks_file = "jwks.json"') + 'jwks_url = "http://issuer.example/jwks"\n',
        "plain http",
    ),
    "file url": (
        _without('jwks_file = "jwks.json"') + 'jwks_url = "file:///etc/passwd"\n',
        "jwks_url",
    ),
    "refetch interval with a file": (_plus("jwks_refetch_seconds = 10"), "jwks_url only"),
    "a CA file with a file": (_plus('jwks_ca_file = "jwks.json"'), "jwks_ca_file: applies to"),
    "a token file with a file": (
        _plus('jwks_token_file = "jwks.json"'),
        "jwks_token_file: applies to",
    ),
    "a CA file that is no CA": (
        _without('jwks_file = "jwks.json"')
        + 'jwks_url = "https://issuer.example/jwks"\njwks_ca_file = "jwks.json"\n',
        "jwks_ca_file: ",
    ),
    "a missing CA file": (
        _without('jwks_file = "jwks.json"')
        + 'jwks_url = "https://issuer.example/jwks"\njwks_ca_file = "nowhere.crt"\n',
        "jwks_ca_file: cannot read",
    ),
    "a missing token file": (
        _without('jwks_file = "jwks.json"')
        + 'jwks_url = "https://issuer.example/jwks"\njwks_token_file = "nowhere"\n',
        "jwks_token_file: cannot read",
    ),
    "a token over plain http": (
        _without('jwks_file = "jwks.json"')
        + 'jwks_url = "http://127.0.0.1:1/jwks"\njwks_token_file = "jwks.json"\n',
        "jwks_token_file: a token is sent over https only",
    ),
    "alg none": (_plus('algorithms = ["RS256", "none"]'), "'none' would accept unsigned"),
    "HS256": (_plus('algorithms = ["HS256"]'), "'HS256' is HMAC"),
    "unknown algorithm": (_plus('algorithms = ["XS1"]'), "unknown algorithm"),
    "empty algorithms": (_plus("algorithms = []"), "algorithms: expected"),
    "bad tenant": (VALID_ISSUER.replace('"acme"', '"Acme Corp"'), "tenant: tenant 'Acme Corp'"),
    "tenant and tenant_claim": (
        _plus('tenant_claim = "tenant"\ntenants = ["acme"]'),
        "exactly one of tenant",
    ),
    "neither tenant nor tenant_claim": (_without('tenant = "acme"'), "exactly one of tenant"),
    "tenant_claim without tenants": (
        VALID_ISSUER.replace('tenant = "acme"', 'tenant_claim = ["kubernetes.io", "namespace"]'),
        "tenants: tenant_claim needs",
    ),
    "bad tenant in the allow list": (
        VALID_ISSUER.replace('tenant = "acme"', 'tenant_claim = "ns"\ntenants = ["acme", "-x"]'),
        "tenants: tenant '-x'",
    ),
    "tenants with a fixed tenant": (
        _plus('tenants = ["acme"]'),
        "tenants: applies to tenant_claim",
    ),
    "empty claim path": (
        VALID_ISSUER.replace('tenant = "acme"', 'tenant_claim = []\ntenants = ["acme"]'),
        "tenant_claim: expected",
    ),
    "unknown scope": (
        VALID_ISSUER.replace("images:read", "images:delete"),
        "unknown scope 'images:delete'",
    ),
    "unknown subject scope": (
        VALID_ISSUER + '[issuers.subjects]\n"ci" = ["root"]\n',
        "subjects.'ci': unknown scope 'root'",
    ),
    "no scopes at all": (
        _without('scopes = ["images:read"]'),
        "give `scopes` or an [issuers.subjects]",
    ),
    "leeway too long": (
        _plus("leeway_seconds = 301"),
        "leeway_seconds: expected seconds from 0 to 300",
    ),
    "negative leeway": (_plus("leeway_seconds = -1"), "leeway_seconds"),
    "leeway not a number": (_plus('leeway_seconds = "30"'), "leeway_seconds"),
    "a misspelt key": (_plus('audiences = ["x"]'), "unknown key(s) 'audiences'"),
    "an issuer twice": (VALID_ISSUER + VALID_ISSUER, "listed twice"),
    "no issuer": ("# nothing yet\n", "no issuer"),
    "not TOML": ("[[issuers]\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_a_bad_issuers_file_is_a_one_line_error_naming_the_setting(
    tmp_path: Path, case: str
) -> None:
    write_jwks(tmp_path / "jwks.json", rsa_key("rsa-a"))
    text, fragment = CONFIG_ERRORS[case]
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_oidc(path)
    message = str(caught.value)
    assert message.startswith(f"TIERGEN_ROUTER_OIDC_FILE={path}")
    assert fragment in message
    assert "\n" not in message


def test_the_error_names_the_issuers_table_and_its_line(tmp_path: Path) -> None:
    write_jwks(tmp_path / "jwks.json", rsa_key("rsa-a"))
    second = VALID_ISSUER.replace(CLUSTER, PARTNER).replace('audience = "tiergen"\n', "")
    path = write_config(tmp_path, VALID_ISSUER + second)
    with pytest.raises(ConfigError, match=rf"issuers\[1\] \(line 9\) '{PARTNER}': audience"):
        load_oidc(path)


def test_a_missing_issuers_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^TIERGEN_ROUTER_OIDC_FILE=.*cannot read"):
        load_oidc(tmp_path / "absent.toml")


def test_the_default_algorithms_and_a_url_issuer_load(tmp_path: Path) -> None:
    write_jwks(tmp_path / "jwks.json", rsa_key("rsa-a"))
    text = VALID_ISSUER + url_config("https://issuer.example/openid/v1/jwks").replace(
        CLUSTER, PARTNER
    )
    assert load_oidc(write_config(tmp_path, text)).issuers == (CLUSTER, PARTNER)


# Whatever a caller sends, the answer is a principal or CredentialRejected.

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_HEADERS = (
    st.fixed_dictionaries(
        {},
        optional={
            "alg": st.sampled_from(["RS256", "ES256", "none", "HS256", "PS256", ""]) | _JSON,
            "kid": st.sampled_from(["rsa-a", "ec-a", "unknown"]) | _JSON,
            "typ": _JSON,
            "crit": _JSON,
            "b64": _JSON,
        },
    )
    | _JSON
)
_PAYLOADS = (
    st.fixed_dictionaries(
        {},
        optional={
            "iss": st.sampled_from([CLUSTER, PARTNER]) | _JSON,
            "aud": st.sampled_from(["tiergen", "tiergen-partner"]) | _JSON,
            "sub": st.sampled_from([WEB, "ci"]) | _JSON,
            "exp": st.integers() | _JSON,
            "nbf": st.integers() | _JSON,
            "iat": st.integers() | _JSON,
            "kubernetes.io": _JSON,
        },
    )
    | _JSON
)


@st.composite
def jwt_shaped(draw: st.DrawFn) -> str:
    header = b64(json.dumps(draw(_HEADERS)).encode())
    payload = b64(json.dumps(draw(_PAYLOADS)).encode())
    signature = b64(draw(st.binary(max_size=300)))
    segments = [header, payload, signature]
    # Now and then a segment is cut, doubled or replaced by noise.
    if draw(st.booleans()):
        index = draw(st.integers(0, 2))
        segments[index] = draw(st.text(alphabet="abcXYZ019-_=.+/ ", max_size=30))
    return ".".join(segments)


def test_any_string_is_a_principal_or_a_rejection_never_another_error(tmp_path: Path) -> None:
    write_jwks(tmp_path / "jwks.json", rsa_key("rsa-a"), ec_key("ec-a"))
    verifier = load_oidc(write_config(tmp_path, CONFIG))

    with asyncio.Runner() as runner:

        @settings(max_examples=300, deadline=None)
        @given(token=st.text(max_size=200) | jwt_shaped())
        def check(token: str) -> None:
            try:
                runner.run(verifier.authenticate(token))
            except CredentialRejected as rejected:
                assert rejected.cause
                assert token not in rejected.cause or len(token) < 4

        check()
