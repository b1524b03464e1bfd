"""LedgerSettings: defaults, TIERGEN_LEDGER_* parsing, and bad values named by their variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ledger.settings import DEFAULT_DSN, LedgerSettings


def test_defaults_are_the_embedded_ledger_and_the_published_promotions():
    settings = LedgerSettings.from_env({})

    assert settings == LedgerSettings()
    assert settings.dsn == DEFAULT_DSN == "sqlite:///./tiergen-data/ledger.db"
    assert settings.sqlite_path == Path("tiergen-data/ledger.db")
    assert (settings.signup_bonus, settings.checkin_amount, settings.promo_cap) == (400, 40, 840)


def test_every_variable_is_read():
    settings = LedgerSettings.from_env(
        {
            "TIERGEN_LEDGER_DSN": "postgresql://ledger@db:5432/ledger",
            "TIERGEN_LEDGER_SIGNUP_BONUS": "100",
            "TIERGEN_LEDGER_CHECKIN_AMOUNT": " 25 ",
            "TIERGEN_LEDGER_PROMO_CAP": "500",
            "TIERGEN_LEDGER_DEFAULT_HOLD_TTL_SECONDS": "120",
            "TIERGEN_LEDGER_MAX_HOLD_TTL_SECONDS": "3600",
            "TIERGEN_LEDGER_SWEEP_INTERVAL_SECONDS": "2.5",
            "TIERGEN_LEDGER_DB_TIMEOUT_SECONDS": "3",
            "TIERGEN_LEDGER_LOCK_TIMEOUT_SECONDS": "0.5",
            "TIERGEN_LEDGER_POOL_SIZE": "20",
        }
    )

    assert settings == LedgerSettings(
        dsn="postgresql://ledger@db:5432/ledger",
        signup_bonus=100,
        checkin_amount=25,
        promo_cap=500,
        default_hold_ttl_seconds=120,
        max_hold_ttl_seconds=3600,
        sweep_interval_seconds=2.5,
        db_timeout_seconds=3.0,
        lock_timeout_seconds=0.5,
        pool_size=20,
    )
    assert settings.sqlite_path is None


def test_an_absolute_sqlite_path_keeps_its_leading_slash():
    assert LedgerSettings(dsn="sqlite:////var/lib/ledger.db").sqlite_path == Path(
        "/var/lib/ledger.db"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIERGEN_LEDGER_DSN", "mysql://db/ledger"),
        ("TIERGEN_LEDGER_DSN", "sqlite:///"),
        ("TIERGEN_LEDGER_DSN", ""),
        ("TIERGEN_LEDGER_SIGNUP_BONUS", "lots"),
        ("TIERGEN_LEDGER_SIGNUP_BONUS", "-1"),
        ("TIERGEN_LEDGER_SIGNUP_BONUS", "900"),
        ("TIERGEN_LEDGER_CHECKIN_AMOUNT", "0"),
        ("TIERGEN_LEDGER_CHECKIN_AMOUNT", "2.5"),
        ("TIERGEN_LEDGER_PROMO_CAP", "-5"),
        ("TIERGEN_LEDGER_DEFAULT_HOLD_TTL_SECONDS", "0"),
        ("TIERGEN_LEDGER_DEFAULT_HOLD_TTL_SECONDS", "90000"),
        ("TIERGEN_LEDGER_MAX_HOLD_TTL_SECONDS", "60"),
        ("TIERGEN_LEDGER_SWEEP_INTERVAL_SECONDS", "0"),
        ("TIERGEN_LEDGER_SWEEP_INTERVAL_SECONDS", "nan"),
        ("TIERGEN_LEDGER_DB_TIMEOUT_SECONDS", "inf"),
        ("TIERGEN_LEDGER_LOCK_TIMEOUT_SECONDS", "-1"),
        ("TIERGEN_LEDGER_POOL_SIZE", "0"),
        ("TIERGEN_LEDGER_POOL_SIZE", ""),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(variable, value):
    with pytest.raises(ValueError, match=variable):
        LedgerSettings.from_env({variable: value})
