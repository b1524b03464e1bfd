"""Content-addressed assets in S3 or an S3-compatible object store (MinIO, Ceph, ...), via boto3.

An asset is one object, `<prefix>/ab/cd/<sha256>`, its width and height in the object's
metadata and its media type as its Content-Type. S3 makes an object visible whole or not at
all, so the bytes and their info appear together and a crash mid-put leaves nothing behind.
Every upload carries its SHA-256 (`ChecksumSHA256`), which the store verifies before it keeps
the bytes, and every read checks the bytes against their address.

boto3 blocks, so each call runs in a worker thread (`asyncio.to_thread`); one client, which
boto3 makes safe to share between threads, serves them all. Reads stream the object's body a
chunk at a time, so an image never has to fit in memory twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as EndpointUnreachable
from botocore.response import StreamingBody

from services.router.assets.store import (
    DEFAULT_CHUNK_SIZE,
    AssetInfo,
    AssetRef,
    check_asset_id,
    check_digest,
    check_new_asset,
    info_mismatch,
)
from services.runtime.errors import Internal, NotFound, TiergenError, Unavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3AssetStore"]

#: S3 error codes worth another try later: throttling, timeouts, bytes damaged on the way.
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "BadDigest"}
)
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3AssetStore:
    """An `AssetStore` on an S3 bucket. Open with `await S3AssetStore.open(bucket, prefix)`."""

    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self._client = client
        self.bucket = bucket
        #: Key prefix of every asset, without a trailing slash; may be empty.
        self.prefix = prefix.strip("/")

    @classmethod
    async def open(
        cls,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        timeout_seconds: float = 30.0,
    ) -> S3AssetStore:
        """Connect and check that the bucket can be used.

        Credentials and region left None come from boto3's own chain. NotFound
        (BUCKET_NOT_FOUND) when the bucket does not exist, Unavailable when the store cannot be
        reached, Internal when it refuses the credentials.
        """
        client = await asyncio.to_thread(
            _client,
            endpoint_url=endpoint_url,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            timeout_seconds=timeout_seconds,
        )
        store = cls(client, bucket, prefix)
        try:
            await asyncio.to_thread(store._check_bucket)
        except BaseException:
            client.close()
            raise
        return store

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
        ref = await asyncio.to_thread(self._head, asset_id)
        if ref is None:
            raise _asset_not_found(asset_id)
        return ref

    async def read_chunks(
        self, asset_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """The bytes in pieces of at most `chunk_size`; see `AssetStore.read_chunks`."""
        check_asset_id(asset_id)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        body = await asyncio.to_thread(self._open, asset_id)
        try:
            digest = hashlib.sha256()
            while chunk := await asyncio.to_thread(self._read, asset_id, body, chunk_size):
                digest.update(chunk)
                yield chunk
            check_digest(asset_id, digest.hexdigest())
        finally:
            await asyncio.to_thread(body.close)

    async def read(self, asset_id: str) -> bytes:
        """All the bytes of a stored asset."""
        check_asset_id(asset_id)
        return await asyncio.to_thread(self._read_all, asset_id)

    async def exists(self, asset_id: str) -> bool:
        """Whether the asset is stored."""
        check_asset_id(asset_id)
        return await asyncio.to_thread(self._head, asset_id) is not None

    async def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def key(self, asset_id: str) -> str:
        """The object key of an asset: `<prefix>/ab/cd/<sha256>`."""
        path = f"{asset_id[:2]}/{asset_id[2:4]}/{asset_id}"
        return f"{self.prefix}/{path}" if self.prefix else path

    def _check_bucket(self) -> None:
        with self._errors(None):
            self._client.head_bucket(Bucket=self.bucket)

    def _put(self, data: bytes, info: AssetInfo, sha256: str) -> AssetRef:
        asset_id = sha256 or hashlib.sha256(data).hexdigest()
        # Looking first keeps a second put of the same image from uploading it again.
        stored = self._head(asset_id)
        if stored is not None:
            if stored.info != info:
                raise info_mismatch(stored, info)
            return stored
        with self._errors(asset_id):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self.key(asset_id),
                Body=data,
                ContentType=info.media_type,
                Metadata={"width": str(info.width), "height": str(info.height)},
                ChecksumSHA256=base64.b64encode(bytes.fromhex(asset_id)).decode(),
            )
        return AssetRef(asset_id, info)

    def _head(self, asset_id: str) -> AssetRef | None:
        try:
            with self._errors(asset_id):
                head = self._client.head_object(Bucket=self.bucket, Key=self.key(asset_id))
        except NotFound:
            return None
        return AssetRef(
            asset_id,
            _info(asset_id, head["Metadata"], head["ContentType"], head["ContentLength"]),
        )

    def _open(self, asset_id: str) -> StreamingBody:
        with self._errors(asset_id):
            response = self._client.get_object(Bucket=self.bucket, Key=self.key(asset_id))
        body = response["Body"]
        # An object this store did not write is refused before any of its bytes are served.
        try:
            _info(
                asset_id, response["Metadata"], response["ContentType"], response["ContentLength"]
            )
        except Internal:
            body.close()
            raise
        return body

    def _read(self, asset_id: str, body: StreamingBody, size: int | None = None) -> bytes:
        with self._errors(asset_id):
            return body.read(size)

    def _read_all(self, asset_id: str) -> bytes:
        body = self._open(asset_id)
        try:
            data = self._read(asset_id, body)
        finally:
            body.close()
        check_digest(asset_id, hashlib.sha256(data).hexdigest())
        return data

    @contextlib.contextmanager
    def _errors(self, asset_id: str | None) -> Iterator[None]:
        """Turn boto3's failures into domain errors about `asset_id` (or the bucket)."""
        subject = f"asset {asset_id}" if asset_id else f"bucket {self.bucket!r}"
        try:
            yield
        except ClientError as error:
            raise _client_error(error, subject, asset_id) from error
        except (EndpointUnreachable, HTTPClientError, IncompleteReadError) as error:
            raise Unavailable(
                f"the asset store is unreachable ({subject}): {error}", retry_after=1.0
            ) from error
        except BotoCoreError as error:
            raise Internal(f"the asset store cannot be used for {subject}: {error}") from error


