"""The activity the backup and role tests put in a ledger and a job store: every kind of row."""

from __future__ import annotations

from tiergen.common.v1 import common_pb2
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from tests.router.conftest import MAIN_TENANT
from tests.tls import session_pki

ACCOUNTS = ("alice", "bob")
_SQUARE_1K = common_pb2.Resolution(
    size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
)


async def trade(
    router: router_pb2_grpc.RouterServiceStub, ledger_address: str
) -> list[router_pb2.Job]:
    """Accounts opened, a grant, two images generated (their hold captured) through `router`;
    then at the ledger, as the router calls it, a hold released, one partly captured and one
    left open. The jobs delivered."""
    for account in ACCOUNTS:
        await router.OpenAccount(
            router_pb2.OpenAccountRequest(account_id=account, idempotency_key=account)
        )
    await router.Grant(
        router_pb2.GrantRequest(
            account_id="alice", amount=100, reason="order 1", idempotency_key="buy-1"
        )
    )
    request = router_pb2.GenerateRequest(
        account_id="alice",
        idempotency_key="first-images",
        spec=router_pb2.GenerationSpec(
            prompt="a lighthouse at dusk", tier="nano", n=2, resolution=_SQUARE_1K
        ),
    )
    jobs = [
        event.job async for event in router.Generate(request) if event.WhichOneof("event") == "job"
    ]
    assert [job.status for job in jobs] == [router_pb2.JOB_STATUS_SUCCEEDED] * 2, jobs
    async with session_pki().channel(ledger_address, "router") as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)

        async def reserve(account: str, amount: int, key: str) -> str:
            reply = await ledger.Reserve(
                ledger_pb2.ReserveRequest(
                    tenant=MAIN_TENANT,
                    account_id=account,
                    amount=amount,
                    ttl_seconds=3600,
                    idempotency_key=key,
                )
            )
            return str(reply.hold.hold_id)

        released = await reserve("bob", 30, "reserve-1")
        await ledger.Release(
            ledger_pb2.ReleaseRequest(tenant=MAIN_TENANT, hold_id=released, idempotency_key="r1")
        )
        partly = await reserve("bob", 20, "reserve-2")
        await ledger.Capture(
            ledger_pb2.CaptureRequest(
                tenant=MAIN_TENANT, hold_id=partly, amount=15, idempotency_key="c2"
            )
        )
        await reserve("alice", 10, "reserve-open")
    return jobs
