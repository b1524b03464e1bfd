"""TLS on every hop: certificates, keys and CAs read from files and checked, server credentials
that follow the files when they change, and the credentials of client channels.

Certificates come as files because that is how cert-manager hands them to a pod (a Secret
mounted as a volume) and how `tiergen up` leaves them in its data directory. Each file is
checked when the process starts, and a bad one stops it with one line naming the setting:
unreadable, not PEM, a key that is encrypted or does not belong to the certificate, a
certificate that has expired. A file's content is never quoted in a message.

Rotation without a restart. A server's credentials are gRPC's dynamic SSL credentials
(`grpc.dynamic_ssl_server_credentials`, which grpc.aio servers take like any other): before
every TLS handshake gRPC asks `CertificateReloader.fetch` whether the certificate changed. It
compares the files' identities (inode, size, modification time: a few microseconds, and
Kubernetes' atomic swap of a Secret volume changes the inode) and reads them again only when
one changed. A new certificate serves from the next handshake on; connections already open
keep the one they began with, TLS having no way to swap it, so no call in flight is cut, and
those connections end within the server's maximum connection age. Files caught half-written
(a new certificate beside the old key, as a non-atomic copy leaves them for a moment) fail the
key check and are not taken: the previous pair serves until the files agree again, with one
error line for each state of the files seen. Client channels follow their files the same way
(`services.runtime.channels`). The expiry of the certificate presented, as a server and as a
client, is exported each time one is taken (`tiergen_tls_certificate_expiry_timestamp_seconds`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from services.runtime.metrics import export_certificate_expiry
from services.runtime.settings import ChannelSecurity, ConfigError, PemFile, ServerTls

__all__ = [
    "CertificateReloader",
    "KeyPair",
    "channel_credentials",
    "describe_certificate",
    "file_signature",
    "load_ca",
    "load_key_pair",
]

_log = structlog.get_logger("tiergen.tls")

#: Larger than any certificate chain or key; a bigger file is refused unread.
_MOST_BYTES = 1 << 20


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its private key, both PEM, checked to belong together."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    #: The first certificate of the chain: the one the key belongs to.
    leaf: x509.Certificate = field(compare=False)


def _read(pem: PemFile) -> bytes:
    try:
        with open(pem.path, "rb") as file:
            data = file.read(_MOST_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{pem.describe()}: cannot read the file: {error.strerror}") from None
    if len(data) > _MOST_BYTES:
        raise ConfigError(f"{pem.describe()}: the file is larger than any PEM file should be")
    if not data.strip():
        raise ConfigError(f"{pem.describe()}: the file is empty")
    return data


def _certificates(pem: PemFile, data: bytes, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"{pem.describe()}: not a PEM {what} (expected -----BEGIN CERTIFICATE)")
    return certificates


def _private_key(pem: PemFile, data: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{pem.describe()}: the private key is encrypted; give it unencrypted (a mounted"
            " Secret is protected by its file mode)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{pem.describe()}: not a PEM private key (expected -----BEGIN PRIVATE KEY)"
        ) from None


def _public(value: Any) -> bytes:
    return bytes(
        value.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_key_pair(certificate: PemFile, key: PemFile, *, now: datetime | None = None) -> KeyPair:
    """The certificate chain of `certificate` and the key of `key`; ConfigError naming the
    setting when either is unreadable or not PEM, when the key does not belong to the chain's
    first certificate, or when that certificate has expired."""
    chain_data = _read(certificate)
    chain = _certificates(certificate, chain_data, "certificate")
    key_data = _read(key)
    private_key = _private_key(key, key_data)
    leaf = chain[0]
    try:
        matches = _public(leaf.public_key()) == _public(private_key.public_key())
    except (ValueError, TypeError, AttributeError):
        matches = False
    if not matches:
        raise ConfigError(
            f"{key.describe()}: the key does not belong to the certificate of"
            f" {certificate.describe()}"
        )
    moment = now or datetime.now(UTC)
    if leaf.not_valid_after_utc <= moment:
        raise ConfigError(
            f"{certificate.describe()}: the certificate expired at"
            f" {leaf.not_valid_after_utc.isoformat(timespec='seconds')}"
        )
    return KeyPair(chain_data, key_data, leaf)


def load_ca(ca: PemFile) -> bytes:
    """The CA certificates of `ca`, PEM; ConfigError naming the setting when there are none."""
    data = _read(ca)
    _certificates(ca, data, "CA certificate")
    return data


def file_signature(files: tuple[PemFile, ...]) -> tuple[tuple[int, int, int, int] | None, ...]:
    """What identifies the files' current content without reading it: device, inode, size and
    modification time of each (None for a file that is missing now)."""
    signature: list[tuple[int, int, int, int] | None] = []
    for pem in files:
        try:
            found = os.stat(pem.path)
        except OSError:
            signature.append(None)
            continue
        signature.append((found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns))
    return tuple(signature)


def describe_certificate(certificate: x509.Certificate) -> dict[str, Any]:
    """What a log line says of a certificate: nothing secret, enough to tell two apart."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {
        "subject": certificate.subject.rfc4514_string(),
        "identities": uris,
        "serial": format(certificate.serial_number, "x"),
        "not_after": certificate.not_valid_after_utc.isoformat(timespec="seconds"),
    }


