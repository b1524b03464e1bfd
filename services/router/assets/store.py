"""Content-addressed image storage: the `AssetStore` protocol and a local-directory store.

An asset's id is the lower-case hex SHA-256 of its bytes, so storing the same image twice stores
it once. The API is async: `LocalAssetStore` does its blocking file I/O in worker threads
(`asyncio.to_thread`), so callers await it from the event loop directly. The object-storage
store is `services.router.assets.s3.S3AssetStore`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from services.runtime.errors import AlreadyExists, Internal, InvalidArgument, NotFound
from services.runtime.identifiers import excerpt

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AssetInfo",
    "AssetRef",
    "AssetStore",
    "LocalAssetStore",
    "check_asset_id",
    "check_digest",
    "check_new_asset",
    "info_mismatch",
]

#: Chunk size of `read_chunks` unless told otherwise: the contracts' largest chunk, 1 MiB.
DEFAULT_CHUNK_SIZE = 1024 * 1024

_ASSET_ID = re.compile(r"^[0-9a-f]{64}$")
_MEDIA_TYPE = re.compile(r"^[a-z]+/[a-z0-9.+-]+$")


@dataclass(frozen=True)
class AssetInfo:
    """What is known about a stored image besides its bytes."""

    width: int
    height: int
    media_type: str
    size_bytes: int


@dataclass(frozen=True)
class AssetRef:
    """A stored image: its content address and its info."""

    asset_id: str
    info: AssetInfo

    @property
    def sha256(self) -> str:
        """Lower-case hex SHA-256 of the bytes; the same as the id."""
        return self.asset_id


class AssetStore(Protocol):
    """Where the router keeps images, addressed by content.

    Every method raises InvalidArgument (field "asset_id", reason MALFORMED_ASSET_ID) for an id
    that is not 64 lower-case hex digits, and NotFound for an id never stored.
    """

    async def put(
        self, data: bytes, *, width: int, height: int, media_type: str, sha256: str = ""
    ) -> AssetRef:
        """Store `data` durably and return its reference; storing it again changes nothing.

        An asset is visible whole or not at all, also after a crash mid-put. `sha256` is the
        digest of `data` when the caller checked it already (on the way in); it is not
        checked again.
        """
        ...

    async def get_info(self, asset_id: str) -> AssetRef:
        """The reference of a stored asset."""
        ...

    def read_chunks(
        self, asset_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """The bytes in order, in pieces of at most `chunk_size`.

        Errors surface on the first iteration; Internal after the last chunk if the bytes no
        longer match their address.
        """
        ...

    async def read(self, asset_id: str) -> bytes:
        """All the bytes; Internal if they no longer match their address."""
        ...

    async def exists(self, asset_id: str) -> bool:
        """Whether the asset is stored."""
        ...

    async def close(self) -> None:
        """Release the store's connections; it refuses work afterwards."""
        ...


def check_new_asset(data: bytes, width: int, height: int, media_type: str) -> None:
    """InvalidArgument (on "data", "width" or "media_type") for an image no store accepts."""
    if not data:
        raise InvalidArgument("an asset needs at least one byte", field="data")
    if width < 1 or height < 1:
        raise InvalidArgument(f"image size {width}x{height} is not positive", field="width")
    if not _MEDIA_TYPE.match(media_type):
        raise InvalidArgument(f"{media_type!r} is not a media type", field="media_type")


def check_digest(asset_id: str, digest: str) -> None:
    """Internal when bytes read back hash to `digest` instead of their address."""
    if digest != asset_id:
        raise Internal(f"asset {asset_id} is corrupt: its bytes hash to {digest}")


def info_mismatch(stored: AssetRef, info: AssetInfo) -> AlreadyExists:
    """The error for storing the bytes of `stored` again with different info."""
    return AlreadyExists(
        f"asset {stored.asset_id} is stored with {stored.info}, not {info}",
        reason="ASSET_INFO_MISMATCH",
    )


def check_asset_id(asset_id: str) -> None:
    """InvalidArgument on "asset_id" unless `asset_id` is 64 lower-case hex digits."""
    if not _ASSET_ID.match(asset_id):
        raise InvalidArgument(
            f"asset id {excerpt(asset_id)} is not 64 lower-case hex digits (a SHA-256)",
            field="asset_id",
            reason="MALFORMED_ASSET_ID",
        )


