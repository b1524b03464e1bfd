"""Signing secrets and signatures, as the Standard Webhooks specification defines them
(https://www.standardwebhooks.com), so that a receiver checks them with any of its libraries.

A secret is `whsec_` and the base64 of 32 random bytes (the specification allows 24 to 64). A
message is signed with HMAC-SHA256, keyed by the secret's decoded bytes, over
`<webhook-id>.<webhook-timestamp>.<body>`; the `webhook-signature` header is `v1,` and the base64
of that MAC (two such values, space-separated, while a rotated-out secret is within its grace:
the current secret's first). The timestamp is whole seconds since the epoch, taken at each
attempt, so that a receiver can refuse replays of old messages (the libraries' default
tolerance is 5 minutes).

The secret must be kept as it is, since signing needs it: it is never logged, never in a repr,
and read by no statement but the dispatcher's (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = ["SECRET_PREFIX", "Signer", "check_secret", "new_secret", "signature_headers"]

#: What every secret starts with.
SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32


def new_secret() -> str:
    """A new, random signing secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def check_secret(secret: str) -> bytes:
    """The key bytes of `secret`; ValueError (naming nothing of it) when it is malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a signing secret starts with whsec_")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a signing secret is whsec_ and base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("a signing secret holds 24 to 64 bytes")
    return key


class Signer:
    """Signs messages with one endpoint's secret; its repr names nothing of the secret."""

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        self._key = check_secret(secret)

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` value of `body` sent as `message_id` at `timestamp`."""
        signed = b"%s.%d.%s" % (message_id.encode("ascii"), timestamp, body)
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(
    signer: Signer,
    message_id: str,
    timestamp: int,
    body: bytes,
    *,
    previous: Signer | None = None,
) -> dict[str, str]:
    """The three headers of a signed message. With `previous` (the secret a rotation replaced,
    within its grace), `webhook-signature` carries both signatures, space-separated, the current
    secret's first: the specification's receivers accept a message when any one of them
    verifies, so one still holding the old secret keeps verifying."""
    signatures = [signer.sign(message_id, timestamp, body)]
    if previous is not None:
        signatures.append(previous.sign(message_id, timestamp, body))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }
