"""Settings from environment variables, validated at start with a message naming the variable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConfigError", "Env", "ServerSettings"]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and what it expects."""


class Env:
    """Typed, validated reads of `TIERGEN_*` style variables from one environment mapping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def string(self, name: str, default: str) -> str:
        raw = self._raw(name)
        return default if raw is None else raw

    def optional_str(self, name: str) -> str | None:
        return self._raw(name)

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
        self._check_range(name, value, minimum, maximum)
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number") from None
        self._check_range(name, value, minimum, maximum)
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name}={raw!r}: expected true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value

    def path(self, name: str, default: Path) -> Path:
        raw = self._raw(name)
        return default if raw is None else Path(raw).expanduser()

    def address(self, name: str, default: str | None = None) -> str:
        """A `host:port` dependency address such as LEDGER_ADDR."""
        raw = self._raw(name)
        if raw is None:
            if default is None:
                raise ConfigError(f"{name} is not set: expected host:port of the dependency")
            return default
        host, sep, port = raw.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}={raw!r}: expected host:port, for example 127.0.0.1:50053")
        return raw

    @staticmethod
    def _check_range(
        name: str,
        value: float,
        minimum: float | None,
        maximum: float | None,
    ) -> None:
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}={value}: must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}={value}: must be at most {maximum}")


#: Default listening ports; `tiergen up` and tests use port 0 instead.
DEFAULT_PORTS = {"router": 50051, "generator": 50052, "ledger": 50053, "upscaler": 50054}


@dataclass(frozen=True)
class ServerSettings:
    """Where and how a service listens."""

    service: str
    host: str = "127.0.0.1"
    port: int = 0
    grace_seconds: float = 10.0
    max_message_bytes: int = 8 * 1024 * 1024
    #: Port of the Prometheus endpoint on `host`; None serves no metrics, 0 any free port.
    metrics_port: int | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str]) -> ServerSettings:
        env = Env(environ)
        return cls(
            service=service,
            host=env.string("TIERGEN_HOST", "127.0.0.1"),
            port=env.integer(
                "TIERGEN_PORT", DEFAULT_PORTS.get(service, 0), minimum=0, maximum=65535
            ),
            grace_seconds=env.number(
                "TIERGEN_SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0.0, maximum=300.0
            ),
            max_message_bytes=env.integer(
                "TIERGEN_MAX_MESSAGE_BYTES", 8 * 1024 * 1024, minimum=2 * 1024 * 1024
            ),
            metrics_port=(
                env.integer("TIERGEN_METRICS_PORT", 0, minimum=0, maximum=65535)
                if env.optional_str("TIERGEN_METRICS_PORT") is not None
                else None
            ),
        )