class LocalAssetStore:
    """Assets in a directory: `root/ab/cd/<sha256>` and a sidecar `root/ab/cd/<sha256>.json`.

    The sidecar holds the `AssetInfo`; an asset exists when both files do. A `put` writes both
    to temporary files and fsyncs them, renames them into place, bytes first, and then fsyncs
    the directory once, which makes both renames durable. A crash before that fsync may keep
    either rename without the other, but each file is complete once renamed: bytes without a
    sidecar, or a sidecar without bytes, are not an asset, and the next `put` of the same image
    replaces them.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    async def put(
        self, data: bytes, *, width: int, height: int, media_type: str, sha256: str = ""
    ) -> AssetRef:
        """Store `data`; AlreadyExists if the same bytes were stored with different info."""
        check_new_asset(data, width, height, media_type)
        return await asyncio.to_thread(
            self._put, data, AssetInfo(width, height, media_type, len(data)), sha256
        )

    async def get_info(self, asset_id: str) -> AssetRef:
        """The reference of a stored asset."""
        check_asset_id(asset_id)
        return await asyncio.to_thread(self._info, asset_id)

    async def read_chunks(
        self, asset_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """The bytes in pieces of at most `chunk_size`; see `AssetStore.read_chunks`."""
        check_asset_id(asset_id)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        file = await asyncio.to_thread(self._open, asset_id)
        try:
            digest = hashlib.sha256()
            while chunk := await asyncio.to_thread(file.read, chunk_size):
                digest.update(chunk)
                yield chunk
            check_digest(asset_id, digest.hexdigest())
        finally:
            await asyncio.to_thread(file.close)

    async def read(self, asset_id: str) -> bytes:
        """All the bytes of a stored asset."""
        check_asset_id(asset_id)
        return await asyncio.to_thread(self._read, asset_id)

    async def exists(self, asset_id: str) -> bool:
        """Whether the asset is stored (its bytes and its sidecar are in place)."""
        check_asset_id(asset_id)
        return await asyncio.to_thread(self._complete, asset_id)

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    def _data_path(self, asset_id: str) -> Path:
        return self.root / asset_id[:2] / asset_id[2:4] / asset_id

    def _sidecar_path(self, asset_id: str) -> Path:
        return self._data_path(asset_id).with_suffix(".json")

    def _complete(self, asset_id: str) -> bool:
        return self._sidecar_path(asset_id).is_file() and self._data_path(asset_id).is_file()

    def _put(self, data: bytes, info: AssetInfo, sha256: str) -> AssetRef:
        asset_id = sha256 or hashlib.sha256(data).hexdigest()
        if self._complete(asset_id):
            stored = self._info(asset_id)
            if stored.info != info:
                raise info_mismatch(stored, info)
            return stored
        data_path = self._data_path(asset_id)
        directory = data_path.parent
        _make_directories(directory)
        temporaries: list[Path] = []
        try:
            temporaries.append(_write_synced(directory, data))
            temporaries.append(_write_synced(directory, json.dumps(asdict(info)).encode()))
            os.replace(temporaries[0], data_path)
            os.replace(temporaries[1], self._sidecar_path(asset_id))
        except BaseException:
            for temporary in temporaries:
                temporary.unlink(missing_ok=True)
            raise
        # One fsync of the directory makes both renames durable.
        _fsync_directory(directory)
        return AssetRef(asset_id, info)

    def _info(self, asset_id: str) -> AssetRef:
        try:
            text = self._sidecar_path(asset_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _not_found(asset_id) from None
        if not self._data_path(asset_id).is_file():
            # The sidecar's rename outlived the bytes' in a crash: no asset.
            raise _not_found(asset_id)
        try:
            fields = json.loads(text)
            info = AssetInfo(
                width=int(fields["width"]),
                height=int(fields["height"]),
                media_type=str(fields["media_type"]),
                size_bytes=int(fields["size_bytes"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise Internal(f"asset {asset_id} has an unreadable sidecar: {exc}") from exc
        return AssetRef(asset_id, info)

    def _open(self, asset_id: str) -> BinaryIO:
        self._info(asset_id)
        try:
            return self._data_path(asset_id).open("rb")
        except FileNotFoundError:
            raise _not_found(asset_id) from None

    def _read(self, asset_id: str) -> bytes:
        with self._open(asset_id) as file:
            data = file.read()
        check_digest(asset_id, hashlib.sha256(data).hexdigest())
        return data


def _make_directories(directory: Path) -> None:
    """Create `directory` and missing parents, each durably linked into its parent."""
    if directory.is_dir():
        return
    _make_directories(directory.parent)
    directory.mkdir(exist_ok=True)
    _fsync_directory(directory.parent)


def _not_found(asset_id: str) -> NotFound:
    return NotFound(f"asset {asset_id} not found", reason="ASSET_NOT_FOUND")


def _write_synced(directory: Path, content: bytes) -> Path:
    """A new temporary file in `directory` holding `content`, on disk; rename it into place."""
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
