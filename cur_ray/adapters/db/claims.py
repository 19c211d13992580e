"""Batch B's claims on ``finops_billing_files``: atomic claim, lease renewal, hand-back.

A claim moves ``PENDING`` (or ``PROCESSING`` with an expired lease, whose holder died) to
``PROCESSING`` for one worker, counting ``attempts``. On PostgreSQL the rows are locked with
``FOR UPDATE SKIP LOCKED`` so concurrent workers never wait on or take each other's rows; on
SQLite the write transaction (``BEGIN IMMEDIATE``) serialises claims and the conditional
``WHERE status = 'PENDING'`` does the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from cur_ray.adapters.db.models import BillingFile, utcnow
from cur_ray.domain.billing import FileStatus


@dataclass(frozen=True)
class ClaimedFile:
    """A file this worker holds, as it was when claimed."""

    id: int
    project_id: str
    bucket_name: str
    object_key: str
    etag: str
    size_bytes: int
    billing_period: dt.date
    format: str
    attempts: int


def _claimable(now: dt.datetime) -> object:
    return or_(
        BillingFile.status == FileStatus.PENDING,
        and_(
            BillingFile.status == FileStatus.PROCESSING,
            BillingFile.lease_expires_at < now,
        ),
    )


def claim_files(
    session: Session, project_id: str, limit: int, worker_id: str, lease: dt.timedelta
) -> tuple[list[ClaimedFile], int]:
    """Claim up to ``limit`` files of one project, oldest first.

    Returns the claimed files and how many candidates another worker took first (skipped).
    """
    now = utcnow()
    candidates = list(
        session.scalars(
            select(BillingFile.id)
            .where(BillingFile.project_id == project_id, _claimable(now))  # type: ignore[arg-type]
            .order_by(BillingFile.created_at, BillingFile.id)
            .limit(limit)
        )
    )
    if not candidates:
        return [], 0
    lockable = select(BillingFile.id).where(
        BillingFile.id.in_(candidates),
        _claimable(now),  # type: ignore[arg-type]
    )
    if session.get_bind().dialect.name == "postgresql":
        lockable = lockable.with_for_update(skip_locked=True)
    stmt = (
        update(BillingFile)
        .where(BillingFile.id.in_(lockable.scalar_subquery()))
        .values(
            status=FileStatus.PROCESSING,
            claimed_by=worker_id,
            lease_expires_at=now + lease,
            attempts=BillingFile.attempts + 1,
            updated_at=now,
        )
        .returning(
            BillingFile.id,
            BillingFile.project_id,
            BillingFile.bucket_name,
            BillingFile.object_key,
            BillingFile.etag,
            BillingFile.size_bytes,
            BillingFile.billing_period,
            BillingFile.format,
            BillingFile.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    claimed = sorted((ClaimedFile(*row) for row in session.execute(stmt)), key=lambda f: f.id)
    return claimed, len(candidates) - len(claimed)


def renew_leases(
    session: Session, file_ids: Sequence[int], worker_id: str, lease: dt.timedelta
) -> int:
    """Extend the leases this worker still holds; returns how many it still holds."""
    if not file_ids:
        return 0
    now = utcnow()
    result = session.execute(
        update(BillingFile)
        .where(
            BillingFile.id.in_(file_ids),
            BillingFile.claimed_by == worker_id,
            BillingFile.status == FileStatus.PROCESSING,
        )
        .values(lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def still_held(session: Session, files: Sequence[ClaimedFile], worker_id: str) -> set[int]:
    """The ids among ``files`` this worker still holds at the same ETag, locked for update.

    A file is lost when Batch A re-queued it (new ETag) or another worker re-claimed it
    after this worker's lease expired; its results must then be thrown away.
    """
    if not files:
        return set()
    query = (
        select(BillingFile.id, BillingFile.etag)
        .where(
            BillingFile.id.in_([f.id for f in files]),
            BillingFile.claimed_by == worker_id,
            BillingFile.status == FileStatus.PROCESSING,
        )
        # Rows are locked in id order: writers locking in one order cannot deadlock.
        .order_by(BillingFile.id)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    held = {file_id: etag for file_id, etag in session.execute(query)}
    return {f.id for f in files if held.get(f.id) == f.etag}


def mark_done(
    session: Session,
    file: ClaimedFile,
    *,
    source_format: str,
    rows_read: int,
    bytes_read: int,
) -> None:
    """Record a successful processing: costs now reflect the claimed ETag."""
    now = utcnow()
    session.execute(
        update(BillingFile)
        .where(BillingFile.id == file.id)
        .values(
            status=FileStatus.DONE,
            format=source_format,
            costs_etag=file.etag,
            rows_read=rows_read,
            bytes_read=bytes_read,
            processed_at=now,
            error_message=None,
            claimed_by=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def mark_error(session: Session, file: ClaimedFile, message: str) -> None:
    """Record a failed processing with a readable message (previous costs are kept)."""
    now = utcnow()
    session.execute(
        update(BillingFile)
        .where(BillingFile.id == file.id)
        .values(
            status=FileStatus.ERROR,
            error_message=message[:2000],
            claimed_by=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def release_claims(session: Session, files: Sequence[ClaimedFile], worker_id: str) -> None:
    """Give files back to ``PENDING`` (e.g. when a run is cancelled before writing)."""
    if not files:
        return
    session.execute(
        update(BillingFile)
        .where(
            BillingFile.id.in_([f.id for f in files]),
            BillingFile.claimed_by == worker_id,
            BillingFile.status == FileStatus.PROCESSING,
        )
        .values(status=FileStatus.PENDING, claimed_by=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def release_claims_by_prefix(session: Session, holder_prefix: str) -> int:
    """Give back every claim whose holder id starts with ``holder_prefix`` (a dead worker's)."""
    escaped = holder_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    result = session.execute(
        update(BillingFile)
        .where(
            BillingFile.status == FileStatus.PROCESSING,
            BillingFile.claimed_by.like(f"{escaped}%", escape="\\"),
        )
        .values(status=FileStatus.PENDING, claimed_by=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
