"""Regenerates the Python bindings (`_pb2.py`, `_pb2.pyi`, `_pb2_grpc.py`) next to every .proto.

Run `python protos/generate.py` after editing a contract; `--check` reports stale bindings
without writing and exits 1 when any differ (CI and the test suite use it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """Every contract, in a stable order."""
    return sorted(ROOT.glob("tiergen/**/*.proto"))


def generate(out_dir: Path) -> None:
    """Writes the bindings of every contract under `out_dir`, mirroring the package tree."""
    # grpc_tools is a development dependency: import it only when generating.
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def generated_files(base: Path) -> dict[str, bytes]:
    """The bindings under `base`, keyed by path relative to it."""
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.glob("tiergen/**/*"))
        if p.name.endswith(GENERATED_SUFFIXES)
    }


def stale_files() -> list[str]:
    """Bindings that differ from a fresh generation (missing, changed or left over)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        fresh = generated_files(fresh_dir)
    committed = generated_files(ROOT)
    return sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale bindings")
    options = parser.parse_args(argv)
    if options.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: protos/{name}", file=sys.stderr)
        if stale:
            print("run `python protos/generate.py` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    for name in generated_files(ROOT):
        (ROOT / name).unlink()
    generate(ROOT)
    print(f"generated bindings for {len(proto_files())} contracts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
