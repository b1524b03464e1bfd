"""The ledger's figures on both stores: holds open (read from the database at each scrape, over
every tenant), holds expired, and the store's connections."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.ledger.ledger import Ledger
from tests.ledger.conftest import TENANT


async def _scraped(name: str, **labels: str) -> float | None:
    """A sample as a scrape reads it: on another thread than the ledger's event loop."""
    text = (await asyncio.to_thread(generate_latest, REGISTRY)).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _expired() -> float:
    return REGISTRY.get_sample_value("tiergen_ledger_holds_expired_total") or 0.0


async def test_open_holds_are_counted_over_every_tenant_until_settled_or_past_expiry(
    ledger: Ledger, clock
):
    for tenant in (TENANT, "another-tenant"):
        await ledger.open_account(tenant, "alice", f"open-{tenant}")
    assert await _scraped("tiergen_ledger_holds_open") == 0

    first = await ledger.reserve(TENANT, "alice", 10, "a", ttl_seconds=60)
    await ledger.reserve("another-tenant", "alice", 10, "b", ttl_seconds=60)
    await ledger.reserve(TENANT, "alice", 10, "c", ttl_seconds=600)
    assert await _scraped("tiergen_ledger_holds_open") == 3

    await ledger.release(TENANT, first.hold.hold_id, "release")
    assert await _scraped("tiergen_ledger_holds_open") == 2
    clock.advance(seconds=61)
    assert await _scraped("tiergen_ledger_holds_open") == 1


async def test_holds_expired_by_the_sweep_or_on_access_are_counted_once(ledger: Ledger, clock):
    await ledger.open_account(TENANT, "alice", "open")
    await ledger.open_account(TENANT, "bob", "open")
    before = _expired()
    for number, account in enumerate(("alice", "alice", "bob")):
        await ledger.reserve(TENANT, account, 5, f"hold-{number}", ttl_seconds=30)
    clock.advance(seconds=31)

    await ledger.get_balance(TENANT, "bob")  # returns bob's hold on access
    assert _expired() - before == 1
    assert await ledger.sweep_expired() == 2
    assert await ledger.sweep_expired() == 0
    assert _expired() - before == 3


async def test_the_store_reports_its_connections(ledger: Ledger):
    await ledger.open_account(TENANT, "alice", "open")

    idle = await _scraped("tiergen_db_pool_connections", store="ledger", state="idle")
    in_use = await _scraped("tiergen_db_pool_connections", store="ledger", state="in_use")
    assert idle is not None and idle >= 1
    assert in_use == 0
    assert await _scraped("tiergen_db_pool_waiting", store="ledger") == 0
