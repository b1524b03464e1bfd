"""OIDC bearer tokens at the router: projected Kubernetes ServiceAccount tokens (JWTs) checked
against the issuers of `TIERGEN_ROUTER_OIDC_FILE`, each mapping its tokens to a tenant and scopes.

Every check is PyJWT's (`jwt.decode` against a `PyJWK` of the issuer's JWKS); this module only
chooses what to ask of it. The unverified header and `iss` pick the issuer's settings and
nothing else: a token naming no trusted issuer, an algorithm the issuer is not trusted with, or
no key id is refused before any key is looked up, so it can make the router fetch nothing.

Algorithms are asymmetric only. A JWKS is public, so an HMAC algorithm would let anyone who
read it sign tokens (the classic "RS256 public key used as the HS256 secret" confusion); `none`
would accept unsigned ones. Both are refused in the configuration and in every token header,
and PyJWT also refuses a token whose `alg` differs from the one its key is bound to.

Keys come from a JWKS file (a ConfigMap holding `kubectl get --raw /openid/v1/jwks`), re-read
when the file changes, or from a JWKS URL, fetched with httpx: no redirects, no proxy from the
environment, at most `MAX_JWKS_BYTES`, trusting `jwks_ca_file` when given (the cluster's CA for
its own API server) and sending the token of `jwks_token_file`, read again at every fetch (a
projected ServiceAccount token rotates), when given. A fetch is
single-flight (concurrent callers share one fetch) and starts only for a key id not yet known,
at most once per `jwks_refetch_seconds`, so a flood of made-up key ids costs the issuer one
request per interval. A token whose key is known fetches nothing; once the keys are older than
`JWKS_MAX_AGE_SECONDS` a refetch starts in the background, so a key the issuer dropped stops
being trusted. A failed fetch keeps the last good keys: an issuer outage does not lock out
callers whose tokens were valid a moment before, at the cost of trusting a dropped key until
the issuer answers again.

Refusals raise `CredentialRejected` with a short constant `cause` for the audit trail (which
check failed, never the token or a claim); the caller always gets the gate's one answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
import structlog

from services.router.access.gate import MAX_TOKEN_CHARS, CredentialRejected
from services.router.access.principal import Principal
from services.router.access.scopes import Scope, parse_scopes
from services.router.routing.toml_source import RouterConfigError, TomlSource
from services.runtime.errors import InvalidArgument
from services.runtime.identifiers import require_tenant
from services.runtime.settings import ConfigError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "JWKS_MAX_AGE_SECONDS",
    "MAX_JWKS_BYTES",
    "OIDC_FILE_SETTING",
    "OidcVerifier",
    "TrustedIssuer",
    "load_oidc",
]

_log = structlog.get_logger("tiergen.router")

#: The setting naming the issuers file; every configuration error names it.
OIDC_FILE_SETTING = "TIERGEN_ROUTER_OIDC_FILE"
#: The algorithms an issuer may be trusted with: signatures checked with a public key.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: What Kubernetes signs with (RS256) and the usual alternative (ES256).
DEFAULT_ALGORITHMS = ("RS256", "ES256")
#: Age of a fetched JWKS after which a token triggers a background refetch.
JWKS_MAX_AGE_SECONDS = 900.0

_DEFAULT_LEEWAY_SECONDS = 30.0
_MAX_LEEWAY_SECONDS = 300.0
_DEFAULT_REFETCH_SECONDS = 30.0
_REFETCH_SECONDS_RANGE = (1.0, 3600.0)
#: A fetch slower than this fails and keeps the last keys; callers of unknown key ids wait for it.
_FETCH_TIMEOUT_SECONDS = 5.0
#: Largest JWKS document fetched: an issuer's set is a few kilobytes; more is refused unread.
MAX_JWKS_BYTES = 256 * 1024
#: Longest issuer: it is part of every credential name, which log lines carry.
_MAX_ISSUER_CHARS = 200
#: Longest credential name ("oidc:<issuer>#<subject>"); a longer subject is cut.
_MAX_CREDENTIAL_CHARS = 256
_CLAIMS_REQUIRED = ("exp", "iss", "aud", "sub")
_ISSUER_KEYS = frozenset(
    {
        "issuer",
        "audience",
        "jwks_file",
        "jwks_url",
        "jwks_refetch_seconds",
        "jwks_ca_file",
        "jwks_token_file",
        "algorithms",
        "leeway_seconds",
        "tenant",
        "tenant_claim",
        "tenants",
        "scopes",
        "subjects",
    }
)
_ISSUERS_HEADER = re.compile(r"^\s*\[\[\s*issuers\s*\]\]")
_LOOPBACK_NAMES = frozenset({"localhost"})

# PyJWT's verdicts, most specific first (InvalidSignatureError is a DecodeError), and the
# audit cause each is refused with.
_CAUSES: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not-yet-valid"),
    (jwt.InvalidAudienceError, "wrong-audience"),
    (jwt.InvalidIssuerError, "wrong-issuer"),
    (jwt.InvalidSignatureError, "bad-signature"),
    (jwt.InvalidAlgorithmError, "alg-key-mismatch"),
    (jwt.InvalidKeyError, "weak-key"),
)


class _KeySource(Protocol):
    """Where an issuer's public keys come from."""

    async def key(self, kid: str) -> jwt.PyJWK | None: ...


@dataclass(frozen=True)
class TrustedIssuer:
    """One `[[issuers]]` entry: how its tokens are checked and whom they name.

    The tenant is `tenant` for every token, or the string at the claim path `tenant_claim`
    (one key per level) when it is one of `tenants`. The scopes are `scopes` plus those of the
    token's subject in `subjects`.
    """

    issuer: str
    audience: str
    keys: _KeySource
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway_seconds: float = _DEFAULT_LEEWAY_SECONDS
    tenant: str | None = None
    tenant_claim: tuple[str, ...] = ()
    tenants: frozenset[str] = frozenset()
    scopes: frozenset[Scope] = frozenset()
    subjects: Mapping[str, frozenset[Scope]] = field(default_factory=dict)


class OidcVerifier:
    """The router's `Authenticator` for OIDC tokens of the trusted issuers."""

    def __init__(self, issuers: Sequence[TrustedIssuer]) -> None:
        self._issuers = {issuer.issuer: issuer for issuer in issuers}

    @property
    def issuers(self) -> tuple[str, ...]:
        """The trusted issuers, as their tokens' `iss` names them."""
        return tuple(self._issuers)

    async def authenticate(self, token: str) -> Principal:
        """The principal `token` names; CredentialRejected saying which check failed."""
        # PyJWT encodes the token as UTF-8 first, which a lone surrogate makes raise
        # UnicodeEncodeError; no JWT holds anything but ASCII.
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise CredentialRejected("malformed")
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise CredentialRejected("malformed") from None
        header: dict[str, Any] = unverified["header"]
        issuer = self._issuers.get(_text(unverified["payload"].get("iss")))
        if issuer is None:
            raise CredentialRejected("unknown-issuer")
        # Until the signature is checked only the issuer is known; the claims may be forged.
        unverified_credential = f"oidc:{issuer.issuer}"
        fixed_tenant = issuer.tenant or ""

        def rejected(cause: str) -> CredentialRejected:
            return CredentialRejected(cause, credential=unverified_credential, tenant=fixed_tenant)

        alg = _text(header.get("alg"))
        if alg.lower() in ("", "none"):
            raise rejected("alg-none")
        if alg.upper().startswith("HS"):
            raise rejected("alg-hmac")
        if alg not in issuer.algorithms:
            raise rejected("alg-not-allowed")
        kid = _text(header.get("kid"))
        if not kid:
            raise rejected("no-kid")
        key = await issuer.keys.key(kid)
        if key is None:
            raise rejected("unknown-kid")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(issuer.algorithms),
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway_seconds,
                options={"require": list(_CLAIMS_REQUIRED), "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as error:
            # The claim is one of _CLAIMS_REQUIRED: a fixed name, not caller input.
            raise rejected(f"missing-{error.claim}") from None
        except jwt.PyJWTError as error:
            raise rejected(_cause_of(error)) from None

        # PyJWT has checked that `sub` is a string.
        subject: str = claims["sub"]
        if not subject or not subject.isprintable():
            raise rejected("bad-subject")
        credential = _credential(issuer.issuer, subject)
        tenant = issuer.tenant or _tenant_from(claims, issuer.tenant_claim)
        if tenant is None:
            raise CredentialRejected("tenant-claim-missing", credential=credential)
        if issuer.tenant is None and tenant not in issuer.tenants:
            # The claimed tenant stays out of the audit event: it names no tenant of ours.
            raise CredentialRejected("tenant-not-allowed", credential=credential)
        scopes = issuer.scopes | issuer.subjects.get(subject, frozenset())
        if not scopes:
            raise CredentialRejected("no-scopes", credential=credential, tenant=tenant)
        return Principal(tenant=tenant, scopes=scopes, credential=credential)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _cause_of(error: jwt.PyJWTError) -> str:
    for kind, cause in _CAUSES:
        if isinstance(error, kind):
            return cause
    # The claim type checks (an `exp` or `iat` that is no number, a `sub` that is no string):
    # a token no honest issuer makes.
    return "malformed-claims"


def _credential(issuer: str, subject: str) -> str:
    name = f"oidc:{issuer}#{subject}"
    if len(name) <= _MAX_CREDENTIAL_CHARS:
        return name
    return name[: _MAX_CREDENTIAL_CHARS - 3] + "..."


def _tenant_from(claims: Mapping[str, Any], path: Sequence[str]) -> str | None:
    value: object = claims
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, str) else None


