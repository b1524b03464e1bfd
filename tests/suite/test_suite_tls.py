"""The suite `tiergen up` starts is TLS on every port: who can talk to which service, the
operator's admin certificate, and certificates replaced while `tiergen load` runs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiergen.common.v1 import common_pb2
from tiergen.generator.v1 import generator_pb2, generator_pb2_grpc
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from tiergen.router.v1 import router_pb2, router_pb2_grpc
from tiergen.upscaler.v1 import upscaler_pb2_grpc

from services.cli.load import LoadPlan, run_load
from services.cli.pki import CertificateAuthority
from services.cli.suite import Suite
from services.runtime.credentials import bearer_interceptors
from services.runtime.settings import ChannelSecurity, PemFile
from services.runtime.tls import channel_credentials
from tests.rich_errors import details

pytestmark = pytest.mark.slow

SERVICES = ("router", "ledger", "generator", "upscaler")
_HEALTH_NAMES = {
    "router": "tiergen.router.v1.RouterService",
    "ledger": "tiergen.ledger.v1.LedgerService",
    "generator": "tiergen.generator.v1.GeneratorService",
    "upscaler": "tiergen.upscaler.v1.UpscalerService",
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    with Suite(tmp_path_factory.mktemp("tls") / "data") as running:
        yield running


def _ca(suite: Suite) -> CertificateAuthority:
    return CertificateAuthority.load(suite.pki.ca_file, suite.pki.directory / "ca.key")


def _as(suite: Suite, identity: str | None, directory: Path) -> ChannelSecurity:
    """TLS trusting the suite's CA, presenting a new certificate of it naming `identity` (None:
    presenting none)."""
    ca = PemFile(suite.pki.ca_file, "--ca-file")
    if identity is None:
        return ChannelSecurity(ca=ca)
    certificate, key = _ca(suite).issue(identity)
    directory.mkdir(parents=True, exist_ok=True)
    name = identity.rsplit("/", 1)[-1]
    (directory / f"{name}.crt").write_bytes(certificate)
    (directory / f"{name}.key").write_bytes(key)
    return ChannelSecurity(
        ca=ca,
        certificate=PemFile(directory / f"{name}.crt", "--cert-file"),
        key=PemFile(directory / f"{name}.key", "--key-file"),
    )


def _channel(address: str, security: ChannelSecurity | None, **kwargs: object) -> grpc.aio.Channel:
    if security is None:
        return grpc.aio.insecure_channel(address, **kwargs)  # type: ignore[arg-type]
    return grpc.aio.secure_channel(address, channel_credentials(security), **kwargs)  # type: ignore[arg-type]


async def _health(address: str, security: ChannelSecurity | None, service: str) -> int:
    async with _channel(address, security) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=3
        )
    return reply.status


async def test_plaintext_and_other_ca_clients_reach_no_service(suite: Suite, tmp_path) -> None:
    other = CertificateAuthority.create("not the suite's CA")
    (tmp_path / "other.crt").write_bytes(other.certificate_pem)
    other_ca = ChannelSecurity(ca=PemFile(tmp_path / "other.crt", "--ca-file"))
    for name in SERVICES:
        for security in (None, other_ca):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _health(suite.addresses[name], security, "")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (name, security)


async def test_the_ca_alone_reaches_the_router_but_no_backend(suite: Suite, tmp_path) -> None:
    ca_only = _as(suite, None, tmp_path)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert await _health(suite.router, ca_only, _HEALTH_NAMES["router"]) == serving
    async with _channel(
        suite.router, ca_only, interceptors=bearer_interceptors(suite.api_key)
    ) as channel:
        opened = await router_pb2_grpc.RouterServiceStub(channel).OpenAccount(
            router_pb2.OpenAccountRequest(account_id="tls-ca-only", idempotency_key="open")
        )
    assert opened.balance.available == 400
    for name in ("ledger", "generator", "upscaler"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _health(suite.addresses[name], ca_only, "")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name


async def test_each_backend_refuses_an_identity_it_does_not_serve(suite: Suite, tmp_path) -> None:
    intruder = _as(suite, "spiffe://tiergen/intruder", tmp_path)
    admin = suite.client_security
    calls = {
        "ledger": lambda channel: ledger_pb2_grpc.LedgerServiceStub(channel).Grant(
            ledger_pb2.GrantRequest(
                tenant="dev",
                account_id="tls-victim",
                amount=10**6,
                kind=ledger_pb2.GRANT_KIND_PURCHASE,
                reason="mint",
                idempotency_key="mint",
            ),
            timeout=5,
        ),
        "generator": lambda channel: generator_pb2_grpc.GeneratorServiceStub(channel).ListTiers(
            generator_pb2.ListTiersRequest(), timeout=5
        ),
        "upscaler": lambda channel: _first(
            upscaler_pb2_grpc.UpscalerServiceStub(channel).Upscale(iter(()), timeout=5)
        ),
    }
    refusals = [(name, intruder) for name in calls] + [("generator", admin), ("upscaler", admin)]
    for name, security in refusals:
        async with _channel(suite.addresses[name], security) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await calls[name](channel)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert details(refused.value)[error_details_pb2.ErrorInfo].reason == "CALLER_NOT_ALLOWED"
        # Health stays open to any certificate of the CA.
        assert await _health(suite.addresses[name], security, "") == 1
    audits = _audits(suite, "ledger")
    assert [(a["identity"], a["method"]) for a in audits] == [
        ("spiffe://tiergen/intruder", "/tiergen.ledger.v1.LedgerService/Grant")
    ]
    assert audits[0]["peer"].startswith("ipv4:127.0.0.1:") and audits[0]["trace_id"]
    # The router's own certificate is served.
    router = suite.pki.client_security("router")
    async with _channel(suite.addresses["generator"], router) as channel:
        tiers = await calls["generator"](channel)
    assert [tier.name for tier in tiers.tiers][:1] == ["nano"]


async def _first(call: object) -> object:
    async for message in call:  # type: ignore[attr-defined]
        return message
    return None


def _audits(suite: Suite, service: str) -> list[dict[str, str]]:
    lines = (suite.data_dir / "logs" / f"{service}.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r.get("action") == "call.refused"]


def _tiergen(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGEN_")}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_operator_grants_with_the_admin_certificate(suite: Suite) -> None:
    where = ("--data-dir", str(suite.data_dir))
    account = ("--tenant", "dev", "--account", "tls-granted")
    opened = _tiergen("open", "--router", suite.router, "--account", "tls-granted", *where)
    assert opened.returncode == 0, opened.stderr

    granted = _tiergen(
        "ledger", "grant", *where, *account, "--amount", "25", "--reason", "goodwill", "--json"
    )
    assert granted.returncode == 0, granted.stderr
    assert int(json.loads(granted.stdout)["balance"]["available"]) == 425
    balance = _tiergen("ledger", "balance", *where, *account)
    assert balance.returncode == 0, balance.stderr
    assert "dev/tls-granted: 425 available" in balance.stdout
    entries = _tiergen("ledger", "entries", *where, *account)
    assert "adjustment" in entries.stdout and "goodwill" in entries.stdout

    # Plaintext, asked for, reaches nothing, and says so.
    plaintext = _tiergen("ledger", "balance", *where, *account, "--insecure")
    assert plaintext.returncode == 1
    assert plaintext.stderr.startswith("tiergen: PLAINTEXT: calling without TLS")
    assert "cannot reach the ledger at " in plaintext.stderr
    assert "drop --insecure" in plaintext.stderr


def _served_serial(address: str, suite: Suite) -> int:
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(suite.pki.ca_file))
    context.load_cert_chain(suite.pki.certificate_file("router"), suite.pki.key_file("router"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_certificates_replaced_under_load_fail_no_call(tmp_path: Path) -> None:
    with Suite(tmp_path / "data") as suite:
        before = {name: _served_serial(suite.addresses[name], suite) for name in SERVICES}
        plan = LoadPlan(
            router=suite.router,
            spec=router_pb2.GenerationSpec(
                prompt="a lighthouse at dusk, rotation",
                tier="nano",
                stage=common_pb2.STAGE_EXPLORE,
                resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
            ),
            token=suite.api_key,
            security=suite.client_security,
            clients=4,
            duration_seconds=8.0,
            max_requests=100_000,
            mix={"generate": 3, "quote": 1},
        )
        load = asyncio.create_task(run_load(plan))
        await asyncio.sleep(3.0)
        ca = _ca(suite)
        renewed: dict[str, int] = {}
        for name in SERVICES:
            certificate, key = ca.issue(f"spiffe://tiergen/{name}")
            staged = suite.pki.directory / f".{name}.staged"
            staged.mkdir()
            (staged / "crt").write_bytes(certificate)
            (staged / "key").write_bytes(key)
            os.replace(staged / "key", suite.pki.key_file(name))
            os.replace(staged / "crt", suite.pki.certificate_file(name))
            renewed[name] = x509.load_pem_x509_certificate(certificate).serial_number
        await asyncio.sleep(1.5)  # the router's channels look at their files once a second
        after = {
            name: await asyncio.to_thread(_served_serial, suite.addresses[name], suite)
            for name in SERVICES
        }
        report = await load
        assert suite.dead() == []
    assert report["errors"] == 0, report["operations"]
    assert report["requests"] > 20
    assert after == renewed
    assert all(after[name] != before[name] for name in SERVICES)
