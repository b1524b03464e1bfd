"""Assembles the router: stores, downstream channels, operations and its gRPC service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.router.access.admin import ApiKeyAdmin
from services.router.access.authenticator import RouterAuthenticator
from services.router.access.gate import AccessGate, Throttle
from services.router.access.keys import KeyStore
from services.router.access.oidc import OidcVerifier, load_oidc
from services.router.assets.s3 import S3AssetStore
from services.router.assets.store import AssetStore, LocalAssetStore
from services.router.downstream.breaker import (
    BreakingLedger,
    BreakingRenderer,
    BreakingUpscaler,
    CircuitBreaker,
)
from services.router.downstream.grpc_clients import (
    GENERATOR_SERVICE,
    LEDGER_SERVICE,
    UPSCALER_SERVICE,
    GrpcLedger,
    GrpcRenderer,
    GrpcUpscaler,
)
from services.router.jobs.sql_store import SqlJobStore
from services.router.operations.limits import OperationLimits
from services.router.operations.orchestrator import Orchestrator
from services.router.quotas import QuotaLimiter, SqlQuotaStore, load_quotas, reload_on_change
from services.router.routing.admission import capacities
from services.router.routing.catalogue import TierCatalogue
from services.router.routing.catalogue_watch import CatalogueWatcher, log_notes
from services.router.routing.policy import RoutingPolicy
from services.router.routing.pricing import PriceTable
from services.router.routing.toml_source import RouterConfigError
from services.router.servicer import RouterServicer
from services.router.settings import RouterSettings
from services.router.webhooks.admin import WebhookAdmin
from services.router.webhooks.store import WebhookStore
from services.router.webhooks.targets import client_ssl_context
from services.router.webhooks.worker import DispatcherProcess, WorkerConfig
from services.runtime.channels import open_channel
from services.runtime.client_metrics import client_metrics_interceptors
from services.runtime.dependencies import Dependency, watch_dependencies
from services.runtime.errors import NotFound
from services.runtime.server import Server, ServiceRegistration, check_transport
from services.runtime.server import create_server as create_grpc_server
from services.runtime.settings import ConfigError

__all__ = [
    "SERVICE_NAME",
    "create_server",
    "open_asset_store",
    "open_authenticator",
    "open_job_store",
    "open_key_store",
]

_log = structlog.get_logger("tiergen.router")

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def load_policy(settings: RouterSettings) -> RoutingPolicy:
    """The price table and routing policy from their files (embedded defaults when unset),
    without the generator's tiers: a bad file is a configuration error before any is known."""
    try:
        prices = PriceTable.load(settings.prices_file)
        return RoutingPolicy.load(settings.policy_file, prices=prices)
    except (RouterConfigError, OSError) as error:
        raise ConfigError(str(error)) from None


async def open_job_store(settings: RouterSettings) -> SqlJobStore:
    """SQLite for a `sqlite:///` DSN (creating the file's directory, upgrading its schema),
    PostgreSQL otherwise (refusing a schema `tiergen migrate` has not brought up to date)."""
    path = settings.jobs_sqlite_path
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return await SqlJobStore.open_sqlite(path)
    return await SqlJobStore.open_postgres(
        settings.jobs_dsn,
        pool_size=settings.db_pool_size,
        timeout_seconds=settings.db_timeout_seconds,
    )


async def open_asset_store(settings: RouterSettings) -> AssetStore:
    """The S3 bucket of TIERGEN_ROUTER_ASSETS_URL if set, the local directory otherwise."""
    s3 = settings.assets_s3
    if s3 is None:
        return LocalAssetStore(settings.assets_dir)
    try:
        return await S3AssetStore.open(
            s3.bucket,
            s3.prefix,
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
            session_token=s3.session_token,
        )
    except NotFound as error:
        raise ConfigError(f"TIERGEN_ROUTER_ASSETS_URL: {error.message}") from None


async def open_key_store(settings: RouterSettings) -> KeyStore:
    """The API keys, in the router's database (TIERGEN_ROUTER_DSN), opened as the job store is.
    Keys are read once per cache bound and written rarely: two connections are plenty."""
    return await KeyStore.open(
        settings.jobs_dsn,
        pool_size=min(2, settings.db_pool_size),
        timeout_seconds=settings.db_timeout_seconds,
    )


