"""Real processes racing: client processes against a ledger process, on both stores, and two
ledger processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
import multiprocessing
import traceback
from collections import Counter
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tiergen.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.ledger.model import SystemClock
from tests.tls import session_pki

pytestmark = pytest.mark.slow

#: ("ok", serialized ReserveResponse) or ("error", status code name, reason, metadata).
Outcome = tuple[Any, ...]

_CLIENT_SECONDS = 60.0


def _fire_reserves(
    address: str, requests: list[bytes], barrier: Barrier, answers: Connection
) -> None:
    """Client process: connect, wait for the others, then send every Reserve at once."""

    async def fire() -> list[Outcome]:
        async with session_pki().channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), _CLIENT_SECONDS)
            stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            await asyncio.to_thread(barrier.wait, _CLIENT_SECONDS)
            calls = [
                stub.Reserve(ledger_pb2.ReserveRequest.FromString(request), timeout=_CLIENT_SECONDS)
                for request in requests
            ]
            return list(await asyncio.gather(*(_outcome(call) for call in calls)))

    try:
        answers.send(("done", asyncio.run(fire())))
    except BaseException:
        answers.send(("crashed", traceback.format_exc()))
    finally:
        answers.close()


async def _outcome(call: Any) -> Outcome:
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)
        info = error_details_pb2.ErrorInfo()
        for packed in status.details if status is not None else ():
            if packed.Is(info.DESCRIPTOR):
                packed.Unpack(info)
        return ("error", error.code().name, info.reason, dict(info.metadata))
    return ("ok", response.SerializeToString())


async def reserve_from_processes(batches: list[tuple[str, list[Any]]]) -> list[list[Outcome]]:
    """Send each batch of ReserveRequests from its own client process, all at the same moment.

    `batches` pairs a ledger address with the requests one process sends to it concurrently;
    the answer has each batch's outcomes in the order of its requests.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(batches))
    processes = []
    receivers = []
    for address, requests in batches:
        receiver, sender = context.Pipe(duplex=False)
        serialized = [request.SerializeToString() for request in requests]
        process = context.Process(
            target=_fire_reserves, args=(address, serialized, barrier, sender), daemon=True
        )
        process.start()
        sender.close()
        processes.append(process)
        receivers.append(receiver)

    def collect() -> list[list[Outcome]]:
        outcomes: list[list[Outcome]] = []
        try:
            for receiver in receivers:
                assert receiver.poll(2 * _CLIENT_SECONDS), "a client process gave no answer"
                status, body = receiver.recv()
                assert status == "done", f"a client process failed:\n{body}"
                outcomes.append(body)
        finally:
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()
            for receiver in receivers:
                receiver.close()
        return outcomes

    return await asyncio.to_thread(collect)


def reserve(account_id: str, amount: int, key: str) -> ledger_pb2.ReserveRequest:
    return ledger_pb2.ReserveRequest(account_id=account_id, amount=amount, idempotency_key=key)


async def open_accounts(address: str, *account_ids: str) -> None:
    async with session_pki().channel(address) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for account_id in account_ids:
            await stub.OpenAccount(
                ledger_pb2.OpenAccountRequest(account_id=account_id, idempotency_key="open"),
                timeout=30,
            )


async def balance_of(address: str, account_id: str) -> ledger_pb2.Balance:
    async with session_pki().channel(address) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        reply = await stub.GetBalance(
            ledger_pb2.GetBalanceRequest(account_id=account_id), timeout=30
        )
        return reply.balance


async def failed_invariants(harness) -> list[str]:
    ledger = await harness.open(SystemClock())
    return [check.name for check in await ledger.verify() if not check.ok]


def split(outcomes: list[Outcome]) -> tuple[list[ledger_pb2.ReserveResponse], list[Outcome]]:
    held = [
        ledger_pb2.ReserveResponse.FromString(outcome[1])
        for outcome in outcomes
        if outcome[0] == "ok"
    ]
    return held, [outcome for outcome in outcomes if outcome[0] != "ok"]


