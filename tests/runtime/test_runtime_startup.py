"""A service that cannot start says why in one structured line and exits non-zero.

Real service processes, each given one thing it cannot live with: a database that refuses
connections (its DSN in the variable, or in a file), a certificate file missing or garbled, a
port already taken, a malformed setting. The processes run at once; each test reads its own.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.runtime.errors import Unavailable
from services.runtime.settings import ConfigError
from services.runtime.startup import DependencyUnreachable, describe
from tests.start_failures import cannot_start
from tests.tls import session_pki

_ROOT = Path(__file__).resolve().parents[2]
#: A password planted in the DSNs: it must be in no line a failed start prints.
_PASSWORD = "pl4nted-Secret-pw"


@dataclass(frozen=True)
class _Finished:
    status: int
    output: str


async def _start(module: str, environ: dict[str, str]) -> _Finished:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"services.{module}",
        cwd=_ROOT,
        env={**os.environ, "TIERGEN_PORT": "0", "TIERGEN_LOG_LEVEL": "info", **environ},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return _Finished(process.returncode, output.decode())


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    """A port bound but not listening (connections refused) and one another process serves."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        yield {"closed": closed.getsockname()[1], "taken": taken.getsockname()[1]}
    finally:
        closed.close()
        taken.close()


@pytest.fixture(scope="module")
def finished(
    ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, _Finished]:
    """Every failed start of this module, run at once."""
    pki = session_pki()
    files = tmp_path_factory.mktemp("startup")
    garbled = files / "garbled.key"
    garbled.write_text(
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n"
    )
    dsn_file = files / "router-dsn"
    dsn_file.write_text(f"postgresql://tiergen:{_PASSWORD}@localhost:{ports['closed']}/jobs\n")
    cases: dict[str, tuple[str, dict[str, str]]] = {
        "database refused": (
            "ledger",
            {
                **pki.env("ledger"),
                "TIERGEN_LEDGER_DSN": f"postgresql://tiergen:{_PASSWORD}@127.0.0.1:"
                f"{ports['closed']}/ledger",
                "TIERGEN_LEDGER_DB_TIMEOUT_SECONDS": "1",
            },
        ),
        "database from a file": (
            "router",
            {
                **pki.env("router"),
                "TIERGEN_ROUTER_DSN_FILE": str(dsn_file),
                "TIERGEN_ROUTER_DB_TIMEOUT_SECONDS": "1",
            },
        ),
        "certificate missing": (
            "generator",
            {**pki.env("generator"), "TIERGEN_TLS_CERT_FILE": str(files / "missing.crt")},
        ),
        "key garbled": ("upscaler", {**pki.env("upscaler"), "TIERGEN_TLS_KEY_FILE": str(garbled)}),
        "port taken": (
            "ledger",
            {
                **pki.env("ledger"),
                "TIERGEN_LEDGER_DSN": f"sqlite:///{files / 'ledger.db'}",
                "TIERGEN_PORT": str(ports["taken"]),
            },
        ),
        "metrics port taken": (
            "router",
            {
                **pki.env("router"),
                "TIERGEN_ROUTER_DSN": f"sqlite:///{files / 'router.db'}",
                "TIERGEN_ROUTER_ASSETS_DIR": str(files / "assets"),
                "TIERGEN_METRICS_PORT": str(ports["taken"]),
            },
        ),
        "malformed setting": (
            "ledger",
            {**pki.env("ledger"), "TIERGEN_LEDGER_SIGNUP_BONUS": "plenty"},
        ),
    }

    async def run_all() -> list[_Finished]:
        return await asyncio.gather(*(_start(module, env) for module, env in cases.values()))

    return dict(zip(cases, asyncio.run(run_all()), strict=True))


def _line(finished: _Finished, status: int, **expected: str) -> dict[str, Any]:
    assert finished.status == status, finished.output[-3000:]
    assert _PASSWORD not in finished.output
    record = cannot_start(finished.output)
    for name, value in expected.items():
        assert record[name] == value, record
    return record


