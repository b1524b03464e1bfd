"""`tiergen up` and its dev key: made on the first start of a data directory, readable by its
owner only, reused by later starts, and what client commands pointed at the directory send."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.cli.credentials import provision_dev_key
from services.router.access.keys import KeyStore

pytestmark = pytest.mark.slow


def _environ() -> dict[str, str]:
    """This environment without any TIERGEN_ setting: no key, no router, no database."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TIERGEN_")}


@contextmanager
def tiergen_up(data_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """A running `tiergen up --data-dir DATA_DIR`: the router's address, and (once it stopped)
    the lines of its stderr."""
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--data-dir", str(data_dir),
         "--port-base", "0"],
        env=_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    stderr: list[str] = []
    try:
        assert up.stdout is not None
        router = up.stdout.readline().split()
        assert router[0] == "router", router
        yield router[1], stderr
    finally:
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
        stderr.extend(err.splitlines())
    assert up.returncode == 0, err


def _tiergen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_first_start_makes_a_private_dev_key_that_later_starts_keep(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key_file = data_dir / "dev-api-key"
    with tiergen_up(data_dir) as (router, first_lines):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        where = ("--router", router, "--account", f"up-{uuid.uuid4().hex[:8]}")
        opened = _tiergen("open", *where, "--data-dir", str(data_dir))
        assert opened.returncode == 0, opened.stderr
        missing = _tiergen("balance", *where)
        assert missing.returncode == 1
        assert missing.stderr.startswith("tiergen: no API key"), missing.stderr
    told = [line for line in first_lines if "dev-api-key" in line]
    assert told == [
        f"API key of tenant dev (every scope) made in {key_file}; client commands read it with"
        f" --data-dir {data_dir}"
    ]
    assert all(key not in line for line in first_lines)

    with tiergen_up(data_dir) as (_, second_lines):
        assert key_file.read_text().strip() == key
    assert any(f"kept in {key_file}" in line for line in second_lines)


async def _revoke(dsn: str, prefix: str) -> None:
    store = await KeyStore.open(dsn)
    try:
        await store.revoke("dev", prefix)
    finally:
        await store.close()


def test_a_dev_key_the_store_no_longer_accepts_is_replaced(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'router.db'}"
    first = asyncio.run(provision_dev_key(tmp_path, dsn))
    again = asyncio.run(provision_dev_key(tmp_path, dsn))
    assert first.created and not again.created
    assert again.token.secret == first.token.secret

    asyncio.run(_revoke(dsn, first.token.label))
    replaced = asyncio.run(provision_dev_key(tmp_path, dsn))
    assert replaced.created
    assert replaced.token.secret != first.token.secret
    assert (tmp_path / "dev-api-key").read_text().strip() == replaced.token.secret
    assert stat.S_IMODE((tmp_path / "dev-api-key").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