class CertificateReloader:
    """A server's TLS credentials from `tls`'s files, taken again when the files change.

    Made at start, it reads and checks the files (ConfigError naming the setting). gRPC calls
    `fetch` from its own threads, before each handshake.
    """

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._files = tuple(f for f in (tls.certificate, tls.key, tls.client_ca) if f is not None)
        self._lock = threading.Lock()
        self._signature = file_signature(self._files)
        self._refused: object = None
        self._pair, initial = self._load()
        self._initial = initial
        export_certificate_expiry("server", self._pair.leaf.not_valid_after_utc)

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate being served to new connections."""
        return self._pair.leaf

    @property
    def requires_client_certificates(self) -> bool:
        return self._tls.client_ca is not None

    def _load(self) -> tuple[KeyPair, grpc.ServerCertificateConfiguration]:
        pair = load_key_pair(self._tls.certificate, self._tls.key)
        client_ca = None if self._tls.client_ca is None else load_ca(self._tls.client_ca)
        configuration = grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.certificate_chain)], root_certificates=client_ca
        )
        return pair, configuration

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port` that follow the files."""
        # types-grpcio types the fetcher's result without None, which grpc documents as "keep
        # the current configuration".
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self.requires_client_certificates,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed and hold a good pair, else None (keep
        the current one). Never raises: an exception here would fail the handshake."""
        try:
            signature = file_signature(self._files)
            if signature == self._signature or signature == self._refused:
                return None
            # One thread reads; a handshake arriving meanwhile keeps the current certificate.
            if not self._lock.acquire(blocking=False):
                return None
            try:
                return self._reload(signature)
            finally:
                self._lock.release()
        except Exception:
            _log.exception("certificate check failed; the current certificate stays")
            return None

    def _reload(self, signature: object) -> grpc.ServerCertificateConfiguration | None:
        try:
            pair, configuration = self._load()
        except ConfigError as error:
            self._refused = signature
            _log.error(
                "certificate files changed but cannot be used; the current certificate stays",
                error=str(error),
            )
            return None
        self._signature = signature  # type: ignore[assignment]
        self._refused = None
        self._pair = pair
        export_certificate_expiry("server", pair.leaf.not_valid_after_utc)
        _log.info(
            "certificate reloaded",
            setting=self._tls.certificate.setting,
            **describe_certificate(pair.leaf),
        )
        return configuration


def channel_credentials(security: ChannelSecurity) -> grpc.ChannelCredentials:
    """Credentials of a TLS channel as `security` says (not for a plaintext one); ConfigError
    naming the setting of a bad file."""
    if security.insecure:
        raise ValueError("a plaintext channel has no credentials")
    root = None if security.ca is None else load_ca(security.ca)
    if security.certificate is None or security.key is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    pair = load_key_pair(security.certificate, security.key)
    export_certificate_expiry("client", pair.leaf.not_valid_after_utc)
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=pair.private_key,
        certificate_chain=pair.certificate_chain,
    )
