"""Use cases of the durable job queue: enqueue, inspect, and run one job (pure of Ray).

A job is a row of ``finops_batch_jobs`` (see :mod:`cur_ray.adapters.db.jobs`). Triggers
(API, CLI, scheduler, notebook) enqueue; a coordinator (or any plain worker process) loops
on :func:`run_one_job`, which claims the oldest runnable job, runs its batch and records the
outcome, each state change in its own committed transaction. Because the queue lives in the
database, jobs survive restarts and several coordinators can share one database.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import logging
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from cur_ray.adapters.db import jobs as store
from cur_ray.adapters.db.jobs import JobStatus
from cur_ray.adapters.db.models import BatchJob, utcnow
from cur_ray.domain.projects import validate_project_id
from cur_ray.errors import (
    ConflictError,
    CurRayError,
    DatabaseError,
    InvalidInputError,
    NotFoundError,
    TransientStorageError,
)
from cur_ray.logs import log_context
from cur_ray.services.context import AppContext
from cur_ray.services.cur_aggregate import run_cur_aggregate_batch
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.projects import target_connections

log = logging.getLogger(__name__)

CUR_FETCH = "cur-fetch"
CUR_AGGREGATE = "cur-aggregate"
JOB_NAMES: tuple[str, ...] = (CUR_FETCH, CUR_AGGREGATE)
TRIGGERS: tuple[str, ...] = ("api", "cli", "schedule", "notebook")
JOB_STATUSES: tuple[str, ...] = tuple(status.value for status in JobStatus)
WAITING, ACTIVE, COMPLETED, FAILED = (
    JobStatus.WAITING.value,
    JobStatus.ACTIVE.value,
    JobStatus.COMPLETED.value,
    JobStatus.FAILED.value,
)

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,127}$"
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)
MAX_LIMIT = 100_000  # the largest cur-aggregate ``limit`` (as CUR_AGGREGATE_MAX_FILES)
MAX_LIST = 1000
BACKOFF_BASE = dt.timedelta(seconds=5)
BACKOFF_CAP = dt.timedelta(minutes=10)


def _iso(value: dt.datetime | None) -> str | None:
    # SQLite hands back naive datetimes; everything the application writes is UTC.
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


@dataclass(frozen=True)
class JobView:
    """A job as shown to users and handed to runners (a detached copy of the row)."""

    job_id: str
    name: str
    project_id: str | None
    trigger: str
    status: str
    attempts: int
    max_attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    run_after: dt.datetime | None
    result: dict[str, Any] | None
    error: str | None
    data: dict[str, Any] | None = None
    claimed_by: str | None = None

    @classmethod
    def of(cls, row: BatchJob) -> JobView:
        """Copy the fields of a job row."""
        return cls(
            job_id=row.job_id,
            name=row.name,
            project_id=row.project_id,
            trigger=row.trigger,
            status=row.status,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            run_after=row.run_after,
            result=row.result,
            error=row.error,
            data=dict(row.data) if row.data else None,
            claimed_by=row.claimed_by,
        )

    @property
    def limit(self) -> int | None:
        """The ``limit`` a cur-aggregate job was enqueued with (None: the configured default)."""
        value = (self.data or {}).get("limit")
        return int(value) if value is not None else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (camelCase, ISO-8601 UTC timestamps with offset)."""
        return {
            "jobId": self.job_id,
            "name": self.name,
            "projectId": self.project_id,
            "trigger": self.trigger,
            "status": self.status,
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "createdAt": _iso(self.created_at),
            "startedAt": _iso(self.started_at),
            "finishedAt": _iso(self.finished_at),
            "runAfter": _iso(self.run_after),
            "result": self.result,
            "error": self.error,
        }


# ---------------------------------------------------------------------------------------------
# Validation


