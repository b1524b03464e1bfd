"""A generator whose standard tier renders on a fake Gemini image API, for router tests."""

from __future__ import annotations

from pathlib import Path

from services.generator.tiers import DEFAULT_CATALOGUE_TOML
from tests.generator.fake_providers import FakeGemini

__all__ = ["standard_on_gemini"]

_STANDARD_BUILTIN = 'backend = "builtin"\nquality = "medium"'
_STANDARD_GEMINI = 'backend = "gemini"\nmodel = "gemini-3-pro-image-preview"\nquality = "medium"'


def standard_on_gemini(directory: Path, gemini: FakeGemini, **settings: str) -> dict[str, str]:
    """Generator settings with the standard tier on `gemini` (its tiers file in `directory`);
    `settings` add or replace TIERGEN_GEMINI_* values, for example TIMEOUT_SECONDS="1.5"."""
    standard = DEFAULT_CATALOGUE_TOML.index("[tiers.standard]")
    head, tail = DEFAULT_CATALOGUE_TOML[:standard], DEFAULT_CATALOGUE_TOML[standard:]
    # Gemini takes no mask.
    tail = tail.replace(_STANDARD_BUILTIN, _STANDARD_GEMINI, 1).replace(
        "inpainting = true", "inpainting = false", 1
    )
    tiers = directory / "tiers.toml"
    tiers.write_text(head + tail)
    assert _STANDARD_GEMINI in tiers.read_text(), "the default catalogue's standard tier moved"
    return {
        "TIERGEN_GENERATOR_TIERS_FILE": str(tiers),
        "GEMINI_API_KEY": gemini.api_key,
        "TIERGEN_GEMINI_BASE_URL": gemini.url,
        "TIERGEN_GEMINI_BACKOFF_SECONDS": "0.05",
        "TIERGEN_GEMINI_MAX_BACKOFF_SECONDS": "0.2",
        **{f"TIERGEN_GEMINI_{name}": value for name, value in settings.items()},
    }
