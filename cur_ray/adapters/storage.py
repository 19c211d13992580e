"""Object stores: S3 (boto3 for listing, pyarrow for reading) and a local folder.

Both expose the same small interface, so the batches never care where files live.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from botocore.exceptions import BotoCoreError, ClientError

from cur_ray.adapters.aws import AwsCredentials, make_s3_client, translate_client_error
from cur_ray.domain.discovery import ObjectInfo
from cur_ray.domain.projects import StorageLocation
from cur_ray.errors import StorageAccessError, StorageError

MAX_MANIFEST_BYTES = 16 * 2**20
# How many times pyarrow's AWS client sends one S3 request before a read fails (its "standard"
# strategy: exponential backoff with jitter on throttling, 5xx and connection errors). It is
# pyarrow's own default, set explicitly because it multiplies with the unit-level retries of
# RetryPolicy (CUR_READ_RETRIES): a request that keeps failing is sent
# S3_REQUEST_ATTEMPTS * (CUR_READ_RETRIES + 1) times before its file becomes ERROR. The
# request-level retries are cheap (one ranged GET again); a unit-level retry re-reads the
# whole work unit.
S3_REQUEST_ATTEMPTS = 3


@dataclass(frozen=True)
class FileSystemSpec:
    """Everything a Ray task needs to open a project's files; credentials never in ``repr``."""

    scheme: str  # "s3" | "file"
    root: str  # bucket, or local folder
    region: str | None = None
    endpoint_url: str | None = None
    credentials: AwsCredentials | None = field(default=None, repr=False)

    def path_for(self, key: str) -> str:
        """The pyarrow filesystem path of ``key``."""
        return f"{self.root}/{key}"


def open_filesystem(spec: FileSystemSpec) -> pafs.FileSystem:
    """Build the pyarrow filesystem described by ``spec``."""
    if spec.scheme == "file":
        return pafs.LocalFileSystem()
    creds = spec.credentials
    kwargs: dict[str, object] = {
        "region": spec.region or "us-east-1",
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_REQUEST_ATTEMPTS),
    }
    if creds is not None:
        kwargs.update(
            access_key=creds.access_key_id,
            secret_key=creds.secret_access_key,
            session_token=creds.session_token,
        )
    if spec.endpoint_url:
        endpoint = urlsplit(spec.endpoint_url)
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
    return pafs.S3FileSystem(**kwargs)  # type: ignore[arg-type]


class ObjectStore(Protocol):
    """Listing and small reads of one project's storage location."""

    location: StorageLocation

    def list_objects(self) -> Iterator[ObjectInfo]:
        """Every object under the location's prefix, page by page."""
        ...

    def read_small(self, key: str, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
        """The whole content of a small object (a manifest), refusing anything larger."""
        ...

    def filesystem_spec(self) -> FileSystemSpec:
        """How tasks open data files of this location."""
        ...


class S3ObjectStore:
    """A bucket + prefix reached with one project's credentials."""

    def __init__(
        self,
        location: StorageLocation,
        credentials: AwsCredentials,
        *,
        region: str,
        endpoint_url: str | None,
    ) -> None:
        self.location = location
        self._credentials = credentials
        self._region = region
        self._endpoint_url = endpoint_url
        self._client = make_s3_client(credentials, region=region, endpoint_url=endpoint_url)

    def list_objects(self) -> Iterator[ObjectInfo]:
        """ListObjectsV2, paginated; yields as pages arrive (no full copy of the bucket)."""
        paginator = self._client.get_paginator("list_objects_v2")
        what = f"listing s3://{self.location.bucket}/{self.location.list_prefix}"
        try:
            for page in paginator.paginate(
                Bucket=self.location.bucket, Prefix=self.location.list_prefix
            ):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"],
                        size=int(obj.get("Size", 0)),
                        etag=str(obj.get("ETag", "")).strip('"'),
                        last_modified=obj.get("LastModified"),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, what) from exc

    def read_small(self, key: str, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
        """GetObject of a small object, capped at ``max_bytes``."""
        what = f"reading s3://{self.location.bucket}/{key}"
        try:
            response = self._client.get_object(Bucket=self.location.bucket, Key=key)
            if int(response.get("ContentLength", 0)) > max_bytes:
                raise StorageError(f"{what}: larger than {max_bytes} bytes")
            data: bytes = response["Body"].read(max_bytes + 1)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, what) from exc
        if len(data) > max_bytes:  # a body longer than announced (or announced without length)
            raise StorageError(f"{what}: larger than {max_bytes} bytes")
        return data

    def filesystem_spec(self) -> FileSystemSpec:
        """S3 access for tasks, with this project's (temporary) credentials."""
        return FileSystemSpec(
            scheme="s3",
            root=self.location.bucket,
            region=self._region,
            # What boto3 really uses (it also honours AWS_ENDPOINT_URL* and config files),
            # so that pyarrow reads from the same place the listing came from.
            endpoint_url=self._endpoint_url or _custom_endpoint(self._client.meta.endpoint_url),
            credentials=self._credentials,
        )


def _custom_endpoint(url: str | None) -> str | None:
    """``url`` unless it is one of AWS's own S3 endpoints (pyarrow finds those itself)."""
    if not url:
        return None
    host = urlsplit(url).hostname or ""
    return None if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) else url


class LocalObjectStore:
    """A local folder laid out like a bucket: keys are '/'-separated relative paths."""

    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self._root = Path(location.bucket)

    def list_objects(self) -> Iterator[ObjectInfo]:
        """Every regular file under the folder, in key order."""
        if not self._root.is_dir():
            raise StorageAccessError(f"local storage folder {self._root} does not exist")
        for dirpath, dirnames, filenames in os.walk(self._root):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                stat = path.stat()
                yield ObjectInfo(
                    key=path.relative_to(self._root).as_posix(),
                    size=stat.st_size,
                    # Size + mtime changes exactly when a file is rewritten, like an ETag.
                    etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
                    last_modified=dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC),
                )

    def read_small(self, key: str, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
        """Read a small file of the folder, capped at ``max_bytes``."""
        path = self._root / key
        try:
            with path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise StorageAccessError(
                f"reading {key}: {exc.strerror or type(exc).__name__}"
            ) from exc
        if len(data) > max_bytes:
            raise StorageError(f"reading {key}: larger than {max_bytes} bytes")
        return data

    def filesystem_spec(self) -> FileSystemSpec:
        """Local filesystem access for tasks."""
        return FileSystemSpec(scheme="file", root=str(self._root))


def object_store_from_spec(location: StorageLocation, spec: FileSystemSpec) -> ObjectStore:
    """Rebuild a project's object store from what a task received (no new AssumeRole)."""
    if spec.scheme == "file":
        return LocalObjectStore(location)
    if spec.credentials is None:
        raise StorageAccessError(f"no credentials to reach s3://{location.bucket}")
    return S3ObjectStore(
        location,
        spec.credentials,
        region=spec.region or "us-east-1",
        endpoint_url=spec.endpoint_url,
    )
