"""Backfill: re-register and re-aggregate a project over a range of billing periods.

Used by the backfill notebook (and anything else that needs a month range redone). It goes
through the same services as every other entrypoint: Batch A re-registers what the bucket
holds now, the range's processed files go back to ``PENDING``, and Batch B runs until none of
them is left. Re-processing replaces a file's figures, so a backfill never double counts, and
the version rule keeps the summaries complete while it runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cur_ray.adapters.db.models import BillingFile, utcnow
from cur_ray.domain.billing import FileStatus
from cur_ray.services.context import AppContext, default_context
from cur_ray.services.costs import parse_month
from cur_ray.services.cur_aggregate import run_cur_aggregate_batch
from cur_ray.services.cur_fetch import run_cur_fetch_batch
from cur_ray.services.projects import get_connection

_REDO = (FileStatus.DONE, FileStatus.ERROR)


def _in_range(query: Any, start: dt.date | None, end: dt.date | None) -> Any:
    if start:
        query = query.where(BillingFile.billing_period >= start)
    if end:
        query = query.where(BillingFile.billing_period <= end)
    return query


def requeue_periods(
    session: Session, project_id: str, start: str | None = None, end: str | None = None
) -> int:
    """Send the ``DONE`` and ``ERROR`` files of the periods ``start``..``end`` (``YYYY-MM``)
    back to ``PENDING``; returns how many."""
    get_connection(session, project_id)
    first, last = parse_month(start, "from"), parse_month(end, "to")
    stmt = update(BillingFile).where(
        BillingFile.project_id == project_id, BillingFile.status.in_(_REDO)
    )
    result = session.execute(
        _in_range(stmt, first, last).values(
            status=FileStatus.PENDING, error_message=None, updated_at=utcnow()
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def pending_in_range(
    session: Session, project_id: str, start: str | None = None, end: str | None = None
) -> int:
    """How many files of the range still wait for Batch B."""
    first, last = parse_month(start, "from"), parse_month(end, "to")
    query = select(func.count()).where(
        BillingFile.project_id == project_id, BillingFile.status == FileStatus.PENDING
    )
    return int(session.scalar(_in_range(query, first, last)) or 0)


@dataclass
class BackfillReport:
    """What a backfill did."""

    project_id: str
    registered: int = 0
    requeued: int = 0
    aggregated: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    rounds: int = 0


def run_backfill(
    project_id: str,
    start: str | None = None,
    end: str | None = None,
    *,
    ctx: AppContext | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    max_rounds: int = 1000,
) -> BackfillReport:
    """Re-register, requeue and re-aggregate ``project_id`` over ``start``..``end``.

    ``on_progress(done, total)`` is called after every Batch B run.
    """
    ctx = ctx or default_context()
    report = BackfillReport(project_id)
    fetched = run_cur_fetch_batch(project_id, ctx=ctx).projects[0]
    if fetched.error:
        report.failed.append({"objectKey": "", "error": fetched.error})
        return report
    report.registered = fetched.registered
    with ctx.db.transaction() as session:
        report.requeued = requeue_periods(session, project_id, start, end)
        total = pending_in_range(session, project_id, start, end)
    while report.rounds < max_rounds:
        with ctx.db.transaction() as session:
            if pending_in_range(session, project_id, start, end) == 0:
                break
        result = run_cur_aggregate_batch(project_id, ctx=ctx)
        report.rounds += 1
        report.aggregated += result.done
        report.failed.extend({"objectKey": f.objectKey, "error": f.error} for f in result.failed)
        if on_progress:
            on_progress(report.aggregated + len(report.failed), total)
        if result.claimed == 0:
            break  # what is left is held by another worker
    return report
