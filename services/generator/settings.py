"""Generator settings from the environment: where it listens, its tiers, workers and providers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.generator.backends import BACKEND_NAMES, check_backends
from services.generator.providers.http import (
    ApiKey,
    ProviderSettings,
    key_variable,
    setting_variable,
)
from services.generator.tiers import TierCatalogue, TierConfigError, load_catalogue
from services.runtime.fairshare import FairShareSettings
from services.runtime.settings import ConfigError, Env, ServerSettings

__all__ = [
    "BULK_NICE_VARIABLE",
    "DEFAULT_BASE_URLS",
    "FAIR_SHARE_PREFIX",
    "INTERACTIVE_WORKERS_VARIABLE",
    "SERVICE",
    "TIERS_FILE_VARIABLE",
    "WORKERS_VARIABLE",
    "GeneratorSettings",
    "provider_settings",
]

#: The service's short name: its default port, log and trace name.
SERVICE = "generator"

TIERS_FILE_VARIABLE = "TIERGEN_GENERATOR_TIERS_FILE"
WORKERS_VARIABLE = "TIERGEN_GENERATOR_WORKERS"
INTERACTIVE_WORKERS_VARIABLE = "TIERGEN_GENERATOR_INTERACTIVE_WORKERS"
BULK_NICE_VARIABLE = "TIERGEN_GENERATOR_BULK_NICE"
#: Prefix of the fair-share settings: TIERGEN_GENERATOR_TENANT_WEIGHTS, …_INTERACTIVE_BURST.
FAIR_SHARE_PREFIX = "TIERGEN_GENERATOR"

_MOST_WORKERS = 64
_MOST_INTERACTIVE_WORKERS = 16
#: The lowest priority Linux has.
_MOST_NICE = 19

#: Where each HTTP provider's API lives unless TIERGEN_<PROVIDER>_BASE_URL says otherwise.
DEFAULT_BASE_URLS = {
    "gemini": "https://generativelanguage.googleapis.com",
    "openai": "https://api.openai.com",
}


def _default_server() -> ServerSettings:
    # What an empty environment gives, so `from_env({})` equals `GeneratorSettings()`.
    return ServerSettings.from_env(SERVICE, {})


def provider_settings(name: str, environ: Mapping[str, str]) -> ProviderSettings:
    """The settings of HTTP provider `name` ("gemini" or "openai") from the environment.

    Reads TIERGEN_<NAME>_BASE_URL, _TIMEOUT_SECONDS, _CONNECT_TIMEOUT_SECONDS, _MAX_ATTEMPTS,
    _BACKOFF_SECONDS and _MAX_BACKOFF_SECONDS, and the API key from <NAME>_API_KEY or the file
    named by <NAME>_API_KEY_FILE (a mounted secret). Raises ConfigError naming the variable.
    """
    env = Env(environ)
    defaults = ProviderSettings(name=name, base_url=DEFAULT_BASE_URLS[name])

    def number(setting: str, default: float) -> float:
        return env.number(setting_variable(name, setting), default)

    return ProviderSettings(
        name=name,
        base_url=env.string(setting_variable(name, "BASE_URL"), defaults.base_url).rstrip("/"),
        api_key=_api_key(name, env),
        connect_timeout_seconds=number("CONNECT_TIMEOUT_SECONDS", defaults.connect_timeout_seconds),
        timeout_seconds=number("TIMEOUT_SECONDS", defaults.timeout_seconds),
        max_attempts=env.integer(setting_variable(name, "MAX_ATTEMPTS"), defaults.max_attempts),
        backoff_seconds=number("BACKOFF_SECONDS", defaults.backoff_seconds),
        max_backoff_seconds=number("MAX_BACKOFF_SECONDS", defaults.max_backoff_seconds),
    )


def _api_key(name: str, env: Env) -> ApiKey | None:
    """The key from <NAME>_API_KEY or from the file <NAME>_API_KEY_FILE names; never both.

    Messages name the variable and the file, never what either holds.
    """
    variable = key_variable(name)
    file_variable = f"{variable}_FILE"
    value = env.optional_str(variable)
    path = env.optional_str(file_variable)
    if value is not None and path is not None:
        raise ConfigError(f"{variable} and {file_variable} are both set; set one of them")
    if path is not None:
        try:
            value = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(
                f"{file_variable}={path!r}: cannot read the key file: {error.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_variable}={path!r}: the key file is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{file_variable}={path!r}: the key file is empty")
    return None if value is None else ApiKey(value)


def _default_provider(name: str) -> Callable[[], ProviderSettings]:
    return lambda: provider_settings(name, {})


@dataclass(frozen=True)
class GeneratorSettings:
    """Everything the generator needs to know at start; invalid values fail here, not later.

    The limits on reference images and masks (bytes and pixels) are part of the tier catalogue
    (its `[limits]` table), so they live in one place with the tiers they protect.
    """

    #: Where and how the gRPC server listens (TIERGEN_HOST, TIERGEN_PORT, ...).
    server: ServerSettings = field(default_factory=_default_server)
    #: Tier catalogue in TOML; None serves the embedded default catalogue.
    tiers_file: Path | None = None
    #: Worker processes rendering in parallel: one per core the generator may use.
    workers: int = 2
    #: More worker processes that take only interactive renders (0: none; see scheduling.py).
    interactive_workers: int = 1
    #: Niceness of the shared workers, so that the interactive lane (and the server itself)
    #: wins a core from a bulk render when both want one; 0 runs them at normal priority.
    bulk_nice: int = 10
    #: Tenant weights and the interactive bound of the render queues.
    fair_share: FairShareSettings = field(default_factory=FairShareSettings)
    #: The Gemini image API (TIERGEN_GEMINI_*, GEMINI_API_KEY or GEMINI_API_KEY_FILE).
    gemini: ProviderSettings = field(default_factory=_default_provider("gemini"))
    #: The OpenAI Images API (TIERGEN_OPENAI_*, OPENAI_API_KEY or OPENAI_API_KEY_FILE).
    openai: ProviderSettings = field(default_factory=_default_provider("openai"))

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= _MOST_WORKERS:
            raise ConfigError(
                f"{WORKERS_VARIABLE}={self.workers}: must be between 1 and {_MOST_WORKERS}"
            )
        if not 0 <= self.interactive_workers <= _MOST_INTERACTIVE_WORKERS:
            raise ConfigError(
                f"{INTERACTIVE_WORKERS_VARIABLE}={self.interactive_workers}: must be between 0"
                f" and {_MOST_INTERACTIVE_WORKERS}"
            )
        if not 0 <= self.bulk_nice <= _MOST_NICE:
            raise ConfigError(
                f"{BULK_NICE_VARIABLE}={self.bulk_nice}: must be between 0 and {_MOST_NICE}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GeneratorSettings:
        """Reads TIERGEN_GENERATOR_* and the server's TIERGEN_* variables; unset ones keep their
        defaults. Raises ConfigError naming the variable at fault."""
        env = Env(environ)
        tiers_file = env.optional_str(TIERS_FILE_VARIABLE)
        return cls(
            server=ServerSettings.from_env(SERVICE, environ),
            tiers_file=Path(tiers_file).expanduser() if tiers_file else None,
            workers=env.integer(WORKERS_VARIABLE, cls.workers),
            interactive_workers=env.integer(INTERACTIVE_WORKERS_VARIABLE, cls.interactive_workers),
            bulk_nice=env.integer(BULK_NICE_VARIABLE, cls.bulk_nice),
            fair_share=FairShareSettings.from_env(FAIR_SHARE_PREFIX, environ),
            gemini=provider_settings("gemini", environ),
            openai=provider_settings("openai", environ),
        )

    @property
    def providers(self) -> dict[str, ProviderSettings]:
        """Settings of each HTTP provider, by backend name."""
        return {"gemini": self.gemini, "openai": self.openai}

    def catalogue(self) -> TierCatalogue:
        """The tier catalogue to serve, with every tier's backend able to serve it.

        ConfigError naming the file and the bad entry, or the missing API key's variable.
        """
        source = "embedded tier catalogue" if self.tiers_file is None else str(self.tiers_file)
        try:
            catalogue = load_catalogue(self.tiers_file, backends=BACKEND_NAMES)
            check_backends(catalogue, self.providers, source)
        except TierConfigError as error:
            where = f"{TIERS_FILE_VARIABLE}: " if self.tiers_file is not None else ""
            raise ConfigError(f"{where}{error}") from None
        return catalogue
