"""The quota file: defaults and per-tenant overrides for the tenant and its accounts, and the
mistakes it can hold, each named with its variable, line and entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.quotas.table import (
    NO_QUOTAS,
    Limits,
    QuotaTable,
    TenantQuotas,
    load_quotas,
)
from services.router.routing.toml_source import RouterConfigError, TomlSource
from services.runtime.settings import ConfigError

EXAMPLE = """\
[defaults.tenant]
requests_per_second = 50
images_per_minute = 1200
concurrent_jobs = 64

[defaults.account]
requests_per_second = 5
images_per_minute = 120
concurrent_jobs = 8

[tenants.acme.tenant]
requests_per_second = 200
images_per_minute = "unlimited"

[tenants.acme.account]
concurrent_jobs = 16
"""


def parse(text: str) -> QuotaTable:
    return QuotaTable.parse(TomlSource(text, "quotas.toml"))


def test_defaults_and_overrides() -> None:
    table = parse(EXAMPLE)
    default = TenantQuotas(
        tenant=Limits(requests_per_second=50, images_per_minute=1200, concurrent_jobs=64),
        account=Limits(requests_per_second=5, images_per_minute=120, concurrent_jobs=8),
    )
    assert table.of("globex") == default
    assert table.of("acme") == TenantQuotas(
        tenant=Limits(requests_per_second=200, images_per_minute=None, concurrent_jobs=64),
        account=Limits(requests_per_second=5, images_per_minute=120, concurrent_jobs=16),
    )
    assert table.limited


def test_a_named_account_overrides_its_tenants_account_quotas() -> None:
    table = parse(
        EXAMPLE
        + '[tenants.acme.accounts."studio-7"]\nconcurrent_jobs = 64\n'
        + 'images_per_minute = "unlimited"\n'
        + "[tenants.initech.accounts.bulk]\nrequests_per_second = 1\n"
    )
    acme = table.of("acme")
    studio = table.of("acme", "studio-7")
    assert studio.tenant == acme.tenant, "the tenant's own quota still binds the account"
    assert studio.account == Limits(
        requests_per_second=5, images_per_minute=None, concurrent_jobs=64
    )
    assert table.of("acme", "alice").account == acme.account, "others keep the tenant's"
    # An override on a tenant without its own takes the defaults as its base.
    assert table.of("initech", "bulk").account == Limits(
        requests_per_second=1, images_per_minute=120, concurrent_jobs=8
    )
    assert table.of("globex", "studio-7").account == table.of("globex").account


def test_a_named_account_alone_makes_its_tenant_limited() -> None:
    table = parse("[tenants.acme.accounts.bulk]\nimages_per_minute = 6\n")
    assert table.limited
    assert table.of("acme").limited
    assert table.of("acme", "bulk").limited
    assert not table.of("acme", "alice").limited


def test_no_file_and_an_empty_file_limit_nothing() -> None:
    assert load_quotas(None) == NO_QUOTAS
    assert not NO_QUOTAS.limited
    assert not parse("").limited
    assert parse("").of("acme") == TenantQuotas()


def test_an_override_alone_limits_its_tenant_only() -> None:
    table = parse("[tenants.acme.account]\nimages_per_minute = 0.5\n")
    assert table.of("acme").account.images_per_minute == 0.5
    assert not table.of("globex").limited
    assert table.limited


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[defaults.tenant]\nrequests = 5\n",
            "quotas.toml:2: defaults.tenant.requests: unknown key",
        ),
        ("[default.tenant]\n", "quotas.toml: default: unknown key"),
        ("[defaults.team]\n", "quotas.toml:1: defaults.team: unknown key"),
        (
            "[defaults.account]\nrequests_per_second = 0\n",
            "quotas.toml:2: defaults.account.requests_per_second: must be a number above 0",
        ),
        (
            "[defaults.account]\nimages_per_minute = true\n",
            "quotas.toml:2: defaults.account.images_per_minute: must be a number above 0",
        ),
        (
            "[defaults.account]\nimages_per_minute = nan\n",
            "quotas.toml:2: defaults.account.images_per_minute: must be a number above 0",
        ),
        (
            "[defaults.account]\nconcurrent_jobs = 2.5\n",
            "quotas.toml:2: defaults.account.concurrent_jobs: must be a whole number from 1",
        ),
        (
            '[defaults.account]\nconcurrent_jobs = "unlimited"\n',
            "quotas.toml:2: defaults.account.concurrent_jobs: a default is unlimited by leaving"
            " it out",
        ),
        (
            '[tenants.acme.tenant]\nrequests_per_second = "lots"\n',
            "quotas.toml:2: tenants.acme.tenant.requests_per_second: must be a number above 0"
            " and at most 1e+06, or 'unlimited', not 'lots'",
        ),
        ("[tenants.Acme.tenant]\n", "quotas.toml: tenants.Acme: not a tenant name"),
        (
            '[tenants.acme.accounts."-x"]\n',
            "quotas.toml:1: tenants.acme.accounts.-x: not an account id",
        ),
        (
            "[tenants.acme.accounts.bob]\nconcurrent_jobs = 0\n",
            "quotas.toml:2: tenants.acme.accounts.bob.concurrent_jobs: must be a whole number",
        ),
        (
            "[tenants.acme.accounts.bob]\nseats = 1\n",
            "quotas.toml:2: tenants.acme.accounts.bob.seats: unknown key",
        ),
        (
            "[defaults.accounts.bob]\nconcurrent_jobs = 1\n",
            "quotas.toml: defaults.accounts: unknown key",
        ),
        ("[tenants.acme]\naccounts = 1\n", "quotas.toml:2: tenants.acme.accounts: must be a"),
        ("tenants = 3\n", "quotas.toml:1: tenants: must be a table"),
        ("[defaults\n", "quotas.toml: not valid TOML"),
    ],
)
def test_mistakes_name_the_entry_and_line(text: str, message: str) -> None:
    with pytest.raises(RouterConfigError) as caught:
        parse(text)
    assert str(caught.value).startswith(message)


def test_load_names_the_variable_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text("[defaults.account]\nconcurrent_jobs = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_quotas(path)
    message = str(caught.value)
    assert message.startswith(f"TIERGEN_ROUTER_QUOTAS_FILE={path}:2: defaults.account.")
    assert "\n" not in message
    with pytest.raises(ConfigError, match=r"^TIERGEN_ROUTER_QUOTAS_FILE=.*cannot read"):
        load_quotas(tmp_path / "missing.toml")
    path.write_text(EXAMPLE)
    assert load_quotas(path) == parse(EXAMPLE)