def assert_exactly_57_of_256_held(outcomes: list[Outcome]) -> list[ledger_pb2.ReserveResponse]:
    """The 400-credit race: 57 holds of 7 (399 credits), 199 refusals for want of credits."""
    held, refused = split(outcomes)
    assert len(outcomes) == 256
    assert len(held) == 57
    assert len({response.hold.hold_id for response in held}) == 57
    assert not any(response.replayed for response in held)
    assert Counter((code, reason) for _, code, reason, _ in refused) == {
        ("FAILED_PRECONDITION", "INSUFFICIENT_CREDITS"): 199
    }
    assert {metadata["required"] for *_, metadata in refused} == {"7"}
    assert all(0 <= int(metadata["available"]) < 7 for *_, metadata in refused)
    assert sorted(response.balance.available for response in held) == list(range(1, 400, 7))
    return held


def assert_one_effect(outcomes: list[Outcome], amount: int) -> ledger_pb2.ReserveResponse:
    """64 answers to one idempotency key: the same hold and balance, exactly one not a replay."""
    held, refused = split(outcomes)
    assert refused == []
    assert len(held) == 64
    assert sum(not response.replayed for response in held) == 1
    first = held[0]
    for response in held:
        assert (response.hold, response.balance) == (first.hold, first.balance)
    assert (first.hold.amount, first.balance.held) == (amount, amount)
    return first


async def test_256_reserves_from_4_client_processes_let_exactly_57_through(
    harness, ledger_processes
):
    ledger = ledger_processes(harness.dsn)
    address = await ledger.start()
    await open_accounts(address, "alice")

    batches = await reserve_from_processes(
        [(address, [reserve("alice", 7, f"p{p}-job-{i}") for i in range(64)]) for p in range(4)]
    )

    assert_exactly_57_of_256_held([outcome for batch in batches for outcome in batch])
    balance = await balance_of(address, "alice")
    assert (balance.available, balance.held, balance.total) == (1, 399, 400)
    assert await ledger.stop() == 0
    assert await failed_invariants(harness) == []


async def test_64_concurrent_calls_with_one_key_from_4_processes_have_one_effect(
    harness, ledger_processes
):
    ledger = ledger_processes(harness.dsn)
    address = await ledger.start()
    await open_accounts(address, "alice")

    batches = await reserve_from_processes(
        [(address, [reserve("alice", 30, "the-one-job")] * 16) for _ in range(4)]
    )

    answer = assert_one_effect([outcome for batch in batches for outcome in batch], 30)
    assert answer.balance.available == 370
    balance = await balance_of(address, "alice")
    assert (balance.available, balance.held) == (370, 30)


@pytest.mark.postgres
async def test_two_ledger_processes_over_one_postgres_keep_every_invariant(
    postgres_harness, ledger_processes
):
    first = ledger_processes(postgres_harness.dsn)
    second = ledger_processes(postgres_harness.dsn)
    # Started together: both apply (or skip) the schema migrations at the same moment.
    addresses = await asyncio.gather(first.start(), second.start())
    await open_accounts(addresses[0], "alice", "bob")

    # Each client process races for alice's credits, then retries bob's one job 16 times.
    batches = await reserve_from_processes(
        [
            (
                addresses[p % 2],
                [reserve("alice", 7, f"p{p}-job-{i}") for i in range(64)]
                + [reserve("bob", 30, "bobs-one-job")] * 16,
            )
            for p in range(4)
        ]
    )

    assert_exactly_57_of_256_held([outcome for batch in batches for outcome in batch[:64]])
    assert_one_effect([outcome for batch in batches for outcome in batch[64:]], 30)
    for address in addresses:
        alice = await balance_of(address, "alice")
        bob = await balance_of(address, "bob")
        assert (alice.available, alice.held, bob.available, bob.held) == (1, 399, 370, 30)
    assert await first.stop() == 0
    assert await second.stop() == 0
    assert await failed_invariants(postgres_harness) == []
