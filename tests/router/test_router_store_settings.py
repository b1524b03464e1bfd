"""Tests of the router's store settings: the job store DSN and its leases, the asset URL, S3
sign-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.settings import RouterSettings, S3AssetSettings
from services.runtime.settings import ConfigError

BUCKET = {"TIERGEN_ROUTER_ASSETS_URL": "s3://tiergen-assets"}


def test_defaults_are_a_local_database_and_directory() -> None:
    settings = RouterSettings.from_env({})
    assert settings.jobs_dsn == "sqlite:///tiergen-data/router.db"
    assert settings.jobs_sqlite_path == Path("tiergen-data/router.db")
    assert settings.assets_dir == Path("tiergen-data/assets")
    assert settings.assets_s3 is None
    assert (settings.db_pool_size, settings.db_timeout_seconds) == (10, 5.0)


@pytest.mark.parametrize(
    ("dsn", "path"),
    [
        ("sqlite:////var/lib/tiergen/router.db", Path("/var/lib/tiergen/router.db")),
        ("sqlite:///data/router.db", Path("data/router.db")),
        ("postgresql://router@db:5432/jobs", None),
        ("postgres://router@db/jobs?sslmode=require", None),
    ],
)
def test_the_dsn_names_the_job_store(dsn: str, path: Path | None) -> None:
    settings = RouterSettings.from_env({"TIERGEN_ROUTER_DSN": dsn})
    assert settings.jobs_dsn == dsn
    assert settings.jobs_sqlite_path == path


@pytest.mark.parametrize(
    "dsn", ["sqlite:///", "sqlite://router.db", "router.db", "mysql://db/jobs", "postgresql:/x"]
)
def test_a_bad_dsn_is_refused(dsn: str) -> None:
    with pytest.raises(ConfigError, match="TIERGEN_ROUTER_DSN"):
        RouterSettings.from_env({"TIERGEN_ROUTER_DSN": dsn})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIERGEN_ROUTER_DB_POOL_SIZE", "0"),
        ("TIERGEN_ROUTER_DB_POOL_SIZE", "many"),
        ("TIERGEN_ROUTER_DB_TIMEOUT_SECONDS", "0"),
        ("TIERGEN_ROUTER_DB_TIMEOUT_SECONDS", "soon"),
    ],
)
def test_bad_database_limits_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        RouterSettings.from_env({variable: value})


def test_leases_default_to_thirty_seconds_claimed_every_ten() -> None:
    settings = RouterSettings.from_env({})
    assert (settings.lease_seconds, settings.claim_interval_seconds) == (30.0, 10.0)
    settings = RouterSettings.from_env(
        {
            "TIERGEN_ROUTER_LEASE_SECONDS": "2",
            "TIERGEN_ROUTER_DB_TIMEOUT_SECONDS": "1",
            "TIERGEN_ROUTER_CLAIM_INTERVAL_SECONDS": "0.5",
        }
    )
    assert (settings.lease_seconds, settings.claim_interval_seconds) == (2.0, 0.5)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIERGEN_ROUTER_LEASE_SECONDS", "0.5"),
        ("TIERGEN_ROUTER_LEASE_SECONDS", "a while"),
        ("TIERGEN_ROUTER_CLAIM_INTERVAL_SECONDS", "0"),
        ("TIERGEN_ROUTER_CLAIM_INTERVAL_SECONDS", "often"),
    ],
)
def test_bad_lease_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        RouterSettings.from_env({variable: value})


def test_a_lease_must_outlast_a_renewal_waiting_for_the_database() -> None:
    with pytest.raises(
        ConfigError, match=r"TIERGEN_ROUTER_LEASE_SECONDS=9\.0: must be at least twice"
    ):
        RouterSettings.from_env({"TIERGEN_ROUTER_LEASE_SECONDS": "9"})


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://tiergen-assets", "tiergen-assets", ""),
        ("s3://tiergen-assets/", "tiergen-assets", ""),
        ("s3://tiergen.assets/router/v1/", "tiergen.assets", "router/v1"),
    ],
)
def test_an_s3_url_names_bucket_and_prefix(url: str, bucket: str, prefix: str) -> None:
    settings = RouterSettings.from_env({"TIERGEN_ROUTER_ASSETS_URL": url})
    assert settings.assets_s3 == S3AssetSettings(bucket=bucket, prefix=prefix)


@pytest.mark.parametrize(
    "url",
    [
        "tiergen-assets",
        "https://tiergen-assets/x",
        "s3://",
        "s3://ab",
        "s3://Tiergen_Assets",
        "s3://-assets",
        "s3://tiergen-assets/a//b",
        "s3://tiergen-assets/../other",
        "s3://tiergen-assets/x?versionId=1",
    ],
)
def test_a_bad_s3_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="TIERGEN_ROUTER_ASSETS_URL"):
        RouterSettings.from_env({"TIERGEN_ROUTER_ASSETS_URL": url})


def test_endpoint_and_credentials_come_from_the_environment() -> None:
    settings = RouterSettings.from_env(
        {
            **BUCKET,
            "TIERGEN_ROUTER_S3_ENDPOINT_URL": "http://minio:9000",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
            "AWS_SESSION_TOKEN": "FwoGZXIvYXdzE",
            "AWS_REGION": "eu-west-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    assert settings.assets_s3 == S3AssetSettings(
        bucket="tiergen-assets",
        endpoint_url="http://minio:9000",
        region="eu-west-1",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="wJalrXUtnFEMI",
        session_token="FwoGZXIvYXdzE",
    )
    # Secrets stay out of logs that print the settings.
    assert "wJalrXUtnFEMI" not in repr(settings)
    assert "FwoGZXIvYXdzE" not in repr(settings)


def test_without_credentials_boto3_finds_its_own() -> None:
    settings = RouterSettings.from_env({**BUCKET, "AWS_DEFAULT_REGION": "us-east-1"})
    assert settings.assets_s3 == S3AssetSettings(bucket="tiergen-assets", region="us-east-1")


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"TIERGEN_ROUTER_S3_ENDPOINT_URL": "http://minio:9000"}, "TIERGEN_ROUTER_ASSETS_URL"),
        ({**BUCKET, "TIERGEN_ROUTER_S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL"),
        ({**BUCKET, "TIERGEN_ROUTER_S3_ENDPOINT_URL": "ftp://minio"}, "S3_ENDPOINT_URL"),
        ({**BUCKET, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "AWS_SECRET_ACCESS_KEY"),
        ({**BUCKET, "AWS_SECRET_ACCESS_KEY": "secret"}, "AWS_ACCESS_KEY_ID"),
    ],
)
def test_incomplete_s3_settings_are_refused(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        RouterSettings.from_env(environ)
