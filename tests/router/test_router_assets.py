"""Tests of the content-addressed asset stores, each run on a real directory and on S3 (a local
moto server); then what only one of them has (sidecars, object metadata, an endpoint that goes
away) and how the router picks between them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from services.router.assets.s3 import S3AssetStore
from services.router.assets.store import AssetInfo, AssetRef, AssetStore, LocalAssetStore
from services.router.server import open_asset_store
from services.router.settings import RouterSettings
from services.runtime.errors import AlreadyExists, Internal, InvalidArgument, NotFound, Unavailable
from services.runtime.settings import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: moto takes any credentials; these keep boto3 from looking for real ones.
CREDENTIALS: dict[str, Any] = {
    "region": "us-east-1",
    "access_key_id": "testing",
    "secret_access_key": "testing",
}


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3(moto_endpoint: str) -> Iterator[S3Client]:
    """A client of the moto server, to set buckets up and look behind the store's back."""
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    client = session.client("s3", endpoint_url=moto_endpoint)
    yield client
    client.close()


def new_bucket(s3: S3Client) -> str:
    bucket = f"assets-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return bucket


@dataclass
class Storage:
    """Where one fresh asset store keeps its assets, with raw access behind its back."""

    kind: str
    store: AssetStore
    #: The local directory, or the bucket.
    location: str
    s3: S3Client | None = None
    prefix: str = ""

    async def reopen(self, moto_endpoint: str) -> AssetStore:
        """Another store on the same directory or bucket."""
        if self.kind == "local":
            return LocalAssetStore(Path(self.location))
        return await S3AssetStore.open(
            self.location, self.prefix, endpoint_url=moto_endpoint, **CREDENTIALS
        )

    def objects(self) -> list[str]:
        """Every file or object there, sorted, relative to the store's root."""
        if self.kind == "local":
            root = Path(self.location)
            return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
        assert self.s3 is not None
        listing = self.s3.list_objects_v2(Bucket=self.location)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def overwrite(self, asset_id: str, data: bytes) -> None:
        """Replace an asset's bytes, keeping its info: what a failing disk would do."""
        key = f"{asset_id[:2]}/{asset_id[2:4]}/{asset_id}"
        if self.kind == "local":
            (Path(self.location) / key).write_bytes(data)
            return
        assert self.s3 is not None
        head = self.s3.head_object(Bucket=self.location, Key=f"{self.prefix}/{key}")
        self.s3.put_object(
            Bucket=self.location,
            Key=f"{self.prefix}/{key}",
            Body=data,
            ContentType=head["ContentType"],
            Metadata=head["Metadata"],
        )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A fresh asset store on each backend in turn."""
    if request.param == "local":
        root = tmp_path / "assets"
        return Storage("local", LocalAssetStore(root), str(root))
    return _s3_storage(request.getfixturevalue("s3"))


@pytest.fixture
def s3_storage(s3: S3Client) -> Storage:
    """A fresh asset store on S3 only."""
    return _s3_storage(s3)


def _s3_storage(s3: S3Client) -> Storage:
    # The session's client serves every store: a client of its own costs a store 0.3 s to
    # build. `S3AssetStore.open` has tests of its own.
    bucket = new_bucket(s3)
    return Storage("s3", S3AssetStore(s3, bucket, "tiergen"), bucket, s3, "tiergen")


@pytest.fixture
def store(storage: Storage) -> AssetStore:
    return storage.store


async def test_put_stores_by_content(store: AssetStore) -> None:
    data = png((200, 10, 10))
    ref = await store.put(data, width=32, height=24, media_type="image/png")
    digest = hashlib.sha256(data).hexdigest()
    assert ref == AssetRef(digest, AssetInfo(32, 24, "image/png", len(data)))
    assert ref.sha256 == digest
    assert await store.exists(digest)
    assert await store.get_info(digest) == ref
    assert await store.read(digest) == data
    with Image.open(io.BytesIO(await store.read(digest))) as image:
        assert image.size == (32, 24)


async def test_a_digest_checked_on_the_way_in_addresses_the_asset(store: AssetStore) -> None:
    data = png((10, 200, 10))
    digest = hashlib.sha256(data).hexdigest()
    ref = await store.put(data, width=32, height=24, media_type="image/png", sha256=digest)
    assert ref.asset_id == digest
    assert await store.read(digest) == data


async def test_put_is_idempotent(storage: Storage) -> None:
    data = png((10, 200, 10))
    first = await storage.store.put(data, width=32, height=24, media_type="image/png")
    stored = storage.objects()
    second = await storage.store.put(data, width=32, height=24, media_type="image/png")
    assert first == second
    assert storage.objects() == stored


async def test_same_bytes_with_other_info_are_refused(store: AssetStore) -> None:
    data = png((10, 10, 200))
    ref = await store.put(data, width=32, height=24, media_type="image/png")
    for width, height, media_type in ((64, 48, "image/png"), (32, 24, "image/webp")):
        with pytest.raises(AlreadyExists) as caught:
            await store.put(data, width=width, height=height, media_type=media_type)
        assert caught.value.reason == "ASSET_INFO_MISMATCH"
    assert await store.get_info(ref.asset_id) == ref


async def test_different_bytes_are_different_assets(store: AssetStore) -> None:
    red = await store.put(png((255, 0, 0)), width=32, height=24, media_type="image/png")
    blue = await store.put(png((0, 0, 255)), width=32, height=24, media_type="image/png")
    assert red.asset_id != blue.asset_id
    assert await store.read(red.asset_id) != await store.read(blue.asset_id)


async def test_read_chunks_in_order(store: AssetStore) -> None:
    data = bytes(range(256)) * 10_000  # 2.56 MB, not a multiple of the chunk size
    ref = await store.put(data, width=1, height=1, media_type="application/octet-stream")
    chunks = [chunk async for chunk in store.read_chunks(ref.asset_id, 1024 * 1024)]
    assert [len(chunk) for chunk in chunks] == [1048576, 1048576, 462848]
    assert b"".join(chunks) == data


async def test_a_bad_chunk_size_is_refused(store: AssetStore) -> None:
    ref = await store.put(b"x", width=1, height=1, media_type="image/png")
    with pytest.raises(ValueError, match="chunk_size"):
        async for _ in store.read_chunks(ref.asset_id, 0):
            pass


async def test_unknown_asset_is_not_found(store: AssetStore) -> None:
    unknown = "0" * 64
    assert not await store.exists(unknown)
    with pytest.raises(NotFound) as caught:
        await store.get_info(unknown)
    assert caught.value.reason == "ASSET_NOT_FOUND"
    with pytest.raises(NotFound):
        await store.read(unknown)
    with pytest.raises(NotFound):
        async for _ in store.read_chunks(unknown):
            pass


@pytest.mark.parametrize(
    "asset_id",
    ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, "0" * 62 + "/x"],
)
async def test_malformed_asset_id_is_invalid(store: AssetStore, asset_id: str) -> None:
    for call in (store.get_info, store.read, store.exists):
        with pytest.raises(InvalidArgument) as caught:
            await call(asset_id)
        assert caught.value.reason == "MALFORMED_ASSET_ID"
        assert caught.value.violations[0].field == "asset_id"
    with pytest.raises(InvalidArgument):
        async for _ in store.read_chunks(asset_id):
            pass


@pytest.mark.parametrize(
    ("data", "width", "height", "media_type", "field"),
    [
        (b"", 1, 1, "image/png", "data"),
        (b"x", 0, 1, "image/png", "width"),
        (b"x", 1, -1, "image/png", "width"),
        (b"x", 1, 1, "png", "media_type"),
        (b"x", 1, 1, "", "media_type"),
    ],
)
async def test_bad_put_stores_nothing(
    storage: Storage, data: bytes, width: int, height: int, media_type: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await storage.store.put(data, width=width, height=height, media_type=media_type)
    assert caught.value.violations[0].field == field
    assert storage.objects() == []


async def test_corrupted_bytes_are_reported(storage: Storage) -> None:
    ref = await storage.store.put(png((9, 9, 9)), width=32, height=24, media_type="image/png")
    storage.overwrite(ref.asset_id, b"not the image")
    with pytest.raises(Internal, match="corrupt"):
        await storage.store.read(ref.asset_id)
    with pytest.raises(Internal, match="corrupt"):
        async for _ in storage.store.read_chunks(ref.asset_id):
            pass


async def test_a_new_store_sees_earlier_assets(
    storage: Storage, request: pytest.FixtureRequest
) -> None:
    data = png((4, 5, 6))
    ref = await storage.store.put(data, width=32, height=24, media_type="image/png")
    endpoint = request.getfixturevalue("moto_endpoint") if storage.kind == "s3" else ""
    again = await storage.reopen(endpoint)
    try:
        assert await again.get_info(ref.asset_id) == ref
        assert await again.read(ref.asset_id) == data
    finally:
        await again.close()


class TestLocal:
    """The directory layout: bytes and a JSON sidecar, each renamed into place."""

    async def test_files_and_sidecar(self, tmp_path: Path) -> None:
        store = LocalAssetStore(tmp_path / "assets")
        data = png((200, 10, 10))
        ref = await store.put(data, width=32, height=24, media_type="image/png")
        await store.put(data, width=32, height=24, media_type="image/png")
        path = store.root / ref.asset_id[:2] / ref.asset_id[2:4] / ref.asset_id
        assert path.read_bytes() == data
        assert json.loads(path.with_suffix(".json").read_text()) == {
            "width": 32,
            "height": 24,
            "media_type": "image/png",
            "size_bytes": len(data),
        }
        # No temporary file is left behind.
        files = sorted(path.name for path in store.root.rglob("*") if path.is_file())
        assert files == [ref.asset_id, ref.asset_id + ".json"]

    async def test_interrupted_put_is_not_an_asset_until_completed(self, tmp_path: Path) -> None:
        store = LocalAssetStore(tmp_path / "assets")
        data = png((1, 2, 3))
        digest = hashlib.sha256(data).hexdigest()
        # A crash between the two renames leaves the bytes without their sidecar.
        orphan = store.root / digest[:2] / digest[2:4] / digest
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(data[:10])
        assert not await store.exists(digest)
        with pytest.raises(NotFound):
            await store.read(digest)
        ref = await store.put(data, width=32, height=24, media_type="image/png")
        assert await store.read(ref.asset_id) == data

    async def test_a_crash_between_the_renames_leaves_no_asset(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = LocalAssetStore(tmp_path / "assets")
        data = png((4, 5, 6))
        digest = hashlib.sha256(data).hexdigest()
        renames = []
        real_replace = os.replace

        def replace_then_crash(source: Any, target: Any) -> None:
            if renames:
                raise OSError("the process stopped here")
            renames.append(target)
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace_then_crash)
        with pytest.raises(OSError, match="stopped here"):
            await store.put(data, width=32, height=24, media_type="image/png")
        monkeypatch.setattr(os, "replace", real_replace)
        assert [Path(target).name for target in renames] == [digest]
        for reader in (store, LocalAssetStore(store.root)):
            assert not await reader.exists(digest)
            with pytest.raises(NotFound):
                await reader.get_info(digest)
            with pytest.raises(NotFound):
                await reader.read(digest)
        ref = await store.put(data, width=32, height=24, media_type="image/png")
        assert await store.read(ref.asset_id) == data

    async def test_a_sidecar_without_its_bytes_is_no_asset(self, tmp_path: Path) -> None:
        store = LocalAssetStore(tmp_path / "assets")
        data = png((7, 8, 9))
        digest = hashlib.sha256(data).hexdigest()
        # Renamed in order, but a crash before the directory's fsync may keep only the
        # sidecar's rename.
        sidecar = store.root / digest[:2] / digest[2:4] / f"{digest}.json"
        sidecar.parent.mkdir(parents=True)
        info = {"width": 32, "height": 24, "media_type": "image/png", "size_bytes": len(data)}
        sidecar.write_text(json.dumps(info))
        assert not await store.exists(digest)
        with pytest.raises(NotFound):
            await store.get_info(digest)
        with pytest.raises(NotFound):
            await store.read(digest)
        ref = await store.put(data, width=32, height=24, media_type="image/png")
        assert (await store.get_info(digest)).info.size_bytes == len(data)
        assert await store.read(ref.asset_id) == data

    async def test_a_new_asset_costs_one_directory_fsync(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = LocalAssetStore(tmp_path / "assets")
        data = png((10, 11, 12))
        digest = hashlib.sha256(data).hexdigest()
        directory = store.root / digest[:2] / digest[2:4]
        # Its fan-out directory exists already, as it does for most assets of a large store.
        directory.mkdir(parents=True)
        synced: list[str] = []
        real_fsync = os.fsync

        def recording_fsync(descriptor: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
            real_fsync(descriptor)

        monkeypatch.setattr(os, "fsync", recording_fsync)
        await store.put(data, width=32, height=24, media_type="image/png")
        # The two files (as temporary files) and then the directory, once.
        assert len(synced) == 3
        assert synced[-1] == str(directory)


class TestS3:
    """The object layout, objects this store did not write, and a store that is not there."""

    @pytest.mark.parametrize(("prefix", "key_prefix"), [("tiergen/v1", "tiergen/v1/"), ("", "")])
    async def test_one_object_per_asset_with_its_info(
        self, s3: S3Client, moto_endpoint: str, prefix: str, key_prefix: str
    ) -> None:
        bucket = new_bucket(s3)
        store = await S3AssetStore.open(bucket, prefix, endpoint_url=moto_endpoint, **CREDENTIALS)
        try:
            data = png((200, 10, 10))
            ref = await store.put(data, width=32, height=24, media_type="image/png")
        finally:
            await store.close()
        key = f"{key_prefix}{ref.asset_id[:2]}/{ref.asset_id[2:4]}/{ref.asset_id}"
        listing = s3.list_objects_v2(Bucket=bucket)
        assert [item["Key"] for item in listing["Contents"]] == [key]
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"] == {"width": "32", "height": "24"}
        assert (head["ContentType"], head["ContentLength"]) == ("image/png", len(data))
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data

    @pytest.mark.parametrize(
        "metadata", [{}, {"width": "32"}, {"width": "wide", "height": "24"}], ids=str
    )
    async def test_an_object_without_asset_info_is_internal(
        self, s3_storage: Storage, metadata: dict[str, str]
    ) -> None:
        storage = s3_storage
        assert storage.s3 is not None
        data = b"written by someone else"
        asset_id = hashlib.sha256(data).hexdigest()
        storage.s3.put_object(
            Bucket=storage.location,
            Key=f"{storage.prefix}/{asset_id[:2]}/{asset_id[2:4]}/{asset_id}",
            Body=data,
            Metadata=metadata,
        )
        with pytest.raises(Internal, match="metadata"):
            await storage.store.get_info(asset_id)
        with pytest.raises(Internal, match="metadata"):
            await storage.store.read(asset_id)
        with pytest.raises(Internal, match="metadata"):
            async for _ in storage.store.read_chunks(asset_id):
                pass

    async def test_a_missing_bucket_is_not_found(self, moto_endpoint: str) -> None:
        with pytest.raises(NotFound) as caught:
            await S3AssetStore.open("no-such-bucket", endpoint_url=moto_endpoint, **CREDENTIALS)
        assert caught.value.reason == "BUCKET_NOT_FOUND"

    async def test_an_unreachable_endpoint_is_unavailable(self) -> None:
        with pytest.raises(Unavailable) as caught:
            await S3AssetStore.open(
                "assets", endpoint_url=f"http://127.0.0.1:{closed_port()}", **CREDENTIALS
            )
        assert caught.value.retry_after == 1.0

    async def test_unavailable_once_the_endpoint_goes_away(self, s3: S3Client) -> None:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        # moto keeps its buckets in the process, so this server sees the session's buckets.
        bucket = new_bucket(s3)
        store = await S3AssetStore.open(bucket, endpoint_url=f"http://{host}:{port}", **CREDENTIALS)
        try:
            ref = await store.put(b"bytes", width=1, height=1, media_type="image/png")
            server.stop()
            with pytest.raises(Unavailable):
                await store.read(ref.asset_id)
            with pytest.raises(Unavailable):
                await store.put(b"more bytes", width=1, height=1, media_type="image/png")
        finally:
            await store.close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestOpenAssetStore:
    """`open_asset_store` picks the store the router's settings name."""

    async def test_the_local_directory_without_an_assets_url(self, tmp_path: Path) -> None:
        settings = RouterSettings.from_env({"TIERGEN_ROUTER_ASSETS_DIR": str(tmp_path / "a")})
        store = await open_asset_store(settings)
        assert isinstance(store, LocalAssetStore) and store.root == tmp_path / "a"

    async def test_the_bucket_of_the_assets_url(self, s3: S3Client, moto_endpoint: str) -> None:
        bucket = new_bucket(s3)
        settings = RouterSettings.from_env(
            {
                "TIERGEN_ROUTER_ASSETS_URL": f"s3://{bucket}/router/assets",
                "TIERGEN_ROUTER_S3_ENDPOINT_URL": moto_endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        store = await open_asset_store(settings)
        try:
            assert isinstance(store, S3AssetStore)
            ref = await store.put(b"x", width=1, height=1, media_type="image/png")
        finally:
            await store.close()
        listing = s3.list_objects_v2(Bucket=bucket)
        assert [item["Key"] for item in listing["Contents"]] == [
            f"router/assets/{ref.asset_id[:2]}/{ref.asset_id[2:4]}/{ref.asset_id}"
        ]

    async def test_a_missing_bucket_is_a_configuration_error(self, moto_endpoint: str) -> None:
        settings = RouterSettings.from_env(
            {
                "TIERGEN_ROUTER_ASSETS_URL": "s3://no-such-bucket",
                "TIERGEN_ROUTER_S3_ENDPOINT_URL": moto_endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
            }
        )
        with pytest.raises(ConfigError, match=r"TIERGEN_ROUTER_ASSETS_URL.*no-such-bucket"):
            await open_asset_store(settings)
