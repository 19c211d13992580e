"""Persistence of ``finops_billing_files`` and ``finops_report_versions`` for Batch A."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cur_ray.adapters.db.models import BillingFile, ReportVersion, utcnow
from cur_ray.domain.billing import FileStatus
from cur_ray.domain.discovery import CurrentVersion, DiscoveredFile

_CHUNK = 2000


def dialect_insert(session: Session, table: Any) -> Any:
    """An INSERT supporting ``on_conflict_do_nothing``/``do_update`` for the session's backend."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass
class RegistrationCounts:
    """What one project's registration changed."""

    registered: int = 0
    requeued: int = 0
    superseded: int = 0
    affected_periods: set[dt.date] | None = None


@dataclass(frozen=True)
class _Known:
    id: int
    etag: str
    status: str
    version_id: str | None
    costs_etag: str | None
    billing_period: dt.date


def record_versions(session: Session, project_id: str, versions: Iterable[CurrentVersion]) -> None:
    """Remember every version a manifest named current (idempotent, keeps first-seen order)."""
    rows = [
        {
            "project_id": project_id,
            "report_name": v.report_name,
            "billing_period": v.billing_period,
            "version_id": v.version_id,
            "manifest_key": v.manifest_key,
            "first_seen_at": utcnow(),
        }
        for v in versions
    ]
    if rows:
        stmt = dialect_insert(session, ReportVersion.__table__).on_conflict_do_nothing()
        session.execute(stmt, rows)


def register_files(
    session: Session, project_id: str, bucket: str, files: Sequence[DiscoveredFile]
) -> RegistrationCounts:
    """Apply a discovery plan: insert new files, requeue changed ones, supersede old/vanished.

    New rows go in with ``INSERT … ON CONFLICT DO NOTHING`` on the unique
    (project, bucket, key), so concurrent runs never create duplicates.
    """
    counts = RegistrationCounts(affected_periods=set())
    known = _known_files(session, project_id, bucket)
    now = utcnow()

    new_rows = [_row(project_id, bucket, f, now) for f in files if f.key not in known]
    for start in range(0, len(new_rows), _CHUNK):
        chunk = new_rows[start : start + _CHUNK]
        stmt = (
            dialect_insert(session, BillingFile.__table__)
            .on_conflict_do_nothing(index_elements=["project_id", "bucket_name", "object_key"])
            .returning(BillingFile.__table__.c.status)
        )
        inserted = session.execute(stmt, chunk).scalars().all()
        counts.registered += sum(1 for s in inserted if s == FileStatus.PENDING)
        counts.superseded += sum(1 for s in inserted if s == FileStatus.SUPERSEDED)

    listed: set[str] = set()
    for f in files:
        listed.add(f.key)
        row = known.get(f.key)
        if row is None:
            continue
        values = _changes(row, f)
        if values:
            if values.get("status") == FileStatus.PENDING:
                counts.requeued += 1
            if values.get("status") == FileStatus.SUPERSEDED:
                counts.superseded += 1
                counts.affected_periods.add(row.billing_period)  # type: ignore[union-attr]
            values["updated_at"] = now
            session.execute(update(BillingFile).where(BillingFile.id == row.id).values(**values))

    vanished = [
        row
        for key, row in known.items()
        if key not in listed and row.status != FileStatus.SUPERSEDED
    ]
    for start in range(0, len(vanished), _CHUNK):
        gone = vanished[start : start + _CHUNK]
        session.execute(
            update(BillingFile)
            .where(BillingFile.id.in_([row.id for row in gone]))
            .values(
                status=FileStatus.SUPERSEDED, claimed_by=None, lease_expires_at=None, updated_at=now
            )
        )
        counts.superseded += len(gone)
        counts.affected_periods.update(row.billing_period for row in gone)  # type: ignore[union-attr]
    return counts


def _known_files(session: Session, project_id: str, bucket: str) -> dict[str, _Known]:
    query = select(
        BillingFile.object_key,
        BillingFile.id,
        BillingFile.etag,
        BillingFile.status,
        BillingFile.version_id,
        BillingFile.costs_etag,
        BillingFile.billing_period,
    ).where(BillingFile.project_id == project_id, BillingFile.bucket_name == bucket)
    return {r[0]: _Known(*r[1:]) for r in session.execute(query)}


def _row(project_id: str, bucket: str, f: DiscoveredFile, now: dt.datetime) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "bucket_name": bucket,
        "object_key": f.key,
        "etag": f.etag,
        "size_bytes": f.size,
        "last_modified": f.last_modified,
        "report_name": f.report_name,
        "billing_period": f.billing_period,
        "format": f.format.value,
        "version_id": f.version_id,
        "status": FileStatus.PENDING if f.current else FileStatus.SUPERSEDED,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def _changes(row: _Known, f: DiscoveredFile) -> dict[str, Any]:
    """The column updates that bring a known row in line with what was just discovered."""
    values: dict[str, Any] = {}
    if not f.current:
        if row.status != FileStatus.SUPERSEDED:
            values.update(status=FileStatus.SUPERSEDED, claimed_by=None, lease_expires_at=None)
        return values
    if row.version_id != f.version_id:
        values["version_id"] = f.version_id
    if row.etag != f.etag:
        # Overwrite-mode re-delivery: same key, new content.
        values.update(
            etag=f.etag,
            size_bytes=f.size,
            last_modified=f.last_modified,
            format=f.format.value,
            status=FileStatus.PENDING,
            error_message=None,
            claimed_by=None,
            lease_expires_at=None,
        )
    elif row.status == FileStatus.SUPERSEDED:
        # Current again (a manifest named it back, or it reappeared).
        status = FileStatus.DONE if row.costs_etag == f.etag else FileStatus.PENDING
        values.update(status=status, error_message=None)
    return values
