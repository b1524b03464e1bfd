"""`tiergen webhooks` against a real router: an endpoint added shows its secret once, is listed
without it, paused, resumed, given a new secret (shown once, with the old one's grace) and
removed; deliveries are listed with their outcomes; a key without webhooks:admin, and a grace
out of range, are refused in one line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.test_cli_keys import fails, succeeds
from tests.router.conftest import EVERY_SCOPE, InProcessSuite, running_suite


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[InProcessSuite]:
    env = {"TIERGEN_ROUTER_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"}
    async with running_suite(tmp_path, env, {}) as running:
        yield running


async def test_add_list_pause_resume_deliveries_and_remove(suite: InProcessSuite) -> None:
    router = ("--router", suite.addresses["router"])
    key = suite.api_key
    added = json.loads(
        await succeeds(
            "webhooks", "add", *router, "--json",
            "--url", "https://127.0.0.1:9/hooks?token=t",
            "--events", "job.succeeded,credits.low",
            "--credits-low-threshold", "50",
            "--description", "render farm",
            api_key=key,
        )
    )  # fmt: skip
    secret = added["secret"]
    assert secret.startswith("whsec_")
    assert added["events"] == ["credits.low", "job.succeeded"]
    assert (added["state"], added["credits_low_threshold"]) == ("active", 50)
    webhook_id = added["webhook_id"]

    listed = await succeeds("webhooks", "list", *router, api_key=key)
    assert webhook_id in listed and "render farm" in listed and secret not in listed
    listed_json = json.loads(await succeeds("webhooks", "list", *router, "--json", api_key=key))
    assert [w["webhook_id"] for w in listed_json["webhooks"]] == [webhook_id]

    paused = json.loads(
        await succeeds("webhooks", "pause", *router, "--json", webhook_id, api_key=key)
    )
    assert paused["state"] == "paused" and paused["pause_reason"] == "paused by its tenant"
    resumed = await succeeds("webhooks", "resume", *router, webhook_id, api_key=key)
    assert "active" in resumed

    rotated = json.loads(
        await succeeds("webhooks", "rotate", *router, "--json", webhook_id, api_key=key)
    )
    new_secret = rotated["secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    assert rotated["previous_secret_expires"] == rotated["secret_rotation_expires"]
    assert rotated["previous_secret_expires"].endswith("Z")
    listed = await succeeds("webhooks", "list", *router, "--json", api_key=key)
    assert new_secret not in listed and secret not in listed
    assert json.loads(listed)["webhooks"][0]["secret_rotation_expires"]
    leaked = await succeeds(
        "webhooks", "rotate", *router, webhook_id, "--grace-seconds", "0", api_key=key
    )
    line, fresh, said = leaked.strip().splitlines()
    assert line.startswith(webhook_id) and fresh.startswith("whsec_")
    assert fresh not in (secret, new_secret) and said == "the old secret stopped"
    too_long = await fails(
        "webhooks", "rotate", *router, webhook_id, "--grace-seconds", "604801", api_key=key
    )
    assert "INVALID_ARGUMENT" in too_long and "grace_seconds" in too_long

    none = await succeeds("webhooks", "deliveries", *router, "--state", "failed", api_key=key)
    assert none.strip() == "no deliveries"

    removed = await succeeds("webhooks", "remove", *router, webhook_id, api_key=key)
    assert removed.strip() == f"removed {webhook_id}"
    assert (await succeeds("webhooks", "list", *router, api_key=key)).strip() == "no webhooks"
    missing = await fails("webhooks", "remove", *router, webhook_id, api_key=key)
    assert "NOT_FOUND" in missing and "WEBHOOK_NOT_FOUND" in missing


async def test_refusals_are_one_line(suite: InProcessSuite) -> None:
    router = ("--router", suite.addresses["router"])
    unscoped = await suite.new_key(scopes=[s for s in EVERY_SCOPE if s != "webhooks:admin"])
    line = await fails("webhooks", "list", *router, api_key=unscoped)
    assert "PERMISSION_DENIED" in line and "SCOPE_MISSING" in line
    line = await fails(
        "webhooks", "add", *router, "--url", "https://169.254.169.254/", "--events",
        "job.failed", api_key=suite.api_key,
    )  # fmt: skip
    assert "WEBHOOK_TARGET_REFUSED" in line
    line = await fails(
        "webhooks", "add", *router, "--url", "https://127.0.0.1:9/", "--events", "job.done",
        api_key=suite.api_key,
    )  # fmt: skip
    assert "--events" in line
