"""Generator settings from the environment: where it listens, its tier catalogue, its workers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.generator.scheduling import BACKENDS
from services.generator.tiers import TierCatalogue, TierConfigError, load_catalogue
from services.runtime.settings import ConfigError, Env, ServerSettings

__all__ = ["SERVICE", "TIERS_FILE_VARIABLE", "WORKERS_VARIABLE", "GeneratorSettings"]

#: The service's short name: its default port, log and trace name.
SERVICE = "generator"

TIERS_FILE_VARIABLE = "TIERGEN_GENERATOR_TIERS_FILE"
WORKERS_VARIABLE = "TIERGEN_GENERATOR_WORKERS"

_MOST_WORKERS = 64


def _default_server() -> ServerSettings:
    # What an empty environment gives, so `from_env({})` equals `GeneratorSettings()`.
    return ServerSettings.from_env(SERVICE, {})


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

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= _MOST_WORKERS:
            raise ConfigError(
                f"{WORKERS_VARIABLE}={self.workers}: must be between 1 and {_MOST_WORKERS}"
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
        )

    def catalogue(self) -> TierCatalogue:
        """The tier catalogue to serve; ConfigError naming the file and the bad entry."""
        try:
            return load_catalogue(self.tiers_file, backends=BACKENDS)
        except TierConfigError as error:
            where = f"{TIERS_FILE_VARIABLE}: " if self.tiers_file is not None else ""
            raise ConfigError(f"{where}{error}") from None
