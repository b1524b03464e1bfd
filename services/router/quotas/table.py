"""The quota file (TIERGEN_ROUTER_QUOTAS_FILE, TOML): defaults for every tenant, and overrides for
some, each for the tenant as a whole and for each account within it.

```toml
[defaults.tenant]            # every tenant, all its accounts together
requests_per_second = 50
images_per_minute = 1200
concurrent_jobs = 64

[defaults.account]           # each account of every tenant, on its own
requests_per_second = 5
images_per_minute = 120
concurrent_jobs = 8

[tenants.acme.tenant]        # acme's overrides: the keys given replace the defaults'
requests_per_second = 200
images_per_minute = "unlimited"

[tenants.acme.account]
concurrent_jobs = 16

[tenants.acme.accounts."studio-7"]   # one account of acme: replaces acme's account quotas' keys
concurrent_jobs = 64
images_per_minute = "unlimited"
```

Every key is optional: a quota no table sets is unlimited, and so is every quota when the
variable is unset (the default). `"unlimited"` in an override lifts a default. A named
account's override applies on top of its tenant's account quotas (the tenant's own override,
else the defaults) and to that account only; the tenant's quota still binds it. Rates are
numbers above 0 (fractions allowed: 0.5 requests per second is one every two seconds);
concurrent jobs a whole number of at least 1. A mistake is a `RouterConfigError` naming the
file, the line and the entry (`load_quotas` turns it into the ConfigError that stops a start).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.router.routing.toml_source import RouterConfigError, TomlSource
from services.runtime.identifiers import ACCOUNT_ID_PATTERN, TENANT_PATTERN
from services.runtime.settings import ConfigError

__all__ = [
    "NO_QUOTAS",
    "QUOTAS_FILE_SETTING",
    "UNLIMITED",
    "Level",
    "Limits",
    "Quota",
    "QuotaTable",
    "TenantQuotas",
    "load_quotas",
]

#: The variable naming the file.
QUOTAS_FILE_SETTING = "TIERGEN_ROUTER_QUOTAS_FILE"
#: What an override writes to lift a default.
UNLIMITED = "unlimited"
#: Largest rate a file may set, per second (the limiter counts in microseconds).
_MAX_PER_SECOND = 1_000_000.0


class Quota(enum.StrEnum):
    """What a quota limits."""

    REQUESTS_PER_SECOND = "requests_per_second"
    IMAGES_PER_MINUTE = "images_per_minute"
    CONCURRENT_JOBS = "concurrent_jobs"


class Level(enum.StrEnum):
    """Whom a quota limits: the tenant as a whole, or each account within it."""

    TENANT = "tenant"
    ACCOUNT = "account"


@dataclass(frozen=True)
class Limits:
    """One level's quotas; None is unlimited."""

    requests_per_second: float | None = None
    images_per_minute: float | None = None
    concurrent_jobs: int | None = None

    def of(self, quota: Quota) -> float | None:
        value: float | None = getattr(self, quota.value)
        return value

    @property
    def limited(self) -> bool:
        return any(self.of(quota) is not None for quota in Quota)


@dataclass(frozen=True)
class TenantQuotas:
    """A tenant's quotas: its own, each of its accounts', and those of the accounts named
    apart (their account quotas in full, the overrides already applied)."""

    tenant: Limits = field(default_factory=Limits)
    account: Limits = field(default_factory=Limits)
    accounts: Mapping[str, Limits] = field(default_factory=dict)

    def at(self, level: Level) -> Limits:
        return self.tenant if level is Level.TENANT else self.account

    def of(self, account_id: str) -> TenantQuotas:
        """The quotas that bind `account_id`: the tenant's, and its own account quotas."""
        return TenantQuotas(tenant=self.tenant, account=self.accounts.get(account_id, self.account))

    @property
    def limited(self) -> bool:
        return (
            self.tenant.limited
            or self.account.limited
            or any(limits.limited for limits in self.accounts.values())
        )


@dataclass(frozen=True)
class QuotaTable:
    """What a quota file says: the defaults, and each overridden tenant's quotas (the defaults
    with its overrides applied)."""

    defaults: TenantQuotas = field(default_factory=TenantQuotas)
    tenants: Mapping[str, TenantQuotas] = field(default_factory=dict)

    def of(self, tenant: str, account_id: str | None = None) -> TenantQuotas:
        """The quotas of `tenant`; with `account_id`, those that bind that account."""
        quotas = self.tenants.get(tenant, self.defaults)
        return quotas if account_id is None else quotas.of(account_id)

    @property
    def limited(self) -> bool:
        """Whether any tenant has any quota."""
        return self.defaults.limited or any(q.limited for q in self.tenants.values())

    @classmethod
    def parse(cls, source: TomlSource) -> QuotaTable:
        """The table `source` describes; RouterConfigError naming the first bad entry."""
        return _Parser(source).table()


#: No file: nothing is limited.
NO_QUOTAS = QuotaTable()


