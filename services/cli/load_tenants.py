"""`tiergen load --tenants`: the tenants of a multi-tenant load, inline or from a TOML file.

Inline, for a quick mix where every tenant sends the command's own spec:

    --tenants 'acme=@keys/acme.key:6,globex=env:GLOBEX_KEY:1'

`NAME=KEY[:CLIENTS]`, where KEY is `@PATH` (a file holding the key, as `tiergen keys create`
writes it), `env:VARIABLE` (an environment variable holding it) or the key itself (seen by
anyone who can list processes: for a laptop only), and CLIENTS overrides `--clients`.

From a file, when each tenant sends something different: the contention an operator wants to
see is one tenant's refine batches against another's sketches.

    --tenants load-tenants.toml

    [tenants.acme]              # the table's name is the tenant's, for the report
    key_file = "keys/acme.key"  # or key_env = "ACME_KEY"; relative to this file
    clients = 6
    tier = "pro"
    stage = "refine"
    size = "2K"
    n = 4

    [tenants.globex]
    key_env = "GLOBEX_KEY"
    clients = 1
    rate = 2                    # requests per second (omit: each client sends at once)
    tier = "nano"
    stage = "explore"
    size = "1K"

Fields a tenant leaves out are the command's (`--clients`, `--rate`, `--tier`, `--stage`,
`--size`, `--aspect`, `-n`, `--prompt`, `--mix`, `--credits`). The tenant of each key is the
router's to know: the names here only label the report. A mistake is a LoadError naming the
file, the tenant and the field.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.cli.load import LoadError, TenantLoad, parse_mix
from services.runtime.credentials import BearerToken

__all__ = ["parse_tenants"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FIELDS = frozenset(
    {
        "key",
        "key_file",
        "key_env",
        "clients",
        "rate",
        "tier",
        "stage",
        "size",
        "aspect",
        "n",
        "prompt",
        "mix",
        "credits",
    }
)
_SIZES = {
    "1K": common_pb2.IMAGE_SIZE_1K,
    "2K": common_pb2.IMAGE_SIZE_2K,
    "4K": common_pb2.IMAGE_SIZE_4K,
}


def parse_tenants(
    text: str,
    spec: router_pb2.GenerationSpec,
    environ: Mapping[str, str] | None = None,
) -> tuple[TenantLoad, ...]:
    """The tenants `--tenants TEXT` names, their specs starting from `spec`; LoadError when
    TEXT (or the file it names) is not what the module's docstring describes."""
    environ = os.environ if environ is None else environ
    path = Path(text).expanduser()
    if text.endswith(".toml") or path.is_file():
        return _from_file(path, spec, environ)
    return _inline(text, environ)


def _inline(text: str, environ: Mapping[str, str]) -> tuple[TenantLoad, ...]:
    tenants = []
    for part in text.split(","):
        entry = part.strip()
        name, separator, source = entry.partition("=")
        name = name.strip()
        if not separator or not _NAME.match(name) or not source:
            raise LoadError(
                f"--tenants entries are NAME=@KEY_FILE[:CLIENTS], NAME=env:VARIABLE[:CLIENTS]"
                f" or NAME=KEY[:CLIENTS], not {entry!r}"
            )
        clients = None
        head, colon, tail = source.rpartition(":")
        if colon and tail.isdigit() and head not in ("env", ""):
            source, clients = head, int(tail)
        where = f"--tenants {name}"
        if source.startswith("@"):
            token = _key_file(Path(source[1:]).expanduser(), where)
        elif source.startswith("env:"):
            token = _key_env(source.removeprefix("env:"), environ, where)
        else:
            token = _key(source, where)
        tenants.append(TenantLoad(name, token, clients=clients))
    return tuple(tenants)


