"""Settings from environment variables, validated at start with a message naming the variable.

Every secret setting (a DSN with a password, an API key, a cloud credential) can also be read
from a file, `NAME_FILE`, so that a Kubernetes Secret is mounted rather than put in the
environment (`Env.secret`). Messages about a secret name its variable and never quote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.identities import ROUTER_IDENTITY, parse_identities

__all__ = [
    "ALLOWED_CALLERS_VARIABLE",
    "CA_FILE_VARIABLE",
    "CERT_FILE_VARIABLE",
    "CLIENT_CA_FILE_VARIABLE",
    "HEALTH_PORT_VARIABLE",
    "INSECURE_VARIABLE",
    "KEY_FILE_VARIABLE",
    "ChannelSecurity",
    "ConfigError",
    "Env",
    "PemFile",
    "ServerSettings",
    "ServerTls",
]

#: The server's certificate (chain) and private key, PEM files; a service's client
#: certificate too, on its own calls to other services.
CERT_FILE_VARIABLE = "TIERGEN_TLS_CERT_FILE"
KEY_FILE_VARIABLE = "TIERGEN_TLS_KEY_FILE"
#: The CA that signs client certificates: set, every caller must present one (mutual TLS).
CLIENT_CA_FILE_VARIABLE = "TIERGEN_TLS_CLIENT_CA_FILE"
#: The CA a client trusts the servers it calls by.
CA_FILE_VARIABLE = "TIERGEN_CA_FILE"
#: `true` serves and calls in plaintext, for a mesh that encrypts and authenticates the hops.
INSECURE_VARIABLE = "TIERGEN_INSECURE"
#: A second port serving only grpc.health.v1, in plaintext, for the kubelet's probes.
HEALTH_PORT_VARIABLE = "TIERGEN_HEALTH_PORT"
#: The identities a backend (ledger, generator, upscaler) serves.
ALLOWED_CALLERS_VARIABLE = "TIERGEN_ALLOWED_CALLERS"


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

    def secret(self, name: str) -> str | None:
        """A secret from `name`, or from the file `name`_FILE names (a mounted Secret), never
        both; None when neither is set. Surrounding blanks and line ends are dropped.

        Messages name the variable and the file, never what either holds.
        """
        file_variable = f"{name}_FILE"
        value = self._raw(name)
        path = self._raw(file_variable)
        if value is not None and path is not None:
            raise ConfigError(f"{name} and {file_variable} are both set; set one of them")
        if path is None:
            return value
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(
                f"{file_variable}={path!r}: cannot read the file: {error.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_variable}={path!r}: the file is not UTF-8 text") from None
        if not text:
            raise ConfigError(f"{file_variable}={path!r}: the file is empty")
        return text

    def identities(self, name: str, default: frozenset[str]) -> frozenset[str]:
        """A comma-separated list of identities (`spiffe://tiergen/router`, a DNS name)."""
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse_identities(raw)
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None

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
        """A `host:port` dependency address such as LEDGER_ADDR, or a comma-separated list of
        them (the dependency's replicas, which channels balance round robin)."""
        raw = self._raw(name)
        if raw is None:
            if default is None:
                raise ConfigError(f"{name} is not set: expected host:port of the dependency")
            return default
        for entry in raw.split(","):
            host, sep, port = entry.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"{name}={raw!r}: expected host:port, for example 127.0.0.1:50053, or a"
                    " comma-separated list of them"
                )
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
class PemFile:
    """A PEM file and the setting that named it (a variable or a command-line option), which
    every message about the file names."""

    path: Path
    setting: str

    def describe(self) -> str:
        """`TIERGEN_TLS_CERT_FILE=/etc/tls/tls.crt`, or `--ca-file /tmp/ca.crt` for an option."""
        joiner = " " if self.setting.startswith("-") else "="
        return f"{self.setting}{joiner}{self.path}"

    @classmethod
    def from_env(cls, env: Env, name: str) -> PemFile | None:
        raw = env.optional_str(name)
        return None if raw is None else cls(Path(raw).expanduser(), name)