def _choice(value: object, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidInputError(f"invalid {what}; use one of {', '.join(allowed)}")
    return value


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` when it is a valid caller-supplied job id, else InvalidInputError."""
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise InvalidInputError(
            "invalid job id: use 1-128 letters, digits, ':', '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return job_id


def _positive_int(value: object, what: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInputError(f"{what} must be an integer from 1 to {maximum}")
    return value


def _job_data(name: str, project_id: str | None, data: dict[str, Any] | None) -> dict[str, Any]:
    if data is not None and not isinstance(data, dict):
        raise InvalidInputError("job data must be an object")
    given = dict(data or {})
    unknown = sorted(set(given) - ({"limit"} if name == CUR_AGGREGATE else set()))
    if unknown:
        raise InvalidInputError(f"{name} does not take: {', '.join(unknown)}")
    stored: dict[str, Any] = {"projectId": project_id}
    if name == CUR_AGGREGATE:
        limit = given.get("limit")
        stored["limit"] = None if limit is None else _positive_int(limit, "limit", MAX_LIMIT)
    return stored


# ---------------------------------------------------------------------------------------------
# Enqueue and inspect


def enqueue_job(
    session: Session,
    *,
    name: str,
    project_id: str | None,
    trigger: str,
    data: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> tuple[JobView, bool]:
    """Add a ``waiting`` job; return it and whether this call created it.

    A project job needs an existing (NotFoundError), enabled (ConflictError) project. A
    caller-supplied ``job_id`` makes the call idempotent: when the id is taken by the same
    job, that job is returned with ``False``; by a different job, ConflictError.
    ``data`` may hold ``{"limit": 1..100000}`` for cur-aggregate.
    """
    _choice(name, JOB_NAMES, "job name")
    _choice(trigger, TRIGGERS, "trigger")
    job_id = str(uuid.uuid4()) if job_id is None else validate_job_id(job_id)
    stored = _job_data(name, project_id, data)
    if project_id is not None:
        target_connections(session, project_id)  # validates id, existence, enabled
    created = store.insert_job(
        session, job_id=job_id, name=name, project_id=project_id, trigger=trigger, data=stored
    )
    row = store.get_job(session, job_id)
    if row is None:  # pragma: no cover - the insert or the conflicting row must exist
        raise NotFoundError(f"unknown job: {job_id}")
    if not created and (row.name, row.project_id) != (name, project_id):
        raise ConflictError(f"job id {job_id} is already used by another job")
    if created:
        log.info("job enqueued", extra={"jobId": job_id, "job": name, "trigger": trigger})
    return JobView.of(row), created


def get_job(session: Session, job_id: str) -> JobView:
    """The job ``job_id``, or NotFoundError."""
    row = store.get_job(session, job_id) if isinstance(job_id, str) else None
    if row is None:
        shown = job_id if isinstance(job_id, str) and _JOB_ID_RE.fullmatch(job_id) else "?"
        raise NotFoundError(f"unknown job: {shown}")
    return JobView.of(row)


def list_jobs(
    session: Session,
    project_id: str | None = None,
    status: str | None = None,
    name: str | None = None,
    limit: int = 50,
) -> list[JobView]:
    """Jobs matching the given filters, newest first (InvalidInputError on a bad filter)."""
    if project_id is not None:
        validate_project_id(project_id)
    if status is not None:
        wanted = status.lower() if isinstance(status, str) else status
        status = _choice(wanted, JOB_STATUSES, "status")
    if name is not None:
        _choice(name, JOB_NAMES, "job name")
    _positive_int(limit, "limit", MAX_LIST)
    rows = store.list_jobs(session, project_id=project_id, status=status, name=name, limit=limit)
    return [JobView.of(row) for row in rows]


def queue_stats(session: Session) -> dict[str, int]:
    """Jobs per status plus ``failedLast24h`` (jobs that failed for good in the last day)."""
    stats = store.count_by_status(session)
    stats["failedLast24h"] = store.count_failed_since(session, utcnow() - dt.timedelta(days=1))
    return stats


# ---------------------------------------------------------------------------------------------
# Run


@functools.cache
def _accepted_keywords(function: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``function`` accepts (None: any, it takes ``**kwargs``)."""
    params = inspect.signature(function).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def _forwardable(function: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    accepted = _accepted_keywords(function)
    reserved = {"project_id", "limit", "ctx"}
    return {
        key: value
        for key, value in kwargs.items()
        if key not in reserved and (accepted is None or key in accepted)
    }


def run_batch(
    ctx: AppContext,
    name: str,
    project_id: str | None,
    limit: int | None = None,
    **service_kwargs: Any,
) -> dict[str, Any]:
    """Run batch ``name`` in this process and return its JSON-ready result.

    ``service_kwargs`` (a Ray runner, progress callbacks, a planner) are forwarded to the
    batch function when it accepts them and dropped otherwise, so one coordinator loop can
    pass the hooks of both batches.
    """
    if name == CUR_FETCH:
        kwargs = _forwardable(run_cur_fetch_batch, service_kwargs)
        return run_cur_fetch_batch(project_id, ctx=ctx, **kwargs).as_dict()
    if name == CUR_AGGREGATE:
        kwargs = _forwardable(run_cur_aggregate_batch, service_kwargs)
        return run_cur_aggregate_batch(project_id, limit, ctx=ctx, **kwargs).as_dict()
    raise InvalidInputError(f"unknown job name: {name}")


def execute_job(ctx: AppContext, job: JobView, **service_kwargs: Any) -> dict[str, Any]:
    """Run the batch of ``job`` in this process and return its JSON-ready result."""
    return run_batch(ctx, job.name, job.project_id, job.limit, **service_kwargs)


def classify_failure(exc: BaseException) -> tuple[str, bool]:
    """A readable message for a job's failure and whether a retry may succeed.

    Retried: database and transient storage errors, connection and OS errors, and anything
    unexpected (both batches are idempotent, and attempts are bounded). Not retried: errors
    a retry cannot fix — invalid input, unknown or disabled project, bad settings, denied
    access, unusable manifests or files. The message is the CurRayError's own (written to
    be safe to show) or the exception's type name; never its arguments, which could carry
    secrets.
    """
    if isinstance(exc, CurRayError):
        return exc.message, isinstance(exc, DatabaseError | TransientStorageError)
    if isinstance(exc, OSError):  # includes ConnectionError and TimeoutError
        return f"{type(exc).__name__} while running the job", True
    return f"internal error: {type(exc).__name__}", True


def backoff_for(attempt: int) -> dt.timedelta:
    """The wait before retry number ``attempt`` (1-based): 5 s doubling, at most 10 min."""
    exponent = min(max(attempt, 1) - 1, 16)
    return min(BACKOFF_BASE * (2**exponent), BACKOFF_CAP)


@contextmanager
def _lease_kept(
    ctx: AppContext, job_id: str, worker_id: str, lease: dt.timedelta
) -> Iterator[None]:
    """Renew the job's lease in the background while the block runs.

    A live worker keeps its job however long the batch takes; only a dead one lets the
    lease expire.
    """
    stop = threading.Event()
    interval = max(lease.total_seconds() / 3, 0.1)

    def renew() -> None:
        with log_context(jobId=job_id):
            while not stop.wait(interval):
                try:
                    with ctx.db.transaction() as session:
                        held = store.renew_job_lease(session, job_id, worker_id, lease)
                except DatabaseError as exc:
                    log.warning("job lease renewal failed", extra={"error": exc.message})
                    continue
                if not held:
                    log.warning("job lease lost to another worker")
                    return

    thread = threading.Thread(target=renew, name=f"lease-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def claim_job(
    ctx: AppContext,
    worker_id: str,
    lease: dt.timedelta,
    *,
    busy_projects: Collection[str] = (),
) -> JobView | None:
    """Claim the oldest runnable job for ``worker_id`` and commit the claim; None if none.

    Jobs of the projects in ``busy_projects`` are skipped (``"*"`` for global jobs).
    """
    with ctx.db.transaction() as session:
        row = store.claim_next_job(session, worker_id, lease, busy_projects=busy_projects)
        return None if row is None else JobView.of(row)


def run_claimed_job(
    ctx: AppContext,
    job: JobView,
    worker_id: str,
    lease: dt.timedelta,
    /,
    **service_kwargs: Any,
) -> JobView:
    """Run a job this worker claimed and record the outcome; return the job as stored.

    The lease is renewed in the background while the batch runs. The outcome is written in
    its own transaction, only if ``worker_id`` still holds the job. A failure worth a retry
    sends the job back to ``waiting`` with exponential backoff until ``max_attempts``.
    ``service_kwargs`` go to :func:`execute_job` (``worker_id`` there names the holder of
    Batch B's file claims, which is why the leading parameters are positional-only).
    Database errors while recording propagate; the lease then expires and another worker
    takes the job.
    """
    with log_context(jobId=job.job_id, projectId=job.project_id):
        log.info("job started", extra={"job": job.name, "attempt": job.attempts})
        try:
            with _lease_kept(ctx, job.job_id, worker_id, lease):
                result = execute_job(ctx, job, **service_kwargs)
        except Exception as exc:
            message, retry = classify_failure(exc)
            retry = retry and job.attempts < job.max_attempts
            log.warning(
                "job failed",
                exc_info=not isinstance(exc, CurRayError),
                extra={"job": job.name, "error": message, "willRetry": retry},
            )
            with ctx.db.transaction() as session:
                held = store.fail_job(
                    session,
                    job.job_id,
                    worker_id,
                    message,
                    retry=retry,
                    backoff=backoff_for(job.attempts),
                )
        else:
            with ctx.db.transaction() as session:
                held = store.complete_job(session, job.job_id, worker_id, result)
            if held:
                log.info("job completed", extra={"job": job.name})
        if not held:
            log.warning("job was taken over by another worker; its outcome was not recorded")

    with ctx.db.transaction() as session:
        return get_job(session, job.job_id)


def run_one_job(
    ctx: AppContext,
    worker_id: str,
    lease: dt.timedelta,
    /,
    *,
    busy_projects: Collection[str] = (),
    **service_kwargs: Any,
) -> JobView | None:
    """Claim the oldest runnable job, run it, record the outcome; None when none is runnable.

    The loop body of a coordinator or a plain worker process: :func:`claim_job` (committed
    before the batch runs), then :func:`run_claimed_job`. Returns the job as stored after
    this run.
    """
    job = claim_job(ctx, worker_id, lease, busy_projects=busy_projects)
    if job is None:
        return None
    return run_claimed_job(ctx, job, worker_id, lease, **service_kwargs)


__all__ = [
    "ACTIVE",
    "COMPLETED",
    "FAILED",
    "JOB_NAMES",
    "JOB_STATUSES",
    "TRIGGERS",
    "WAITING",
    "JobStatus",
    "JobView",
    "backoff_for",
    "claim_job",
    "classify_failure",
    "enqueue_job",
    "execute_job",
    "get_job",
    "list_jobs",
    "queue_stats",
    "run_claimed_job",
    "run_one_job",
]
