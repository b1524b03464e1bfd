"""`tiergen keys` end to end: keys made on a data directory's store and through a router work
against a real router, listings never show a secret, revoked keys stop working, rotation hands
over; and a command without a key says in one line where one would come from."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.cli.keys import KeyCommandError, parse_duration
from services.router.jobs.migrations import SCHEMA as ROUTER_SCHEMA
from services.runtime.migrations import upgrade
from tests.postgres import fresh_schema, with_search_path
from tests.router.conftest import InProcessSuite, running_suite
from tests.tls import session_pki

#: The scopes `tiergen open` and `tiergen balance` need.
ACCOUNT_SCOPES = "accounts:write,accounts:read"


async def tiergen(*args: str, api_key: str | None = None) -> tuple[int, str, str]:
    """Runs `tiergen ARGS` with `api_key` as TIERGEN_API_KEY (and no other key around); its exit
    status, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGEN_")}
    # The CA of the suite's TLS, as a platform calling a deployment would have it.
    env["TIERGEN_CA_FILE"] = str(session_pki().ca_file)
    if api_key is not None:
        env["TIERGEN_API_KEY"] = api_key
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def succeeds(*args: str, api_key: str | None = None) -> str:
    code, out, err = await tiergen(*args, api_key=api_key)
    assert code == 0, err[-2000:]
    return out


async def fails(*args: str, api_key: str | None = None) -> str:
    """The one line a failing command printed."""
    code, out, err = await tiergen(*args, api_key=api_key)
    assert code != 0, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiergen: "), err[-2000:]
    return lines[0]


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[InProcessSuite]:
    # Keys read from the store on every call: a revocation shows at once, not after the cache.
    env = {"TIERGEN_ROUTER_KEY_CACHE_SECONDS": "0"}
    async with running_suite(tmp_path, env, {}) as running:
        yield running


async def _open_account(suite: InProcessSuite, api_key: str) -> tuple[int, str, str]:
    router = suite.addresses["router"]
    account = f"cli-{uuid.uuid4().hex[:8]}"
    return await tiergen("open", "--router", router, "--account", account, api_key=api_key)


async def test_a_key_made_on_the_data_dir_works_is_listed_by_prefix_and_revoked(suite):
    where = ("--data-dir", str(suite.data_dir))
    created = json.loads(
        await succeeds(
            "keys", "create", *where, "--tenant", "acme", "--scopes", ACCOUNT_SCOPES,
            "--expires", "90d", "--name", "billing", "--json",
        )
    )  # fmt: skip
    key, prefix = created["key"], created["prefix"]
    assert key.startswith(prefix + "_") and len(prefix) == 12
    assert (created["tenant"], created["scopes"]) == ("acme", ["accounts:read", "accounts:write"])
    assert created["expires"].endswith("Z")

    code, _, err = await _open_account(suite, key)
    assert code == 0, err

    listed = await succeeds("keys", "list", *where, "--tenant", "acme")
    assert prefix in listed and "billing" in listed and "active" in listed
    assert key.split("_")[2] not in listed
    document = json.loads(await succeeds("keys", "list", *where, "--json"))
    assert prefix in {entry["prefix"] for entry in document["keys"]}
    assert key not in json.dumps(document)

    revoked = await succeeds("keys", "revoke", prefix, *where)
    assert revoked.strip() == f"revoked {prefix} of tenant acme"
    code, out, err = await _open_account(suite, key)
    assert code == 1
    assert err.startswith("tiergen: UNAUTHENTICATED"), err
    assert key not in out + err
    assert prefix in await succeeds("keys", "list", *where, "--all")
    assert prefix not in await succeeds("keys", "list", *where)


async def test_rotation_gives_a_working_key_and_the_old_one_works_through_its_grace(suite):
    where = ("--data-dir", str(suite.data_dir))
    old = json.loads(
        await succeeds(
            "keys", "create", *where, "--tenant", "acme", "--scopes", ACCOUNT_SCOPES, "--json"
        )
    )
    rotated = json.loads(await succeeds("keys", "rotate", old["prefix"], *where, "--json"))
    assert rotated["prefix"] != old["prefix"]
    assert rotated["replaced"]["prefix"] == old["prefix"]
    assert rotated["replaced"]["expires"] is not None
    assert rotated["scopes"] == old["scopes"]
    for key in (rotated["key"], old["key"]):
        code, _, err = await _open_account(suite, key)
        assert code == 0, err


