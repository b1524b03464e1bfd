"""A webhook receiver for the tests: a small HTTP/1.1 server on loopback (HTTPS with a throwaway
CA made here with `cryptography`), that records every request and answers as the test scripts,
and a verifier of Standard Webhooks signatures written from the specification
(https://www.standardwebhooks.com), independent of the router's own signer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hmac
import ipaddress
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Received", "Receiver", "ThrowawayCa", "verify_signature"]


def verify_signature(
    secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300
) -> None:
    """AssertionError unless `headers` sign `body` with `secret` as the specification says: the
    secret is `whsec_` and base64; the signed content `<webhook-id>.<webhook-timestamp>.<body>`;
    `webhook-signature` a space-separated list of `v1,<base64 HMAC-SHA256>`, one of which must
    match; the timestamp within `tolerance` seconds of now."""
    message_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    assert timestamp.isdigit(), timestamp
    assert abs(time.time() - int(timestamp)) <= tolerance, "the timestamp is too far from now"
    assert secret.startswith("whsec_"), "a Standard Webhooks secret starts with whsec_"
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except binascii.Error as error:
        raise AssertionError(f"the secret is not base64: {error}") from None
    content = message_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.digest(key, content, "sha256")).decode()
    for signature in headers["webhook-signature"].split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise AssertionError(f"no v1 signature in {headers['webhook-signature']!r} matches")


class ThrowawayCa:
    """A CA made for one test, and a server certificate it signs for 127.0.0.1 and localhost."""

    def __init__(self, directory: Path) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
        self.ca_certificate = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "receiver")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "webhook-ca.pem"
        self.ca_file.write_bytes(self.ca_certificate.public_bytes(serialization.Encoding.PEM))
        self._certificate_file = directory / "receiver.pem"
        self._certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._key_file = directory / "receiver.key"
        self._key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._certificate_file, self._key_file)
        return context


@dataclass
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes
    #: time.time() when its last byte arrived.
    at: float
    #: What it was answered (0: never).
    status: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body)


#: Decides the answer to a request: an HTTP status, or None to never answer it.
Answer = Callable[[Received], int | None]


@dataclass
class Receiver:
    """Records requests on loopback and answers each as `answer` says (204 unless told)."""

    tls: ssl.SSLContext | None = None
    answer: Answer = lambda _: 204
    received: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _connections: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, port: int = 0) -> str:
        """Listens on 127.0.0.1; the base URL."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=self.tls)
        bound = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{bound}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], within: float = 30.0
    ) -> list[Received]:
        """Waits until `predicate` holds for what has arrived; what has arrived."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.received))
        return self.received

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                received = Received(request_line.split(" ")[1], headers, body, time.time())
                status = self.answer(received)
                async with self._arrived:
                    self.received.append(received)
                    self._arrived.notify_all()
                if status is None:
                    # Never answered: the connection stays open until the receiver closes.
                    await asyncio.Event().wait()
                received.status = status
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._connections.discard(writer)
            writer.close()
