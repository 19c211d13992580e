"""Use cases over billing files: list them, re-queue failed ones."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cur_ray.adapters.db.models import BillingFile, utcnow
from cur_ray.domain.billing import FileStatus
from cur_ray.errors import InvalidInputError
from cur_ray.services.projects import get_connection


def parse_status(status: str | None) -> FileStatus | None:
    """Validate a status filter (case-insensitive)."""
    if status is None:
        return None
    try:
        return FileStatus(status.upper())
    except ValueError:
        allowed = ", ".join(s.value for s in FileStatus)
        raise InvalidInputError(f"invalid status {status!r}; use one of {allowed}") from None


def file_as_dict(row: BillingFile) -> dict[str, Any]:
    """The public JSON form of a billing file."""
    return {
        "id": row.id,
        "project_id": row.project_id,
        "bucket_name": row.bucket_name,
        "object_key": row.object_key,
        "etag": row.etag,
        "size_bytes": row.size_bytes,
        "last_modified": row.last_modified.isoformat() if row.last_modified else None,
        "billing_period": row.billing_period.strftime("%Y-%m"),
        "report_name": row.report_name,
        "format": row.format,
        "version_id": row.version_id,
        "status": row.status,
        "attempts": row.attempts,
        "error_message": row.error_message,
        "rows_read": row.rows_read,
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
    }


def list_files(
    session: Session, project_id: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """Billing files, optionally of one project and one status, by project, period and key."""
    query = select(BillingFile)
    if project_id is not None:
        get_connection(session, project_id)
        query = query.where(BillingFile.project_id == project_id)
    wanted = parse_status(status)
    if wanted is not None:
        query = query.where(BillingFile.status == wanted)
    query = query.order_by(
        BillingFile.project_id, BillingFile.billing_period, BillingFile.object_key
    )
    return [file_as_dict(row) for row in session.scalars(query)]


def requeue_errors(session: Session, project_id: str | None = None) -> int:
    """Send ``ERROR`` files back to ``PENDING`` (attempts kept); returns how many."""
    stmt = update(BillingFile).where(BillingFile.status == FileStatus.ERROR)
    if project_id is not None:
        get_connection(session, project_id)
        stmt = stmt.where(BillingFile.project_id == project_id)
    result = session.execute(
        stmt.values(status=FileStatus.PENDING, error_message=None, updated_at=utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def count_by_status(session: Session) -> dict[str, int]:
    """How many billing files are in each status (all projects)."""
    query = select(BillingFile.status, func.count()).group_by(BillingFile.status)
    return {status: int(count) for status, count in session.execute(query)}