def _from_file(
    path: Path, base: router_pb2.GenerationSpec, environ: Mapping[str, str]
) -> tuple[TenantLoad, ...]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LoadError(f"--tenants {path}: cannot read the file: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise LoadError(f"--tenants {path}: not valid TOML: {error}") from None
    unknown = set(document) - {"tenants"}
    table = document.get("tenants")
    if unknown or not isinstance(table, dict) or not table:
        raise LoadError(f"--tenants {path}: expected [tenants.NAME] tables and nothing else")
    tenants = []
    for name, entry in table.items():
        where = f"{path}: tenants.{name}"
        if not _NAME.match(name):
            raise LoadError(f"{where}: a tenant's name is letters, digits, '.', '_' and '-'")
        if not isinstance(entry, dict):
            raise LoadError(f"{where}: expected a table of the tenant's fields")
        extra = sorted(set(entry) - _FIELDS)
        if extra:
            raise LoadError(f"{where}: unknown field(s) {', '.join(extra)}")
        tenants.append(_tenant(name, entry, base, path.parent, environ, where))
    return tuple(tenants)


def _tenant(
    name: str,
    entry: Mapping[str, Any],
    base: router_pb2.GenerationSpec,
    directory: Path,
    environ: Mapping[str, str],
    where: str,
) -> TenantLoad:
    sources = [field for field in ("key", "key_file", "key_env") if field in entry]
    if len(sources) != 1:
        raise LoadError(f"{where}: give exactly one of key_file, key_env or key")
    if "key_file" in entry:
        token = _key_file(directory / _text(entry, "key_file", where), f"{where}.key_file")
    elif "key_env" in entry:
        token = _key_env(_text(entry, "key_env", where), environ, f"{where}.key_env")
    else:
        token = _key(_text(entry, "key", where), f"{where}.key")
    spec = router_pb2.GenerationSpec()
    spec.CopyFrom(base)
    if "tier" in entry:
        spec.tier = _text(entry, "tier", where)
    if "prompt" in entry:
        spec.prompt = _text(entry, "prompt", where)
    if "stage" in entry:
        stage = _text(entry, "stage", where)
        spec.stage = _enum_value(common_pb2.Stage, f"STAGE_{stage.upper()}", f"{where}.stage")
    if "size" in entry:
        size = _text(entry, "size", where).upper()
        if size not in _SIZES:
            raise LoadError(f"{where}.size: expected one of {', '.join(_SIZES)}")
        spec.resolution.size = _SIZES[size]
    if "aspect" in entry:
        aspect = _text(entry, "aspect", where)
        spec.resolution.aspect_ratio = _enum_value(
            common_pb2.AspectRatio, "ASPECT_RATIO_" + aspect.replace(":", "_"), f"{where}.aspect"
        )
    if "n" in entry:
        spec.n = _whole(entry, "n", where)
    mix = None
    if "mix" in entry:
        try:
            mix = parse_mix(_text(entry, "mix", where))
        except LoadError as error:
            raise LoadError(f"{where}.mix: {error}") from None
    rate = entry.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
        raise LoadError(f"{where}.rate: expected requests per second, a number")
    return TenantLoad(
        name,
        token,
        clients=_whole(entry, "clients", where) if "clients" in entry else None,
        rate=None if rate is None else float(rate),
        spec=spec,
        mix=mix,
        credits=_whole(entry, "credits", where) if "credits" in entry else None,
    )


def _enum_value(enum: Any, name: str, where: str) -> Any:
    """The number of the protobuf enum value `name`; LoadError naming `where` when unknown."""
    try:
        return enum.Value(name)
    except ValueError:
        raise LoadError(f"{where}: unknown value {name!r}") from None


def _text(entry: Mapping[str, Any], field: str, where: str) -> str:
    value = entry[field]
    if not isinstance(value, str) or not value:
        raise LoadError(f"{where}.{field}: expected a string")
    return value


def _whole(entry: Mapping[str, Any], field: str, where: str) -> int:
    value = entry[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise LoadError(f"{where}.{field}: expected a whole number")
    return value


def _key(text: str, where: str) -> BearerToken:
    try:
        return BearerToken(text)
    except ValueError as error:
        raise LoadError(f"{where}: the key is malformed: {error}") from None


def _key_file(path: Path, where: str) -> BearerToken:
    try:
        return BearerToken.from_file(path)
    except OSError as error:
        raise LoadError(f"{where}: cannot read the key file {path}: {error.strerror}") from None
    except ValueError as error:
        raise LoadError(f"{where}: the key in {path} is malformed: {error}") from None


def _key_env(variable: str, environ: Mapping[str, str], where: str) -> BearerToken:
    value = environ.get(variable)
    if not value:
        raise LoadError(f"{where}: {variable} is not set")
    return _key(value, f"{where} ({variable})")
