"""A planted API key and a planted OIDC token never reach a log line, a span, an error or a
repr, whatever the router does with them: accept them, refuse them (wrong scope, revoked,
garbled, expired, tampered), or hand a new key out. Nor do a webhook endpoint's signing
secrets, through its creation, two rotations and an attempt signed with both of its secrets.

Everything the test run can observe is gathered: every structlog event of the in-process
suite, every finished span (attributes, events, status), every error a call ended with (its
details and trailing metadata), whatever reached stdout and stderr, and the reprs of the values
that hold a secret. The secrets are searched in all of it, whole and by their secret parts.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from tiergen.router.v1 import router_pb2

from services.router.access.keys import KeyStore
from services.router.access.scopes import Scope
from services.runtime.credentials import BearerToken
from tests.router.conftest import InProcessSuite, running_suite

ISSUER = "https://issuer.test"
SUBJECT = "system:serviceaccount:t-main:web"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _token(**changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "tiergen", "sub": SUBJECT, "iat": now, "exp": now + 600}
    claims.update(changes)
    return jwt.encode(claims, _KEY, algorithm="RS256", headers={"kid": "planted"})


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[InProcessSuite]:
    jwk = {**RSAAlgorithm.to_jwk(_KEY.public_key(), as_dict=True), "kid": "planted", "use": "sig"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (tmp_path / "oidc.toml").write_text(
        f"""
[[issuers]]
issuer = "{ISSUER}"
audience = "tiergen"
jwks_file = "jwks.json"
tenant = "t-main"
[issuers.subjects]
"{SUBJECT}" = ["images:read", "accounts:read"]
"""
    )
    env = {
        "TIERGEN_ROUTER_OIDC_FILE": str(tmp_path / "oidc.toml"),
        "TIERGEN_ROUTER_KEY_CACHE_SECONDS": "0",
        "TIERGEN_ROUTER_MAX_REFUSAL_DELAY_SECONDS": "0",
        # The webhook endpoint made here points at loopback, where nothing listens.
        "TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        "TIERGEN_ROUTER_WEBHOOK_POLL_SECONDS": "0.05",
    }
    async with running_suite(tmp_path / "data", env, {}) as running:
        yield running


async def _answer(call: Any) -> str:
    """Everything a call's caller is told: its responses, or its error in full."""
    try:
        if hasattr(call, "__aiter__"):
            return repr([message async for message in call])
        return repr(await call)
    except grpc.aio.AioRpcError as error:
        return repr((error.code(), error.details(), error.trailing_metadata(), str(error)))


async def test_planted_credentials_are_seen_nowhere(suite, spans, capfd) -> None:
    store = await KeyStore.open(suite.router_dsn, pool_size=1)
    try:
        planted = await store.create("t-main", [Scope.IMAGES_READ], name="planted")
        revoked = await store.create("t-main", list(Scope), name="planted-revoked")
        await store.revoke("t-main", revoked.prefix)
    finally:
        await store.close()
    token = _token()
    expired = _token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[::-1]}"
    account = await suite.open_account()
    get_balance = router_pb2.GetBalanceRequest(account_id=account)
    get_job = router_pb2.GetJobRequest(account_id=account, job_id="job_none")
    generate = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=uuid.uuid4().hex,
        spec=router_pb2.GenerationSpec(prompt="a kite", tier="nano"),
    )

    told: list[str] = []
    with structlog.testing.capture_logs() as logs:
        for secret in (planted.secret, revoked.secret, token, expired, tampered):
            stub = suite.stub(secret)
            told.append(await _answer(stub.GetBalance(get_balance)))
            told.append(await _answer(stub.GetJob(get_job)))
            told.append(await _answer(stub.Generate(generate)))
        bare = suite.stub(None)
        for value in (
            f"Bearer {planted.secret}x",
            f"Bearer {planted.secret[:-1]}",
            f"Bearer {token}x",
            f"Bearer Bearer {token}",
            token,
            f"Basic {planted.secret}",
        ):
            metadata = (("authorization", value),)
            told.append(await _answer(bare.GetJob(get_job, metadata=metadata)))
        created = await suite.router.CreateApiKey(
            router_pb2.CreateApiKeyRequest(scopes=["images:read"])
        )
        rotated = await suite.router.RotateApiKey(
            router_pb2.RotateApiKeyRequest(prefix=created.api_key.prefix)
        )
        told.append(await _answer(suite.stub(rotated.secret).GetJob(get_job)))
        hook = await suite.router.CreateWebhook(
            router_pb2.CreateWebhookRequest(
                url="https://127.0.0.1:9/hook", events=["batch.completed"]
            )
        )
        webhook_id = hook.webhook.webhook_id
        first = await suite.router.RotateWebhookSecret(
            router_pb2.RotateWebhookSecretRequest(webhook_id=webhook_id, grace_seconds=0)
        )
        second = await suite.router.RotateWebhookSecret(
            router_pb2.RotateWebhookSecretRequest(webhook_id=webhook_id)
        )
        # A delivery signed with the rotated-out secret and the new one, refused by nothing
        # listening: its failure is logged.
        [_ async for _ in suite.router.Generate(generate)]
        for _ in range(200):
            page = await suite.router.ListWebhookDeliveries(
                router_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id)
            )
            if page.deliveries and page.deliveries[0].attempts:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the delivery was never attempted")
        told.append(await _answer(suite.router.ListWebhooks(router_pb2.ListWebhooksRequest())))
        told.append(repr(page))

    secrets = {
        "planted key": planted.secret,
        "revoked key": revoked.secret,
        "created key": created.secret,
        "rotated key": rotated.secret,
        "suite key": suite.api_key,
        "token": token,
        "expired token": expired,
        "tampered token": tampered,
        "webhook secret": hook.secret,
        "rotated webhook secret": first.secret,
        "webhook secret in its grace": second.secret,
    }
    # What must hold no secret: the caller is told the secrets it was issued, nothing else.
    seen = {
        "log events": repr(logs),
        "spans": repr(
            [
                (s.name, dict(s.attributes or {}), s.events, s.status.description)
                for s in spans.get_finished_spans()
            ]
        ),
        "answers": "\n".join(told),
        "output": "".join(capfd.readouterr()),
        "reprs": repr([planted, revoked, BearerToken(planted.secret), BearerToken(token)]),
    }
    assert logs and spans.get_finished_spans()
    for place, text in seen.items():
        for name, secret in secrets.items():
            # The whole secret, and its secret part alone: a key past its prefix, a token's
            # payload and signature.
            if secret.startswith("tgk_"):
                parts = [secret[13:]]
            elif secret.startswith("whsec_"):
                parts = [secret.removeprefix("whsec_")]
            else:
                parts = secret.split(".")[1:]
            for part in [secret, *parts]:
                assert part not in text, f"the {name} is in the {place}"
