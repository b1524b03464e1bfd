"""The ledger's configuration (database, promotions, hold limits, who may call it), read from
TIERGEN_LEDGER_* and the server's TIERGEN_* variables."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from services.runtime.identities import ADMIN_IDENTITY
from services.runtime.migrations import redact
from services.runtime.settings import ConfigError, Env, ServerSettings

__all__ = ["DEFAULT_DSN", "LedgerSettings"]

DEFAULT_DSN = "sqlite:///./tiergen-data/ledger.db"
_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")

_N = TypeVar("_N", int, float)

#: The environment variable behind each setting, named in every error message.
_VARIABLES = {
    "dsn": "TIERGEN_LEDGER_DSN",
    "signup_bonus": "TIERGEN_LEDGER_SIGNUP_BONUS",
    "checkin_amount": "TIERGEN_LEDGER_CHECKIN_AMOUNT",
    "promo_cap": "TIERGEN_LEDGER_PROMO_CAP",
    "default_hold_ttl_seconds": "TIERGEN_LEDGER_DEFAULT_HOLD_TTL_SECONDS",
    "max_hold_ttl_seconds": "TIERGEN_LEDGER_MAX_HOLD_TTL_SECONDS",
    "sweep_interval_seconds": "TIERGEN_LEDGER_SWEEP_INTERVAL_SECONDS",
    "db_timeout_seconds": "TIERGEN_LEDGER_DB_TIMEOUT_SECONDS",
    "lock_timeout_seconds": "TIERGEN_LEDGER_LOCK_TIMEOUT_SECONDS",
    "pool_size": "TIERGEN_LEDGER_POOL_SIZE",
    "admin_identities": "TIERGEN_LEDGER_ADMIN_IDENTITIES",
}


@dataclass(frozen=True)
class LedgerSettings:
    """Everything the ledger needs to know at start; invalid values fail here, not later."""

    #: `sqlite:///relative/or/absolute/path.db` (`sqlite:////abs/path.db`) or `postgresql://...`;
    #: TIERGEN_LEDGER_DSN, or the file TIERGEN_LEDGER_DSN_FILE names. It may hold a password, so
    #: it is in no repr and every message shows it masked.
    dsn: str = field(default=DEFAULT_DSN, repr=False)
    signup_bonus: int = 400
    #: The weekly check-in grant; 11 check-ins take the 400 sign-up bonus to the 840 cap.
    checkin_amount: int = 40
    #: Lifetime promotional credits (sign-up bonus plus check-ins) of one account.
    promo_cap: int = 840
    #: How long a hold lasts when the caller names no TTL: longer than any render.
    default_hold_ttl_seconds: int = 600
    max_hold_ttl_seconds: int = 86_400
    sweep_interval_seconds: float = 30.0
    #: How long a command waits for a database connection before failing as Unavailable.
    db_timeout_seconds: float = 5.0
    #: How long a command waits for a row or database lock before its attempt is retried.
    lock_timeout_seconds: float = 5.0
    #: Most PostgreSQL connections one ledger process opens.
    pool_size: int = 10
    #: Where the service listens (TIERGEN_HOST, TIERGEN_PORT, TLS, ...). Its `allowed_callers`
    #: (TIERGEN_ALLOWED_CALLERS, the router by default) may call every RPC.
    server: ServerSettings = field(default_factory=lambda: ServerSettings.from_env("ledger", {}))
    #: Identities that may also call Grant and the reads (GetBalance, ListEntries): the
    #: operator commands' (TIERGEN_LEDGER_ADMIN_IDENTITIES; see `services.ledger.callers`).
    admin_identities: frozenset[str] = frozenset({ADMIN_IDENTITY})

    def __post_init__(self) -> None:
        if not (self.dsn.startswith(_POSTGRES_PREFIXES) or self.sqlite_path is not None):
            raise ConfigError(
                f"{_describe('dsn')} must be sqlite:///PATH or postgresql://...,"
                f" got {redact(self.dsn)!r}"
            )
        _at_least("signup_bonus", self.signup_bonus, 0)
        _at_least("checkin_amount", self.checkin_amount, 1)
        _at_least("promo_cap", self.promo_cap, 0)
        _at_least("default_hold_ttl_seconds", self.default_hold_ttl_seconds, 1)
        _at_least("max_hold_ttl_seconds", self.max_hold_ttl_seconds, 1)
        _at_least("pool_size", self.pool_size, 1)
        for name in ("sweep_interval_seconds", "db_timeout_seconds", "lock_timeout_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{_describe(name)} must be a finite number above 0, got {value}")
        if self.signup_bonus > self.promo_cap:
            raise ConfigError(
                f"{_describe('signup_bonus')} ({self.signup_bonus}) must not exceed "
                f"{_describe('promo_cap')} ({self.promo_cap})"
            )
        if self.default_hold_ttl_seconds > self.max_hold_ttl_seconds:
            raise ConfigError(
                f"{_describe('default_hold_ttl_seconds')} ({self.default_hold_ttl_seconds}) must "
                f"not exceed {_describe('max_hold_ttl_seconds')} ({self.max_hold_ttl_seconds})"
            )

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file the DSN names, or None for PostgreSQL."""
        if not self.dsn.startswith(_SQLITE_PREFIX) or len(self.dsn) == len(_SQLITE_PREFIX):
            return None
        return Path(self.dsn.removeprefix(_SQLITE_PREFIX))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LedgerSettings:
        """Read TIERGEN_LEDGER_*; unset variables keep their defaults."""
        defaults = cls()
        env = Env(environ)
        dsn = env.secret(_VARIABLES["dsn"])
        if dsn is None and _VARIABLES["dsn"] in environ:
            dsn = environ[_VARIABLES["dsn"]]  # set but blank: refused, not taken as unset
        return cls(
            dsn=defaults.dsn if dsn is None else dsn,
            signup_bonus=_parse(environ, "signup_bonus", int, defaults.signup_bonus),
            checkin_amount=_parse(environ, "checkin_amount", int, defaults.checkin_amount),
            promo_cap=_parse(environ, "promo_cap", int, defaults.promo_cap),
            default_hold_ttl_seconds=_parse(
                environ, "default_hold_ttl_seconds", int, defaults.default_hold_ttl_seconds
            ),
            max_hold_ttl_seconds=_parse(
                environ, "max_hold_ttl_seconds", int, defaults.max_hold_ttl_seconds
            ),
            sweep_interval_seconds=_parse(
                environ, "sweep_interval_seconds", float, defaults.sweep_interval_seconds
            ),
            db_timeout_seconds=_parse(
                environ, "db_timeout_seconds", float, defaults.db_timeout_seconds
            ),
            lock_timeout_seconds=_parse(
                environ, "lock_timeout_seconds", float, defaults.lock_timeout_seconds
            ),
            pool_size=_parse(environ, "pool_size", int, defaults.pool_size),
            server=ServerSettings.from_env("ledger", environ),
            admin_identities=env.identities(
                _VARIABLES["admin_identities"], defaults.admin_identities
            ),
        )


def _describe(name: str) -> str:
    return f"{name} ({_VARIABLES[name]})"


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{_describe(name)} must be at least {minimum}, got {value}")


def _parse(environ: Mapping[str, str], name: str, kind: Callable[[str], _N], default: _N) -> _N:
    raw = environ.get(_VARIABLES[name])
    if raw is None:
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{_VARIABLES[name]} must be {expected}, got {raw!r}") from None
