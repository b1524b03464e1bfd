"""The PostgreSQL set-up of docs/deploy.md, run for real: the owner and runtime roles its SQL
makes, migrations as the owner, the ledger and router serving real calls as the runtime role
(which can change no table), and a backup with pg_dump restored into a fresh database, where
`tiergen migrate --check` and `tiergen ledger verify` pass and every row is the original's.

The router runs as the production overlay configures it: its assets in an S3-compatible store
(a moto server on loopback), its access key read from files. One throwaway database (both
services' tables in it, as their separate version tables allow) and two throwaway roles serve
the whole module, and are dropped at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from moto.server import ThreadedMotoServer
from psycopg import errors, sql
from tiergen.router.v1 import router_pb2, router_pb2_grpc

from services.cli.main import main
from services.generator.server import create_server as create_generator
from services.generator.settings import GeneratorSettings
from services.ledger.server import create_server as create_ledger
from services.ledger.settings import LedgerSettings
from services.router.server import create_server as create_router
from services.router.settings import RouterSettings
from services.runtime.server import Server
from services.upscaler.server import create_server as create_upscaler
from services.upscaler.settings import UpscalerSettings
from tests.ops.trading import ACCOUNTS, trade
from tests.postgres import POSTGRES_DSN, require_postgres
from tests.router.conftest import issue_key, router_channel
from tests.tls import session_pki

pytestmark = pytest.mark.postgres

DEPLOY_DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def documented_sql() -> list[str]:
    """The SQL blocks of "PostgreSQL: roles and databases" in docs/deploy.md, in order: the
    roles, the database, the schema and its rights."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    section = text.split("\n## PostgreSQL: roles and databases\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3, f"expected three SQL blocks in the roles section, found {blocks}"
    return blocks


def run_block(block: str, dsn: str, names: dict[str, str]) -> None:
    """One documented block, its psql variables (`:"owner"`) given `names`, statement by
    statement on one autocommit connection (CREATE DATABASE runs in no transaction)."""
    for variable, value in names.items():
        block = block.replace(f':"{variable}"', sql.Identifier(value).as_string(None))
    assert ':"' not in block, f"a psql variable is left: {block}"
    statements = [s.strip() for s in re.sub(r"--[^\n]*", "", block).split(";") if s.strip()]
    with psycopg.connect(dsn, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement.encode())


def dsn_of(role: str, database: str) -> str:
    """A DSN for `role` on `database` of the test server (which trusts local connections)."""
    host = psycopg.conninfo.conninfo_to_dict(POSTGRES_DSN)
    return (
        f"postgresql://{role}@{host.get('host', '127.0.0.1')}:{host.get('port', 5432)}/{database}"
    )


@dataclass(frozen=True)
class Deployment:
    """The module's roles and database, and what the activity left in it."""

    owner: str
    runtime: str
    database: str
    #: account -> (available, held) as the router reported them after the activity.
    balances: dict[str, tuple[int, int]]
    #: Every job the router delivered.
    job_ids: frozenset[str]

    def dsn(self, role: str, database: str | None = None) -> str:
        return dsn_of(role, database or self.database)


@dataclass
class Cleanup:
    """Databases and roles the module made, dropped at its end, databases first."""

    admin_dsn: str
    databases: list[str]
    roles: list[str]

    def drop(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as connection:
            for database in self.databases:
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(database)
                    )
                )
            for role in self.roles:
                connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def cleanup() -> Iterator[Cleanup]:
    made = Cleanup(require_postgres("the PostgreSQL roles and backup tests"), [], [])
    try:
        yield made
    finally:
        made.drop()


