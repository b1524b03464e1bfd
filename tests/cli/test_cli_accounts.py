"""`tiergen open` and `tiergen checkin` against a running suite: what each line tells a person."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

from tests.router.conftest import running_suite
from tests.tls import session_pki


async def tiergen(*args: str, api_key: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        # In the environment, as a person would keep it: not on a command line others can see.
        env={
            **os.environ,
            "TIERGEN_API_KEY": api_key,
            "TIERGEN_CA_FILE": str(session_pki().ca_file),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def test_a_second_check_in_in_a_week_says_so(tmp_path: Path) -> None:
    async with running_suite(tmp_path, {}, {}) as suite:
        where = ["--router", suite.addresses["router"], "--account", f"cli-{uuid.uuid4().hex[:8]}"]
        key = suite.api_key
        opened = json.loads(await tiergen("open", *where, "--json", api_key=key))
        assert int(opened["granted"]) == 400
        first = await tiergen("checkin", *where, api_key=key)
        second = await tiergen("checkin", *where, api_key=key)
    assert "already checked in" not in first and "+40" in first, first
    assert "already checked in this week" in second and "+0" in second, second