def test_a_database_refusing_connections_is_named_with_its_host(
    finished: dict[str, _Finished], ports: dict[str, int]
) -> None:
    record = _line(
        finished["database refused"],
        1,
        service="ledger",
        kind="dependency unreachable",
        setting="TIERGEN_LEDGER_DSN",
        address=f"127.0.0.1:{ports['closed']}",
    )
    assert record["error"].startswith("cannot connect to the ledger database within 1.0 s: ")
    assert "Connection refused" in record["error"], record


def test_a_database_named_in_a_file_is_named_by_the_file_setting(
    finished: dict[str, _Finished], ports: dict[str, int]
) -> None:
    record = _line(
        finished["database from a file"],
        1,
        service="router",
        kind="dependency unreachable",
        setting="TIERGEN_ROUTER_DSN_FILE",
        address=f"localhost:{ports['closed']}",
    )
    assert record["error"].startswith("cannot connect to the job database within 1.0 s: ")
    assert "Connection refused" in record["error"], record


def test_a_missing_certificate_is_a_configuration_error(finished: dict[str, _Finished]) -> None:
    missing = finished["certificate missing"]
    record = _line(
        missing,
        2,
        service="generator",
        kind="configuration error",
        setting="TIERGEN_TLS_CERT_FILE",
    )
    assert record["error"].endswith("missing.crt: cannot read the file: No such file or directory")
    # The start stopped before any worker process or log line: the failure is all there is.
    cannot_start(missing.output, alone=True)


def test_a_garbled_key_is_a_configuration_error(finished: dict[str, _Finished]) -> None:
    record = _line(
        finished["key garbled"],
        2,
        service="upscaler",
        kind="configuration error",
        setting="TIERGEN_TLS_KEY_FILE",
    )
    assert "garbled.key" in record["error"], record


def test_a_port_taken_names_the_port_and_address(
    finished: dict[str, _Finished], ports: dict[str, int]
) -> None:
    taken = ports["taken"]
    _line(
        finished["port taken"],
        2,
        service="ledger",
        kind="configuration error",
        setting="TIERGEN_PORT",
        address=f"127.0.0.1:{taken}",
        error=f"TIERGEN_PORT={taken}: cannot listen on 127.0.0.1:{taken}: Address already in use",
    )


def test_a_metrics_port_taken_after_the_stores_opened_stops_cleanly(
    finished: dict[str, _Finished], ports: dict[str, int]
) -> None:
    record = _line(
        finished["metrics port taken"],
        2,
        service="router",
        kind="configuration error",
        setting="TIERGEN_METRICS_PORT",
    )
    assert record["error"].startswith(f"TIERGEN_METRICS_PORT={ports['taken']}: cannot listen")


def test_a_malformed_setting_is_the_only_line(finished: dict[str, _Finished]) -> None:
    malformed = finished["malformed setting"]
    record = _line(
        malformed,
        2,
        service="ledger",
        kind="configuration error",
        setting="TIERGEN_LEDGER_SIGNUP_BONUS",
    )
    assert "plenty" in record["error"], record
    cannot_start(malformed.output, alone=True)


# What each failure is taken for, without a process.


def test_a_configuration_error_names_the_variable_it_begins_with_or_mentions() -> None:
    leading = describe(ConfigError("TIERGEN_X_Y='a': expected a number"))
    assert (leading.kind, leading.setting, leading.exit_status) == (
        "configuration error",
        "TIERGEN_X_Y",
        2,
    )
    within = describe(ConfigError("tier(s) studio render on openai, but OPENAI_API_KEY is unset"))
    assert within.setting == "OPENAI_API_KEY"
    assert describe(ConfigError("the ledger database is behind")).setting is None


def test_an_unavailable_dependency_exits_1_and_a_bug_keeps_its_traceback() -> None:
    unreachable = describe(DependencyUnreachable("TIERGEN_A_DSN", "db:5432", "refused"))
    assert unreachable.fields() == {
        "kind": "dependency unreachable",
        "setting": "TIERGEN_A_DSN",
        "address": "db:5432",
        "error": "refused",
    }
    assert unreachable.exit_status == 1
    other = describe(Unavailable("the object store cannot be reached"))
    assert (other.kind, other.exit_status, other.unexpected) == ("dependency unreachable", 1, False)
    bug = describe(KeyError("oops"))
    assert (bug.kind, bug.exit_status, bug.unexpected) == ("start failed", 1, True)
    assert bug.error == "KeyError: 'oops'"