@dataclass(frozen=True)
class ServerTls:
    """Where a server's certificate, key and (for mutual TLS) client CA are: files, re-read
    when they change (`services.runtime.tls`)."""

    certificate: PemFile
    key: PemFile
    #: Set, every caller must present a certificate this CA signed; None asks for none.
    client_ca: PemFile | None = None

    @classmethod
    def from_env(cls, env: Env) -> ServerTls | None:
        """TIERGEN_TLS_CERT_FILE, TIERGEN_TLS_KEY_FILE and TIERGEN_TLS_CLIENT_CA_FILE; None when
        none is set. Whether the files are good is checked when the server is made."""
        certificate = PemFile.from_env(env, CERT_FILE_VARIABLE)
        key = PemFile.from_env(env, KEY_FILE_VARIABLE)
        client_ca = PemFile.from_env(env, CLIENT_CA_FILE_VARIABLE)
        if certificate is None and key is None:
            if client_ca is not None:
                raise ConfigError(
                    f"{CLIENT_CA_FILE_VARIABLE} is set but {CERT_FILE_VARIABLE} and"
                    f" {KEY_FILE_VARIABLE} are not: client certificates need a TLS server"
                )
            return None
        if certificate is None or key is None:
            given, missing = (
                (CERT_FILE_VARIABLE, KEY_FILE_VARIABLE)
                if key is None
                else (KEY_FILE_VARIABLE, CERT_FILE_VARIABLE)
            )
            raise ConfigError(f"{given} is set but {missing} is not: set both")
        return cls(certificate, key, client_ca)


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client secures its channels: TLS trusting `ca` (None: the system's trust store),
    with a client certificate when `certificate` and `key` are given; or plaintext, only when
    `insecure` is asked for explicitly."""

    ca: PemFile | None = None
    certificate: PemFile | None = None
    key: PemFile | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.key is None):
            given = self.certificate or self.key
            assert given is not None
            raise ConfigError(
                f"{given.describe()}: a client certificate needs both its file and its key"
            )
        if self.insecure and (self.ca or self.certificate):
            raise ConfigError(
                "plaintext (TIERGEN_INSECURE, --insecure) was asked for together with TLS files:"
                " choose one"
            )

    @classmethod
    def plaintext(cls) -> ChannelSecurity:
        """No encryption, no server check: only for a mesh that secures the hop itself."""
        return cls(insecure=True)

    @property
    def files(self) -> tuple[PemFile, ...]:
        return tuple(f for f in (self.ca, self.certificate, self.key) if f is not None)

    def require_ca(self, required_for: str) -> None:
        """ConfigError unless plaintext or a CA file: a service's dependencies have certificates
        of its deployment's CA, never of a public one. `required_for` says why, in the message."""
        if not self.insecure and self.ca is None:
            raise ConfigError(
                f"{CA_FILE_VARIABLE} is not set: {required_for}; set it to the CA file that"
                f" signs their certificates, or {INSECURE_VARIABLE}=true behind a mesh that"
                " encrypts the hops"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ChannelSecurity:
        """A service's security on its calls: TIERGEN_INSECURE, else TLS trusting
        TIERGEN_CA_FILE with the service's own TIERGEN_TLS_CERT_FILE/KEY as client certificate.
        """
        env = Env(environ)
        ca = PemFile.from_env(env, CA_FILE_VARIABLE)
        if env.flag(INSECURE_VARIABLE, False):
            if ca is not None:
                raise ConfigError(
                    f"{INSECURE_VARIABLE}=true and {CA_FILE_VARIABLE} are both set: call over TLS"
                    f" (unset {INSECURE_VARIABLE}) or in plaintext (unset {CA_FILE_VARIABLE})"
                )
            return cls.plaintext()
        certificate = PemFile.from_env(env, CERT_FILE_VARIABLE)
        key = PemFile.from_env(env, KEY_FILE_VARIABLE)
        return cls(ca=ca, certificate=certificate, key=key)


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
    #: TLS from files; None serves plaintext if `insecure`, and refuses to start otherwise.
    tls: ServerTls | None = None
    #: Plaintext asked for explicitly (TIERGEN_INSECURE=true), for a mesh doing mutual TLS.
    insecure: bool = False
    #: Port of a plaintext server of grpc.health.v1 only (for the kubelet's probes) on `host`;
    #: None serves none, 0 any free port.
    health_port: int | None = None
    #: Identities a backend serves (TIERGEN_ALLOWED_CALLERS); the router ignores it, its callers
    #: present credentials instead.
    allowed_callers: frozenset[str] = field(default_factory=lambda: frozenset({ROUTER_IDENTITY}))

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str]) -> ServerSettings:
        env = Env(environ)
        tls = ServerTls.from_env(env)
        insecure = env.flag(INSECURE_VARIABLE, False)
        if insecure and tls is not None:
            raise ConfigError(
                f"{INSECURE_VARIABLE}=true and {CERT_FILE_VARIABLE} are both set: serve TLS"
                f" (unset {INSECURE_VARIABLE}) or plaintext (unset the TIERGEN_TLS_* files)"
            )
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
            tls=tls,
            insecure=insecure,
            health_port=(
                env.integer(HEALTH_PORT_VARIABLE, 0, minimum=0, maximum=65535)
                if env.optional_str(HEALTH_PORT_VARIABLE) is not None
                else None
            ),
            allowed_callers=env.identities(ALLOWED_CALLERS_VARIABLE, frozenset({ROUTER_IDENTITY})),
        )