def _client(
    *,
    endpoint_url: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    timeout_seconds: float,
) -> S3Client:
    """A client of its own session (boto3's default session is not thread-safe).

    Slow enough to keep off the event loop: it reads boto3's service models from disk.
    """
    session = boto3.session.Session(
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region,
    )
    config = Config(
        connect_timeout=timeout_seconds,
        read_timeout=timeout_seconds,
        retries={"mode": "standard", "max_attempts": 3},
        # S3-compatible stores are addressed by path: a virtual host per bucket needs DNS
        # entries they seldom have.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _client_error(error: ClientError, subject: str, asset_id: str | None) -> TiergenError:
    """The domain error for an S3 error answer about `asset_id`, or the bucket when None."""
    code = error.response.get("Error", {}).get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if asset_id is None:
        if code in _MISSING_CODES or code == "NoSuchBucket":
            return NotFound(f"{subject} does not exist", reason="BUCKET_NOT_FOUND")
    elif code in _MISSING_CODES:
        return _asset_not_found(asset_id)
    # S3's own failures, throttling, and a bucket that vanished under a running router are
    # for the operators to fix, not the caller: worth trying again later.
    if status >= 500 or code in _TRANSIENT_CODES or code == "NoSuchBucket":
        return Unavailable(f"the asset store failed on {subject}: {code}", retry_after=1.0)
    return Internal(f"the asset store refused the request for {subject}: {code} ({status})")


def _asset_not_found(asset_id: str) -> NotFound:
    return NotFound(f"asset {asset_id} not found", reason="ASSET_NOT_FOUND")


def _info(asset_id: str, metadata: dict[str, str], media_type: str, size: int) -> AssetInfo:
    """The info an object's metadata records; Internal for an object this store did not write."""
    try:
        return AssetInfo(
            width=int(metadata["width"]),
            height=int(metadata["height"]),
            media_type=media_type,
            size_bytes=size,
        )
    except (KeyError, ValueError) as error:
        raise Internal(f"asset {asset_id} has unreadable metadata: {error!r}") from error