def open_webhook_dispatcher(settings: RouterSettings, jobs: SqlJobStore) -> DispatcherProcess:
    """The dispatcher of the webhooks whose outbox is in `jobs`' database, in a process of its
    own started when there is work (`webhooks.worker`), told by the job store of every event it
    flags. ConfigError for a CA file that holds no certificate."""
    webhooks = settings.webhooks
    try:
        client_ssl_context(webhooks.ca_file)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"TIERGEN_ROUTER_WEBHOOK_CA_FILE={str(webhooks.ca_file)!r}: not PEM certificates"
            f" ({error})"
        ) from None
    dispatcher = DispatcherProcess(
        WorkerConfig(settings.jobs_dsn, webhooks, settings.db_timeout_seconds),
        WebhookStore(jobs.database),
    )
    jobs.on_events(dispatcher.wake)
    return dispatcher


def load_oidc_verifier(settings: RouterSettings) -> OidcVerifier | None:
    """The OIDC issuers of TIERGEN_ROUTER_OIDC_FILE, or None when it is unset (keys only)."""
    if settings.oidc_file is None:
        return None
    return load_oidc(settings.oidc_file)


def open_authenticator(
    settings: RouterSettings, keys: KeyStore, oidc: OidcVerifier | None
) -> RouterAuthenticator | None:
    """Who the router's callers are: API keys from `keys`, OIDC tokens through `oidc`; None, with
    a warning, when TIERGEN_AUTH=off."""
    if not settings.auth:
        _log.warning(
            "authentication is OFF: every caller acts as tenant default with every scope",
            setting="TIERGEN_AUTH=off",
        )
        return None
    return RouterAuthenticator(keys, oidc=oidc, cache_seconds=settings.key_cache_seconds)


