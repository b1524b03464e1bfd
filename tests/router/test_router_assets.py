"""Tests of the local content-addressed asset store, on a real directory."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from services.router.assets import AssetInfo, AssetRef, LocalAssetStore
from services.runtime.errors import AlreadyExists, Internal, InvalidArgument, NotFound


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> LocalAssetStore:
    return LocalAssetStore(tmp_path / "assets")


async def test_put_stores_by_content(store: LocalAssetStore) -> None:
    data = png((200, 10, 10))
    ref = await store.put(data, width=32, height=24, media_type="image/png")
    digest = hashlib.sha256(data).hexdigest()
    assert ref == AssetRef(digest, AssetInfo(32, 24, "image/png", len(data)))
    assert ref.sha256 == digest
    path = store.root / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == data
    assert json.loads(path.with_suffix(".json").read_text()) == {
        "width": 32,
        "height": 24,
        "media_type": "image/png",
        "size_bytes": len(data),
    }
    assert await store.exists(digest)
    assert await store.get_info(digest) == ref
    assert await store.read(digest) == data
    with Image.open(io.BytesIO(await store.read(digest))) as image:
        assert image.size == (32, 24)


async def test_put_is_idempotent_and_leaves_no_temporary_files(store: LocalAssetStore) -> None:
    data = png((10, 200, 10))
    first = await store.put(data, width=32, height=24, media_type="image/png")
    second = await store.put(data, width=32, height=24, media_type="image/png")
    assert first == second
    files = sorted(path.name for path in store.root.rglob("*") if path.is_file())
    assert files == [first.asset_id, first.asset_id + ".json"]


async def test_same_bytes_with_other_info_are_refused(store: LocalAssetStore) -> None:
    data = png((10, 10, 200))
    await store.put(data, width=32, height=24, media_type="image/png")
    with pytest.raises(AlreadyExists) as caught:
        await store.put(data, width=64, height=48, media_type="image/png")
    assert caught.value.reason == "ASSET_INFO_MISMATCH"


async def test_different_bytes_are_different_assets(store: LocalAssetStore) -> None:
    red = await store.put(png((255, 0, 0)), width=32, height=24, media_type="image/png")
    blue = await store.put(png((0, 0, 255)), width=32, height=24, media_type="image/png")
    assert red.asset_id != blue.asset_id
    assert await store.read(red.asset_id) != await store.read(blue.asset_id)


async def test_read_chunks_in_order(store: LocalAssetStore) -> None:
    data = bytes(range(256)) * 10_000  # 2.56 MB, not a multiple of the chunk size
    ref = await store.put(data, width=1, height=1, media_type="application/octet-stream")
    chunks = [chunk async for chunk in store.read_chunks(ref.asset_id, 1024 * 1024)]
    assert [len(chunk) for chunk in chunks] == [1048576, 1048576, 462848]
    assert b"".join(chunks) == data


async def test_unknown_asset_is_not_found(store: LocalAssetStore) -> None:
    unknown = "0" * 64
    assert not await store.exists(unknown)
    with pytest.raises(NotFound):
        await store.get_info(unknown)
    with pytest.raises(NotFound):
        await store.read(unknown)
    with pytest.raises(NotFound):
        async for _ in store.read_chunks(unknown):
            pass


@pytest.mark.parametrize(
    "asset_id",
    ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, "0" * 62 + "/x"],
)
async def test_malformed_asset_id_is_invalid(store: LocalAssetStore, asset_id: str) -> None:
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
    store: LocalAssetStore, data: bytes, width: int, height: int, media_type: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.put(data, width=width, height=height, media_type=media_type)
    assert caught.value.violations[0].field == field
    assert not any(store.root.rglob("*"))


async def test_interrupted_put_is_not_an_asset_until_completed(store: LocalAssetStore) -> None:
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


async def test_corrupted_bytes_are_reported(store: LocalAssetStore) -> None:
    ref = await store.put(png((9, 9, 9)), width=32, height=24, media_type="image/png")
    path = store.root / ref.asset_id[:2] / ref.asset_id[2:4] / ref.asset_id
    path.write_bytes(b"not the image")
    with pytest.raises(Internal, match="corrupt"):
        await store.read(ref.asset_id)
    with pytest.raises(Internal, match="corrupt"):
        async for _ in store.read_chunks(ref.asset_id):
            pass


async def test_a_new_store_sees_earlier_assets(tmp_path: Path) -> None:
    data = png((4, 5, 6))
    ref = await LocalAssetStore(tmp_path / "a").put(
        data, width=32, height=24, media_type="image/png"
    )
    assert await LocalAssetStore(tmp_path / "a").read(ref.asset_id) == data