async def test_through_a_router_keys_are_the_callers_tenants(suite):
    router = ("--router", suite.addresses["router"])
    created = json.loads(
        await succeeds(
            "keys", "create", *router, "--scopes", ACCOUNT_SCOPES, "--json",
            api_key=suite.api_key,
        )
    )  # fmt: skip
    assert created["tenant"] == "t-main"
    code, _, err = await _open_account(suite, created["key"])
    assert code == 0, err
    listed = await succeeds("keys", "list", *router, "--tenant", "t-main", api_key=suite.api_key)
    assert created["prefix"] in listed

    refusal = await fails(
        "keys", "create", *router, "--tenant", "acme", "--scopes", ACCOUNT_SCOPES,
        api_key=suite.api_key,
    )  # fmt: skip
    assert "not the tenant of the API key in use" in refusal

    rotated = json.loads(
        await succeeds(
            "keys", "rotate", created["prefix"], *router, "--grace", "1h", "--json",
            api_key=suite.api_key,
        )
    )  # fmt: skip
    assert rotated["replaced"]["prefix"] == created["prefix"]
    code, _, err = await _open_account(suite, rotated["key"])
    assert code == 0, err

    await succeeds("keys", "revoke", created["prefix"], *router, api_key=suite.api_key)
    code, _, _ = await _open_account(suite, created["key"])
    assert code == 1


async def test_without_a_key_a_client_command_says_where_one_comes_from(tmp_path):
    where = ("--router", "127.0.0.1:9", "--account", "alice")
    line = await fails("balance", *where)
    assert "--api-key" in line and "TIERGEN_API_KEY" in line and "--data-dir" in line

    line = await fails("balance", *where, "--data-dir", str(tmp_path))
    assert str(tmp_path / "dev-api-key") in line and "tiergen up" in line

    secret = "tgk_0123abcd_not a key"
    line = await fails("balance", *where, "--api-key", secret)
    assert "malformed" in line and "not a key" not in line


async def test_key_commands_fail_in_one_line(tmp_path):
    line = await fails("keys", "list")
    assert "--router" in line and "--data-dir" in line and "--dsn" in line
    line = await fails("keys", "list", "--data-dir", str(tmp_path / "nowhere"))
    assert "no router database" in line
    assert not (tmp_path / "nowhere").exists()


async def test_key_commands_refuse_bad_input_in_one_line(suite):
    where = ("--data-dir", str(suite.data_dir))
    line = await fails("keys", "create", *where, "--scopes", ACCOUNT_SCOPES)
    assert "--tenant is required" in line
    line = await fails("keys", "create", *where, "--tenant", "acme", "--scopes", "images:fly")
    assert "unknown scope 'images:fly'" in line
    line = await fails(
        "keys", "create", *where, "--tenant", "acme", "--scopes", ACCOUNT_SCOPES, "--expires", "9x"
    )
    assert "--expires '9x'" in line
    line = await fails("keys", "revoke", "tgk_00000000", *where)
    assert "there is no API key tgk_00000000" in line


@pytest.mark.postgres
async def test_an_operator_makes_a_tenants_first_key_on_postgres():
    with fresh_schema("cli_keys", "the keys command's PostgreSQL test") as name:
        planted = "planted-pa55word"
        dsn = with_search_path(name)
        upgrade(ROUTER_SCHEMA, dsn)  # `tiergen migrate`, as before any router starts
        secret_dsn = dsn.replace("postgresql://postgres@", f"postgresql://postgres:{planted}@")

        code, out, audit = await tiergen(
            "keys", "create", "--dsn", dsn, "--tenant", "acme",
            "--scopes", "keys:admin,credits:grant", "--json",
        )  # fmt: skip
        assert code == 0, audit
        created = json.loads(out)
        listed = json.loads(await succeeds("keys", "list", "--dsn", dsn, "--json"))["keys"]
        refused = await tiergen("keys", "list", "--dsn", secret_dsn.replace(name, "nowhere"))

    assert created["scopes"] == ["credits:grant", "keys:admin"]
    assert [(key["prefix"], key["tenant"]) for key in listed] == [(created["prefix"], "acme")]
    # The change is audited on stderr, by the operator, without the key.
    events = [json.loads(line) for line in audit.splitlines() if line.startswith("{")]
    assert [(e["action"], e["tenant"], e["prefix"]) for e in events] == [
        ("key.created", "acme", created["prefix"])
    ]
    assert events[0]["by"].startswith("store:")
    assert created["key"] not in audit
    assert refused[0] == 1
    assert planted not in refused[1] + refused[2]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90d", 90 * 86_400), ("12h", 43_200), ("30m", 1800), ("45s", 45)]
)
def test_durations(text, seconds):
    assert parse_duration(text, "--expires") == seconds


@pytest.mark.parametrize("text", ["", "0d", "12", "1.5h", "-3d", "3 weeks"])
def test_malformed_durations(text):
    with pytest.raises(KeyCommandError, match="--grace"):
        parse_duration(text, "--grace")