async def _start(factory: Any, settings: Any) -> tuple[Server, str]:
    server, port = await factory(settings)
    await server.start()
    return server, f"127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def serving(dsn: str, assets: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    """The four servers on port 0, the ledger and the router both on `dsn`, the router's assets
    where `assets` says; their addresses."""
    env = {"TIERGEN_PORT": "0", "TIERGEN_SHUTDOWN_GRACE_SECONDS": "0"}
    tls = session_pki().env
    servers: dict[str, Server] = {}
    addresses: dict[str, str] = {}
    try:
        servers["ledger"], addresses["ledger"] = await _start(
            create_ledger,
            LedgerSettings.from_env({**env, **tls("ledger"), "TIERGEN_LEDGER_DSN": dsn}),
        )
        servers["generator"], addresses["generator"] = await _start(
            create_generator,
            GeneratorSettings.from_env(
                {**env, **tls("generator"), "TIERGEN_GENERATOR_WORKERS": "1"}
            ),
        )
        servers["upscaler"], addresses["upscaler"] = await _start(
            create_upscaler,
            UpscalerSettings.from_env({**env, **tls("upscaler"), "TIERGEN_UPSCALER_WORKERS": "1"}),
        )
        servers["router"], addresses["router"] = await _start(
            create_router,
            RouterSettings.from_env(
                {
                    **env,
                    **tls("router"),
                    "LEDGER_ADDR": addresses["ledger"],
                    "GENERATOR_ADDR": addresses["generator"],
                    "UPSCALER_ADDR": addresses["upscaler"],
                    "TIERGEN_ROUTER_DSN": dsn,
                    **assets,
                }
            ),
        )
        yield addresses
    finally:
        for name in ("router", "upscaler", "generator", "ledger"):
            if name in servers:
                await servers[name].stop(0)


async def activity(dsn: str, assets: dict[str, str]) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """Real traffic through real servers as the runtime role: accounts opened, credits granted,
    images generated (holds captured), a hold released, one partly captured, one left open."""
    # The tenant's first key, made in the router's database as an operator does.
    api_key = await issue_key(dsn, name="ops")
    async with (
        serving(dsn, assets) as addresses,
        router_channel(addresses["router"], api_key) as to_router,
    ):
        router = router_pb2_grpc.RouterServiceStub(to_router)
        delivered = set()
        for job in await trade(router, addresses["ledger"]):
            delivered.add(job.job_id)
            # Read back from the object store, through the router.
            chunks = [
                part.chunk.data
                async for part in router.GetAsset(
                    router_pb2.GetAssetRequest(account_id="alice", asset_id=job.asset.asset_id)
                )
                if part.WhichOneof("payload") == "chunk"
            ]
            assert len(b"".join(chunks)) == job.asset.info.size_bytes > 0
        balances = {}
        for account in ACCOUNTS:
            reply = await router.GetBalance(router_pb2.GetBalanceRequest(account_id=account))
            balances[account] = (reply.balance.available, reply.balance.held)
    return balances, delivered


def tiergen(*args: str, env: dict[str, str] | None = None) -> int:
    """`tiergen ARGS` in this process, `env` added to its environment for the call alone; its
    exit status."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        return main(list(args))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A bucket on a moto server on loopback, and the router's settings for it as the production
    overlay gives them: the URL and endpoint, the access key as files of a mounted Secret."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        secret = tmp_path_factory.mktemp("object-storage")
        (secret / "access-key-id").write_text("ops-key-id\n")
        (secret / "secret-access-key").write_text("ops-secret\n")
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="ops-key-id",
            aws_secret_access_key="ops-secret",
        )
        client.create_bucket(Bucket="tiergen-assets")
        client.close()
        yield {
            "TIERGEN_ROUTER_ASSETS_URL": "s3://tiergen-assets/images",
            "TIERGEN_ROUTER_S3_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID_FILE": str(secret / "access-key-id"),
            "AWS_SECRET_ACCESS_KEY_FILE": str(secret / "secret-access-key"),
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def deployment(cleanup: Cleanup, object_store: dict[str, str]) -> Deployment:
    """The documented set-up on a fresh database, migrated as the owner, then served and
    used as the runtime role."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "owner": f"tg_ops_{suffix}_owner",
        "runtime": f"tg_ops_{suffix}",
        "database": f"tg_ops_{suffix}",
    }
    cleanup.roles += [names["owner"], names["runtime"]]
    cleanup.databases.append(names["database"])
    roles, database, schema = documented_sql()
    run_block(roles, cleanup.admin_dsn, names)
    run_block(database, cleanup.admin_dsn, names)
    run_block(schema, dsn_of(names["owner"], names["database"]), names)
    owner_dsn = dsn_of(names["owner"], names["database"])
    migrated = tiergen(
        "migrate", env={"TIERGEN_LEDGER_DSN": owner_dsn, "TIERGEN_ROUTER_DSN": owner_dsn}
    )
    assert migrated == 0
    runtime_dsn = dsn_of(names["runtime"], names["database"])
    balances, delivered = asyncio.run(activity(runtime_dsn, object_store))
    return Deployment(
        names["owner"], names["runtime"], names["database"], balances, frozenset(delivered)
    )


def rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in the schema tiergen, each table's rows sorted."""
    with psycopg.connect(dsn) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'tiergen'"
            " ORDER BY table_name"
        ).fetchall()
        return {
            table: sorted(
                connection.execute(
                    sql.SQL("SELECT * FROM tiergen.{}").format(sql.Identifier(table))
                ).fetchall(),
                key=repr,
            )
            for (table,) in tables
        }


# -- the runtime role --


