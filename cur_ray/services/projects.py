"""Use cases for project connections: add, list, enable/disable, resolve targets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from cur_ray.adapters.aws import AwsTarget, CredentialProvider
from cur_ray.adapters.crypto import SecretBox
from cur_ray.adapters.db.models import ProjectConnection
from cur_ray.adapters.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from cur_ray.domain.projects import StorageLocation, parse_storage_url, validate_project_id
from cur_ray.errors import ConflictError, InvalidInputError, NotFoundError
from cur_ray.settings import Settings

_ROLE_ARN_PREFIX = "arn:aws"
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")  # ASCII: \d takes any digit


def _valid_endpoint(url: str) -> bool:
    parts = urlsplit(url)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and url.isprintable()
        and len(url) <= 2048
        and not any(c.isspace() for c in url)
    )


@dataclass(frozen=True)
class ProjectView:
    """A connection as shown to users: never the external id itself."""

    project_id: str
    enabled: bool
    storage_url: str
    role_arn: str | None
    has_external_id: bool
    region: str | None
    endpoint_url: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def _view(row: ProjectConnection) -> ProjectView:
    location = StorageLocation(row.storage_type, row.cur_bucket_name, row.cur_prefix)  # type: ignore[arg-type]
    return ProjectView(
        project_id=row.project_id,
        enabled=row.enabled,
        storage_url=location.url,
        role_arn=row.role_arn,
        has_external_id=row.external_id_encrypted is not None,
        region=row.region,
        endpoint_url=row.endpoint_url,
    )


def add_project(
    session: Session,
    settings: Settings,
    *,
    project_id: str,
    storage_url: str,
    role_arn: str | None = None,
    external_id: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> ProjectView:
    """Register a new project connection; the external id is encrypted before storage."""
    validate_project_id(project_id)
    location = parse_storage_url(storage_url)
    if role_arn is not None and not role_arn.startswith(_ROLE_ARN_PREFIX):
        raise InvalidInputError("role ARN must look like arn:aws:iam::<account>:role/<name>")
    if region is not None and not _REGION_RE.fullmatch(region):
        raise InvalidInputError("invalid region: use an AWS region name such as eu-west-1")
    if endpoint_url is not None and not _valid_endpoint(endpoint_url):
        raise InvalidInputError("invalid endpoint URL: use http(s)://host[:port]")
    if location.scheme == "file" and role_arn:
        raise InvalidInputError("a role ARN only applies to s3:// storage")
    if session.get(ProjectConnection, project_id) is not None:
        raise ConflictError(f"project {project_id} already exists")
    row = ProjectConnection(
        project_id=project_id,
        enabled=True,
        storage_type=location.scheme,
        cur_bucket_name=location.bucket,
        cur_prefix=location.prefix,
        role_arn=role_arn,
        external_id_encrypted=(
            SecretBox(_keys(settings)).encrypt(external_id) if external_id else None
        ),
        region=region,
        endpoint_url=endpoint_url,
    )
    session.add(row)
    session.flush()
    return _view(row)


def _keys(settings: Settings) -> str | None:
    return settings.cur_secrets_key.get_secret_value() if settings.cur_secrets_key else None


def list_projects(session: Session) -> list[ProjectView]:
    """Every project connection, by id."""
    rows = session.scalars(select(ProjectConnection).order_by(ProjectConnection.project_id))
    return [_view(row) for row in rows]


def get_connection(session: Session, project_id: str) -> ProjectConnection:
    """The connection row of ``project_id`` or NotFoundError."""
    validate_project_id(project_id)
    row = session.get(ProjectConnection, project_id)
    if row is None:
        raise NotFoundError(f"unknown project: {project_id}")
    return row


def set_enabled(session: Session, project_id: str, enabled: bool) -> ProjectView:
    """Enable or disable a project (disabled projects are skipped by global jobs)."""
    row = get_connection(session, project_id)
    row.enabled = enabled
    session.flush()
    return _view(row)


def target_connections(session: Session, project_id: str | None) -> list[ProjectConnection]:
    """The projects a batch runs on: the given one (must exist and be enabled) or all enabled."""
    if project_id is not None:
        row = get_connection(session, project_id)
        if not row.enabled:
            raise ConflictError(f"project {project_id} is disabled; enable it first")
        return [row]
    query = select(ProjectConnection).where(ProjectConnection.enabled.is_(True))
    return list(session.scalars(query.order_by(ProjectConnection.project_id)))


@dataclass(frozen=True)
class ConnectionSnapshot:
    """A detached copy of a connection: safe to use after its session is closed."""

    project_id: str
    location: StorageLocation
    role_arn: str | None
    external_id_encrypted: str | None
    region: str | None
    endpoint_url: str | None

    @classmethod
    def of(cls, row: ProjectConnection) -> ConnectionSnapshot:
        """Copy the fields of a connection row."""
        return cls(
            project_id=row.project_id,
            location=StorageLocation(row.storage_type, row.cur_bucket_name, row.cur_prefix),  # type: ignore[arg-type]
            role_arn=row.role_arn,
            external_id_encrypted=row.external_id_encrypted,
            region=row.region,
            endpoint_url=row.endpoint_url,
        )


def open_object_store(
    connection: ConnectionSnapshot, settings: Settings, credentials: CredentialProvider
) -> ObjectStore:
    """The object store of a project, with credentials obtained per SPEC §5."""
    if connection.location.scheme == "file":
        return LocalObjectStore(connection.location)
    external_id = (
        SecretBox(_keys(settings)).decrypt(connection.external_id_encrypted)
        if connection.external_id_encrypted
        else None
    )
    target = AwsTarget(
        project_id=connection.project_id,
        role_arn=connection.role_arn,
        external_id=external_id,
        region=connection.region,
        endpoint_url=connection.endpoint_url,
    )
    creds = credentials.credentials_for(target)
    return S3ObjectStore(
        connection.location,
        creds,
        region=connection.region or settings.aws_region,
        endpoint_url=connection.endpoint_url or settings.s3_endpoint_url,
    )


def rotate_secrets(session: Session, settings: Settings) -> int:
    """Re-encrypt every stored external id with the newest key; returns how many."""
    box = SecretBox(_keys(settings))
    count = 0
    query = select(ProjectConnection).where(ProjectConnection.external_id_encrypted.is_not(None))
    for row in session.scalars(query):
        row.external_id_encrypted = box.rotate(row.external_id_encrypted or "")
        count += 1
    session.flush()
    return count
