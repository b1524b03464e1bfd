"""The `tiergen` command against a real router: progress on stderr (plain in a pipe, rewritten in
place on a pseudo-terminal), 64-bit integers as JSON numbers, `--version`, and one clear line
for every way of not reaching the router."""

from __future__ import annotations

import asyncio
import fcntl
import importlib.metadata
import json
import os
import platform
import re
import socket
import struct
import sys
import termios
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from tiergen.router.v1 import router_pb2

from tests.router.conftest import InProcessSuite, running_suite
from tests.tls import session_pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

_ROOT = Path(__file__).resolve().parents[2]
_ESCAPE = "\x1b"


@dataclass(frozen=True)
class _Run:
    status: int
    stdout: str
    stderr: str


async def _tiergen(
    *args: str, api_key: str, stderr: int | None = None, env: dict[str, str] | None = None
) -> _Run:
    """`tiergen ARGS` in a process of its own; its stderr on the descriptor `stderr` (a
    terminal) when given, else captured."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        cwd=_ROOT,
        env={
            **os.environ,
            "TIERGEN_API_KEY": api_key,
            "TIERGEN_CA_FILE": str(session_pki().ca_file),
            "TERM": "xterm",
            **(env or {}),
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return _Run(process.returncode, out.decode(), (err or b"").decode())


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def suite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessSuite]:
    async with running_suite(tmp_path_factory.mktemp("cli-calls"), {}, {}) as running:
        yield running


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: (the end a command writes to, the end a person reads)."""
    reader, writer = os.openpty()
    # 100 columns by 40 rows, as a terminal window reports them.
    fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    try:
        yield writer, reader
    finally:
        os.close(writer)
        os.close(reader)


def _drain(descriptor: int) -> str:
    chunks = []
    os.set_blocking(descriptor, False)
    while True:
        try:
            chunk = os.read(descriptor, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode().replace("\r\n", "\n")


_PLAIN = [
    re.compile(r"batch \S+: 2 x nano \d+x\d+, \d+ credits held"),
    re.compile(r"\S+ \w+ \d+%"),
    re.compile(r"\S+ JOB_STATUS_[A-Z]+"),
]


async def test_a_batch_in_a_pipe_shows_plain_lines_and_prints_numbers(
    suite: InProcessSuite,
) -> None:
    account = await suite.open_account()
    where = ("--router", suite.addresses["router"], "--account", account)
    run = await _tiergen(
        "generate", *where, "--prompt", "a fox", "--tier", "nano", "-n", "2", "--seed", "7",
        "--json", api_key=suite.api_key,
    )  # fmt: skip
    assert run.status == 0, run.stderr[-2000:]

    document = json.loads(run.stdout)
    assert isinstance(document["decision"]["total_cost"], int)
    jobs = document["jobs"]
    assert [type(job["cost"]) for job in jobs] == [int, int]
    assert all(isinstance(job["seed"], int) for job in jobs)
    lines = run.stderr.splitlines()
    assert _ESCAPE not in run.stderr
    assert _PLAIN[0].fullmatch(lines[0]), lines
    for line in lines[1:]:
        assert any(pattern.fullmatch(line) for pattern in _PLAIN[1:]), line
    finals = sorted(line for line in lines if "JOB_STATUS_" in line)
    assert finals == sorted(f"{job['job_id']} JOB_STATUS_SUCCEEDED" for job in jobs)


async def test_an_upscale_on_a_terminal_rewrites_its_line_in_place(
    suite: InProcessSuite, terminal: tuple[int, int]
) -> None:
    writer, reader = terminal
    account = await suite.open_account()
    where = ("--router", suite.addresses["router"], "--account", account)
    request = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=f"cli-{account}",
        spec=router_pb2.GenerationSpec(prompt="a fox", tier="nano", n=1),
    )
    (job_id,) = [
        event.job.job_id
        async for event in suite.router.Generate(request)
        if event.WhichOneof("event") == "job"
    ]

    run = await _tiergen(
        "upscale", *where, "--job", job_id, "--factor", "2",
        api_key=suite.api_key, stderr=writer,
    )  # fmt: skip
    shown = _drain(reader)

    assert run.status == 0, shown[-2000:]
    frames = shown.split("\x1b[1F")
    # The first drawing, then every event's drawing over it: one line each time.
    assert len(frames) >= 2, shown
    for frame in frames:
        assert frame.startswith("\x1b[2K") and frame.endswith("\n"), frame
        assert frame.count("\n") == 1, frame
    assert re.fullmatch(
        r"\x1b\[2K\S+  upscale x2 +\[#{20}\] 100%  succeeded +\d+\.\ds\n", frames[-1]
    ), frames[-1]
    (printed,) = run.stdout.splitlines()
    assert " succeeded upscale x2 " in printed, printed


# `--version` and not reaching the router: processes that need no router run all at once.

_WHERE = "check the address, or give another with --router HOST[:PORT] or TIERGEN_ROUTER"
_TRUST = (
    "give the CA that signed the router's certificate with --ca-file or TIERGEN_CA_FILE (or"
    " --data-dir of the `tiergen up` that serves it)"
)


