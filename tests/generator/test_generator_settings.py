"""Generator settings and process: environment variables, the tiers file, the entry point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.generator.settings import GeneratorSettings
from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from services.runtime.settings import ConfigError, ServerSettings
from tests.start_failures import refused_start

ONE_TIER = """\
[tiers.solo]
backend = "builtin"
sizes = ["1K"]
expected_latency_seconds = { "1K" = 0.1 }
"""


def with_tiers(tmp_path: Path, text: str) -> GeneratorSettings:
    path = tmp_path / "tiers.toml"
    path.write_text(text)
    return GeneratorSettings(server=ServerSettings(service="generator"), tiers_file=path)


def test_settings_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tiers.toml"
    loaded = GeneratorSettings.from_env(
        {
            "TIERGEN_GENERATOR_TIERS_FILE": str(path),
            "TIERGEN_GENERATOR_WORKERS": "3",
            "TIERGEN_PORT": "0",
        }
    )
    assert (loaded.tiers_file, loaded.workers, loaded.server.port) == (path, 3, 0)
    assert GeneratorSettings.from_env({}) == GeneratorSettings()
    assert GeneratorSettings().workers == 2
    assert GeneratorSettings().tiers_file is None


@pytest.mark.parametrize("workers", ["0", "65", "two"])
def test_a_bad_worker_count_names_the_variable(workers: str) -> None:
    with pytest.raises(ConfigError, match="TIERGEN_GENERATOR_WORKERS"):
        GeneratorSettings.from_env({"TIERGEN_GENERATOR_WORKERS": workers})


def test_a_tiers_file_replaces_the_default_catalogue(tmp_path: Path) -> None:
    catalogue = with_tiers(tmp_path, ONE_TIER).catalogue()
    assert catalogue.names == ("solo",)


def test_a_bad_tiers_file_is_a_config_error_naming_the_entry(tmp_path: Path) -> None:
    settings = with_tiers(tmp_path, ONE_TIER.replace('"1K" = 0.1', '"1K" = -1'))
    with pytest.raises(ConfigError) as caught:
        settings.catalogue()
    assert str(caught.value) == (
        f"TIERGEN_GENERATOR_TIERS_FILE: {settings.tiers_file}:"
        " tiers.solo.expected_latency_seconds.1K: must be seconds > 0, not -1"
    )


def test_a_tier_on_a_backend_this_process_lacks_is_refused(tmp_path: Path) -> None:
    settings = with_tiers(tmp_path, ONE_TIER.replace('"builtin"', '"midjourney"'))
    with pytest.raises(
        ConfigError,
        match=r"tiers\.solo\.backend: unknown backend 'midjourney';"
        r" available: builtin, gemini, instant, openai",
    ):
        settings.catalogue()


def test_a_missing_tiers_file_is_a_config_error(tmp_path: Path) -> None:
    settings = GeneratorSettings(tiers_file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"TIERGEN_GENERATOR_TIERS_FILE: .*cannot read"):
        settings.catalogue()


def test_the_entry_point_exits_2_with_one_line_on_bad_config(tmp_path: Path) -> None:
    environment = dict(
        os.environ,
        TIERGEN_PORT="0",
        TIERGEN_GENERATOR_TIERS_FILE=str(tmp_path / "missing.toml"),
    )
    line, _ = refused_start("services.generator", environment)
    assert (line["service"], line["kind"]) == ("generator", "configuration error")
    assert line["setting"] == "TIERGEN_GENERATOR_TIERS_FILE", line


def test_the_default_catalogue_is_served_without_a_tiers_file() -> None:
    assert GeneratorSettings().catalogue().names == ("nano", "standard", "pro")
    # Its header tells an operator how to replace it.
    assert "TIERGEN_GENERATOR_TIERS_FILE" in DEFAULT_CATALOGUE_TOML
