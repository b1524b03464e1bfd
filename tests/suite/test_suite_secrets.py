"""A planted database password, planted API keys and the suite's private keys appear in nothing
the services write or answer: not in their logs, their spans, the errors their callers get,
nor the one line of a service that refuses to start.

The suite runs as `tiergen up` runs it, on PostgreSQL with the password in its DSNs, each DSN
read from a file (TIERGEN_LEDGER_DSN_FILE, TIERGEN_ROUTER_DSN_FILE) as a mounted Secret would
be, a provider key from GEMINI_API_KEY_FILE, spans exported to the logs
(OTEL_TRACES_EXPORTER=console), and a pipeline plus refused calls sent through it. Then
services are started with bad settings that hold the secrets, and what they print is searched
too. PostgreSQL's test server trusts local connections, so any password gets in.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.cli.demo import run_demo
from services.cli.suite import Suite
from services.ledger.migrations import SCHEMA as LEDGER_SCHEMA
from services.router.jobs.migrations import SCHEMA as ROUTER_SCHEMA
from services.runtime.credentials import bearer_interceptors
from services.runtime.migrations import upgrade
from services.runtime.tls import channel_credentials
from tests.postgres import POSTGRES_DSN, fresh_schema, with_search_path

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PASSWORD = f"PLANTEDpw{secrets.token_hex(8)}"
PROVIDER_KEY = f"AIzaPLANTED{secrets.token_hex(12)}"
WRONG_API_KEY = f"tgk_0badc0de_PLANTED{secrets.token_hex(16)}"
_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dsns() -> Iterator[tuple[str, str]]:
    """The ledger's and the router's DSNs, each on a fresh schema, with the planted password."""
    with (
        fresh_schema("secrets_ledger", "the planted secrets test") as ledger,
        fresh_schema("secrets_router", "the planted secrets test") as router,
    ):
        with_password = POSTGRES_DSN.replace("postgres@", f"postgres:{PASSWORD}@", 1)
        assert PASSWORD in with_password
        ledger_dsn = with_search_path(ledger, with_password)
        router_dsn = with_search_path(router, with_password)
        upgrade(LEDGER_SCHEMA, ledger_dsn)
        upgrade(ROUTER_SCHEMA, router_dsn)
        yield ledger_dsn, router_dsn


def _fragments(pem: bytes) -> list[str]:
    """Every line of a PEM body: any one of them found would be part of the key."""
    return [line.decode() for line in pem.splitlines() if line and not line.startswith(b"-----")]


def _start_failure(module: str, environ: dict[str, str], status: int = 2) -> str:
    """What `python -m services.<module>` prints when it does not start: a configuration error
    (exit 2), or a dependency it cannot reach (exit 1, with the traceback)."""
    finished = subprocess.run(
        [sys.executable, "-m", f"services.{module}"],
        cwd=_ROOT,
        env={**os.environ, "TIERGEN_PORT": "0", **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == status, finished.stderr[-2000:]
    assert status != 2 or "configuration error" in finished.stderr
    return finished.stdout + finished.stderr


async def test_planted_secrets_are_seen_nowhere(tmp_path: Path, dsns: tuple[str, str]) -> None:
    ledger_dsn, router_dsn = dsns
    files = tmp_path / "secrets"
    files.mkdir()
    (files / "ledger-dsn").write_text(ledger_dsn + "\n")
    (files / "router-dsn").write_text(router_dsn + "\n")
    (files / "gemini").write_text(PROVIDER_KEY + "\n")
    environ = {
        "TIERGEN_LEDGER_DSN_FILE": str(files / "ledger-dsn"),
        "TIERGEN_ROUTER_DSN_FILE": str(files / "router-dsn"),
        "GEMINI_API_KEY_FILE": str(files / "gemini"),
        "OTEL_TRACES_EXPORTER": "console",
        "TIERGEN_LOG_LEVEL": "debug",
        "TIERGEN_ROUTER_MAX_REFUSAL_DELAY_SECONDS": "0",
    }
    seen: list[str] = []
    data = tmp_path / "data"
    with Suite(data, extra_env=environ) as suite:
        security = suite.client_security
        document = await run_demo(
            suite.router,
            tmp_path / "out",
            lambda line: seen.append(line),
            token=suite.api_key,
            security=security,
            variations=2,
        )
        seen.append(repr(document))
        credentials = channel_credentials(security)
        # A refused key, and a grant as the operator.
        async with grpc.aio.secure_channel(
            suite.router, credentials, interceptors=bearer_interceptors(WRONG_API_KEY)
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterServiceStub(channel).GetBalance(
                    router_pb2.GetBalanceRequest(account_id="anyone"), timeout=10
                )
            seen.append(repr((refused.value.details(), refused.value.trailing_metadata())))
        async with grpc.aio.secure_channel(suite.addresses["ledger"], credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance(
                    ledger_pb2.GetBalanceRequest(tenant="dev", account_id="nobody"), timeout=10
                )
            seen.append(repr((missing.value.details(), missing.value.trailing_metadata())))
        dev_key = suite.api_key.secret
        private_keys = [p.read_bytes() for p in suite.pki.directory.glob("*.key")]
        await asyncio.sleep(6)  # the console exporter writes its spans in batches, every 5 s
    logs = {path.name: path.read_text() for path in (data / "logs").glob("*.log")}
    assert '"name": "tiergen.router.v1.RouterService/Generate"' in logs["router.log"]

    # Start-up failures that hold the secrets in their settings.
    tls = {name: suite.pki.server_env(name) for name in ("ledger", "router", "generator")}
    host_dsn = ledger_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    failures = {
        "ledger: a DSN of another scheme": _start_failure(
            "ledger", {**tls["ledger"], "TIERGEN_LEDGER_DSN": host_dsn}
        ),
        "ledger: a database that is not there": _start_failure(
            "ledger",
            {
                **tls["ledger"],
                "TIERGEN_LEDGER_DSN": ledger_dsn.replace("127.0.0.1:5432", "127.0.0.1:9", 1),
                "TIERGEN_LEDGER_DB_TIMEOUT_SECONDS": "1",
            },
            status=1,
        ),
        "ledger: the key of another certificate": _start_failure(
            "ledger",
            {**tls["ledger"], "TIERGEN_TLS_KEY_FILE": tls["router"]["TIERGEN_TLS_KEY_FILE"]},
        ),
        "router: a DSN that is no URL": _start_failure(
            "router", {**tls["router"], "TIERGEN_ROUTER_DSN": f"host=db password={PASSWORD}"}
        ),
        "router: a DSN both in a file and in the variable": _start_failure(
            "router",
            {
                **tls["router"],
                "TIERGEN_ROUTER_DSN": router_dsn,
                "TIERGEN_ROUTER_DSN_FILE": str(files / "router-dsn"),
            },
        ),
        "generator: a bad tier file beside a provider key": _start_failure(
            "generator",
            {
                **tls["generator"],
                "GEMINI_API_KEY": PROVIDER_KEY,
                "TIERGEN_GENERATOR_TIERS_FILE": str(tmp_path / "missing.toml"),
            },
        ),
    }

    planted = {
        "password": [PASSWORD],
        "provider key": [PROVIDER_KEY],
        "refused API key": [WRONG_API_KEY, WRONG_API_KEY.split("_", 2)[2]],
        "dev API key": [dev_key, dev_key.split("_", 2)[2]],
        "private keys": [fragment for key in private_keys for fragment in _fragments(key)],
    }
    everything = {**{f"log {name}": text for name, text in logs.items()}, **failures}
    everything["what the callers were told"] = "\n".join(seen)
    for what, needles in planted.items():
        for where, text in everything.items():
            found = [needle for needle in needles if needle in text]
            assert not found, f"the {what} is in {where}"
    # The failures said what was wrong, with the secret parts masked.
    assert "TIERGEN_LEDGER_DSN" in failures["ledger: a DSN of another scheme"]
    assert "postgresql+psycopg://postgres:***@" in failures["ledger: a DSN of another scheme"]
    assert "TIERGEN_ROUTER_DSN='<unparsable DSN>'" in failures["router: a DSN that is no URL"]
    assert (
        "TIERGEN_ROUTER_DSN and TIERGEN_ROUTER_DSN_FILE are both set"
        in failures["router: a DSN both in a file and in the variable"]
    )
