"""Persistence of the scheduler's rows, ``finops_batch_schedules`` (one row per fixed id).

Every datetime written here is timezone-aware UTC (SQLite keeps the wall-clock text, so UTC
everywhere keeps its string comparisons right). Callers own the transaction.

Two schedulers (two clusters on one database) may run these statements at the same time:

* :func:`upsert_schedule` is one ``INSERT … ON CONFLICT (schedule_id) DO UPDATE``, so there is
  never a second row for a schedule, and it keeps the stored ``next_tick_at`` while the
  configuration is unchanged (a restart then catches up on the tick it missed);
* :func:`record_tick` is a compare-and-set: it only moves ``last_tick_at`` forward, and only
  while the row still has the configuration the tick was computed from.

Neither is what guarantees one job per tick; that is the tick's job id inserted with
``ON CONFLICT DO NOTHING`` (:func:`cur_ray.adapters.db.jobs.insert_job`).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session

from cur_ray.adapters.db.billing_files import dialect_insert
from cur_ray.adapters.db.models import BatchSchedule, utcnow


def upsert_schedule(
    session: Session,
    *,
    schedule_id: str,
    job_name: str,
    cron: str,
    timezone: str,
    enabled: bool,
    next_tick_at: dt.datetime | None,
) -> None:
    """Create the schedule or replace its configuration in place.

    ``next_tick_at`` is written when the row is new, when its cron, time zone, job or
    ``enabled`` changed, or when it had none; otherwise the stored one stays (it may be in
    the past: the tick missed while no scheduler ran). ``last_tick_at`` is never touched.
    """
    table = BatchSchedule.__table__
    now = utcnow()
    stmt = dialect_insert(session, table).values(
        schedule_id=schedule_id,
        job_name=job_name,
        cron=cron,
        timezone=timezone,
        enabled=enabled,
        last_tick_at=None,
        next_tick_at=next_tick_at,
        updated_at=now,
    )
    new = stmt.excluded
    same_config = and_(
        table.c.job_name == new.job_name,
        table.c.cron == new.cron,
        table.c.timezone == new.timezone,
        table.c.enabled == new.enabled,
    )
    keep_next = and_(same_config, table.c.next_tick_at.is_not(None))
    stmt = stmt.on_conflict_do_update(
        index_elements=["schedule_id"],
        set_={
            "job_name": new.job_name,
            "cron": new.cron,
            "timezone": new.timezone,
            "enabled": new.enabled,
            "next_tick_at": case((keep_next, table.c.next_tick_at), else_=new.next_tick_at),
            "updated_at": new.updated_at,
        },
    )
    session.execute(stmt)


def get_schedule(session: Session, schedule_id: str) -> BatchSchedule | None:
    """The schedule as currently stored (re-read, not from the session's cache), or None."""
    return session.get(BatchSchedule, schedule_id, populate_existing=True)


def list_schedules(session: Session) -> list[BatchSchedule]:
    """Every stored schedule, by id."""
    query = select(BatchSchedule).order_by(BatchSchedule.schedule_id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def record_tick(
    session: Session,
    schedule_id: str,
    *,
    cron: str,
    timezone: str,
    tick: dt.datetime,
    next_tick_at: dt.datetime,
) -> bool:
    """Set ``last_tick_at = tick`` and ``next_tick_at``; True when this call advanced the row.

    Compare-and-set: nothing changes unless the schedule is enabled, still has ``cron`` and
    ``timezone``, and its ``last_tick_at`` is before ``tick`` (another scheduler that
    recorded this tick or a later one wins).
    """
    result = session.execute(
        update(BatchSchedule)
        .where(
            BatchSchedule.schedule_id == schedule_id,
            BatchSchedule.enabled.is_(True),
            BatchSchedule.cron == cron,
            BatchSchedule.timezone == timezone,
            or_(BatchSchedule.last_tick_at.is_(None), BatchSchedule.last_tick_at < tick),
        )
        .values(last_tick_at=tick, next_tick_at=next_tick_at, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