@dataclass(frozen=True)
class _Failures:
    runs: dict[str, _Run]
    #: The addresses tried: a port nothing listens on, a plaintext server, the suite's router.
    refused: str
    plaintext: str
    router: str

    def line(self, name: str) -> str:
        """The one line case `name` printed, after exiting 1 with nothing on stdout."""
        run = self.runs[name]
        assert (run.status, run.stdout) == (1, ""), (name, run)
        lines = run.stderr.splitlines()
        assert len(lines) == 1, (name, lines)
        return lines[0]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def failures(suite: InProcessSuite) -> AsyncIterator[_Failures]:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    plaintext = grpc.aio.server()
    port = plaintext.add_insecure_port("127.0.0.1:0")
    await plaintext.start()
    refused = f"127.0.0.1:{closed.getsockname()[1]}"
    served = f"127.0.0.1:{port}"
    router = suite.addresses["router"]
    balance = ("balance", "--account", "a1", "--router")
    cases: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
        "version": (("--version",), {"TIERGEN_COMMIT": "0a1b2c3"}),
        "refused": ((*balance, refused), {}),
        "plaintext server": ((*balance, served), {}),
        "another CA": ((*balance, router), {"TIERGEN_CA_FILE": str(session_pki().other_ca_file)}),
        "plaintext client": ((*balance, router, "--insecure"), {"TIERGEN_CA_FILE": ""}),
        # A malformed name fails in the resolver itself: no query leaves the machine.
        "unknown host": ((*balance, "router..invalid"), {}),
        "bad port": ((*balance, "router:http"), {}),
        "ledger refused": (("ledger", "balance", "--account", "a1", "--ledger", refused), {}),
    }
    try:
        runs = await asyncio.gather(
            *(_tiergen(*args, api_key=suite.api_key, env=env) for args, env in cases.values())
        )
    finally:
        closed.close()
        await plaintext.stop(0)
    results = dict(zip(cases, runs, strict=True))
    for name, run in results.items():
        assert "Traceback" not in run.stderr, (name, run.stderr)
    yield _Failures(results, refused, served, router)


async def test_version_names_the_package_commit_python_and_grpcio(failures: _Failures) -> None:
    run = failures.runs["version"]
    assert run.status == 0, run.stderr
    assert run.stdout == (
        f"tiergen {importlib.metadata.version('tiergen')} (commit 0a1b2c3)"
        f" python {platform.python_version()} grpcio {grpc.__version__}\n"
    )


async def test_a_refused_connection_names_the_address_and_the_option(
    failures: _Failures,
) -> None:
    assert failures.line("refused") == (
        f"tiergen: cannot reach the router at {failures.refused}: connection refused (nothing"
        f" listens there); {_WHERE}"
    )


async def test_the_ledger_commands_name_the_ledger_and_its_option(failures: _Failures) -> None:
    assert failures.line("ledger refused") == (
        f"tiergen: cannot reach the ledger at {failures.refused}: connection refused (nothing"
        " listens there); check the address, or give another with --ledger HOST:PORT or"
        " LEDGER_ADDR"
    )


async def test_a_server_without_tls_is_told_apart(failures: _Failures) -> None:
    assert failures.line("plaintext server") == (
        f"tiergen: cannot reach the router at {failures.plaintext}: TLS handshake failed, the"
        f" server does not speak TLS there; {_WHERE}, or call a plaintext router (behind a mesh)"
        " with --insecure or TIERGEN_INSECURE=true"
    )


async def test_a_certificate_of_another_ca_points_at_the_ca_options(failures: _Failures) -> None:
    assert failures.line("another CA") == (
        f"tiergen: cannot reach the router at {failures.router}: TLS handshake failed, its"
        f" certificate is not trusted (unable to get local issuer certificate); {_TRUST}"
    )


async def test_plaintext_to_a_tls_router_points_at_insecure(failures: _Failures) -> None:
    run = failures.runs["plaintext client"]
    assert (run.status, run.stdout) == (1, ""), run
    assert run.stderr.splitlines() == [
        "tiergen: PLAINTEXT: calling without TLS (--insecure); nothing is encrypted or checked",
        f"tiergen: cannot reach the router at {failures.router}: the connection closed before"
        " any answer: it likely serves TLS, and this command called in plaintext; drop"
        " --insecure (and TIERGEN_INSECURE)",
    ]


async def test_an_unknown_host_is_dialled_on_the_default_port(failures: _Failures) -> None:
    line = failures.line("unknown host")
    assert line.startswith(
        "tiergen: cannot reach the router at router..invalid:50051: no such host router..invalid ("
    ), line
    assert line.endswith(f"); {_WHERE}"), line


async def test_a_malformed_address_is_refused_before_any_call(failures: _Failures) -> None:
    assert failures.line("bad port") == (
        "tiergen: --router 'router:http': the port must be a number from 1 to 65535"
    )
