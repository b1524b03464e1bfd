"""The whole suite with the router on its cluster stores: jobs in PostgreSQL, assets in S3."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest
from moto.server import ThreadedMotoServer
from tiergen.common.v1 import common_pb2
from tiergen.router.v1 import router_pb2

from services.router.jobs.migrations import SCHEMA
from services.runtime.migrations import upgrade
from tests.postgres import POSTGRES_DSN, fresh_schema, with_search_path

pytestmark = pytest.mark.postgres


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the test server, brought up to date, dropped afterwards."""
    with fresh_schema("router_suite", "the router's cluster store tests") as name:
        upgrade(SCHEMA, with_search_path(name))
        yield name


@pytest.fixture
def bucket() -> Iterator[tuple[str, str]]:
    """A bucket on a moto server of its own: `(endpoint URL, bucket)`."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=endpoint)
    name = f"assets-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    client.close()
    yield endpoint, name
    server.stop()


@pytest.fixture
def router_env(postgres_schema: str, bucket: tuple[str, str]) -> dict[str, str]:
    """Overrides the suite's router settings (tests/router/conftest.py)."""
    endpoint, name = bucket
    return {
        "TIERGEN_ROUTER_DSN": with_search_path(postgres_schema),
        "TIERGEN_ROUTER_ASSETS_URL": f"s3://{name}/suite",
        "TIERGEN_ROUTER_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


async def test_a_generation_is_recorded_in_postgresql_and_stored_in_s3(
    suite: Any, postgres_schema: str, bucket: tuple[str, str]
) -> None:
    account = await suite.open_account()
    request = router_pb2.GenerateRequest(
        account_id=account,
        idempotency_key=uuid.uuid4().hex,
        spec=router_pb2.GenerationSpec(
            prompt="a lighthouse at dusk",
            tier="nano",
            n=2,
            seed=11,
            resolution=common_pb2.Resolution(
                size=common_pb2.IMAGE_SIZE_1K, aspect_ratio=common_pb2.ASPECT_RATIO_1_1
            ),
        ),
    )
    finished = [
        event.job
        async for event in suite.router.Generate(request)
        if event.WhichOneof("event") == "job"
    ]
    assert [job.status for job in finished] == [router_pb2.JOB_STATUS_SUCCEEDED] * 2

    for job in finished:
        data = b"".join(
            [
                message.chunk.data
                async for message in suite.router.GetAsset(
                    router_pb2.GetAssetRequest(account_id=account, asset_id=job.asset.asset_id)
                )
                if message.WhichOneof("payload") == "chunk"
            ]
        )
        assert hashlib.sha256(data).hexdigest() == job.asset.asset_id

    with psycopg.connect(POSTGRES_DSN) as connection:
        rows = connection.execute(
            f'SELECT job_id, status, asset_id FROM "{postgres_schema}".jobs ORDER BY seq'
        ).fetchall()
    assert sorted(rows) == sorted((job.job_id, "succeeded", job.asset.asset_id) for job in finished)

    endpoint, name = bucket
    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=endpoint)
    try:
        keys = [item["Key"] for item in client.list_objects_v2(Bucket=name)["Contents"]]
    finally:
        client.close()
    assert sorted(keys) == sorted(
        f"suite/{job.asset.asset_id[:2]}/{job.asset.asset_id[2:4]}/{job.asset.asset_id}"
        for job in finished
    )