async def create_server(settings: RouterSettings) -> tuple[Server, int]:
    """The router's server, with its job store recovered and its channels open; not started."""
    policy = load_policy(settings)
    # A bad quota file is a configuration error before any store is opened, as a bad policy.
    quota_table = load_quotas(settings.quotas_file)
    # A bad certificate file stops the start before any store is opened.
    check_transport(settings.server)
    timeout = settings.call_timeout_seconds
    # Mutual TLS to every backend: the router's certificate is its identity there.
    security = settings.downstream
    security.require_ca("the router checks the ledger, generator and upscaler against it")
    ledger_channel = open_channel(
        settings.ledger_addr,
        security=security,
        services=[LEDGER_SERVICE],
        default_timeout=settings.ledger_timeout_seconds,
        interceptors=client_metrics_interceptors(),
    )
    generator_channel = open_channel(
        settings.generator_addr,
        security=security,
        services=[GENERATOR_SERVICE],
        default_timeout=timeout,
        interceptors=client_metrics_interceptors(),
    )
    upscaler_channel = open_channel(
        settings.upscaler_addr,
        security=security,
        services=[UPSCALER_SERVICE],
        default_timeout=timeout,
        interceptors=client_metrics_interceptors(),
    )
    # A bad issuers file fails the start before any store is opened.
    oidc = load_oidc_verifier(settings) if settings.auth else None
    # Assets first: a job store left open by a failure would keep its pool's tasks running.
    assets = await open_asset_store(settings)
    jobs = await open_job_store(settings)
    try:
        keys = await open_key_store(settings)
    except BaseException:
        await jobs.close()
        raise
    authenticator = open_authenticator(settings, keys, oidc)

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(
            name,
            threshold=settings.breaker_threshold,
            cooldown_seconds=settings.breaker_cooldown_seconds,
        )

    ledger = BreakingLedger(
        GrpcLedger(ledger_channel, timeout=settings.ledger_timeout_seconds), breaker("ledger")
    )

    generator = GrpcRenderer(generator_channel, timeout, settings.max_image_bytes)
    webhooks = WebhookStore(jobs.database)
    try:
        dispatcher = open_webhook_dispatcher(settings, jobs)
    except BaseException:
        await keys.close()
        await jobs.close()
        raise

    async def webhook_exists(tenant: str, webhook_id: str) -> bool:
        try:
            await webhooks.get(tenant, webhook_id)
        except NotFound:
            return False
        return True

    # The quotas' state is in the job database: shared, so exact, across replicas on PostgreSQL.
    quotas = QuotaLimiter(quota_table, SqlQuotaStore(jobs.database))
    router = Orchestrator(
        jobs=jobs,
        assets=assets,
        ledger=ledger,
        renderer=BreakingRenderer(generator, breaker),
        upscaler=BreakingUpscaler(
            GrpcUpscaler(upscaler_channel, timeout, settings.max_image_bytes), breaker("upscaler")
        ),
        policy=policy,
        limits=OperationLimits(
            hold_ttl_seconds=settings.hold_ttl_seconds,
            lease_seconds=settings.lease_seconds,
            claim_interval_seconds=settings.claim_interval_seconds,
            parallel_jobs=settings.parallel_jobs,
            max_upscale_side=settings.max_upscale_side,
        ),
        webhook_exists=webhook_exists,
        quotas=quotas,
    )
    # Before serving, take over what routers that are gone left unfinished: on SQLite every
    # earlier process, on a shared PostgreSQL store the replicas whose leases ran out (a
    # replica still within its lease is recovered by a later `watch_abandoned` round).
    await router.recover()
    servicer = RouterServicer(
        router,
        ledger,
        keys=ApiKeyAdmin(
            keys, on_change=authenticator.forget if authenticator is not None else None
        ),
        webhooks=WebhookAdmin(
            webhooks, allow_private_targets=settings.webhooks.allow_private_targets
        ),
    )

    async def close_channels() -> None:
        for channel in (ledger_channel, generator_channel, upscaler_channel):
            await channel.close()

    # The leases live until the batches have settled, after the drain: a background task
    # stops when the drain starts, and another replica would claim the batches still running.
    leases = asyncio.create_task(router.keep_leases(), name="router-leases")

    async def stop_leases() -> None:
        leases.cancel()
        await asyncio.gather(leases, return_exceptions=True)

    registration = ServiceRegistration(
        SERVICE_NAME,
        lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server),
    )
    # Hooks run last-added first: stop the batches (settling their holds), let the webhooks
    # under way finish, stop renewing the leases, then close.
    try:
        server, port = await create_grpc_server(
            settings.server,
            [registration],
            on_stop=[
                keys.close,
                jobs.close,
                assets.close,
                close_channels,
                stop_leases,
                dispatcher.stop,
                router.close,
            ],
            gate=AccessGate(
                authenticator,
                Throttle(free=settings.free_refusals, cap=settings.max_refusal_delay_seconds),
            ),
        )
    except BaseException:
        await stop_leases()
        await dispatcher.stop()
        raise
    # Events flagged and deliveries due, also those a router before this one left, are sent
    # from now on, by a process beside the router's, never in the batches' way.
    dispatcher.look()
    # Without the ledger no credit can be held, so no request can be served.
    ledger_dependency = Dependency("ledger", ledger_channel, LEDGER_SERVICE)
    server.add_background(lambda: watch_dependencies(server, [ledger_dependency]))
    # Without the generator's tiers nothing can be routed: not ready until it has told them.
    # Read once now, so that a router whose generator is up serves from its first moment.
    tiers = CatalogueWatcher(
        generator,
        lambda catalogue: adopt_catalogue(router, catalogue),
        ready=lambda serving: server.set_serving(serving, cause="catalogue"),
        interval=settings.catalogue_interval_seconds,
    )
    await tiers.refresh()
    server.add_background(tiers.watch)
    server.add_background(router.watch_abandoned)
    server.add_drain_hook(router.drain)
    server.add_background(lambda: reload_policy_on_change(router, settings))
    server.add_background(
        lambda: reload_on_change(quotas, settings.quotas_file, settings.reload_interval_seconds)
    )
    server.add_background(quotas.sweep_idle)
    return server, port


def adopt_catalogue(router: Orchestrator, catalogue: TierCatalogue) -> None:
    """Routes to the generator's tiers as `catalogue` describes them, and admits batches up to
    the capacity it reports: one ListTiers answer feeds both."""
    policy = router.policy.with_catalogue(catalogue)
    router.use_policy(policy)
    router.admission.configure(capacities(catalogue))
    log_notes(policy.notes)


def _modified(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


async def reload_policy_on_change(router: Orchestrator, settings: RouterSettings) -> None:
    """Reloads the price table and policy when their files change; a bad file keeps the old."""
    files = [f for f in (settings.prices_file, settings.policy_file) if f is not None]
    if not files:
        return
    seen = [_modified(f) for f in files]
    while True:
        await asyncio.sleep(settings.reload_interval_seconds)
        current = [_modified(f) for f in files]
        if current == seen:
            continue
        seen = current
        try:
            policy = load_policy(settings)
        except ConfigError as error:
            _log.error("policy reload failed; the previous policy stays", error=str(error))
            continue
        offered = router.policy.offered
        if offered is not None:
            policy = policy.with_catalogue(offered)
        router.use_policy(policy)
        _log.info("policy reloaded", files=[str(f) for f in files])
        log_notes(policy.notes)