def test_the_services_run_as_the_runtime_role(
    deployment: Deployment, object_store: dict[str, str]
) -> None:
    # New accounts start with 400 promotional credits; two nano images cost 2 each.
    assert deployment.balances == {"alice": (400 + 100 - 4 - 10, 10), "bob": (400 - 15, 0)}
    with psycopg.connect(deployment.dsn(deployment.runtime)) as connection:
        jobs = connection.execute("SELECT job_id FROM jobs").fetchall()
        owners = connection.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'tiergen'"
        ).fetchall()
    assert {job for (job,) in jobs} == deployment.job_ids
    # Their images are objects of the bucket, under the prefix.
    client = boto3.client(
        "s3",
        endpoint_url=object_store["TIERGEN_ROUTER_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="ops-key-id",
        aws_secret_access_key="ops-secret",
    )
    listed = client.list_objects_v2(Bucket="tiergen-assets", Prefix="images/")
    client.close()
    assert len(listed.get("Contents", [])) == len(deployment.job_ids)
    # Every table the migrations made is the owner's, in the schema tiergen.
    assert owners == [(deployment.owner,)]


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("CREATE TABLE intruder (id int)", "permission denied for schema tiergen"),
        ("CREATE TABLE public.intruder (id int)", "permission denied for schema public"),
        (
            "CREATE TEMPORARY TABLE intruder (id int)",
            'permission denied to create temporary tables in database "{database}"',
        ),
        ("CREATE SCHEMA intruder", "permission denied for database {database}"),
        ("ALTER TABLE accounts ADD COLUMN intruder int", "must be owner of table accounts"),
        ("ALTER TABLE jobs DROP COLUMN prompt", "must be owner of table jobs"),
        ("CREATE INDEX intruder ON holds (tenant)", "must be owner of table holds"),
        ("DROP TABLE entries", "must be owner of table entries"),
        ("TRUNCATE batches", "permission denied for table batches"),
        ("DROP TABLE alembic_version_ledger", "must be owner of table alembic_version_ledger"),
    ],
)
def test_the_runtime_role_changes_no_table(
    deployment: Deployment, statement: str, refusal: str
) -> None:
    with (
        psycopg.connect(deployment.dsn(deployment.runtime)) as connection,
        pytest.raises(errors.InsufficientPrivilege) as refused,
    ):
        connection.execute(statement.encode())
    assert refused.value.diag.message_primary == refusal.format(database=deployment.database)


def test_a_table_a_later_migration_makes_is_the_runtime_roles_to_use(
    deployment: Deployment,
) -> None:
    with psycopg.connect(deployment.dsn(deployment.owner), autocommit=True) as owner:
        owner.execute("CREATE TABLE later (id bigserial PRIMARY KEY, note text NOT NULL)")
        try:
            with psycopg.connect(deployment.dsn(deployment.runtime)) as runtime:
                # The sequence behind bigserial is covered too.
                inserted = runtime.execute(
                    "INSERT INTO later (note) VALUES ('written') RETURNING id"
                ).fetchone()
                runtime.execute("UPDATE later SET note = 'changed'")
                assert runtime.execute("SELECT id, note FROM later").fetchall() == [
                    (inserted[0] if inserted else None, "changed")
                ]
                runtime.execute("DELETE FROM later")
            with (
                psycopg.connect(deployment.dsn(deployment.runtime)) as runtime,
                pytest.raises(errors.InsufficientPrivilege),
            ):
                runtime.execute("DROP TABLE later")
        finally:
            owner.execute("DROP TABLE later")


# -- backup and restore --


def test_a_dump_restores_into_a_fresh_database_that_verifies_and_matches(
    deployment: Deployment, cleanup: Cleanup, tmp_path: Path
) -> None:
    original = deployment.dsn(deployment.owner)
    dump = tmp_path / "tiergen.dump"
    subprocess.run(
        ["pg_dump", "--format=custom", f"--file={dump}", original],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # The fresh database, made by the set-up's second block; the roles are there already.
    restored_name = f"{deployment.database}_restored"
    cleanup.databases.append(restored_name)
    names = {"owner": deployment.owner, "runtime": deployment.runtime, "database": restored_name}
    run_block(documented_sql()[1], cleanup.admin_dsn, names)
    restore = subprocess.run(
        [
            "pg_restore",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={deployment.dsn(deployment.owner, restored_name)}",
            str(dump),
        ],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr

    restored = deployment.dsn(deployment.runtime, restored_name)
    assert (
        tiergen(
            "migrate",
            "--check",
            env={"TIERGEN_LEDGER_DSN": restored, "TIERGEN_ROUTER_DSN": restored},
        )
        == 0
    )
    before = rows(original)
    assert rows(deployment.dsn(deployment.owner, restored_name)) == before
    assert len(before["jobs"]) == 2
    # The batch's hold, captured; one released, one partly captured, one open.
    with psycopg.connect(restored) as connection:
        states = connection.execute("SELECT status FROM holds ORDER BY status").fetchall()
    assert [status for (status,) in states] == ["captured", "captured", "open", "released"]
    assert tiergen("ledger", "verify", "--dsn", restored) == 0
    # The runtime role keeps its rights, and only those, in the restored database.
    with psycopg.connect(restored) as connection:
        balances = connection.execute(
            "SELECT account_id, available, held FROM accounts ORDER BY account_id"
        ).fetchall()
        with pytest.raises(errors.InsufficientPrivilege):
            connection.execute("DROP TABLE accounts")
    assert {account: (available, held) for account, available, held in balances} == (
        deployment.balances
    )
