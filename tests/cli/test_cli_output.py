"""What the `tiergen` command prints, without a router: `--router` addresses, protobuf messages
as `--json` documents, and progress as plain lines or as in-place lines on a terminal."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
from tiergen.router.v1 import router_pb2

from services.cli.json_output import message_document
from services.cli.progress import LineProgress, LiveProgress, progress_view
from services.cli.router_client import RouterAddressError, router_address, router_target

# --router.


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("router.example.com", "router.example.com:50051"),
        ("router.example.com:443", "router.example.com:443"),
        ("127.0.0.1", "127.0.0.1:50051"),
        ("127.0.0.1:6000", "127.0.0.1:6000"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:50051", "[::1]:50051"),
        ("[fd00::7]:7000", "[fd00::7]:7000"),
        ("::1", "[::1]:50051"),
        (" localhost ", "localhost:50051"),
        ("dns:///router.example.com:443", "dns:///router.example.com:443"),
        ("unix:/run/tiergen.sock", "unix:/run/tiergen.sock"),
    ],
)
def test_a_router_address_gets_the_default_port_when_it_names_none(
    given: str, dialled: str
) -> None:
    assert router_address(given) == dialled


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "--router is empty: expected HOST or HOST:PORT"),
        (":50051", "--router ':50051': expected HOST or HOST:PORT"),
        ("router:http", "--router 'router:http': the port must be a number from 1 to 65535"),
        ("router:0", "--router 'router:0': the port must be a number from 1 to 65535"),
        ("router:65536", "--router 'router:65536': the port must be a number from 1 to 65535"),
        ("[::1", "--router '[::1': expected [IPV6] or [IPV6]:PORT"),
        ("[::1]50051", "--router '[::1]50051': expected [IPV6] or [IPV6]:PORT"),
    ],
)
def test_a_malformed_router_address_says_what_is_wrong(given: str, message: str) -> None:
    with pytest.raises(RouterAddressError) as caught:
        router_address(given)
    assert str(caught.value) == message


def test_each_address_of_a_list_is_read_alone() -> None:
    assert router_target("a,b:7000,[::1]") == "a:50051,b:7000,[::1]:50051"


# --json.


def _sample_class() -> Any:
    """A message with every shape of 64-bit integer field: scalar, repeated, nested, in a map,
    in a map of messages, in a wrapper, beside 32-bit integers, strings and enums."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="sample.proto", package="sample", dependency=["google/protobuf/wrappers.proto"]
    )
    f = descriptor_pb2.FieldDescriptorProto
    inner = proto.message_type.add(name="Inner")
    inner.field.add(name="cost", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    inner.field.add(name="note", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    outer = proto.message_type.add(name="Outer")
    entry = outer.nested_type.add(name="TotalsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=f.TYPE_UINT64, label=f.LABEL_OPTIONAL)
    by_id = outer.nested_type.add(name="ByIdEntry")
    by_id.options.map_entry = True
    by_id.field.add(name="key", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
    by_id.field.add(
        name="value",
        number=2,
        type=f.TYPE_MESSAGE,
        type_name=".sample.Inner",
        label=f.LABEL_OPTIONAL,
    )
    fields: list[tuple[str, int, int, str]] = [
        ("balance", f.TYPE_INT64, f.LABEL_OPTIONAL, ""),
        ("seed", f.TYPE_UINT64, f.LABEL_OPTIONAL, ""),
        ("delta", f.TYPE_SINT64, f.LABEL_OPTIONAL, ""),
        ("checksum", f.TYPE_FIXED64, f.LABEL_OPTIONAL, ""),
        ("offset", f.TYPE_SFIXED64, f.LABEL_OPTIONAL, ""),
        ("small", f.TYPE_INT32, f.LABEL_OPTIONAL, ""),
        ("name", f.TYPE_STRING, f.LABEL_OPTIONAL, ""),
        ("history", f.TYPE_INT64, f.LABEL_REPEATED, ""),
        ("inner", f.TYPE_MESSAGE, f.LABEL_OPTIONAL, ".sample.Inner"),
        ("inners", f.TYPE_MESSAGE, f.LABEL_REPEATED, ".sample.Inner"),
        ("totals", f.TYPE_MESSAGE, f.LABEL_REPEATED, ".sample.Outer.TotalsEntry"),
        ("by_id", f.TYPE_MESSAGE, f.LABEL_REPEATED, ".sample.Outer.ByIdEntry"),
        ("wrapped", f.TYPE_MESSAGE, f.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ]
    for number, (name, kind, label, type_name) in enumerate(fields, start=1):
        field = outer.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sample.Outer"))


def test_64_bit_integers_are_json_numbers_everywhere_in_a_message() -> None:
    outer = _sample_class()()
    outer.balance = -(2**62)
    outer.seed = 2**64 - 1
    outer.delta = -5
    outer.checksum = 2**63
    outer.offset = -7
    outer.small = 3
    outer.name = "12"
    outer.history.extend([1, -2, 2**40])
    outer.inner.cost = 400
    outer.inner.note = "400"
    outer.inners.add(cost=1)
    outer.inners.add(cost=2**50, note="x")
    outer.totals["nano"] = 2**63 + 1
    outer.by_id[-3].cost = 9
    outer.wrapped.value = 2**33

    document = message_document(outer)

    assert document == {
        "balance": -(2**62),
        "seed": 2**64 - 1,
        "delta": -5,
        "checksum": 2**63,
        "offset": -7,
        "small": 3,
        "name": "12",
        "history": [1, -2, 2**40],
        "inner": {"cost": 400, "note": "400"},
        "inners": [{"cost": 1}, {"cost": 2**50, "note": "x"}],
        "totals": {"nano": 2**63 + 1},
        # JSON object keys are strings, whatever the map's key type.
        "by_id": {"-3": {"cost": 9}},
        "wrapped": 2**33,
    }
    # Printed, they are numbers, exact even past 2**53.
    text = json.dumps(document)
    assert '"seed": 18446744073709551615' in text
    assert '"name": "12"' in text


def test_a_job_prints_its_cost_and_seed_as_numbers() -> None:
    job = router_pb2.Job(job_id="j1", cost=12, seed=2**63 + 5, status=router_pb2.JOB_STATUS_QUEUED)
    assert message_document(job) == {
        "job_id": "j1",
        "cost": 12,
        "seed": 2**63 + 5,
        "status": "JOB_STATUS_QUEUED",
    }


# Progress.


def _events() -> tuple[router_pb2.Batch, list[Any]]:
    batch = router_pb2.Batch(batch_id="b1")
    batch.decision.n = 2
    batch.decision.tier = "nano"
    batch.decision.width = batch.decision.height = 512
    batch.decision.total_cost = 2
    batch.jobs.add(job_id="j1", tier="nano")
    batch.jobs.add(job_id="j2", tier="nano")

    def progress(job_id: str, stage: str, fraction: float) -> router_pb2.JobProgress:
        event = router_pb2.JobProgress(job_id=job_id)
        event.progress.stage = stage
        event.progress.fraction = fraction
        return event

    return batch, [
        progress("j1", "rendering", 0.5),
        progress("j2", "rendering", 0.25),
        router_pb2.Job(job_id="j1", tier="nano", status=router_pb2.JOB_STATUS_SUCCEEDED),
        router_pb2.Job(job_id="j2", tier="nano", status=router_pb2.JOB_STATUS_FAILED),
    ]


def _feed(view: Any, batch: router_pb2.Batch, events: list[Any]) -> None:
    view.batch(batch)
    for event in events:
        if isinstance(event, router_pb2.JobProgress):
            view.progress(event)
        else:
            view.finished(event)


def test_plain_progress_is_one_line_per_event() -> None:
    lines: list[str] = []
    batch, events = _events()
    _feed(LineProgress(lines.append), batch, events)
    upscale = router_pb2.Job(job_id="u1", width=2048, height=2048)
    LineProgress(lines.append).accepted(upscale)
    assert lines == [
        "batch b1: 2 x nano 512x512, 2 credits held",
        "j1 rendering 50%",
        "j2 rendering 25%",
        "j1 JOB_STATUS_SUCCEEDED",
        "j2 JOB_STATUS_FAILED",
        "u1 accepted: upscale 2048x2048",
    ]


@pytest.fixture
def terminal() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A pseudo-terminal: the end a command writes to, and the descriptor a person reads."""
    reader, writer = os.openpty()
    stream = open(writer, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        yield stream, reader
    finally:
        stream.close()
        os.close(reader)


def _read_all(descriptor: int) -> str:
    chunks = []
    os.set_blocking(descriptor, False)
    while True:
        try:
            chunk = os.read(descriptor, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    # The terminal turns each "\n" into "\r\n" on its way out.
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_on_a_terminal_each_job_has_one_line_rewritten_in_place(
    terminal: tuple[io.TextIOWrapper, int],
) -> None:
    stream, reader = terminal
    view = progress_view(stream)
    assert isinstance(view, LiveProgress)
    now = [100.0]
    view = LiveProgress(stream, clock=lambda: now[0], width=lambda: 80)
    batch, events = _events()
    view.batch(batch)
    for event in events:
        now[0] += 1.5
        if isinstance(event, router_pb2.JobProgress):
            view.progress(event)
        else:
            view.finished(event)

    clear, up = "\x1b[2K", "\x1b[2F"
    empty = "[" + "-" * 20 + "]"

    def block(first: str, second: str) -> str:
        return f"{clear}{first}\n{clear}{second}\n"

    assert _read_all(reader) == (
        "batch b1: 2 x nano 512x512, 2 credits held\n"
        + block(
            f"j1  nano       {empty}   0%  queued        0.0s",
            f"j2  nano       {empty}   0%  queued        0.0s",
        )
        + up
        + block(
            f"j1  nano       [{'#' * 10}{'-' * 10}]  50%  rendering     1.5s",
            f"j2  nano       {empty}   0%  queued        1.5s",
        )
        + up
        + block(
            f"j1  nano       [{'#' * 10}{'-' * 10}]  50%  rendering     3.0s",
            f"j2  nano       [{'#' * 5}{'-' * 15}]  25%  rendering     3.0s",
        )
        + up
        + block(
            f"j1  nano       [{'#' * 20}] 100%  succeeded     4.5s",
            f"j2  nano       [{'#' * 5}{'-' * 15}]  25%  rendering     4.5s",
        )
        + up
        + block(
            f"j1  nano       [{'#' * 20}] 100%  succeeded     4.5s",
            f"j2  nano       [{'#' * 5}{'-' * 15}]  25%  failed        6.0s",
        )
    )


def test_a_line_is_cut_to_the_terminal_width(terminal: tuple[io.TextIOWrapper, int]) -> None:
    stream, reader = terminal
    view = LiveProgress(stream, clock=lambda: 0.0, width=lambda: 31)
    view.accepted(router_pb2.Job(job_id="job-with-a-long-id", upscale_factor=2))
    assert _read_all(reader) == "\x1b[2Kjob-with-a-long-id  upscale x2\n"


def test_off_a_terminal_or_quiet_the_lines_are_plain_or_none() -> None:
    captured = io.StringIO()
    view = progress_view(captured)
    assert isinstance(view, LineProgress)
    view.finished(router_pb2.Job(job_id="j1", status=router_pb2.JOB_STATUS_SUCCEEDED))
    quiet = progress_view(captured, quiet=True)
    quiet.finished(router_pb2.Job(job_id="j2", status=router_pb2.JOB_STATUS_SUCCEEDED))
    assert captured.getvalue() == "j1 JOB_STATUS_SUCCEEDED\n"


def test_a_refresh_moves_the_elapsed_time_on_until_the_jobs_finish(
    terminal: tuple[io.TextIOWrapper, int],
) -> None:
    stream, reader = terminal
    now = [0.0]
    view = LiveProgress(stream, clock=lambda: now[0], width=lambda: 80)
    view.accepted(router_pb2.Job(job_id="u1", upscale_factor=4))
    now[0] = 2.5
    view.refresh()
    view.finished(
        router_pb2.Job(job_id="u1", upscale_factor=4, status=router_pb2.JOB_STATUS_SUCCEEDED)
    )
    now[0] = 9.0
    view.refresh()  # nothing left to move on: nothing drawn

    empty, full = "-" * 20, "#" * 20
    assert _read_all(reader) == (
        f"\x1b[2Ku1  upscale x4 [{empty}]   0%  queued        0.0s\n"
        f"\x1b[1F\x1b[2Ku1  upscale x4 [{empty}]   0%  queued        2.5s\n"
        f"\x1b[1F\x1b[2Ku1  upscale x4 [{full}] 100%  succeeded     2.5s\n"
    )
