"""Router settings from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.runtime.settings import ConfigError, Env, ServerSettings

__all__ = ["RouterSettings", "sqlite_path"]


def sqlite_path(variable: str, dsn: str) -> Path:
    """The file of a `sqlite:///path` DSN; ConfigError naming `variable` for anything else."""
    prefix = "sqlite:///"
    if not dsn.startswith(prefix) or len(dsn) == len(prefix):
        raise ConfigError(
            f"{variable}={dsn!r}: expected sqlite:///path/to/file.db (PostgreSQL job stores are "
            "not supported yet)"
        )
    return Path(dsn.removeprefix(prefix)).expanduser()


@dataclass(frozen=True)
class RouterSettings:
    """Where the router's dependencies are and how it runs its work."""

    server: ServerSettings
    ledger_addr: str
    generator_addr: str
    upscaler_addr: str
    jobs_path: Path
    assets_dir: Path
    prices_file: Path | None = None
    policy_file: Path | None = None
    hold_ttl_seconds: int = 900
    parallel_jobs: int = 4
    max_upscale_side: int = 8192
    call_timeout_seconds: float = 300.0
    max_image_bytes: int = 256 * 1024 * 1024
    reload_interval_seconds: float = 5.0
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RouterSettings:
        env = Env(environ)
        prices = env.optional_str("TIERGEN_ROUTER_PRICES_FILE")
        policy = env.optional_str("TIERGEN_ROUTER_POLICY_FILE")
        return cls(
            server=ServerSettings.from_env("router", environ),
            ledger_addr=env.address("LEDGER_ADDR", "127.0.0.1:50053"),
            generator_addr=env.address("GENERATOR_ADDR", "127.0.0.1:50052"),
            upscaler_addr=env.address("UPSCALER_ADDR", "127.0.0.1:50054"),
            jobs_path=sqlite_path(
                "TIERGEN_ROUTER_DSN",
                env.string("TIERGEN_ROUTER_DSN", "sqlite:///tiergen-data/router.db"),
            ),
            assets_dir=env.path("TIERGEN_ROUTER_ASSETS_DIR", Path("tiergen-data/assets")),
            prices_file=Path(prices) if prices else None,
            policy_file=Path(policy) if policy else None,
            hold_ttl_seconds=env.integer(
                "TIERGEN_ROUTER_HOLD_TTL_SECONDS", 900, minimum=30, maximum=86_400
            ),
            parallel_jobs=env.integer("TIERGEN_ROUTER_PARALLEL_JOBS", 4, minimum=1, maximum=64),
            max_upscale_side=env.integer(
                "TIERGEN_ROUTER_MAX_UPSCALE_SIDE", 8192, minimum=1024, maximum=16384
            ),
            breaker_threshold=env.integer(
                "TIERGEN_ROUTER_BREAKER_THRESHOLD", 5, minimum=1, maximum=1000
            ),
            breaker_cooldown_seconds=env.number(
                "TIERGEN_ROUTER_BREAKER_COOLDOWN_SECONDS", 10.0, minimum=0.1, maximum=3600.0
            ),
            reload_interval_seconds=env.number(
                "TIERGEN_ROUTER_RELOAD_INTERVAL_SECONDS", 5.0, minimum=0.1, maximum=3600.0
            ),
            call_timeout_seconds=env.number(
                "TIERGEN_ROUTER_CALL_TIMEOUT_SECONDS", 300.0, minimum=1.0, maximum=3600.0
            ),
        )
