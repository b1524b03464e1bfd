"""The fair order, step by step: tenants by weight, accounts evenly, interactive first within
its bound, bulk never starved, and a free worker never left idle while a job could take it."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.runtime.fairshare import (
    Claim,
    FairOrder,
    Lane,
    TenantWeights,
    Urgency,
    parse_weights,
)

BULK, INTERACTIVE = Urgency.BULK, Urgency.INTERACTIVE


def claim(
    tenant: str,
    urgency: Urgency = BULK,
    cost: float = 1.0,
    account: str = "a",
    group: str = "g",
) -> Claim:
    return Claim(tenant, account, urgency, group, cost)


def starts(order: FairOrder, count: int, lane: Lane = Lane.SHARED) -> list[Claim]:
    """The next `count` claims to start, one free worker after another."""
    started = []
    for _ in range(count):
        next_claim = order.next(lane)
        assert next_claim is not None
        started.append(next_claim)
    return started


def test_backlogged_tenants_share_starts_by_weight() -> None:
    order = FairOrder(parse_weights("acme=2,globex=1"))
    for _ in range(300):
        order.add(claim("acme"))
        order.add(claim("globex"))

    started = Counter(c.tenant for c in starts(order, 90))

    assert started == {"acme": 60, "globex": 30}


def test_shares_are_of_work_not_of_jobs() -> None:
    # acme's jobs are pro 4K renders (4 s), globex's nano sketches (0.05 s), equal weights: they
    # get equal seconds of work, so globex starts eighty jobs for each of acme's.
    order = FairOrder()
    for _ in range(50):
        order.add(claim("acme", cost=4.0))
    for _ in range(4000):
        order.add(claim("globex", cost=0.05))

    seconds: Counter[str] = Counter()
    while seconds.total() < 160:
        started = order.next(Lane.SHARED)
        assert started is not None
        seconds[started.tenant] += started.cost

    # Start-time fair queueing's bound: one job of each, over its weight.
    assert abs(seconds["acme"] - seconds["globex"]) <= 4.0 + 0.05


def test_a_tenants_accounts_share_its_part_evenly() -> None:
    order = FairOrder()
    for _ in range(100):
        order.add(claim("acme", account="batch-user"))
    for _ in range(3):
        order.add(claim("acme", account="sketcher"))

    first_six = [c.account for c in starts(order, 6)]

    assert first_six.count("sketcher") == 3
    assert first_six.count("batch-user") == 3


def test_a_tenant_that_was_idle_saves_no_credit() -> None:
    order = FairOrder()
    for _ in range(100):
        order.add(claim("acme"))
    starts(order, 100)  # acme alone has had every worker: work-conserving
    for _ in range(10):
        order.add(claim("acme"))
        order.add(claim("globex"))

    # globex, back from idleness, does not get ten starts in a row for acme's hundred.
    assert Counter(c.tenant for c in starts(order, 4)) == {"acme": 2, "globex": 2}


def test_interactive_work_goes_first_within_its_bound() -> None:
    order = FairOrder(interactive_burst=3)
    for _ in range(20):
        order.add(claim("acme", BULK))
        order.add(claim("globex", INTERACTIVE, cost=0.05))

    pattern = "".join("i" if c.urgency is INTERACTIVE else "b" for c in starts(order, 12))

    assert pattern == "iiib" * 3


def test_interactive_work_alone_is_not_held_back() -> None:
    order = FairOrder(interactive_burst=2)
    for _ in range(10):
        order.add(claim("globex", INTERACTIVE))

    assert all(c.urgency is INTERACTIVE for c in starts(order, 10))


def test_an_interactive_lane_takes_only_interactive_work_and_does_not_use_the_bound() -> None:
    order = FairOrder(interactive_burst=1)
    order.add(claim("acme", BULK))
    for _ in range(5):
        order.add(claim("globex", INTERACTIVE))

    assert all(c.urgency is INTERACTIVE for c in starts(order, 5, Lane.INTERACTIVE))
    assert order.next(Lane.INTERACTIVE) is None
    # The lane's five did not use up the bound: the shared worker still prefers bulk only
    # after an interactive start of its own, and here there is none left.
    assert order.next(Lane.SHARED) is not None


def test_bulk_is_never_starved_by_endless_interactive_work() -> None:
    burst = 4
    order = FairOrder(interactive_burst=burst)
    # Three tenants with deep bulk queues; the victim's job is the last of its own ten.
    for tenant in ("acme", "globex", "initech"):
        for _ in range(10):
            order.add(claim(tenant, BULK))
    victim = order.claims()
    last = [c for c in victim if c.tenant == "initech"][-1]
    sketches = itertools.count()

    started_at = None
    for step in range(10_000):
        # An adversary keeps interactive work waiting at every moment.
        while sum(1 for c in order.claims() if c.urgency is INTERACTIVE) < 5:
            order.add(claim(f"sketcher-{next(sketches) % 7}", INTERACTIVE, cost=0.05))
        if order.next(Lane.SHARED) is last:
            started_at = step
            break

    # 30 bulk jobs of equal cost and weight go round robin, so the last of initech's ten is
    # at most the 30th bulk start, and every (burst + 1)th start is bulk.
    assert started_at is not None
    assert started_at < 30 * (burst + 1)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["add", "start", "finish"]),
            st.sampled_from(["acme", "globex", "initech"]),
            st.sampled_from([INTERACTIVE, BULK]),
            st.sampled_from(["nano", "pro"]),
            st.sampled_from([0.05, 0.35, 1.0, 4.0]),
        ),
        max_size=120,
    ),
    burst=st.integers(min_value=1, max_value=5),
    workers=st.integers(min_value=1, max_value=3),
)
def test_any_history_is_work_conserving_bounded_and_loses_nothing(
    events: list[tuple[str, str, Urgency, str, float]], burst: int, workers: int
) -> None:
    # Groups capped as tiers are: at most one "pro" job runs at once.
    caps = {"nano": workers, "pro": 1}
    order = FairOrder(parse_weights("acme=3,globex=1"), interactive_burst=burst)
    running: list[Claim] = []
    added: list[Claim] = []
    started: list[Claim] = []
    interactive_in_a_row = 0

    def eligible(c: Claim) -> bool:
        return sum(1 for r in running if r.group == c.group) < caps[c.group]

    def fill() -> None:
        nonlocal interactive_in_a_row
        while len(running) < workers:
            bulk_ready = any(c.urgency is BULK and eligible(c) for c in order.claims())
            next_claim = order.next(Lane.SHARED, eligible)
            if next_claim is None:
                # Work-conserving: a free worker stays idle only when nothing may take it.
                assert not any(eligible(c) for c in order.claims())
                return
            assert eligible(next_claim)
            if next_claim.urgency is INTERACTIVE and bulk_ready:
                interactive_in_a_row += 1
                assert interactive_in_a_row <= burst
            elif next_claim.urgency is BULK:
                interactive_in_a_row = 0
            running.append(next_claim)
            started.append(next_claim)

    for kind, tenant, urgency, group, cost in events:
        if kind == "add":
            new = claim(tenant, urgency, cost, group=group)
            added.append(new)
            order.add(new)
        elif kind == "finish" and running:
            running.pop(0)
        fill()
    while running:
        running.pop(0)
        fill()

    assert len(order) == 0
    assert sorted(map(id, started)) == sorted(map(id, added))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", TenantWeights()),
        ("acme=2, globex=1", TenantWeights({"acme": 2.0, "globex": 1.0})),
        ("acme=2,*=0.5", TenantWeights({"acme": 2.0}, 0.5)),
    ],
)
def test_weights_parse(text: str, expected: TenantWeights) -> None:
    assert parse_weights(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("acme", "is not tenant=weight"),
        ("=2", "is not tenant=weight"),
        ("acme=two", "the weight must be a number"),
        ("acme=0", "must be above 0"),
        ("acme=-1", "must be above 0"),
        ("acme=inf", "must be above 0"),
        ("acme=1,acme=2", "listed twice"),
        ("ac me=1", "is not a tenant name"),
    ],
)
def test_bad_weights_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_weights(text)


def test_unlisted_tenants_get_the_default_weight() -> None:
    weights: Callable[[str], float] = parse_weights("acme=4,*=2").of
    assert (weights("acme"), weights("globex")) == (4.0, 2.0)
