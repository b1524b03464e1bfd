"""`tiergen load --tenants`: tenants inline or from a TOML file, each with its key, clients, pace
and spec, and the mistakes it names before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.cli.load import LoadError, LoadPlan, TenantLoad, summary
from services.cli.load_tenants import parse_tenants
from services.runtime.credentials import BearerToken

ACME_KEY = "tgk_0000000a_" + "A" * 43
GLOBEX_KEY = "tgk_0000000b_" + "B" * 43
BASE = router_pb2.GenerationSpec(
    prompt="a lighthouse at dusk, load test",
    tier="nano",
    stage=common_pb2.STAGE_EXPLORE,
    resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
    n=1,
)


def test_inline_tenants_take_keys_from_files_and_variables(tmp_path: Path) -> None:
    key_file = tmp_path / "acme.key"
    key_file.write_text(ACME_KEY + "\n")

    acme, globex = parse_tenants(
        f"acme=@{key_file}:6, globex=env:GLOBEX_KEY", BASE, {"GLOBEX_KEY": GLOBEX_KEY}
    )

    assert (acme.name, acme.token.secret, acme.clients) == ("acme", ACME_KEY, 6)
    assert (globex.name, globex.token.secret, globex.clients) == ("globex", GLOBEX_KEY, None)
    assert acme.spec is None  # the command's own


def test_a_file_gives_each_tenant_its_own_spec_and_pace(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "acme.key").write_text(ACME_KEY)
    path = tmp_path / "tenants.toml"
    path.write_text(
        """
[tenants.acme]
key_file = "keys/acme.key"
clients = 6
tier = "pro"
stage = "refine"
size = "2K"
n = 4
credits = 100000

[tenants.globex]
key_env = "GLOBEX_KEY"
clients = 1
rate = 2
mix = "generate=3,quote=1"
"""
    )

    acme, globex = parse_tenants(str(path), BASE, {"GLOBEX_KEY": GLOBEX_KEY})

    assert acme.spec is not None and globex.spec is not None
    assert (acme.spec.tier, acme.spec.stage, acme.spec.resolution.size, acme.spec.n) == (
        "pro",
        common_pb2.STAGE_REFINE,
        common_pb2.IMAGE_SIZE_2K,
        4,
    )
    assert (acme.clients, acme.rate, acme.credits) == (6, None, 100000)
    # What a tenant leaves out is the command's.
    assert (globex.spec.tier, globex.spec.prompt) == ("nano", BASE.prompt)
    assert (globex.clients, globex.rate, globex.mix) == (1, 2.0, {"generate": 3, "quote": 1})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acme", "--tenants entries are NAME=@KEY_FILE"),
        ("acme=@/no/such/file", "--tenants acme: cannot read the key file /no/such/file"),
        ("acme=env:NOT_SET", "--tenants acme: NOT_SET is not set"),
        ("acme=has blanks", "--tenants acme: the key is malformed"),
    ],
)
def test_inline_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(LoadError, match=message):
        parse_tenants(text, BASE, {})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[tenants.acme]\nclients = 2\n", "tenants.acme: give exactly one of key_file"),
        ('[tenants.acme]\nkey_env = "K"\nspeed = 3\n', "tenants.acme: unknown field"),
        ('[tenants.acme]\nkey_env = "K"\nstage = "dream"\n', "tenants.acme.stage: unknown"),
        ('[tenants.acme]\nkey_env = "K"\nsize = "8K"\n', "tenants.acme.size: expected one of"),
        ('[tenants.acme]\nkey_env = "K"\nclients = "six"\n', "tenants.acme.clients: expected"),
        ('[tenants.acme]\nkey_env = "K"\nrate = "fast"\n', "tenants.acme.rate: expected"),
        ("[other]\n", r"expected \[tenants.NAME\] tables"),
        ("tenants = [", "not valid TOML"),
    ],
)
def test_file_mistakes_name_the_file_tenant_and_field(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(body)
    with pytest.raises(LoadError, match=message) as caught:
        parse_tenants(str(path), BASE, {"K": ACME_KEY})
    assert str(path) in str(caught.value)


def test_a_plan_checks_each_tenants_part() -> None:
    token = BearerToken(ACME_KEY)
    plan = LoadPlan(
        router="127.0.0.1:9",
        spec=BASE,
        tenants=(TenantLoad("acme", token), TenantLoad("globex", token, clients=0)),
    )
    with pytest.raises(LoadError, match="clients must be at least 1"):
        plan.check()
    twice = LoadPlan(
        router="127.0.0.1:9",
        spec=BASE,
        tenants=(TenantLoad("acme", token), TenantLoad("acme", token)),
    )
    with pytest.raises(LoadError, match="a tenant is named twice"):
        twice.check()


def test_the_summary_gives_each_tenant_its_lines() -> None:
    tenant = {
        "requests": 4,
        "seconds": 1.0,
        "per_second": 4.0,
        "clients": 1,
        "ok": 4,
        "errors": 0,
        "credits_spent": 8,
        "behind_schedule": 0,
        "operations": {"generate": {"count": 4, "errors": {}, "latency_ms": {"p50": 50.0}}},
    }
    report = {
        "requests": 8,
        "seconds": 1.0,
        "ok": 8,
        "errors": 0,
        "tenants": {"acme": tenant, "globex": tenant},
    }

    lines = summary(report).splitlines()

    assert lines[0] == "2 tenants, 8 requests in 1.0 s: 8 ok, 0 failed"
    assert "tenant acme:" in lines and "tenant globex:" in lines
    assert any(line.startswith("    generate") for line in lines)
