"""Secrets in settings: read from a variable or from the file its `_FILE` variable names, never
both; in no repr; masked in every message about them."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ledger.settings import LedgerSettings
from services.router.settings import RouterSettings
from services.runtime.migrations import redact
from services.runtime.settings import ConfigError, Env

PASSWORD = "PLANTEDpw0123"
DSN = f"postgresql://tiergen:{PASSWORD}@db:5432/tiergen"


def test_a_secret_comes_from_its_variable_or_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text(DSN + "\n")
    assert Env({"X_DSN": DSN}).secret("X_DSN") == DSN
    assert Env({"X_DSN_FILE": str(secret)}).secret("X_DSN") == DSN
    assert Env({}).secret("X_DSN") is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"X_DSN": DSN, "X_DSN_FILE": "/run/dsn"}, "X_DSN and X_DSN_FILE are both set"),
        ({"X_DSN_FILE": "/nowhere/dsn"}, "X_DSN_FILE='/nowhere/dsn': cannot read the file"),
        ({"X_DSN_FILE": "{empty}"}, "the file is empty"),
    ],
)
def test_a_bad_secret_setting_names_the_variable_not_the_secret(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    environ = {k: v.replace("{empty}", str(empty)) for k, v in environ.items()}
    with pytest.raises(ConfigError, match=message) as refused:
        Env(environ).secret("X_DSN")
    assert PASSWORD not in str(refused.value)


def test_every_service_dsn_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "ledger").write_text(DSN)
    (tmp_path / "router").write_text(DSN)
    ledger = LedgerSettings.from_env({"TIERGEN_LEDGER_DSN_FILE": str(tmp_path / "ledger")})
    router = RouterSettings.from_env({"TIERGEN_ROUTER_DSN_FILE": str(tmp_path / "router")})
    assert ledger.dsn == router.jobs_dsn == DSN
    assert PASSWORD not in repr(ledger) + repr(router)


def test_s3_credentials_can_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "id").write_text("AKIAEXAMPLE")
    (tmp_path / "secret").write_text(PASSWORD)
    settings = RouterSettings.from_env(
        {
            "TIERGEN_ROUTER_ASSETS_URL": "s3://bucket/assets",
            "AWS_ACCESS_KEY_ID_FILE": str(tmp_path / "id"),
            "AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "secret"),
        }
    )
    assert settings.assets_s3 is not None
    assert settings.assets_s3.secret_access_key == PASSWORD
    assert PASSWORD not in repr(settings)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql+psycopg://tiergen:{PASSWORD}@db/tiergen",
        f"mysql://tiergen:{PASSWORD}@db/tiergen",
        f"host=db password={PASSWORD}",
        f"tiergen:{PASSWORD}@db",
    ],
)
def test_a_bad_dsn_is_named_with_its_password_masked(dsn: str) -> None:
    with pytest.raises(ConfigError) as ledger:
        LedgerSettings.from_env({"TIERGEN_LEDGER_DSN": dsn})
    with pytest.raises(ConfigError) as router:
        RouterSettings.from_env({"TIERGEN_ROUTER_DSN": dsn})
    assert str(ledger.value).startswith("dsn (TIERGEN_LEDGER_DSN) must be")
    assert str(router.value).startswith("TIERGEN_ROUTER_DSN=")
    assert PASSWORD not in str(ledger.value) + str(router.value)


def test_redact_masks_what_it_cannot_take_apart() -> None:
    assert redact(f"host=db password={PASSWORD}") == "<unparsable DSN>"
    assert redact(DSN) == "postgresql://tiergen:***@db:5432/tiergen"
