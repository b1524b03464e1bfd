"""Settings from the environment: defaults, parsing and errors that name the variable."""

from __future__ import annotations

import pytest

from services.runtime.settings import ConfigError, Env, ServerSettings


def test_defaults_and_overrides():
    assert ServerSettings.from_env("ledger", {}).port == 50053
    settings = ServerSettings.from_env("router", {"TIERGEN_PORT": "0", "TIERGEN_HOST": "::"})
    assert settings.port == 0
    assert settings.address == "[::]:0"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"TIERGEN_PORT": "http"}, "TIERGEN_PORT='http': expected a whole number"),
        ({"TIERGEN_PORT": "70000"}, "TIERGEN_PORT=70000: must be at most 65535"),
        ({"TIERGEN_SHUTDOWN_GRACE_SECONDS": "-1"}, "TIERGEN_SHUTDOWN_GRACE_SECONDS=-1.0"),
    ],
)
def test_bad_values_name_the_variable(environ, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        ServerSettings.from_env("router", environ)


def test_addresses_flags_and_choices():
    env = Env({"LEDGER_ADDR": "ledger:50053", "BAD_ADDR": "ledger", "FLAG": "yes", "MODE": "X"})
    assert env.address("LEDGER_ADDR") == "ledger:50053"
    with pytest.raises(ConfigError, match="BAD_ADDR='ledger': expected host:port"):
        env.address("BAD_ADDR")
    with pytest.raises(ConfigError, match="MISSING_ADDR is not set"):
        env.address("MISSING_ADDR")
    assert env.flag("FLAG", False) is True
    with pytest.raises(ConfigError, match="expected one of a, b"):
        env.choice("MODE", "a", ("a", "b"))
