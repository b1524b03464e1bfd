"""`tiergen keys`: create, list, rotate and revoke a tenant's API keys.

Two ways in, with the same commands and output. Through a running router (`--router`), with a
`keys:admin` key of the tenant (`--api-key`, TIERGEN_API_KEY): the router takes the tenant from
that key and audits every change, so `--tenant`, when given, must name the caller's own.
Directly on the router's store (`--data-dir` of the embedded default, or `--dsn`), for an
operator making a tenant's first key: whoever can open the database can change every tenant's
keys, so the database is the credential there, and `create` must name its tenant. Changes made
there are audited too, on stderr, by the operator's login and host (`store:user@host`).

A new key is printed once, when it is made; listings show prefixes only. With neither
`--router`, `--data-dir` nor `--dsn`, TIERGEN_ROUTER_DSN names the store (the router pods carry
it, so an operator there types no password), else TIERGEN_ROUTER the router.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import timestamp_pb2
from tiergen.router.v1 import router_pb2

from services.cli.credentials import add_transport_arguments, resolve_api_key, resolve_security
from services.cli.router_client import RouterClient
from services.router.access.admin import audit_key_change
from services.router.access.keys import ApiKeyRecord, KeyStore
from services.router.access.scopes import parse_scopes
from services.runtime.errors import TiergenError
from services.runtime.identifiers import require_tenant
from services.runtime.logging import configure_logging
from services.runtime.migrations import redact
from services.runtime.settings import ConfigError, Env

__all__ = ["KeyCommandError", "add_keys_commands", "parse_duration"]

_DSN_VARIABLE = "TIERGEN_ROUTER_DSN"
_ROUTER_VARIABLE = "TIERGEN_ROUTER"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


class KeyCommandError(RuntimeError):
    """A `tiergen keys` failure, told as one line."""


def parse_duration(text: str, option: str) -> int:
    """Seconds of `90d`, `12h`, `30m` or `45s`; KeyCommandError naming `option` otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise KeyCommandError(
            f"{option} {text!r}: a duration is a positive number and a unit, as in 90d, 12h,"
            " 30m or 45s"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class _Key:
    """A key as printed, whichever way it was reached."""

    prefix: str
    tenant: str
    scopes: tuple[str, ...]
    name: str
    created: datetime | None
    expires: datetime | None
    revoked: datetime | None
    replaces: str

    @classmethod
    def of_record(cls, record: ApiKeyRecord) -> _Key:
        return cls(
            prefix=record.prefix,
            tenant=record.tenant,
            scopes=tuple(sorted(scope.value for scope in record.scopes)),
            name=record.name,
            created=record.created_at,
            expires=record.expires_at,
            revoked=record.revoked_at,
            replaces=record.replaces or "",
        )

    @classmethod
    def of_message(cls, key: router_pb2.ApiKey) -> _Key:
        def moment(field: str) -> datetime | None:
            if not key.HasField(field):
                return None
            stamp: timestamp_pb2.Timestamp = getattr(key, field)
            return stamp.ToDatetime(tzinfo=UTC)

        return cls(
            prefix=key.prefix,
            tenant=key.tenant,
            scopes=tuple(sorted(key.scopes)),
            name=key.name,
            created=moment("create_time"),
            expires=moment("expire_time"),
            revoked=moment("revoke_time"),
            replaces=key.replaces,
        )

    def status(self, now: datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def document(self, now: datetime) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "name": self.name,
            "created": _iso(self.created),
            "expires": _iso(self.expires),
            "revoked": _iso(self.revoked),
            "replaces": self.replaces or None,
            "status": self.status(now),
        }

    def line(self, now: datetime) -> str:
        expiry = f"expires {_iso(self.expires)}" if self.expires else "never expires"
        parts = [
            f"{self.prefix}  {self.tenant:<12} {self.status(now):<8} {','.join(self.scopes)}",
            expiry,
        ]
        if self.name:
            parts.append(f"name {self.name!r}")
        if self.replaces:
            parts.append(f"replaces {self.replaces}")
        return "  ".join(parts)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Keys(Protocol):
    """Where the keys are: the router's store, or a router."""

    async def create(
        self, tenant: str | None, scopes: Sequence[str], name: str, ttl_seconds: int | None
    ) -> tuple[str, _Key]: ...

    async def list(self, tenant: str | None, include_inactive: bool) -> list[_Key]: ...

    async def rotate(self, prefix: str, grace_seconds: int) -> tuple[str, _Key, _Key]: ...

    async def revoke(self, prefix: str) -> _Key: ...

    async def close(self) -> None: ...


class _StoreKeys:
    """Keys on the router's database, every tenant's."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._by = f"store:{getpass.getuser()}@{socket.gethostname()}"

    async def create(
        self, tenant: str | None, scopes: Sequence[str], name: str, ttl_seconds: int | None
    ) -> tuple[str, _Key]:
        if tenant is None:
            raise KeyCommandError(
                "--tenant is required on the store: it holds the keys of every tenant"
            )
        issued = await self._store.create(tenant, scopes, name=name, ttl_seconds=ttl_seconds)
        audit_key_change(
            "key.created", tenant=tenant, prefix=issued.prefix, by=self._by, scopes=sorted(scopes)
        )
        return issued.secret, _Key.of_record(issued.record)

    async def list(self, tenant: str | None, include_inactive: bool) -> list[_Key]:
        records = await self._store.list(tenant, include_inactive=include_inactive)
        return [_Key.of_record(record) for record in records]

    async def rotate(self, prefix: str, grace_seconds: int) -> tuple[str, _Key, _Key]:
        tenant = await self._tenant_of(prefix)
        issued, old = await self._store.rotate(tenant, prefix, grace_seconds=grace_seconds)
        audit_key_change(
            "key.rotated",
            tenant=tenant,
            prefix=old.prefix,
            by=self._by,
            new_prefix=issued.prefix,
            grace_seconds=grace_seconds,
        )
        return issued.secret, _Key.of_record(issued.record), _Key.of_record(old)

    async def revoke(self, prefix: str) -> _Key:
        record = await self._store.revoke(await self._tenant_of(prefix), prefix)
        audit_key_change("key.revoked", tenant=record.tenant, prefix=record.prefix, by=self._by)
        return _Key.of_record(record)

    async def _tenant_of(self, prefix: str) -> str:
        record = await self._store.find(prefix)
        if record is None:
            raise KeyCommandError(f"there is no API key {prefix}")
        return record.tenant

    async def close(self) -> None:
        await self._store.close()


class _RouterKeys:
    """Keys of the caller's tenant, through a router: the tenant is the caller's key's."""

    def __init__(self, client: RouterClient) -> None:
        self._client = client

    async def create(
        self, tenant: str | None, scopes: Sequence[str], name: str, ttl_seconds: int | None
    ) -> tuple[str, _Key]:
        if tenant is not None:
            await self._require_own(tenant)
        reply = await self._client.create_api_key(scopes, name, ttl_seconds)
        return reply.secret, _Key.of_message(reply.api_key)

    async def list(self, tenant: str | None, include_inactive: bool) -> list[_Key]:
        keys = [_Key.of_message(key) for key in await self._client.list_api_keys(include_inactive)]
        if tenant is not None and any(key.tenant != tenant for key in keys):
            raise _not_own(tenant)
        return keys

    async def rotate(self, prefix: str, grace_seconds: int) -> tuple[str, _Key, _Key]:
        reply = await self._client.rotate_api_key(prefix, grace_seconds)
        return reply.secret, _Key.of_message(reply.api_key), _Key.of_message(reply.replaced)

    async def revoke(self, prefix: str) -> _Key:
        return _Key.of_message(await self._client.revoke_api_key(prefix))

    async def _require_own(self, tenant: str) -> None:
        """KeyCommandError unless `tenant` is the caller's: a router acts in the caller's
        tenant whatever the command says, and a key made for another than the one named would
        be handed to the wrong party."""
        keys = await self._client.list_api_keys(include_inactive=True)
        tenants = {key.tenant for key in keys}
        if not tenants:
            raise KeyCommandError(
                f"cannot confirm that tenant {tenant} is the caller's (its tenant lists no"
                " keys); run without --tenant: a router always acts in the caller's tenant"
            )
        if tenants != {tenant}:
            raise _not_own(tenant)

    async def close(self) -> None:
        await self._client.close()


def _not_own(tenant: str) -> KeyCommandError:
    return KeyCommandError(
        f"--tenant {tenant} is not the tenant of the API key in use: a router manages only its"
        " caller's tenant (omit --tenant, or use that tenant's key)"
    )


def _where(options: argparse.Namespace) -> tuple[str | None, str | None]:
    """(router, DSN), one of them None, as the options and the environment say; KeyCommandError
    saying what to give when they point nowhere."""
    router = options.router
    dsn = options.dsn
    if options.data_dir is not None:
        dsn = f"sqlite:///{options.data_dir / 'router.db'}"
    elif router is None and dsn is None:
        try:
            dsn = Env(os.environ).secret(_DSN_VARIABLE)
        except ConfigError as error:
            raise KeyCommandError(str(error)) from None
        router = None if dsn else os.environ.get(_ROUTER_VARIABLE) or None
    if router is None and dsn is None:
        raise KeyCommandError(
            "say where the keys are: --router HOST:PORT (with a keys:admin key), --data-dir DIR"
            f" of a `tiergen up`, or --dsn DSN of the router's database (or set {_DSN_VARIABLE})"
        )
    if dsn is not None and dsn.startswith("sqlite:///"):
        path = Path(dsn.removeprefix("sqlite:///")).expanduser()
        # Opening would create a missing file: a mistyped path must not get a fresh key table.
        if not path.is_file():
            raise KeyCommandError(
                f"no router database at {path}: start the router (or `tiergen up`) on it first"
            )
    return router, dsn


async def _open(options: argparse.Namespace, router: str | None, dsn: str | None) -> _Keys:
    if router is not None:
        token = resolve_api_key(options.api_key, None)
        security = resolve_security(
            ca_file=options.ca_file,
            cert_file=options.cert_file,
            key_file=options.key_file,
            insecure=options.insecure,
        )
        return _RouterKeys(RouterClient(router, token, security, timeout=30))
    assert dsn is not None  # _where
    # The audit events of changes on the store go to stderr; stdout carries the answer.
    configure_logging("cli")
    # The PostgreSQL pool logs every failed connection attempt, on stderr for want of a
    # handler; the command's one line says what failed.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    try:
        return _StoreKeys(await KeyStore.open(dsn))
    except (ConfigError, TiergenError) as error:
        raise KeyCommandError(f"cannot open the router's database {redact(dsn)}: {error}") from None


def _print(options: argparse.Namespace, document: Any, human: str) -> None:
    print(json.dumps(document, indent=2, sort_keys=True) if options.json else human)


def _issued(secret: str, key: _Key) -> dict[str, Any]:
    return {
        "key": secret,
        "prefix": key.prefix,
        "tenant": key.tenant,
        "scopes": list(key.scopes),
        "name": key.name,
        "expires": _iso(key.expires),
    }


async def _command(options: argparse.Namespace, router: str | None, dsn: str | None) -> None:
    keys = await _open(options, router, dsn)
    now = datetime.now(UTC)
    try:
        if options.keys_command == "create":
            if options.tenant is not None:
                require_tenant(options.tenant)
            scopes = sorted(scope.value for scope in parse_scopes(options.scopes.split(",")))
            ttl = None if options.expires is None else parse_duration(options.expires, "--expires")
            secret, key = await keys.create(options.tenant, scopes, options.name, ttl)
            _print(options, _issued(secret, key), f"{key.line(now)}\n{secret}")
            print("the key is shown only now: keep it somewhere safe", file=sys.stderr)
        elif options.keys_command == "list":
            if options.tenant is not None:
                require_tenant(options.tenant)
            listed = await keys.list(options.tenant, options.all)
            human = "\n".join(key.line(now) for key in listed) or "no keys"
            _print(options, {"keys": [key.document(now) for key in listed]}, human)
        elif options.keys_command == "rotate":
            grace = parse_duration(options.grace, "--grace")
            secret, key, old = await keys.rotate(options.prefix, grace)
            document = {**_issued(secret, key), "replaced": old.document(now)}
            until = f"{old.prefix} keeps working until {_iso(old.expires)}"
            _print(options, document, f"{key.line(now)}\n{secret}\n{until}")
            print("the new key is shown only now: keep it somewhere safe", file=sys.stderr)
        else:
            key = await keys.revoke(options.prefix)
            _print(options, key.document(now), f"revoked {key.prefix} of tenant {key.tenant}")
    except TiergenError as error:
        raise KeyCommandError(error.message) from None
    finally:
        await keys.close()


def add_keys_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys create|list|rotate|revoke` under the `tiergen` command."""
    where = argparse.ArgumentParser(add_help=False)
    target = where.add_mutually_exclusive_group()
    target.add_argument(
        "--router", metavar="HOST:PORT", help=f"a running router (env {_ROUTER_VARIABLE})"
    )
    target.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="the router store of a `tiergen up`"
    )
    target.add_argument("--dsn", metavar="DSN", help=f"the router's database (env {_DSN_VARIABLE})")
    where.add_argument(
        "--api-key",
        metavar="KEY",
        help="with --router: a keys:admin key (env TIERGEN_API_KEY, which keeps it out of ps)",
    )
    where.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_transport_arguments(where, "with --router: ")

    keys = commands.add_parser(
        "keys",
        help="create, list, rotate and revoke API keys",
        description="Create, list, rotate and revoke API keys, through a running router"
        " (--router, with a keys:admin key) or directly on the router's database (--data-dir"
        " of a `tiergen up`, or --dsn).",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = actions.add_parser("create", parents=[where], help="create a key; shown once")
    create.add_argument("--tenant", help="its tenant (with --router: the caller's, or omit)")
    create.add_argument(
        "--scopes", required=True, help="comma-separated, e.g. images:write,images:read"
    )
    create.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 90d (default: none)")
    create.add_argument("--name", default="", help="a label, e.g. billing-worker")

    listing = actions.add_parser("list", parents=[where], help="list keys by prefix")
    listing.add_argument("--tenant", help="only this tenant's (default: every one the caller sees)")
    listing.add_argument("--all", action="store_true", help="revoked and expired keys too")

    rotate = actions.add_parser(
        "rotate", parents=[where], help="replace a key; the old one works for a grace period"
    )
    rotate.add_argument("prefix", metavar="PREFIX", help="the key's prefix, e.g. tgk_3f9a2c1d")
    rotate.add_argument(
        "--grace", default="24h", metavar="DURATION", help="how long the old key keeps working"
    )

    revoke = actions.add_parser("revoke", parents=[where], help="revoke a key at once")
    revoke.add_argument("prefix", metavar="PREFIX", help="the key's prefix, e.g. tgk_3f9a2c1d")
    keys.set_defaults(handler=_handle)


def _handle(options: argparse.Namespace) -> None:
    asyncio.run(_command(options, *_where(options)))
