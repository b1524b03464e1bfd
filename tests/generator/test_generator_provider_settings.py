"""Provider settings from the environment, and a catalogue its providers cannot serve stopping the
start."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from services.generator.providers import ApiKey, ProviderSettings
from services.generator.server import create_server
from services.generator.settings import GeneratorSettings, provider_settings
from services.runtime.settings import ConfigError
from tests.start_failures import refused_start
from tests.tls import session_pki

GEMINI_TIER = """\
[tiers.vista]
backend = "gemini"
model = "gemini-3-pro-image-preview"
sizes = ["1K"]
expected_latency_seconds = { "1K" = 8 }
"""
OPENAI_TIER = """\
[tiers.studio]
backend = "openai"
model = "gpt-image-2"
sizes = ["1K"]
max_reference_images = 1
inpainting = true
expected_latency_seconds = { "1K" = 10 }
"""


def with_tiers(
    tmp_path: Path,
    text: str,
    gemini: ProviderSettings | None = None,
    openai: ProviderSettings | None = None,
) -> GeneratorSettings:
    path = tmp_path / "tiers.toml"
    path.write_text(text)
    settings = GeneratorSettings(server=session_pki().server("generator"), tiers_file=path)
    return replace(settings, gemini=gemini or settings.gemini, openai=openai or settings.openai)


def keyed(name: str) -> ProviderSettings:
    return provider_settings(name, {f"{name.upper()}_API_KEY": f"{name}-key"})


def test_defaults_point_at_the_real_apis_without_keys() -> None:
    gemini, openai = GeneratorSettings().gemini, GeneratorSettings().openai
    assert gemini.base_url == "https://generativelanguage.googleapis.com"
    assert openai.base_url == "https://api.openai.com"
    assert gemini.api_key is None and openai.api_key is None
    assert (gemini.timeout_seconds, gemini.max_attempts) == (180.0, 3)
    assert GeneratorSettings.from_env({}) == GeneratorSettings()


def test_every_provider_setting_comes_from_its_variable() -> None:
    settings = GeneratorSettings.from_env(
        {
            "TIERGEN_GEMINI_BASE_URL": "http://127.0.0.1:8080/gemini/",
            "TIERGEN_GEMINI_TIMEOUT_SECONDS": "42",
            "TIERGEN_GEMINI_CONNECT_TIMEOUT_SECONDS": "2.5",
            "TIERGEN_GEMINI_MAX_ATTEMPTS": "5",
            "TIERGEN_GEMINI_BACKOFF_SECONDS": "0.5",
            "TIERGEN_GEMINI_MAX_BACKOFF_SECONDS": "8",
            "GEMINI_API_KEY": "gm-key",
            "OPENAI_API_KEY": " sk-key ",
        }
    )
    assert settings.gemini == ProviderSettings(
        name="gemini",
        base_url="http://127.0.0.1:8080/gemini",
        api_key=ApiKey("gm-key"),
        connect_timeout_seconds=2.5,
        timeout_seconds=42.0,
        max_attempts=5,
        backoff_seconds=0.5,
        max_backoff_seconds=8.0,
    )
    assert settings.openai.api_key == ApiKey("sk-key")
    assert settings.providers == {"gemini": settings.gemini, "openai": settings.openai}
    assert "gm-key" not in repr(settings) and "sk-key" not in repr(settings)


def test_a_key_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "openai-key"
    secret.write_text("sk-from-file\n")
    loaded = provider_settings("openai", {"OPENAI_API_KEY_FILE": str(secret)})
    assert loaded.api_key == ApiKey("sk-from-file")


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        (
            {"GEMINI_API_KEY": "k", "GEMINI_API_KEY_FILE": "/run/secrets/gemini"},
            "GEMINI_API_KEY and GEMINI_API_KEY_FILE are both set",
        ),
        ({"GEMINI_API_KEY_FILE": "/nowhere/gemini"}, "GEMINI_API_KEY_FILE='/nowhere/gemini'"),
        ({"TIERGEN_GEMINI_MAX_ATTEMPTS": "three"}, "TIERGEN_GEMINI_MAX_ATTEMPTS='three'"),
        ({"TIERGEN_GEMINI_MAX_ATTEMPTS": "0"}, "TIERGEN_GEMINI_MAX_ATTEMPTS=0"),
        ({"TIERGEN_GEMINI_TIMEOUT_SECONDS": "-3"}, "TIERGEN_GEMINI_TIMEOUT_SECONDS"),
        ({"TIERGEN_GEMINI_BASE_URL": "generativelanguage"}, "TIERGEN_GEMINI_BASE_URL"),
    ],
)
def test_bad_provider_variables_are_named(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GeneratorSettings.from_env(environ)
    assert complaint in str(caught.value)


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "gemini-key"
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="the key file is empty"):
        provider_settings("gemini", {"GEMINI_API_KEY_FILE": str(secret)})


def test_a_provider_tier_without_its_key_is_refused(tmp_path: Path) -> None:
    settings = with_tiers(tmp_path, GEMINI_TIER + OPENAI_TIER, openai=keyed("openai"))
    with pytest.raises(ConfigError) as caught:
        settings.catalogue()
    assert str(caught.value) == (
        "tier(s) vista render on gemini, but neither GEMINI_API_KEY nor GEMINI_API_KEY_FILE is set"
    )
    keys = (keyed("gemini"), keyed("openai"))
    served = with_tiers(tmp_path, GEMINI_TIER + OPENAI_TIER, *keys).catalogue()
    assert [(t.name, t.backend, t.model) for t in served] == [
        ("vista", "gemini", "gemini-3-pro-image-preview"),
        ("studio", "openai", "gpt-image-2"),
    ]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            GEMINI_TIER.replace('model = "gemini-3-pro-image-preview"\n', ""),
            "tiers.vista: backend 'gemini' needs the provider's model",
        ),
        (
            GEMINI_TIER.replace('"gemini"', '"builtin"'),
            "tiers.vista.model: only a tier on an HTTP provider (gemini, openai) names a model",
        ),
        (
            GEMINI_TIER + "max_reference_images = 1\ninpainting = true\n",
            "tiers.vista.inpainting: the gemini backend takes no mask",
        ),
        (
            GEMINI_TIER + "max_reference_images = 15\n",
            "tiers.vista.max_reference_images: the gemini backend takes at most 14",
        ),
        (
            OPENAI_TIER.replace("max_reference_images = 1", "max_reference_images = 17"),
            "tiers.studio.max_reference_images: the openai backend takes at most 16",
        ),
        (GEMINI_TIER.replace("gemini-3-pro-image-preview", "models/x:y"), "tiers.vista.model"),
        (GEMINI_TIER.replace('"gemini"', '"midjourney"'), "unknown backend 'midjourney'"),
    ],
)
def test_a_tier_its_backend_cannot_serve_names_the_entry(
    tmp_path: Path, text: str, complaint: str
) -> None:
    settings = with_tiers(tmp_path, text, keyed("gemini"), keyed("openai"))
    with pytest.raises(ConfigError) as caught:
        settings.catalogue()
    assert str(caught.value).startswith(f"TIERGEN_GENERATOR_TIERS_FILE: {settings.tiers_file}: ")
    assert complaint in str(caught.value)


async def test_the_server_does_not_start_without_a_providers_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GEMINI_API_KEY"):
        await create_server(with_tiers(tmp_path, GEMINI_TIER))


def test_the_entry_point_exits_2_naming_the_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "tiers.toml"
    path.write_text(OPENAI_TIER)
    environment = dict(os.environ, TIERGEN_PORT="0", TIERGEN_GENERATOR_TIERS_FILE=str(path))
    for name in ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE"):
        environment.pop(name, None)
    line, _ = refused_start("services.generator", environment)
    assert line["error"] == (
        "tier(s) studio render on openai, but neither OPENAI_API_KEY nor OPENAI_API_KEY_FILE is set"
    )
    assert line["setting"] == "OPENAI_API_KEY"
