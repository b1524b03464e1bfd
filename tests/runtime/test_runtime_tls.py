"""TLS on the runtime's servers and channels: plaintext only when asked for, bad files refused at
start naming their setting, certificates that rotate under load without a failed call, client
channels that follow their files, and a plaintext health port that says what the main one says."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.channels import open_channel
from services.runtime.server import Server, ServiceRegistration, create_server
from services.runtime.settings import (
    ChannelSecurity,
    ConfigError,
    PemFile,
    ServerSettings,
    ServerTls,
)
from services.runtime.tls import CertificateReloader, load_key_pair
from tests.start_failures import refused_start
from tests.tls import TestPki, session_pki

SERVICE = "tiergen.test.TlsService"


def _registration() -> ServiceRegistration:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def peer_certificate(request: bytes, context: Any) -> bytes:
        """The client certificate this call came with, PEM (empty without one)."""
        return b"".join(context.auth_context().get("x509_pem_cert", []))

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "PeerCertificate": grpc.unary_unary_rpc_method_handler(peer_certificate),
        },
    )
    return ServiceRegistration(SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))


async def _echo(channel: grpc.aio.Channel, payload: bytes = b"hello", timeout: float = 5) -> bytes:  # noqa: ASYNC109
    reply: bytes = await channel.unary_unary(f"/{SERVICE}/Echo")(payload, timeout=timeout)
    return reply


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    started: list[Server] = []

    async def start(settings: ServerSettings) -> tuple[Server, str]:
        server, port = await create_server(settings, [_registration()])
        await server.start()
        started.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in started:
        await server.stop(0)


def _copy_identity(pki: TestPki, name: str, directory: Path) -> ServerTls:
    """The certificate and key of `name` copied into `directory`, as files a test may replace."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki.local.certificate_file(name), directory / "tls.crt")
    shutil.copy(pki.local.key_file(name), directory / "tls.key")
    shutil.copy(pki.ca_file, directory / "ca.crt")
    return ServerTls(
        PemFile(directory / "tls.crt", "TIERGEN_TLS_CERT_FILE"),
        PemFile(directory / "tls.key", "TIERGEN_TLS_KEY_FILE"),
        PemFile(directory / "ca.crt", "TIERGEN_TLS_CLIENT_CA_FILE"),
    )


def _replace_files(certificate: bytes, key: bytes, directory: Path) -> None:
    """Writes a new pair as cert-manager's volume does: both at once, by renaming."""
    staged = directory / ".staged"
    staged.mkdir(exist_ok=True)
    (staged / "tls.crt").write_bytes(certificate)
    (staged / "tls.key").write_bytes(key)
    os.replace(staged / "tls.key", directory / "tls.key")
    os.replace(staged / "tls.crt", directory / "tls.crt")


