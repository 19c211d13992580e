"""Batch B ("cur-aggregate"): claim PENDING files, aggregate them exactly, write per project.

Flow per project: claim (atomic, leased) → read every work unit with Arrow and aggregate
(:func:`aggregate_file`, or a runner that spreads units over Ray tasks) → one transaction
writing the files' partial aggregates, their statuses and the recomputed summaries of every
affected billing period. A crash before that commit leaves nothing counted: the claims'
leases expire and another run takes the files again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pyarrow as pa
from sqlalchemy.orm import Session
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from cur_ray.adapters.db import claims
from cur_ray.adapters.db.costs import (
    recompute_period_summaries,
    refuse_out_of_range,
    replace_file_costs,
)
from cur_ray.adapters.db.engine import lock_period_summaries
from cur_ray.adapters.readers import WorkUnit, aggregate_work_unit, plan_work_units
from cur_ray.adapters.storage import FileSystemSpec, open_filesystem
from cur_ray.domain.aggregation import merge_partials
from cur_ray.errors import (
    AmountOutOfRangeError,
    ConfigurationError,
    CurRayError,
    DatabaseError,
    InvalidInputError,
    TransientStorageError,
)
from cur_ray.logs import log_context
from cur_ray.services.context import AppContext, default_context
from cur_ray.services.projects import ConnectionSnapshot, open_object_store, target_connections

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often transient read errors are retried, with exponential backoff."""

    retries: int = 3
    base_seconds: float = 0.5

    def retrying(self) -> Retrying:
        """A tenacity controller that retries only :class:`TransientStorageError`."""
        return Retrying(
            retry=retry_if_exception_type(TransientStorageError),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.base_seconds, max=30),
            reraise=True,
        )


@dataclass
class FileOutcome:
    """The result of reading one claimed file."""

    file: claims.ClaimedFile
    partials: pa.Table | None = None
    rows_read: int = 0
    bytes_read: int = 0
    source_format: str | None = None
    error: str | None = None


@dataclass
class UnitsRead:
    """Partial aggregates of some work units of one file, or why they could not be read."""

    partials: pa.Table | None = None
    rows_read: int = 0
    bytes_read: int = 0
    source_format: str | None = None
    error: str | None = None


def read_units(spec: FileSystemSpec, units: Sequence[WorkUnit], policy: RetryPolicy) -> UnitsRead:
    """Read and aggregate work units of one file, merging their partial aggregates.

    Transient storage errors are retried with backoff; any other failure, or a transient
    one that outlasts the retries, becomes the readable ``error``. Runs in this process or
    inside a Ray task.
    """
    read = UnitsRead()
    try:
        fs = open_filesystem(spec)
        partials = []
        for unit in units:
            result = policy.retrying()(aggregate_work_unit, fs, unit)
            partials.append(result.partials)
            read.rows_read += result.rows_read
            read.bytes_read += result.bytes_read
            read.source_format = result.source_format.value
        read.partials = merge_partials(partials)
    except CurRayError as exc:
        read.error = exc.message
    except Exception as exc:  # a reader bug must fail this file only
        log.exception("unexpected error while reading")
        read.error = f"internal error while reading: {type(exc).__name__}: {exc}"
    return read


def aggregate_file(
    spec: FileSystemSpec, file: claims.ClaimedFile, policy: RetryPolicy
) -> FileOutcome:
    """Plan one file's work units and read them all in this process."""
    try:
        fs = open_filesystem(spec)
        path = spec.path_for(file.object_key)
        units = policy.retrying()(plan_work_units, fs, path, file.object_key)
    except CurRayError as exc:
        return FileOutcome(file=file, error=exc.message)
    read = read_units(spec, units, policy)
    return FileOutcome(
        file=file,
        partials=read.partials if read.error is None else None,
        rows_read=read.rows_read,
        bytes_read=read.bytes_read,
        source_format=read.source_format or file.format,
        error=read.error,
    )


class FileRunner(Protocol):
    """Reads a project's claimed files; the Ray runtime supplies a distributed one."""

    def __call__(
        self,
        spec: FileSystemSpec,
        files: Sequence[claims.ClaimedFile],
        policy: RetryPolicy,
        on_progress: Callable[[], None],
    ) -> Iterable[FileOutcome]:
        """Yield one outcome per file, in any order."""
        ...


def run_in_process(
    spec: FileSystemSpec,
    files: Sequence[claims.ClaimedFile],
    policy: RetryPolicy,
    on_progress: Callable[[], None],
) -> Iterable[FileOutcome]:
    """The simplest runner: one file after another in this process."""
    for file in files:
        with log_context(objectKey=file.object_key):
            yield aggregate_file(spec, file, policy)
        on_progress()


@dataclass
class FailedFile:
    """A file that ended in ``ERROR``."""

    projectId: str  # camelCase: the JSON field names of the API
    objectKey: str
    error: str


