"""No race lets an account overspend: 300 concurrent generations against credits for 40."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.ledger.ledger import Ledger
from services.ledger.settings import LedgerSettings
from services.router.routing.pricing import DEFAULT_PRICES_TOML

pytestmark = pytest.mark.slow

# Every call holds 10 credits of the 400 an account opens with: exactly 40 fit.
PRICES = DEFAULT_PRICES_TOML.replace('[generate.nano]\n"1K" = 2', '[generate.nano]\n"1K" = 10')


@pytest.fixture
def router_env(tmp_path: Path) -> dict[str, str]:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    assert PRICES != DEFAULT_PRICES_TOML
    return {"TIERGEN_ROUTER_PRICES_FILE": str(prices)}


async def test_300_concurrent_generations_deliver_exactly_what_the_credits_cover(suite):
    account = await suite.open_account()
    spec = router_pb2.GenerationSpec(
        prompt="a lighthouse in fog",
        tier="nano",
        resolution=common_pb2.Resolution(size=common_pb2.IMAGE_SIZE_1K),
    )
    # Each read to its end: the hold is settled before the stream closes.
    outcomes = await asyncio.gather(*(suite.generate_outcome(account, spec) for _ in range(300)))
    assert outcomes.count(("JOB_STATUS_SUCCEEDED", "")) == 40, outcomes
    # The rest found no place in the tier (refused before any hold) or no credits left.
    refusals = {
        ("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS"),
        ("RESOURCE_EXHAUSTED", "QUEUE_FULL"),
    }
    assert set(outcomes) - {("JOB_STATUS_SUCCEEDED", "")} <= refusals, outcomes
    balance = await suite.balance(account)
    assert (balance.available, balance.held, balance.consumed) == (0, 0, 400)

    ledger = await Ledger.open(LedgerSettings(dsn=f"sqlite:///{suite.data_dir / 'ledger.db'}"))
    try:
        checks = await ledger.verify(sweep=False)
    finally:
        await ledger.close()
    assert all(check.ok for check in checks), [c for c in checks if not c.ok]
