"""Router settings from the environment.

The secrets among them (the job store's DSN, the S3 credentials) can each be read from a file
instead, `NAME_FILE`, and appear in no repr and in no message but masked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from services.runtime.migrations import redact
from services.runtime.settings import ChannelSecurity, ConfigError, Env, ServerSettings

__all__ = ["RouterSettings", "S3AssetSettings", "WebhookSettings"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")
#: S3's rule for bucket names, which S3-compatible stores follow.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _job_store_dsn(variable: str, dsn: str) -> str:
    """`dsn` if it names a SQLite file or a PostgreSQL database; ConfigError otherwise."""
    if dsn.startswith(_POSTGRES_PREFIXES) or (
        dsn.startswith(_SQLITE_PREFIX) and len(dsn) > len(_SQLITE_PREFIX)
    ):
        return dsn
    raise ConfigError(
        f"{variable}={redact(dsn)!r}: expected sqlite:///path/to/file.db"
        " (sqlite:////absolute/path.db) or postgresql://user@host:port/database"
    )


def _optional_path(raw: str | None) -> Path | None:
    return None if raw is None else Path(raw).expanduser()


@dataclass(frozen=True)
class S3AssetSettings:
    """Where the S3-compatible asset store is and how to sign in to it.

    Credentials and region left None are found by boto3's own chain (its environment
    variables, the shared config files, a web identity or instance role).
    """

    bucket: str
    #: Key prefix of every asset, without leading or trailing slashes; may be empty.
    prefix: str = ""
    #: An S3-compatible endpoint (MinIO, Ceph, ...); None for AWS S3 itself.
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> S3AssetSettings | None:
        """TIERGEN_ROUTER_ASSETS_URL (s3://bucket/prefix) and the standard AWS_* variables.

        None when no assets URL is set (the router then keeps assets in a local directory).
        """
        env = Env(environ)
        url = env.optional_str("TIERGEN_ROUTER_ASSETS_URL")
        endpoint_url = env.optional_str("TIERGEN_ROUTER_S3_ENDPOINT_URL")
        if url is None:
            if endpoint_url is not None:
                raise ConfigError(
                    "TIERGEN_ROUTER_S3_ENDPOINT_URL is set but TIERGEN_ROUTER_ASSETS_URL is not;"
                    " set it to s3://bucket/prefix to keep assets there"
                )
            return None
        bucket, prefix = _s3_location("TIERGEN_ROUTER_ASSETS_URL", url)
        if endpoint_url is not None:
            endpoint = urlsplit(endpoint_url)
            if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
                raise ConfigError(
                    f"TIERGEN_ROUTER_S3_ENDPOINT_URL={endpoint_url!r}: expected http(s)://host:port"
                )
        # Each also from a file (AWS_SECRET_ACCESS_KEY_FILE, ...): a mounted Secret.
        access_key_id = env.secret("AWS_ACCESS_KEY_ID")
        secret_access_key = env.secret("AWS_SECRET_ACCESS_KEY")
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigError(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or their _FILE variables) must be"
                " set together, or neither"
            )
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=endpoint_url,
            region=env.optional_str("AWS_REGION") or env.optional_str("AWS_DEFAULT_REGION"),
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=env.secret("AWS_SESSION_TOKEN"),
        )


def _s3_location(variable: str, url: str) -> tuple[str, str]:
    """The bucket and key prefix of an `s3://bucket/prefix` URL; ConfigError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{variable}={url!r}: expected s3://bucket or s3://bucket/prefix")
    if not _BUCKET.match(parts.netloc):
        raise ConfigError(
            f"{variable}={url!r}: {parts.netloc!r} is not a bucket name (3 to 63 lower-case"
            " letters, digits, dots and hyphens)"
        )
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ConfigError(f"{variable}={url!r}: the key prefix has an empty, . or .. segment")
    return parts.netloc, prefix


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are sent (`services.router.webhooks`); docs/configuration.md lists each."""

    #: CAs trusted for receivers besides the system's store (TIERGEN_ROUTER_WEBHOOK_CA_FILE).
    ca_file: Path | None = None
    #: Lets URLs reach loopback, private and link-local addresses, for development and tests
    #: (TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS); cloud metadata addresses stay refused.
    allow_private_targets: bool = False
    timeout_seconds: float = 10.0
    retry_base_seconds: float = 5.0
    retry_max_delay_seconds: float = 3600.0
    retry_period_seconds: float = 86_400.0
    pause_after_failures: int = 20
    pause_after_seconds: float = 86_400.0
    max_in_flight: int = 64
    poll_seconds: float = 1.0
    retention_seconds: float = 7 * 86_400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebhookSettings:
        env = Env(environ)
        ca_file = _optional_path(env.optional_str("TIERGEN_ROUTER_WEBHOOK_CA_FILE"))
        if ca_file is not None and not ca_file.is_file():
            raise ConfigError(
                f"TIERGEN_ROUTER_WEBHOOK_CA_FILE={str(ca_file)!r}: no such file (PEM"
                " certificates of the CAs that sign receivers' certificates)"
            )
        day = 86_400.0
        return cls(
            ca_file=ca_file,
            allow_private_targets=env.flag("TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS", False),
            timeout_seconds=env.number(
                "TIERGEN_ROUTER_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=60.0
            ),
            retry_base_seconds=env.number(
                "TIERGEN_ROUTER_WEBHOOK_RETRY_BASE_SECONDS", 5.0, minimum=0.01, maximum=3600.0
            ),
            retry_max_delay_seconds=env.number(
                "TIERGEN_ROUTER_WEBHOOK_RETRY_MAX_DELAY_SECONDS", 3600.0, minimum=0.01, maximum=day
            ),
            retry_period_seconds=env.number(
                "TIERGEN_ROUTER_WEBHOOK_RETRY_PERIOD_SECONDS", day, minimum=1.0, maximum=30 * day
            ),
            pause_after_failures=env.integer(
                "TIERGEN_ROUTER_WEBHOOK_PAUSE_AFTER_FAILURES", 20, minimum=1, maximum=100_000
            ),
            pause_after_seconds=env.number(
                "TIERGEN_ROUTER_WEBHOOK_PAUSE_AFTER_SECONDS", day, minimum=0.0, maximum=30 * day
            ),
            max_in_flight=env.integer(
                "TIERGEN_ROUTER_WEBHOOK_MAX_IN_FLIGHT", 64, minimum=1, maximum=1024
            ),
            poll_seconds=env.number(
                "TIERGEN_ROUTER_WEBHOOK_POLL_SECONDS", 1.0, minimum=0.01, maximum=60.0
            ),
            retention_seconds=env.number(
                "TIERGEN_ROUTER_WEBHOOK_RETENTION_SECONDS", 7 * day, minimum=60.0, maximum=365 * day
            ),
        )


@dataclass(frozen=True)
class RouterSettings:
    """Where the router's dependencies are and how it runs its work."""

    server: ServerSettings
    ledger_addr: str
    generator_addr: str
    upscaler_addr: str
    #: The job store: `sqlite:///path` (one router) or `postgresql://...` (replicas), from
    #: TIERGEN_ROUTER_DSN or the file TIERGEN_ROUTER_DSN_FILE names; it may hold a password.
    jobs_dsn: str = field(repr=False)
    #: The local asset directory, used unless `assets_s3` is set.
    assets_dir: Path
    assets_s3: S3AssetSettings | None = None
    #: Most PostgreSQL connections one router opens.
    db_pool_size: int = 10
    #: How long a job store call waits for a PostgreSQL connection or row lock.
    db_timeout_seconds: float = 5.0
    prices_file: Path | None = None
    policy_file: Path | None = None
    hold_ttl_seconds: int = 900
    #: How long a batch stays its router's without a renewal (see `OperationLimits`).
    lease_seconds: float = 30.0
    #: How often a router looks for batches whose router is gone.
    claim_interval_seconds: float = 10.0
    parallel_jobs: int = 4
    max_upscale_side: int = 8192
    call_timeout_seconds: float = 300.0
    #: Bound of each call to the ledger (a caller's own deadline bounds it further).
    ledger_timeout_seconds: float = 10.0
    max_image_bytes: int = 256 * 1024 * 1024
    reload_interval_seconds: float = 5.0
    #: How often the generator's tier catalogue is read again (ListTiers).
    catalogue_interval_seconds: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 10.0
    #: Whether callers must present a credential (TIERGEN_AUTH=on, the default). Off only for a
    #: mesh that authenticates for the router, and logged loudly at start.
    auth: bool = True
    #: How long a router trusts what it read of an API key before reading it again
    #: (TIERGEN_ROUTER_KEY_CACHE_SECONDS, default 2 s; 0 reads the store on every call). This is
    #: the revocation bound: a key revoked, or rotated out at the end of its grace, by any
    #: router or by `tiergen keys` is refused by every replica within this many seconds plus
    #: the time of one store read. A key already seen costs no store read within it.
    key_cache_seconds: float = 2.0
    #: The OIDC issuers file (TIERGEN_ROUTER_OIDC_FILE, TOML), read by
    #: `services.router.access.oidc`; None accepts API keys only.
    oidc_file: Path | None = None
    #: The quota file (TIERGEN_ROUTER_QUOTAS_FILE, TOML), read by `services.router.quotas`
    #: and reloaded on change; None limits nothing.
    quotas_file: Path | None = None
    #: Refused calls per peer host and minute answered at once
    #: (TIERGEN_ROUTER_FREE_REFUSALS); each further one waits twice as long as the last, from
    #: 0.1 s up to TIERGEN_ROUTER_MAX_REFUSAL_DELAY_SECONDS (0 answers every refusal at once).
    #: Only refusals wait: a caller with a valid credential behind the same proxy never does.
    free_refusals: int = 5
    max_refusal_delay_seconds: float = 5.0
    #: How the router's channels to the ledger, generator and upscaler are secured: TLS
    #: trusting TIERGEN_CA_FILE, presenting the router's own certificate
    #: (TIERGEN_TLS_CERT_FILE/KEY) as its identity; plaintext with TIERGEN_INSECURE=true.
    downstream: ChannelSecurity = field(default_factory=ChannelSecurity)
    #: How webhooks are sent: TIERGEN_ROUTER_WEBHOOK_*.
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    @property
    def jobs_sqlite_path(self) -> Path | None:
        """The SQLite file `jobs_dsn` names, or None when it names a PostgreSQL database."""
        if not self.jobs_dsn.startswith(_SQLITE_PREFIX):
            return None
        return Path(self.jobs_dsn.removeprefix(_SQLITE_PREFIX)).expanduser()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RouterSettings:
        env = Env(environ)
        prices = env.optional_str("TIERGEN_ROUTER_PRICES_FILE")
        policy = env.optional_str("TIERGEN_ROUTER_POLICY_FILE")
        db_timeout_seconds = env.number(
            "TIERGEN_ROUTER_DB_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=300.0
        )
        lease_seconds = env.number(
            "TIERGEN_ROUTER_LEASE_SECONDS", 30.0, minimum=1.0, maximum=3600.0
        )
        # A renewal is due every third of a lease and may wait this long for the database;
        # past two thirds, another router could claim batches that are still running.
        if lease_seconds < 2 * db_timeout_seconds:
            raise ConfigError(
                f"TIERGEN_ROUTER_LEASE_SECONDS={lease_seconds}: must be at least twice"
                f" TIERGEN_ROUTER_DB_TIMEOUT_SECONDS ({db_timeout_seconds}), so that a lease"
                " renewal waiting for the database still lands before the lease runs out"
            )
        return cls(
            server=ServerSettings.from_env("router", environ),
            ledger_addr=env.address("LEDGER_ADDR", "127.0.0.1:50053"),
            auth=env.flag("TIERGEN_AUTH", True),
            key_cache_seconds=env.number(
                "TIERGEN_ROUTER_KEY_CACHE_SECONDS", 2.0, minimum=0.0, maximum=300.0
            ),
            oidc_file=_optional_path(env.optional_str("TIERGEN_ROUTER_OIDC_FILE")),
            quotas_file=_optional_path(env.optional_str("TIERGEN_ROUTER_QUOTAS_FILE")),
            free_refusals=env.integer("TIERGEN_ROUTER_FREE_REFUSALS", 5, minimum=0, maximum=10_000),
            max_refusal_delay_seconds=env.number(
                "TIERGEN_ROUTER_MAX_REFUSAL_DELAY_SECONDS", 5.0, minimum=0.0, maximum=60.0
            ),
            generator_addr=env.address("GENERATOR_ADDR", "127.0.0.1:50052"),
            upscaler_addr=env.address("UPSCALER_ADDR", "127.0.0.1:50054"),
            jobs_dsn=_job_store_dsn(
                "TIERGEN_ROUTER_DSN",
                env.secret("TIERGEN_ROUTER_DSN") or "sqlite:///tiergen-data/router.db",
            ),
            downstream=ChannelSecurity.from_env(environ),
            webhooks=WebhookSettings.from_env(environ),
            assets_dir=env.path("TIERGEN_ROUTER_ASSETS_DIR", Path("tiergen-data/assets")),
            assets_s3=S3AssetSettings.from_env(environ),
            db_pool_size=env.integer("TIERGEN_ROUTER_DB_POOL_SIZE", 10, minimum=1, maximum=100),
            db_timeout_seconds=db_timeout_seconds,
            prices_file=Path(prices) if prices else None,
            policy_file=Path(policy) if policy else None,
            hold_ttl_seconds=env.integer(
                "TIERGEN_ROUTER_HOLD_TTL_SECONDS", 900, minimum=30, maximum=86_400
            ),
            lease_seconds=lease_seconds,
            claim_interval_seconds=env.number(
                "TIERGEN_ROUTER_CLAIM_INTERVAL_SECONDS", 10.0, minimum=0.1, maximum=3600.0
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
            catalogue_interval_seconds=env.number(
                "TIERGEN_ROUTER_CATALOGUE_INTERVAL_SECONDS", 30.0, minimum=0.01, maximum=3600.0
            ),
            call_timeout_seconds=env.number(
                "TIERGEN_ROUTER_CALL_TIMEOUT_SECONDS", 300.0, minimum=1.0, maximum=3600.0
            ),
            ledger_timeout_seconds=env.number(
                "TIERGEN_ROUTER_LEDGER_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=300.0
            ),
        )