def _signing_keys(document: object) -> dict[str, jwt.PyJWK]:
    """The signature keys of a JWKS document by key id; ValueError when it has none.

    Only keys with a `kid`, meant for signatures, of an asymmetric type and algorithm reach
    PyJWT: a symmetric (`oct`) key has no place in a public set, and PyJWK raises
    NotImplementedError rather than PyJWTError for a key claiming `alg: none`.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: expected a JSON object with a `keys` list")
    usable = [
        jwk
        for jwk in document["keys"]
        if isinstance(jwk, dict)
        and jwk.get("kty") in ("RSA", "EC", "OKP")
        and jwk.get("use", "sig") == "sig"
        and isinstance(jwk.get("kid"), str)
        and jwk["kid"]
        and jwk.get("alg", "RS256") in ASYMMETRIC_ALGORITHMS
    ]
    try:
        keyset = jwt.PyJWKSet(usable)
    except jwt.PyJWTError:
        raise ValueError("the JWKS holds no usable RSA, EC or OKP signature key") from None
    return {key.key_id: key for key in keyset if key.key_id}


class _JwksFile:
    """Keys of a JWKS file, read again whenever the file changes (checked on every lookup: a
    stat is cheap next to a signature check, and a ConfigMap update swaps the file atomically).

    A changed file that is not a usable JWKS (caught mid-write, or broken) is logged and the
    last good keys stay.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = self._stamp_now()
        self._keys = _signing_keys(json.loads(path.read_text(encoding="utf-8")))

    def _stamp_now(self) -> tuple[int, int, int]:
        stat = os.stat(self._path)
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    async def key(self, kid: str) -> jwt.PyJWK | None:
        self._reload_if_changed()
        return self._keys.get(kid)

    def _reload_if_changed(self) -> None:
        try:
            stamp = self._stamp_now()
        except OSError as error:
            # None: unreadable, reported when it became so rather than on every call.
            if self._stamp is not None:
                self._stamp = None
                self._keep_keys(error)
            return
        if stamp == self._stamp:
            return
        # Recorded before reading, so a broken file is reported once, not on every call.
        self._stamp = stamp
        try:
            self._keys = _signing_keys(json.loads(self._path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            self._keep_keys(error)
            return
        _log.info("OIDC JWKS file reloaded", path=str(self._path), keys=len(self._keys))

    def _keep_keys(self, error: Exception) -> None:
        _log.warning(
            "OIDC JWKS file unusable; keeping its last keys", path=str(self._path), error=str(error)
        )


class _JwksUrl:
    """Keys fetched from a JWKS URL, kept until an unknown key id or their age calls for a
    refetch; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        refetch_seconds: float,
        clock: Callable[[], float],
        trust: ssl.SSLContext | None = None,
        token_file: Path | None = None,
    ) -> None:
        self._url = url
        self._trust = trust
        self._token_file = token_file
        self._refetch_seconds = refetch_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._fetching: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is not None:
            if self._fetched_at is not None and (
                self._clock() - self._fetched_at >= JWKS_MAX_AGE_SECONDS
            ):
                self._refetch()
            return key
        fetch = self._refetch()
        if fetch is not None:
            # Shielded: a caller that gives up does not cancel the fetch the others wait for.
            await asyncio.shield(fetch)
        return self._keys.get(kid)

    def _refetch(self) -> asyncio.Task[None] | None:
        """The fetch in flight, a new one when the interval allows, or None."""
        if self._fetching is not None:
            return self._fetching
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self._refetch_seconds:
            return None
        self._attempted_at = now
        self._fetching = asyncio.create_task(self._fetch())
        return self._fetching

    async def _download(self) -> Any:
        """The JWKS document; ValueError or httpx.HTTPError when there is none to read."""
        headers = {"Accept": "application/json"}
        if self._token_file is not None:
            token = self._token_file.read_text(encoding="utf-8").strip()
            headers["Authorization"] = f"Bearer {token}"
        async with (
            httpx.AsyncClient(
                verify=self._trust if self._trust is not None else True,
                timeout=_FETCH_TIMEOUT_SECONDS,
                follow_redirects=False,
                trust_env=False,
            ) as client,
            client.stream("GET", self._url, headers=headers) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"the issuer answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)

    async def _fetch(self) -> None:
        try:
            keys = _signing_keys(await self._download())
        # Whatever the issuer answered (nothing, an HTML error page, a reset connection, an
        # empty set), the last good keys stay: the task must end without an exception.
        except Exception as error:
            _log.warning(
                "OIDC JWKS fetch failed; keeping the last keys",
                url=self._url,
                error=str(error)[:200],
                keys=len(self._keys),
            )
        else:
            self._keys = keys
            self._fetched_at = self._clock()
            _log.info("OIDC JWKS fetched", url=self._url, keys=len(keys))
        finally:
            self._fetching = None


def load_oidc(path: Path, *, clock: Callable[[], float] = time.monotonic) -> OidcVerifier:
    """The verifier for the issuers file at `path`; ConfigError naming
    `TIERGEN_ROUTER_OIDC_FILE`, the issuer's table (and line) and what is wrong.

    One `[[issuers]]` table per trusted issuer: `issuer` (the exact `iss`), `audience`, one of
    `jwks_file` and `jwks_url` (with `jwks_refetch_seconds`, 30 unless set), `algorithms`
    (RS256 and ES256 unless set), `leeway_seconds` (30, at most 300); `tenant`, or
    `tenant_claim` with the allow list `tenants`; `scopes` for every token and/or a table
    `[issuers.subjects]` of `"<sub>" = [scopes]`. `tenant_claim = "tid"` names a top-level
    claim; a list names a path, one key per level, so that a key holding a dot stays whole:
    `["kubernetes.io", "namespace"]` is a ServiceAccount token's namespace.

    A `jwks_file` is read now (a relative path is taken from the issuers file's directory);
    a `jwks_url` is first fetched by the first token of its issuer, so the router starts while
    an issuer is down. `clock` (monotonic seconds) times refetches.
    """
    try:
        source = TomlSource.read(path, default_text="", default_name=str(path))
        document = source.parse()
    except RouterConfigError as error:
        raise ConfigError(f"{OIDC_FILE_SETTING}={error}") from None
    where = f"{OIDC_FILE_SETTING}={path}"
    unknown = sorted(set(document) - {"issuers"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(map(repr, unknown))}")
    entries = document.get("issuers")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: no issuer: add one [[issuers]] table per trusted issuer")
    lines = [
        number
        for number, line in enumerate(source.text.splitlines(), start=1)
        if _ISSUERS_HEADER.match(line)
    ]
    issuers: list[TrustedIssuer] = []
    for index, entry in enumerate(entries):
        line = f" (line {lines[index]})" if len(lines) == len(entries) else ""
        reader = _EntryReader(entry, f"{where}: issuers[{index}]{line}", path.parent, clock)
        issuer = reader.issuer()
        if any(known.issuer == issuer.issuer for known in issuers):
            raise ConfigError(f"{reader.where}: issuer {issuer.issuer!r} is listed twice")
        issuers.append(issuer)
    return OidcVerifier(issuers)


class _EntryReader:
    """Reads and checks one `[[issuers]]` table; every error names it."""

    def __init__(
        self, entry: object, where: str, directory: Path, clock: Callable[[], float]
    ) -> None:
        self.where = where
        self._directory = directory
        self._clock = clock
        if not isinstance(entry, dict):
            raise self._error("", "must be a table")
        self._entry: dict[str, Any] = entry
        unknown = sorted(set(entry) - _ISSUER_KEYS)
        if unknown:
            raise self._error("", f"unknown key(s) {', '.join(map(repr, unknown))}")

    def _error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key}: {problem}" if key else f"{self.where}: {problem}")

    def issuer(self) -> TrustedIssuer:
        issuer = self._string("issuer")
        if len(issuer) > _MAX_ISSUER_CHARS or not issuer.isprintable() or " " in issuer:
            raise self._error(
                "issuer",
                f"expected the tokens' exact `iss`, at most {_MAX_ISSUER_CHARS} characters",
            )
        self.where = f"{self.where} {issuer!r}"
        tenant, tenant_claim, tenants = self._tenancy()
        scopes = self._scopes("scopes", self._entry.get("scopes"))
        subjects = self._subjects()
        if not scopes and not subjects:
            raise self._error("scopes", "give `scopes` or an [issuers.subjects] table, or both")
        return TrustedIssuer(
            issuer=issuer,
            audience=self._string("audience"),
            keys=self._keys(),
            algorithms=self._algorithms(),
            leeway_seconds=self._seconds(
                "leeway_seconds", _DEFAULT_LEEWAY_SECONDS, (0.0, _MAX_LEEWAY_SECONDS)
            ),
            tenant=tenant,
            tenant_claim=tenant_claim,
            tenants=tenants,
            scopes=scopes,
            subjects=subjects,
        )

    def _string(self, key: str) -> str:
        value = self._entry.get(key)
        if value is None:
            raise self._error(key, "missing")
        if not isinstance(value, str) or not value.strip():
            raise self._error(key, "expected a non-empty string")
        return value

    def _seconds(self, key: str, default: float, bounds: tuple[float, float]) -> float:
        value = self._entry.get(key, default)
        low, high = bounds
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise self._error(key, f"expected seconds from {low:g} to {high:g}, not {value!r}")
        return float(value)

    def _keys(self) -> _KeySource:
        has_file, has_url = "jwks_file" in self._entry, "jwks_url" in self._entry
        if has_file == has_url:
            raise self._error(
                "jwks_file", "give exactly one of jwks_file (a JWKS JSON file) and jwks_url"
            )
        if has_file:
            for key in ("jwks_refetch_seconds", "jwks_ca_file", "jwks_token_file"):
                if key in self._entry:
                    raise self._error(key, "applies to jwks_url only")
            path = self._path("jwks_file")
            try:
                return _JwksFile(path)
            except OSError as error:
                raise self._error("jwks_file", f"cannot read {path}: {error.strerror}") from None
            except ValueError as error:
                raise self._error("jwks_file", f"{path}: {error}") from None
        url = self._string("jwks_url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._error("jwks_url", f"expected an https:// URL, not {url!r}")
        if parts.username is not None or parts.password is not None:
            raise self._error("jwks_url", "must not hold credentials")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise self._error(
                "jwks_url", "plain http is allowed for loopback hosts only: use https"
            )
        refetch = self._seconds(
            "jwks_refetch_seconds", _DEFAULT_REFETCH_SECONDS, _REFETCH_SECONDS_RANGE
        )
        trust = None
        if "jwks_ca_file" in self._entry:
            ca_file = self._file("jwks_ca_file")
            try:
                trust = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as error:
                raise self._error(
                    "jwks_ca_file", f"{ca_file}: not a PEM CA file ({error})"
                ) from None
        token_file = None
        if "jwks_token_file" in self._entry:
            if parts.scheme != "https":
                raise self._error("jwks_token_file", "a token is sent over https only")
            token_file = self._file("jwks_token_file")
        return _JwksUrl(
            url, refetch_seconds=refetch, clock=self._clock, trust=trust, token_file=token_file
        )

    def _path(self, key: str) -> Path:
        """The path `key` names, a relative one taken from the issuers file's directory."""
        return self._directory / Path(self._string(key)).expanduser()

    def _file(self, key: str) -> Path:
        """The readable file `key` names."""
        path = self._path(key)
        if not os.access(path, os.R_OK) or not path.is_file():
            raise self._error(key, f"cannot read {path}")
        return path

    def _algorithms(self) -> tuple[str, ...]:
        names = self._entry.get("algorithms", list(DEFAULT_ALGORITHMS))
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise self._error("algorithms", "expected a non-empty list of algorithm names")
        for name in names:
            if name.lower() == "none":
                raise self._error("algorithms", "'none' would accept unsigned tokens")
            if name.upper().startswith("HS"):
                raise self._error(
                    "algorithms",
                    f"{name!r} is HMAC: its secret would be the public JWKS key, so anyone could"
                    " sign tokens",
                )
            if name not in ASYMMETRIC_ALGORITHMS:
                raise self._error(
                    "algorithms",
                    f"unknown algorithm {name[:20]!r}; expected some of"
                    f" {', '.join(sorted(ASYMMETRIC_ALGORITHMS))}",
                )
        return tuple(dict.fromkeys(names))

    def _tenancy(self) -> tuple[str | None, tuple[str, ...], frozenset[str]]:
        fixed, claim, allowed = (self._entry.get(k) for k in ("tenant", "tenant_claim", "tenants"))
        if (fixed is None) == (claim is None):
            raise self._error(
                "tenant", "give exactly one of tenant (fixed) and tenant_claim (with tenants)"
            )
        if fixed is not None:
            if allowed is not None:
                raise self._error("tenants", "applies to tenant_claim only")
            return self._tenant("tenant", fixed), (), frozenset()
        path = [claim] if isinstance(claim, str) else claim
        if (
            not isinstance(path, list)
            or not path
            or not all(isinstance(k, str) and k for k in path)
        ):
            raise self._error(
                "tenant_claim",
                'expected a claim name or a list of keys, one per level (["kubernetes.io",'
                ' "namespace"])',
            )
        if not isinstance(allowed, list) or not allowed:
            raise self._error("tenants", "tenant_claim needs the list of tenants it may name")
        tenants = frozenset(self._tenant("tenants", name) for name in allowed)
        return None, tuple(path), tenants

    def _tenant(self, key: str, value: object) -> str:
        if not isinstance(value, str):
            raise self._error(key, f"expected a tenant name, not {value!r}")
        try:
            return require_tenant(value, key)
        except InvalidArgument as error:
            raise self._error(key, error.message) from None

    def _scopes(self, key: str, names: object) -> frozenset[Scope]:
        if names is None:
            return frozenset()
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise self._error(key, 'expected a list of scope names (["images:read"])')
        try:
            return parse_scopes(names, key)
        except InvalidArgument as error:
            raise self._error(key, error.message) from None

    def _subjects(self) -> dict[str, frozenset[Scope]]:
        table = self._entry.get("subjects", {})
        if not isinstance(table, dict):
            raise self._error("subjects", "expected a table of subject = [scopes]")
        subjects: dict[str, frozenset[Scope]] = {}
        for subject, names in table.items():
            key = f"subjects.{subject[:80]!r}"
            if not subject or not subject.isprintable():
                raise self._error(key, "expected a token's exact `sub`")
            subjects[subject] = self._scopes(key, names)
        return subjects


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