def load_quotas(path: Path | None) -> QuotaTable:
    """The quotas of the file at `path`, or none when it is None; ConfigError naming
    TIERGEN_ROUTER_QUOTAS_FILE, the file, the line and the entry."""
    if path is None:
        return NO_QUOTAS
    try:
        return QuotaTable.parse(TomlSource.read(path, default_text="", default_name=str(path)))
    except RouterConfigError as error:
        raise ConfigError(f"{QUOTAS_FILE_SETTING}={error}") from None


_Overrides = dict[Quota, float | None]
#: The table of a tenant's accounts named apart.
_ACCOUNTS = "accounts"


class _Parser:
    """Reads a quota document, naming the first bad entry it meets."""

    def __init__(self, source: TomlSource) -> None:
        self.source = source

    def table(self) -> QuotaTable:
        document = self.source.parse()
        self._known(document, (), {"defaults", "tenants"})
        defaults = self._tenant_quotas(document, ("defaults",), TenantQuotas(), lifts=False)
        tenants_table = self._table(document, ("tenants",))
        tenants = {}
        for name in tenants_table:
            path = ("tenants", name)
            if not TENANT_PATTERN.fullmatch(name):
                raise self.source.error(
                    path,
                    "not a tenant name (1-63 lowercase letters, digits and hyphens, starting"
                    " and ending with a letter or digit)",
                )
            tenants[name] = self._tenant_quotas(tenants_table, path, defaults, lifts=True)
        return QuotaTable(defaults=defaults, tenants=tenants)

    def _tenant_quotas(
        self, parent: Mapping[str, Any], path: tuple[str, ...], base: TenantQuotas, *, lifts: bool
    ) -> TenantQuotas:
        table = self._table(parent, path)
        names = {level.value for level in Level}
        self._known(table, path, names | ({_ACCOUNTS} if lifts else set()))
        levels = {
            level: self._override(base.at(level), table, (*path, level.value), lifts=lifts)
            for level in Level
        }
        account = levels[Level.ACCOUNT]
        accounts_path = (*path, _ACCOUNTS)
        accounts = {}
        for account_id in self._table(table, accounts_path):
            where = (*accounts_path, account_id)
            if not ACCOUNT_ID_PATTERN.fullmatch(account_id):
                raise self.source.error(
                    where,
                    "not an account id (1-128 letters, digits and . _ : @ -, starting with a"
                    " letter or digit)",
                )
            accounts[account_id] = self._override(
                account, self._table(table, accounts_path), where, lifts=True
            )
        return TenantQuotas(tenant=levels[Level.TENANT], account=account, accounts=accounts)

    def _override(
        self, base: Limits, parent: Mapping[str, Any], path: tuple[str, ...], *, lifts: bool
    ) -> Limits:
        overrides = self._limits(parent, path, lifts=lifts)
        changes: dict[str, Any] = {quota.value: value for quota, value in overrides.items()}
        return replace(base, **changes)

    def _limits(
        self, parent: Mapping[str, Any], path: tuple[str, ...], *, lifts: bool
    ) -> _Overrides:
        table = self._table(parent, path)
        self._known(table, path, {quota.value for quota in Quota})
        overrides: _Overrides = {}
        for name, value in table.items():
            quota = Quota(name)
            where = (*path, name)
            if value == UNLIMITED:
                if not lifts:
                    raise self.source.error(
                        where, f"a default is unlimited by leaving it out, not {UNLIMITED!r}"
                    )
                overrides[quota] = None
            elif quota is Quota.CONCURRENT_JOBS:
                overrides[quota] = self._jobs(value, where, lifts)
            else:
                overrides[quota] = self._rate(quota, value, where, lifts)
        return overrides

    def _rate(self, quota: Quota, value: object, where: tuple[str, ...], lifts: bool) -> float:
        per_second = 1.0 if quota is Quota.REQUESTS_PER_SECOND else 60.0
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
            or value / per_second > _MAX_PER_SECOND
        ):
            raise self.source.error(
                where,
                f"must be a number above 0 and at most {_MAX_PER_SECOND * per_second:g}"
                f"{self._or_unlimited(lifts)}, not {value!r}",
            )
        return float(value)

    def _jobs(self, value: object, where: tuple[str, ...], lifts: bool) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise self.source.error(
                where,
                f"must be a whole number from 1 to 1000000{self._or_unlimited(lifts)},"
                f" not {value!r}",
            )
        return value

    @staticmethod
    def _or_unlimited(lifts: bool) -> str:
        return f", or {UNLIMITED!r}" if lifts else ""

    def _table(self, parent: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        value = parent.get(path[-1], {})
        if not isinstance(value, dict):
            raise self.source.error(path, "must be a table")
        return value

    def _known(self, table: Mapping[str, Any], path: tuple[str, ...], known: set[str]) -> None:
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.source.error(
                (*path, unknown[0]), f"unknown key; expected some of {', '.join(sorted(known))}"
            )
