"""Project ids and storage locations (pure validation, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlsplit

from cur_ray.errors import InvalidInputError

PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_PROJECT_ID_RE = re.compile(PROJECT_ID_PATTERN)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def validate_project_id(project_id: str) -> str:
    """Return ``project_id`` when it matches SPEC §2's pattern, else raise InvalidInputError."""
    if not isinstance(project_id, str) or not _PROJECT_ID_RE.fullmatch(project_id):
        raise InvalidInputError(
            "invalid project id: use 1-64 letters, digits, '-' or '_', starting with a letter "
            "or digit"
        )
    return project_id


@dataclass(frozen=True)
class StorageLocation:
    """Where one project's CUR files are delivered.

    ``s3``: ``bucket`` is the S3 bucket and ``prefix`` the key prefix (no leading '/').
    ``file``: ``bucket`` is an absolute local folder and keys are paths relative to it; this
    is the embedded default used by the demo and tests.
    """

    scheme: Literal["s3", "file"]
    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        """The location as a URL (``s3://bucket/prefix`` or ``file:///folder``)."""
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"file://{self.bucket}"

    @property
    def list_prefix(self) -> str:
        """The prefix to list, ending in '/' unless empty."""
        return f"{self.prefix}/" if self.prefix else ""

    def contains_key(self, key: str) -> bool:
        """True when ``key`` is a normalised key inside this location's prefix."""
        if not is_safe_key(key):
            return False
        return key.startswith(self.list_prefix)


def is_safe_key(key: str) -> bool:
    """Reject keys with empty, '.' or '..' segments, backslashes or NUL (untrusted input)."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def parse_storage_url(url: str) -> StorageLocation:
    """Parse ``s3://bucket/prefix`` or ``file:///absolute/folder`` into a StorageLocation."""
    parts = urlsplit(url.strip())
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET_RE.fullmatch(bucket):
            raise InvalidInputError(f"invalid S3 bucket name in storage URL: {bucket!r}")
        prefix = unquote(parts.path).strip("/")
        if prefix and not is_safe_key(prefix):
            raise InvalidInputError("invalid S3 prefix in storage URL")
        return StorageLocation("s3", bucket, prefix)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInputError("file:// storage URLs must be local: file:///absolute/folder")
        path = PurePosixPath(unquote(parts.path))
        if not path.is_absolute() or ".." in path.parts:
            raise InvalidInputError("file:// storage URLs need an absolute folder path")
        return StorageLocation("file", str(path).rstrip("/") or "/", "")
    raise InvalidInputError("storage URL must be s3://bucket/prefix or file:///absolute/folder")
