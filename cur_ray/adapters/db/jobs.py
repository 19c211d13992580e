"""Persistence of the durable job queue ``finops_batch_jobs``.

Life cycle: ``waiting`` → ``active`` (claimed by one worker, leased) → ``completed`` or
``failed``; a retried failure goes back to ``waiting`` with a later ``run_after``. An
``active`` job whose lease expired (its coordinator died) can be claimed again.

Claims mirror :mod:`cur_ray.adapters.db.claims`: on PostgreSQL the candidate row is locked
with ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never wait on or take the same job; on
SQLite the write transaction (``BEGIN IMMEDIATE``) serialises claims and the conditional
``UPDATE`` does the rest. Every state change after the claim is conditional on the worker
still holding the job. Callers own the transaction (sessions commit at the edge).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, or_, select, update
from sqlalchemy.orm import Session

from cur_ray.adapters.db.billing_files import dialect_insert
from cur_ray.adapters.db.models import BatchJob, utcnow

GLOBAL_KEY = "*"  # the busy-key of jobs over all projects (never a valid project id)
_MAX_ERROR = 2000


class JobStatus(StrEnum):
    """Life cycle of a row of ``finops_batch_jobs``."""

    WAITING = "waiting"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


def insert_job(
    session: Session,
    *,
    job_id: str,
    name: str,
    project_id: str | None,
    trigger: str,
    data: dict[str, Any] | None,
    run_after: dt.datetime | None = None,
    max_attempts: int = 3,
) -> bool:
    """Insert a ``waiting`` job unless ``job_id`` exists; True when this call inserted it.

    ``INSERT … ON CONFLICT (job_id) DO NOTHING``: a scheduler tick or a retried request that
    reuses an id never creates a second job, even when both run at once.
    """
    now = utcnow()
    stmt = (
        dialect_insert(session, BatchJob.__table__)
        .values(
            job_id=job_id,
            name=name,
            project_id=project_id,
            trigger=trigger,
            status=JobStatus.WAITING.value,
            attempts=0,
            max_attempts=max_attempts,
            run_after=run_after,
            data=data,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["job_id"])
        .returning(BatchJob.__table__.c.job_id)
    )
    return session.execute(stmt).first() is not None


def _claimable(now: dt.datetime) -> ColumnElement[bool]:
    return or_(
        and_(
            BatchJob.status == JobStatus.WAITING.value,
            or_(BatchJob.run_after.is_(None), BatchJob.run_after <= now),
        ),
        and_(
            BatchJob.status == JobStatus.ACTIVE.value,
            BatchJob.lease_expires_at < now,
            BatchJob.attempts < BatchJob.max_attempts,
        ),
    )


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def claim_next_job(
    session: Session,
    worker_id: str,
    lease: dt.timedelta,
    *,
    busy_projects: Collection[str] = (),
) -> BatchJob | None:
    """Atomically take the oldest runnable job for ``worker_id``, or None when there is none.

    Runnable: ``waiting`` with ``run_after`` null or past, or ``active`` with an expired
    lease. The job becomes ``active``, held by ``worker_id`` until ``now + lease``, with
    ``attempts`` counted. Jobs whose project is in ``busy_projects`` are skipped (global
    jobs have the key ``"*"``). An expired job that has used all its attempts is marked
    ``failed`` rather than run again: it most likely kills whoever runs it.
    """
    now = utcnow()
    _fail_exhausted(session, now)
    candidate = (
        select(BatchJob.job_id)
        .where(_claimable(now))
        .order_by(BatchJob.created_at, BatchJob.job_id)
        .limit(1)
    )
    if busy_projects:
        candidate = candidate.where(
            not_(func.coalesce(BatchJob.project_id, GLOBAL_KEY).in_(list(busy_projects)))
        )
    if _is_postgres(session):
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(BatchJob)
        # Re-checking the claimable condition makes the UPDATE safe on its own (SQLite).
        .where(BatchJob.job_id == candidate.scalar_subquery(), _claimable(now))
        .values(
            status=JobStatus.ACTIVE.value,
            claimed_by=worker_id,
            lease_expires_at=now + lease,
            attempts=BatchJob.attempts + 1,
            started_at=now,
            finished_at=None,
            updated_at=now,
        )
        .returning(BatchJob.job_id)
        .execution_options(synchronize_session=False)
    )
    job_id = session.execute(stmt).scalar_one_or_none()
    if job_id is None:
        return None
    return session.get(BatchJob, job_id, populate_existing=True)


def _fail_exhausted(session: Session, now: dt.datetime) -> None:
    expired = select(BatchJob.job_id).where(
        BatchJob.status == JobStatus.ACTIVE.value,
        BatchJob.lease_expires_at < now,
        BatchJob.attempts >= BatchJob.max_attempts,
    )
    if _is_postgres(session):
        expired = expired.with_for_update(skip_locked=True)
    session.execute(
        update(BatchJob)
        .where(BatchJob.job_id.in_(expired.scalar_subquery()))
        .values(
            status=JobStatus.FAILED.value,
            error="the worker running this job stopped (lease expired) on its last attempt",
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def _held_by(job_id: str, worker_id: str) -> ColumnElement[bool]:
    return and_(
        BatchJob.job_id == job_id,
        BatchJob.status == JobStatus.ACTIVE.value,
        BatchJob.claimed_by == worker_id,
    )


def _update_held(session: Session, job_id: str, worker_id: str, **values: Any) -> bool:
    result = session.execute(
        update(BatchJob)
        .where(_held_by(job_id, worker_id))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_job_lease(session: Session, job_id: str, worker_id: str, lease: dt.timedelta) -> bool:
    """Extend the lease of a job this worker holds; False when it no longer holds it."""
    return _update_held(session, job_id, worker_id, lease_expires_at=utcnow() + lease)


def complete_job(session: Session, job_id: str, worker_id: str, result: dict[str, Any]) -> bool:
    """Mark a held job ``completed`` with its result; False when the worker lost it."""
    return _update_held(
        session,
        job_id,
        worker_id,
        status=JobStatus.COMPLETED.value,
        result=result,
        error=None,
        lease_expires_at=None,
        finished_at=utcnow(),
    )


def fail_job(
    session: Session,
    job_id: str,
    worker_id: str,
    error: str,
    *,
    retry: bool,
    backoff: dt.timedelta,
) -> bool:
    """Record a failure of a held job; False when the worker no longer held it.

    With ``retry`` and attempts left, the job goes back to ``waiting`` with
    ``run_after = now + backoff`` (the error stays visible); otherwise it is ``failed``.
    """
    error = error[:_MAX_ERROR]
    now = utcnow()
    if retry:
        result = session.execute(
            update(BatchJob)
            .where(_held_by(job_id, worker_id), BatchJob.attempts < BatchJob.max_attempts)
            .values(
                status=JobStatus.WAITING.value,
                run_after=now + backoff,
                claimed_by=None,
                lease_expires_at=None,
                error=error,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            return True
    return _update_held(
        session,
        job_id,
        worker_id,
        status=JobStatus.FAILED.value,
        error=error,
        lease_expires_at=None,
        finished_at=now,
    )


def requeue_jobs_held_by(session: Session, worker_id: str) -> int:
    """Hand back every ``active`` job ``worker_id`` holds (it restarted); returns how many.

    Jobs with attempts left go back to ``waiting`` at once; the others are ``failed``, as
    when their lease expires on the last attempt. Attempts already counted are kept.
    """
    now = utcnow()
    held = and_(BatchJob.status == JobStatus.ACTIVE.value, BatchJob.claimed_by == worker_id)
    requeued = session.execute(
        update(BatchJob)
        .where(held, BatchJob.attempts < BatchJob.max_attempts)
        .values(
            status=JobStatus.WAITING.value,
            claimed_by=None,
            lease_expires_at=None,
            run_after=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    failed = session.execute(
        update(BatchJob)
        .where(held)
        .values(
            status=JobStatus.FAILED.value,
            error="the worker running this job restarted on its last attempt",
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return int(requeued.rowcount) + int(failed.rowcount)  # type: ignore[attr-defined]


def get_job(session: Session, job_id: str) -> BatchJob | None:
    """The job ``job_id`` as currently stored, or None."""
    return session.get(BatchJob, job_id, populate_existing=True)


def list_jobs(
    session: Session,
    project_id: str | None = None,
    status: str | None = None,
    name: str | None = None,
    limit: int = 50,
) -> list[BatchJob]:
    """Jobs matching every given filter, newest first."""
    query = select(BatchJob)
    if project_id is not None:
        query = query.where(BatchJob.project_id == project_id)
    if status is not None:
        query = query.where(BatchJob.status == status)
    if name is not None:
        query = query.where(BatchJob.name == name)
    query = query.order_by(BatchJob.created_at.desc(), BatchJob.job_id.desc()).limit(limit)
    return list(session.scalars(query))


def count_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status (every status present, zero when none)."""
    counts = {status.value: 0 for status in JobStatus}
    query = select(BatchJob.status, func.count()).group_by(BatchJob.status)
    for status, count in session.execute(query):
        counts[status] = int(count)
    return counts


def count_failed_since(session: Session, since: dt.datetime) -> int:
    """How many jobs failed for good at or after ``since``."""
    query = select(func.count()).where(
        BatchJob.status == JobStatus.FAILED.value, BatchJob.finished_at >= since
    )
    return int(session.scalar(query) or 0)
