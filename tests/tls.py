"""The test run's certificates: one CA for the whole session, a certificate per service and one
for the operator (the admin identity), made with `cryptography` by the same code as `tiergen up`'s
(`services.cli.pki`), and what makes servers and clients use them.

Every server a test starts serves TLS, and every backend (ledger, generator, upscaler) mutual
TLS, as in a deployment; clients call with the certificate of the identity they stand for, the
router's unless a test says otherwise. `session_pki()` is made once, on first use, in a
temporary directory removed when the run ends; the `pki` fixture hands it to a test.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from services.cli.pki import CertificateAuthority, LocalPki, provision_local_pki
from services.runtime.settings import ChannelSecurity, PemFile, ServerSettings, ServerTls
from services.runtime.tls import channel_credentials

__all__ = ["TestPki", "session_pki"]

#: The names with a certificate: the four services, and `cli` (spiffe://tiergen/admin).
NAMES = ("router", "ledger", "generator", "upscaler", "cli")


class TestPki:
    """The session's CA and certificates, and a second CA no server trusts."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.local, _ = provision_local_pki(directory)
        self.ca = CertificateAuthority.load(self.local.ca_file, self.local.directory / "ca.key")
        self.other_ca_file = directory / "other-ca.crt"
        other_key = directory / "other-ca.key"
        try:
            self._other = CertificateAuthority.load(self.other_ca_file, other_key)
        except (OSError, ValueError):
            self._other = CertificateAuthority.create("another CA")
            other_key.write_bytes(self._other.key_pem)
            self.other_ca_file.write_bytes(self._other.certificate_pem)
        self._issued = 0

    @property
    def ca_file(self) -> Path:
        return self.local.ca_file

    def env(self, service: str) -> dict[str, str]:
        """The TIERGEN_TLS_* and TIERGEN_CA_FILE settings of `service`."""
        return self.local.server_env(service)

    def server_tls(self, name: str = "ledger", *, mutual: bool = True) -> ServerTls:
        """TLS with the certificate of `name`, requiring client certificates when `mutual`."""
        return ServerTls(
            PemFile(self.local.certificate_file(name), "TIERGEN_TLS_CERT_FILE"),
            PemFile(self.local.key_file(name), "TIERGEN_TLS_KEY_FILE"),
            PemFile(self.local.ca_file, "TIERGEN_TLS_CLIENT_CA_FILE") if mutual else None,
        )

    def server(self, service: str, *, mutual: bool | None = None, **fields: Any) -> ServerSettings:
        """ServerSettings on port 0 serving `service`'s certificate (mutual TLS for a backend, and
        for any other name unless `mutual` says otherwise)."""
        name = service if service in NAMES else "ledger"
        mutual = (service != "router") if mutual is None else mutual
        settings = ServerSettings(service=service, port=0, tls=self.server_tls(name, mutual=mutual))
        return replace(settings, **fields)

    def security(self, name: str | None = "router") -> ChannelSecurity:
        """TLS trusting the session's CA, with the certificate of `name` (None: without one)."""
        if name is None:
            return ChannelSecurity(ca=PemFile(self.local.ca_file, "TIERGEN_CA_FILE"))
        return self.local.client_security(name)

    def credentials(self, name: str | None = "router") -> grpc.ChannelCredentials:
        return channel_credentials(self.security(name))

    def channel(self, address: str, name: str | None = "router", **kwargs: Any) -> grpc.aio.Channel:
        """A bare TLS channel to `address` calling as `name` (the router by default); `kwargs`
        as grpc.aio.secure_channel takes them (options, interceptors)."""
        return grpc.aio.secure_channel(address, self.credentials(name), **kwargs)

    def issue(
        self,
        identity: str | None,
        *,
        other_ca: bool = False,
        hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
        days: int = 30,
    ) -> tuple[Path, Path]:
        """Files of a new certificate naming `identity` (by the session's CA, or by the other
        one) and of its key."""
        ca = self._other if other_ca else self.ca
        certificate, key = ca.issue(identity, hosts=hosts, days=days)
        self._issued += 1
        certificate_file = self.directory / f"issued-{self._issued}.crt"
        key_file = self.directory / f"issued-{self._issued}.key"
        certificate_file.write_bytes(certificate)
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        return certificate_file, key_file

    def security_of(
        self, certificate: Path, key: Path, *, ca: Path | None = None
    ) -> ChannelSecurity:
        """TLS trusting `ca` (the session's CA by default), presenting `certificate`."""
        return ChannelSecurity(
            ca=PemFile(ca or self.local.ca_file, "TIERGEN_CA_FILE"),
            certificate=PemFile(certificate, "TIERGEN_TLS_CERT_FILE"),
            key=PemFile(key, "TIERGEN_TLS_KEY_FILE"),
        )


#: Where the run's certificates are, for the processes a test starts (a client process made by
#: `multiprocessing` imports this module anew, and must find the same CA, not make its own).
PKI_DIR_VARIABLE = "TIERGEN_TESTS_PKI_DIR"


@functools.cache
def session_pki() -> TestPki:
    """The run's certificates, made on first use (in a process a test started: found again)."""
    inherited = os.environ.get(PKI_DIR_VARIABLE)
    if inherited and Path(inherited).is_dir():
        return TestPki(Path(inherited))
    directory = Path(tempfile.mkdtemp(prefix="tiergen-tests-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[PKI_DIR_VARIABLE] = str(directory)
    return TestPki(directory)


def local_pki_of(directory: Path) -> LocalPki:
    """The certificates of a `tiergen up` data directory."""
    return LocalPki(directory / "tls")
