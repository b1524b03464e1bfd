"""The local certificate authority of the embedded default: a CA, a certificate per service and
one for the operator commands, in `DATA_DIR/tls/`.

`tiergen up` makes them on the first start of a data directory, so that the embedded default
runs as a cluster does: TLS on every port, mutual TLS between the router and the ledger,
generator and upscaler, each process known by its identity (`services.runtime.identities`).

    tls/ca.crt    the CA every client trusts (TIERGEN_CA_FILE, --ca-file)
    tls/ca.key    its key, mode 0600; nothing but `tiergen up` reads it
    tls/<service>.crt, .key   router, ledger, generator, upscaler: spiffe://tiergen/<service>
    tls/cli.crt, cli.key      the operator commands: spiffe://tiergen/admin

Keys are ECDSA P-256: a handshake signs and verifies with them several times faster than with
RSA-2048 keys, and they are as strong as RSA-3072. A service's certificate names its identity as
a URI SAN and `localhost`, 127.0.0.1 and ::1 (plus the host it listens on) as DNS and IP SANs,
and serves as both its server and its client certificate. The CA lasts ten years, the others a
year: each start of the directory issues again any that is missing, unreadable, not the CA's,
missing a host it must name, or expiring within 30 days, and a missing or unreadable CA makes
everything anew. Private keys are written with mode 0600 from their first byte and renamed into
place, as the dev key is.

The same CA class makes the test suite's certificates.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.runtime.identities import ADMIN_IDENTITY, SERVICE_IDENTITIES
from services.runtime.settings import (
    CA_FILE_VARIABLE,
    CERT_FILE_VARIABLE,
    CLIENT_CA_FILE_VARIABLE,
    KEY_FILE_VARIABLE,
    ChannelSecurity,
    PemFile,
)

__all__ = [
    "CLI_NAME",
    "TLS_DIR",
    "CertificateAuthority",
    "LocalPki",
    "provision_local_pki",
]

#: The data directory's sub-directory of certificates.
TLS_DIR = "tls"
#: The file name (without extension) of the operator commands' certificate.
CLI_NAME = "cli"
#: Names resolving to this machine that every local certificate carries.
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_CA_DAYS = 3650
_LEAF_DAYS = 365
_RENEW_WITHIN = timedelta(days=30)
#: The services the router calls: they require client certificates.
_BACKENDS = ("ledger", "generator", "upscaler")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public(holder: Any) -> bytes:
    """The public key of a private key or a certificate, DER, to compare two."""
    public = holder.public_key()
    return bytes(
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA key and certificate that issue certificates naming an identity and hosts."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str = "Tiergen local CA", days: int = _CA_DAYS) -> CertificateAuthority:
        key = _new_key()
        now = datetime.now(UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def issue(
        self,
        identity: str | None,
        *,
        hosts: Sequence[str] = _LOCAL_NAMES,
        days: int = _LEAF_DAYS,
        not_before: datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A certificate naming `identity` (a URI SAN; None names none) and `hosts` (DNS and IP
        SANs), good for servers and clients, and its key: both PEM."""
        key = _new_key()
        start = not_before or datetime.now(UTC) - timedelta(minutes=5)
        names = ([x509.UniformResourceIdentifier(identity)] if identity else []) + _general_names(
            hosts
        )
        common_name = identity.rsplit("/", 1)[-1] if identity else (hosts[0] if hosts else "-")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    @classmethod
    def load(cls, certificate: Path, key: Path) -> CertificateAuthority:
        """The CA of these files; ValueError or OSError when they are not a CA and its key."""
        ca_certificate = x509.load_pem_x509_certificate(certificate.read_bytes())
        ca_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        if _public(ca_key) != _public(ca_certificate):
            raise ValueError("the CA key does not belong to the CA certificate")
        return cls(ca_key, ca_certificate)


@dataclass(frozen=True)
class LocalPki:
    """The certificates of one data directory, and the settings that use them."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def certificate_file(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key_file(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def server_env(self, service: str) -> dict[str, str]:
        """The TIERGEN_TLS_* variables of `service`: its certificate (also its client
        certificate), the CA it trusts, and for a backend the CA its callers' certificates must
        come from."""
        env = {
            CERT_FILE_VARIABLE: str(self.certificate_file(service)),
            KEY_FILE_VARIABLE: str(self.key_file(service)),
            CA_FILE_VARIABLE: str(self.ca_file),
        }
        if service in _BACKENDS:
            env[CLIENT_CA_FILE_VARIABLE] = str(self.ca_file)
        return env

    def client_security(self, name: str = CLI_NAME) -> ChannelSecurity:
        """TLS trusting the CA, presenting the certificate of `name` (the admin's, by default)."""
        return ChannelSecurity(
            ca=PemFile(self.ca_file, "--ca-file"),
            certificate=PemFile(self.certificate_file(name), "--cert-file"),
            key=PemFile(self.key_file(name), "--key-file"),
        )


def provision_local_pki(data_dir: Path, hosts: Sequence[str] = ()) -> tuple[LocalPki, bool]:
    """The certificates of `data_dir/tls`, made or issued again where needed (see the module's
    docstring), each naming `hosts` too; and whether anything was made."""
    pki = LocalPki(data_dir / TLS_DIR)
    pki.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(pki.directory, 0o700)
    # A suite listening on every address (`--host 0.0.0.0`) is called at that address too.
    wanted_hosts = tuple(dict.fromkeys((*_LOCAL_NAMES, *(h for h in hosts if h))))
    made = False
    ca_key = pki.directory / "ca.key"
    try:
        ca = CertificateAuthority.load(pki.ca_file, ca_key)
        if ca.certificate.not_valid_after_utc - datetime.now(UTC) < _RENEW_WITHIN:
            raise ValueError("the CA expires soon")
    except (OSError, ValueError):
        ca = CertificateAuthority.create()
        _write(ca_key, ca.key_pem, private=True)
        _write(pki.ca_file, ca.certificate_pem, private=False)
        made = True
    identities = {**SERVICE_IDENTITIES, CLI_NAME: ADMIN_IDENTITY}
    for name, identity in identities.items():
        certificate_file, key_file = pki.certificate_file(name), pki.key_file(name)
        if _current(ca, certificate_file, key_file, identity, wanted_hosts):
            continue
        certificate, key = ca.issue(identity, hosts=wanted_hosts)
        _write(key_file, key, private=True)
        _write(certificate_file, certificate, private=False)
        made = True
    return pki, made


def _current(
    ca: CertificateAuthority,
    certificate_file: Path,
    key_file: Path,
    identity: str,
    hosts: Sequence[str],
) -> bool:
    """Whether the certificate at `certificate_file` (with the key beside it) may stay."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        certificate.verify_directly_issued_by(ca.certificate)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:
        # Unreadable, not PEM, another CA's (InvalidSignature), no SANs: issued anew.
        return False
    same_key = _public(key) == _public(certificate)
    named = set(names.get_values_for_type(x509.UniformResourceIdentifier))
    covered = {str(name) for name in names.get_values_for_type(x509.IPAddress)} | set(
        names.get_values_for_type(x509.DNSName)
    )
    fresh = certificate.not_valid_after_utc - datetime.now(UTC) > _RENEW_WITHIN
    return same_key and identity in named and set(hosts) <= covered and fresh


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Writes `data` to `path` atomically; a private file is 0600 from its first byte."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(descriptor, "wb") as out:
            os.fchmod(out.fileno(), 0o600 if private else 0o644)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