@dataclass
class AggregateResult:
    """The result of one Batch B run (SPEC §1 Batch B.7)."""

    claimed: int = 0
    done: int = 0
    failed: list[FailedFile] = field(default_factory=list)
    skipped: int = 0
    lost: int = 0  # claims lost to lease expiry or re-delivery before the write
    rowsRead: int = 0
    bytesRead: int = 0
    durationSeconds: float = 0.0
    projectErrors: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored as the job result)."""
        data = asdict(self)
        data["failedCount"] = len(self.failed)
        data["durationSeconds"] = round(self.durationSeconds, 3)
        return data


def new_worker_id() -> str:
    """A claim holder id naming host, process and run (visible in ``claimed_by``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_cur_aggregate_batch(
    project_id: str | None = None,
    limit: int | None = None,
    *,
    ctx: AppContext | None = None,
    runner: FileRunner | None = None,
    worker_id: str | None = None,
    on_claimed: Callable[[int], None] | None = None,
    on_progress: Callable[[], None] | None = None,
) -> AggregateResult:
    """Aggregate up to ``limit`` PENDING files of one project or of all enabled projects.

    The limit (default ``CUR_AGGREGATE_MAX_FILES``) is shared fairly across projects. Each
    project's results are written in one transaction. Unknown project: NotFoundError;
    disabled: ConflictError; database or settings failures raise, file failures do not.
    """
    ctx = ctx or default_context()
    limit = ctx.settings.cur_aggregate_max_files if limit is None else limit
    if limit < 1:
        raise InvalidInputError("limit must be at least 1")
    runner = runner or run_in_process
    worker_id = worker_id or new_worker_id()
    lease = dt.timedelta(seconds=ctx.settings.cur_lease_seconds)
    policy = RetryPolicy(ctx.settings.cur_read_retries, ctx.settings.cur_read_retry_base_seconds)
    started = time.monotonic()
    result = AggregateResult()

    with ctx.db.transaction() as session:
        targets = [ConnectionSnapshot.of(row) for row in target_connections(session, project_id)]
    claimed = _claim_fairly(ctx, [t.project_id for t in targets], limit, worker_id, lease, result)
    if on_claimed:
        on_claimed(result.claimed)
    log.info("cur-aggregate claimed files", extra={"claimed": result.claimed, "worker": worker_id})

    unwritten = {pid: files for pid, files in claimed.items() if files}
    try:
        for connection in targets:
            files = unwritten.get(connection.project_id)
            if not files:
                continue
            with log_context(projectId=connection.project_id):
                _aggregate_project(
                    ctx,
                    connection,
                    files,
                    runner,
                    policy,
                    worker_id,
                    lease,
                    result,
                    on_progress or (lambda: None),
                )
            del unwritten[connection.project_id]
    except BaseException:
        # Nothing of these was written: hand them back now rather than at lease expiry.
        # (A process that dies here cannot do this; its leases expire instead.)
        _release_quietly(ctx, [f for files in unwritten.values() for f in files], worker_id)
        raise
    result.durationSeconds = time.monotonic() - started
    log.info(
        "cur-aggregate finished",
        extra={"done": result.done, "failed": len(result.failed), "skipped": result.skipped},
    )
    return result


def _naming(file: claims.ClaimedFile, message: str) -> str:
    """A file's error message, starting with its key unless the key is already in it."""
    return message if file.object_key in message else f"{file.object_key}: {message}"


def _refused_files(
    session: Session,
    project_id: str,
    outcomes: Sequence[FileOutcome],
    held: set[int],
    periods: set[dt.date],
) -> dict[int, str]:
    """The files of ``periods`` to refuse because they take a summary to 1e20 (id → why)."""
    if not periods:
        return {}
    candidates: dict[dt.date, dict[int, pa.Table]] = {}
    for o in outcomes:
        if o.file.id in held and o.error is None and o.partials is not None:
            candidates.setdefault(o.file.billing_period, {})[o.file.id] = o.partials
    # Every period this transaction writes, locked in ascending order before any is read.
    for period in sorted(candidates):
        lock_period_summaries(session, project_id, period)
    refused: dict[int, str] = {}
    for period in sorted(periods & candidates.keys()):
        refused.update(refuse_out_of_range(session, project_id, period, candidates[period]))
    return refused


def _release_quietly(ctx: AppContext, files: list[claims.ClaimedFile], worker_id: str) -> None:
    try:
        with ctx.db.transaction() as session:
            claims.release_claims(session, files, worker_id)
    except DatabaseError as exc:
        log.warning(
            "could not release claims; their leases will expire", extra={"error": exc.message}
        )


def _claim_fairly(
    ctx: AppContext,
    project_ids: list[str],
    limit: int,
    worker_id: str,
    lease: dt.timedelta,
    result: AggregateResult,
) -> dict[str, list[claims.ClaimedFile]]:
    """Share ``limit`` across projects round by round, so a big backlog cannot starve others."""
    claimed: dict[str, list[claims.ClaimedFile]] = {}
    remaining, active = limit, list(project_ids)
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        still_pending = []
        for pid in active:
            if remaining <= 0:
                break
            want = min(share, remaining)
            with ctx.db.transaction() as session:
                got, skipped = claims.claim_files(session, pid, want, worker_id, lease)
            claimed.setdefault(pid, []).extend(got)
            remaining -= len(got)
            result.claimed += len(got)
            result.skipped += skipped
            if len(got) == want:
                still_pending.append(pid)
        active = still_pending
    return claimed


def _aggregate_project(
    ctx: AppContext,
    connection: ConnectionSnapshot,
    files: list[claims.ClaimedFile],
    runner: FileRunner,
    policy: RetryPolicy,
    worker_id: str,
    lease: dt.timedelta,
    result: AggregateResult,
    on_progress: Callable[[], None],
) -> None:
    log.info("project aggregation started", extra={"files": len(files)})
    try:
        spec = open_object_store(connection, ctx.settings, ctx.credentials).filesystem_spec()
    except (DatabaseError, ConfigurationError):
        raise
    except CurRayError as exc:
        outcomes = [FileOutcome(file=f, error=exc.message) for f in files]
        result.projectErrors.append({"projectId": connection.project_id, "error": exc.message})
    else:
        outcomes = []
        renewed_at = time.monotonic()
        for outcome in runner(spec, files, policy, on_progress):
            outcomes.append(outcome)
            if time.monotonic() - renewed_at > lease.total_seconds() / 3:
                with ctx.db.transaction() as session:
                    claims.renew_leases(session, [f.id for f in files], worker_id, lease)
                renewed_at = time.monotonic()
    _write_project(ctx, connection.project_id, outcomes, worker_id, result)


@dataclass
class _Written:
    """What one project's write transaction did (applied to the result once committed)."""

    periods: set[dt.date] = field(default_factory=set)
    done: int = 0
    lost: int = 0
    failures: list[FailedFile] = field(default_factory=list)
    rows: int = 0
    bytes_read: int = 0


class _PeriodOutOfRange(Exception):
    """A period's summaries would leave decimal(38, 18): write again, refusing files."""

    def __init__(self, period: dt.date) -> None:
        super().__init__(period.isoformat())
        self.period = period


def _write_project(
    ctx: AppContext,
    project_id: str,
    outcomes: list[FileOutcome],
    worker_id: str,
    result: AggregateResult,
) -> None:
    """One transaction: file costs, statuses and the summaries of every affected period.

    A transaction that PostgreSQL rolls back to break a deadlock (e.g. with Batch A
    superseding these files) is run again with the same outcomes instead of failing the job.
    So is one in which a period's summaries would reach 1e20 (absurd amounts spread over
    files that each fit): the next attempt refuses the files that cause it
    (:func:`refuse_out_of_range`), which end in ``ERROR`` while the others are written.
    """
    checked: set[dt.date] = set()  # periods whose files are admitted one by one

    def write(session: Session) -> _Written:
        written = _Written()
        held = claims.still_held(session, [o.file for o in outcomes], worker_id)
        refused = _refused_files(session, project_id, outcomes, held, checked)
        for outcome in outcomes:
            file = outcome.file
            if file.id not in held:
                written.lost += 1
                log.warning("claim lost before write", extra={"objectKey": file.object_key})
                continue
            if outcome.error is None and outcome.partials is not None and file.id not in refused:
                replace_file_costs(session, file.id, project_id, outcome.partials)
                claims.mark_done(
                    session,
                    file,
                    source_format=outcome.source_format or file.format,
                    rows_read=outcome.rows_read,
                    bytes_read=outcome.bytes_read,
                )
                written.periods.add(file.billing_period)
                written.done += 1
                written.rows += outcome.rows_read
                written.bytes_read += outcome.bytes_read
            else:
                message = _naming(file, refused.get(file.id) or outcome.error or "no result")
                claims.mark_error(session, file, message)
                written.failures.append(FailedFile(project_id, file.object_key, message))
                log.warning("file failed", extra={"objectKey": file.object_key, "error": message})
        for period in sorted(written.periods):
            # Another worker may be committing files of this period: include them.
            lock_period_summaries(session, project_id, period)
            try:
                recompute_period_summaries(session, project_id, period)
            except AmountOutOfRangeError as exc:
                if period in checked:
                    raise  # out of range even without the refused files: nothing to blame
                raise _PeriodOutOfRange(period) from exc
        return written

    while True:
        try:
            written = ctx.db.run_transaction(write)
            break
        except _PeriodOutOfRange as exc:
            log.warning("period total out of range; refusing the files that cause it")
            checked.add(exc.period)
    # Counted only once the transaction has committed.
    result.done += written.done
    result.lost += written.lost
    result.failed.extend(written.failures)
    result.rowsRead += written.rows
    result.bytesRead += written.bytes_read
    log.info(
        "project aggregation finished",
        extra={
            "done": written.done,
            "failed": len(written.failures),
            "rowsRead": written.rows,
            "periods": len(written.periods),
        },
    )
