"""The contracts: Buf style lint passes and the committed bindings match a fresh generation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"


def test_bindings_are_fresh():
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _buf() -> str:
    local = PROTOS / "node_modules" / ".bin" / "buf"
    if local.exists():
        return str(local)
    found = shutil.which("buf")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("buf is not installed: run `make test` (npm install --prefix protos)")
    pytest.skip("buf is not installed: `npm install --prefix protos` lints the contracts")


def test_buf_lint_passes():
    result = subprocess.run(
        [_buf(), "lint"], cwd=PROTOS, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_contracts_make_no_breaking_change_against_main():
    git = ROOT / ".git"
    if not git.exists():
        pytest.skip("not a git checkout: nothing to compare the contracts with")
    branches = subprocess.run(
        ["git", "branch", "--list", "main"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    if not branches.stdout.strip():
        pytest.skip("no main branch to compare the contracts with")
    result = subprocess.run(
        [_buf(), "breaking", "--against", "../.git#branch=main,subdir=protos"],
        cwd=PROTOS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