def _served_certificate(address: str, pki: TestPki, name: str = "router") -> x509.Certificate:
    """The certificate a TLS client sees on a new connection to `address` (with a client
    certificate of `name`, for servers that require one)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(pki.local.certificate_file(name), pki.local.key_file(name))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# Plaintext only when asked for.


async def test_a_server_with_neither_tls_nor_plaintext_asked_for_refuses_to_start() -> None:
    with pytest.raises(ConfigError) as refused:
        await create_server(ServerSettings(service="test", port=0), [_registration()])
    message = str(refused.value)
    assert "TIERGEN_TLS_CERT_FILE" in message and "TIERGEN_TLS_KEY_FILE" in message
    assert "TIERGEN_INSECURE=true" in message
    assert "\n" not in message


async def test_plaintext_asked_for_is_served_and_said_loudly(serve) -> None:
    with structlog.testing.capture_logs() as logs:
        _, address = await serve(ServerSettings(service="test", port=0, insecure=True))
    async with grpc.aio.insecure_channel(address) as channel:
        assert await _echo(channel) == b"hello"
    (warning,) = [line for line in logs if line["event"].startswith("PLAINTEXT")]
    assert warning["log_level"] == "warning"
    assert warning["setting"] == "TIERGEN_INSECURE=true"


def test_plaintext_and_tls_together_are_refused() -> None:
    pki = session_pki()
    with pytest.raises(ConfigError, match="TIERGEN_INSECURE=true and TIERGEN_TLS_CERT_FILE"):
        ServerSettings.from_env("test", {**pki.env("ledger"), "TIERGEN_INSECURE": "true"})
    with pytest.raises(ConfigError, match="TIERGEN_INSECURE=true and TIERGEN_CA_FILE"):
        ChannelSecurity.from_env({"TIERGEN_INSECURE": "true", "TIERGEN_CA_FILE": "/ca.crt"})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TIERGEN_TLS_CERT_FILE": "/c"}, "TIERGEN_TLS_CERT_FILE is set but TIERGEN_TLS_KEY_FILE"),
        ({"TIERGEN_TLS_KEY_FILE": "/k"}, "TIERGEN_TLS_KEY_FILE is set but TIERGEN_TLS_CERT_FILE"),
        ({"TIERGEN_TLS_CLIENT_CA_FILE": "/ca"}, "TIERGEN_TLS_CLIENT_CA_FILE is set but"),
        ({"TIERGEN_HEALTH_PORT": "http"}, "TIERGEN_HEALTH_PORT='http'"),
        ({"TIERGEN_ALLOWED_CALLERS": "a b"}, "TIERGEN_ALLOWED_CALLERS: 'a b' is neither"),
        ({"TIERGEN_ALLOWED_CALLERS": ","}, "TIERGEN_ALLOWED_CALLERS: expected one identity"),
    ],
)
def test_transport_settings_name_the_variable_at_fault(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerSettings.from_env("test", environ)


def test_transport_settings_are_read() -> None:
    pki = session_pki()
    settings = ServerSettings.from_env(
        "ledger",
        {
            **pki.env("ledger"),
            "TIERGEN_HEALTH_PORT": "50060",
            "TIERGEN_ALLOWED_CALLERS": "spiffe://tiergen/router, router.tiergen.svc",
        },
    )
    assert settings.tls is not None and settings.tls.client_ca is not None
    assert settings.tls.certificate.path == pki.local.certificate_file("ledger")
    assert settings.health_port == 50060
    assert settings.allowed_callers == {"spiffe://tiergen/router", "router.tiergen.svc"}
    assert ServerSettings.from_env("ledger", {}).allowed_callers == {"spiffe://tiergen/router"}
    assert ServerSettings.from_env("ledger", {}).health_port is None
    security = ChannelSecurity.from_env(pki.env("router"))
    assert security.ca is not None and security.certificate is not None
    assert ChannelSecurity.from_env({"TIERGEN_INSECURE": "yes"}).insecure


# Who can connect.


async def test_only_a_client_trusting_the_ca_reaches_a_tls_server(serve) -> None:
    pki = session_pki()
    _, address = await serve(pki.server("router"))
    async with pki.channel(address, None) as channel:
        assert await _echo(channel) == b"hello"
    for refused in (
        grpc.aio.insecure_channel(address),
        grpc.aio.secure_channel(
            address, grpc.ssl_channel_credentials(pki.other_ca_file.read_bytes())
        ),
    ):
        async with refused as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _echo(channel, timeout=3)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_of_the_ca(serve) -> None:
    pki = session_pki()
    _, address = await serve(pki.server("ledger"))
    async with pki.channel(address, "router") as channel:
        assert await _echo(channel) == b"hello"
    foreign = pki.security_of(*pki.issue("spiffe://tiergen/router", other_ca=True))
    for security in (pki.security(None), foreign):
        async with open_channel(address, security=security, services=[SERVICE]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _echo(channel, timeout=3)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


# Bad files stop the start.


@pytest.mark.parametrize(
    ("case", "variable", "problem"),
    [
        ("missing certificate", "TIERGEN_TLS_CERT_FILE", "cannot read the file"),
        ("certificate not PEM", "TIERGEN_TLS_CERT_FILE", "not a PEM certificate"),
        ("empty key", "TIERGEN_TLS_KEY_FILE", "the file is empty"),
        ("key not PEM", "TIERGEN_TLS_KEY_FILE", "not a PEM private key"),
        ("key of another certificate", "TIERGEN_TLS_KEY_FILE", "does not belong to the certif"),
        ("expired certificate", "TIERGEN_TLS_CERT_FILE", "the certificate expired at"),
        ("client CA not PEM", "TIERGEN_TLS_CLIENT_CA_FILE", "not a PEM CA certificate"),
    ],
)
async def test_a_bad_file_stops_the_start_naming_its_variable(
    tmp_path: Path, case: str, variable: str, problem: str
) -> None:
    pki = session_pki()
    tls = _copy_identity(pki, "ledger", tmp_path)
    key = pki.local.key_file("ledger").read_bytes()
    if case == "missing certificate":
        tls.certificate.path.unlink()
    elif case == "certificate not PEM":
        tls.certificate.path.write_bytes(b"this is not a certificate")
    elif case == "empty key":
        tls.key.path.write_bytes(b"")
    elif case == "key not PEM":
        tls.key.path.write_bytes(
            b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"
        )
    elif case == "key of another certificate":
        tls.key.path.write_bytes(pki.local.key_file("router").read_bytes())
    elif case == "expired certificate":
        old, old_key = pki.ca.issue(
            "spiffe://tiergen/ledger", days=1, not_before=datetime.now(UTC) - timedelta(days=3)
        )
        tls.certificate.path.write_bytes(old)
        tls.key.path.write_bytes(old_key)
    else:
        assert tls.client_ca is not None
        tls.client_ca.path.write_bytes(key)
    settings = ServerSettings(service="ledger", port=0, tls=tls)

    with pytest.raises(ConfigError) as refused:
        await create_server(settings, [_registration()])

    message = str(refused.value)
    assert message.startswith(f"{variable}={tmp_path}/"), message
    assert problem in message
    assert "\n" not in message
    # No byte of a key, whatever the file held.
    for secret in (key, pki.local.key_file("router").read_bytes()):
        body = b"".join(secret.splitlines()[1:-1]).decode()
        assert body[:16] not in message


def test_a_mismatched_key_stops_the_service_process_with_one_line(tmp_path: Path) -> None:
    pki = session_pki()
    key = pki.local.key_file("router").read_bytes()
    environ = {
        **os.environ,
        **pki.env("ledger"),
        "TIERGEN_TLS_KEY_FILE": str(pki.local.key_file("router")),
        "TIERGEN_PORT": "0",
        "TIERGEN_LEDGER_DSN": f"sqlite:///{tmp_path / 'ledger.db'}",
    }
    line, output = refused_start("services.ledger", environ)
    assert line["setting"] == "TIERGEN_TLS_KEY_FILE", line
    assert line["error"].startswith("TIERGEN_TLS_KEY_FILE="), line
    assert "does not belong to the certificate of TIERGEN_TLS_CERT_FILE=" in line["error"]
    body = b"".join(key.splitlines()[1:-1])
    assert body[:16].decode() not in output


# Rotation.


async def test_certificates_rotate_under_load_without_a_failed_call(serve, tmp_path) -> None:
    pki = session_pki()
    tls = _copy_identity(pki, "ledger", tmp_path / "mounted")
    server, address = await serve(replace(pki.server("ledger"), tls=tls))
    first = _served_certificate(address, pki)
    stop = asyncio.Event()
    failures: list[BaseException] = []
    calls = 0

    async def load(new_channels: bool) -> None:
        # One client on a connection it keeps, one opening a new connection for every call.
        nonlocal calls
        kept = pki.channel(address)
        try:
            while not stop.is_set():
                channel = pki.channel(address) if new_channels else kept
                try:
                    assert await _echo(channel) == b"hello"
                    calls += 1
                except BaseException as error:  # every failure counts, whatever it is
                    failures.append(error)
                finally:
                    if new_channels:
                        await channel.close()
        finally:
            await kept.close()

    clients = [asyncio.create_task(load(new_channels=n % 2 == 1)) for n in range(6)]
    await asyncio.sleep(0.5)
    renewed, renewed_key = pki.ca.issue("spiffe://tiergen/ledger")
    _replace_files(renewed, renewed_key, tls.certificate.path.parent)
    await asyncio.sleep(1.0)
    served = await asyncio.to_thread(_served_certificate, address, pki)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)

    assert failures == []
    assert calls > 50
    expected = x509.load_pem_x509_certificate(renewed)
    assert served.serial_number == expected.serial_number != first.serial_number
    assert server.certificates is not None
    assert server.certificates.certificate.serial_number == expected.serial_number


async def test_files_caught_half_written_keep_the_current_certificate(serve, tmp_path) -> None:
    pki = session_pki()
    tls = _copy_identity(pki, "ledger", tmp_path / "mounted")
    _, address = await serve(replace(pki.server("ledger"), tls=tls))
    first = _served_certificate(address, pki)
    renewed, renewed_key = pki.ca.issue("spiffe://tiergen/ledger")

    with structlog.testing.capture_logs() as logs:
        # A copy that is not atomic: the new certificate beside the old key, for a moment.
        tls.certificate.path.write_bytes(renewed)
        during = await asyncio.to_thread(_served_certificate, address, pki)
        tls.key.path.write_bytes(renewed_key)
        after = await asyncio.to_thread(_served_certificate, address, pki)

    assert during.serial_number == first.serial_number
    assert after.serial_number == x509.load_pem_x509_certificate(renewed).serial_number
    refused = [line for line in logs if line["event"].startswith("certificate files changed")]
    assert len(refused) == 1 and "TIERGEN_TLS_KEY_FILE" in refused[0]["error"]
    assert [line["event"] for line in logs if line["event"] == "certificate reloaded"] == [
        "certificate reloaded"
    ]


def test_the_reloader_never_raises_into_a_handshake(tmp_path: Path) -> None:
    pki = session_pki()
    tls = _copy_identity(pki, "ledger", tmp_path)
    reloader = CertificateReloader(tls)
    assert reloader.fetch() is None  # nothing changed
    tls.certificate.path.unlink()
    assert reloader.fetch() is None  # gone: the current one stays
    assert reloader.fetch() is None  # and the same state is not read again


async def test_a_client_channel_follows_its_certificate_files(serve, tmp_path) -> None:
    pki = session_pki()
    _, address = await serve(pki.server("ledger"))
    mounted = tmp_path / "client"
    _copy_identity(pki, "router", mounted)
    security = pki.security_of(mounted / "tls.crt", mounted / "tls.key")
    channel = open_channel(address, security=security, services=[SERVICE])
    try:
        peer = channel.unary_unary(f"/{SERVICE}/PeerCertificate")
        before = x509.load_pem_x509_certificate(await peer(b"", timeout=5))
        renewed, renewed_key = pki.ca.issue("spiffe://tiergen/router")
        _replace_files(renewed, renewed_key, mounted)
        # A channel looks at its files at most once a second.
        deadline = time.monotonic() + 10
        seen = before
        while seen.serial_number == before.serial_number:
            assert time.monotonic() < deadline, "the channel kept its old certificate"
            await asyncio.sleep(0.2)
            seen = x509.load_pem_x509_certificate(await peer(b"", timeout=5))
    finally:
        await channel.close()
    assert seen.serial_number == x509.load_pem_x509_certificate(renewed).serial_number
    assert (
        before.serial_number
        == load_key_pair(
            PemFile(pki.local.certificate_file("router"), "c"),
            PemFile(pki.local.key_file("router"), "k"),
        ).leaf.serial_number
    )


# The kubelet's port.


async def test_the_health_port_is_plaintext_health_only_and_follows_the_main_port(serve) -> None:
    pki = session_pki()
    server, address = await serve(pki.server("ledger", health_port=0))
    assert server.health_port is not None
    probe = f"127.0.0.1:{server.health_port}"
    async with grpc.aio.insecure_channel(probe) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return (await health.Check(request, timeout=5)).status

        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await status(""), await status(SERVICE)) == (serving, serving)
        await server.set_serving(False)
        assert (await status(""), await status(SERVICE)) == (serving, not_serving)
        await server.set_serving(True)
        assert await status(SERVICE) == serving
        # Nothing but health there: the service itself answers on the TLS port only.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await _echo(channel)
        assert missing.value.code() is grpc.StatusCode.UNIMPLEMENTED
        # While the service drains, the probes see it going.
        draining, drained = asyncio.Event(), asyncio.Event()

        async def drain(_grace: float) -> None:
            draining.set()
            await drained.wait()

        server.add_drain_hook(drain)
        stopping = asyncio.create_task(server.stop(5.0))
        await draining.wait()
        assert (await status(""), await status(SERVICE)) == (not_serving, not_serving)
        drained.set()
        await stopping
    async with pki.channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await _echo(channel, timeout=2)


async def test_without_a_health_port_there_is_none(serve) -> None:
    server, _ = await serve(session_pki().server("ledger"))
    assert server.health_port is None


async def test_a_health_port_in_use_is_a_configuration_error(serve) -> None:
    pki = session_pki()
    server, _ = await serve(pki.server("ledger", health_port=0))
    with pytest.raises(ConfigError, match=f"TIERGEN_HEALTH_PORT={server.health_port}: cannot"):
        await create_server(pki.server("ledger", health_port=server.health_port), [])
