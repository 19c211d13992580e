"""Use cases of the batch scheduler (pure of Ray): configure the schedules, run due ticks.

Two schedules with fixed ids live in ``finops_batch_schedules``:

* ``cur-fetch-schedule`` enqueues cur-fetch on ``CUR_FETCH_CRON`` (default ``0 * * * *``);
* ``cur-aggregate-schedule`` enqueues cur-aggregate on ``CUR_AGGREGATE_CRON`` (default
  ``15 * * * *``);

both evaluated in ``CUR_SCHEDULER_TIMEZONE`` (default ``UTC``; see
:mod:`cur_ray.domain.schedules` for the daylight-saving rules).

* :func:`configure_schedules` (at scheduler start-up) validates both expressions first, then
  upserts both rows: enabled with the configured cron when ``CUR_BATCH_SCHEDULER_ENABLED`` is
  true, disabled otherwise. A changed cron replaces the old one in place.
* :func:`run_tick` enqueues, for every enabled schedule whose ``next_tick_at`` has come, one
  job for the **latest** due tick only: after downtime the missed ticks are not replayed one
  by one, a single catch-up job runs. The job id is the schedule id plus the tick time in
  UTC (``cur-fetch-schedule:2026-11-28T14:00:00Z``) and is inserted with
  ``ON CONFLICT DO NOTHING``, so two schedulers on one database, a restart, or a retried
  tick never create two jobs for one tick.

Jobs over all projects
----------------------
Scheduled jobs are *global*: ``projectId`` is unset and ``trigger`` is ``schedule``. A global
job is resolved when it runs, not when it is enqueued: the coordinator takes every project
that is *enabled* at that moment (a disabled project is skipped; one added since the tick is
included) and processes them with per-project isolation:

* cur-fetch discovers each project on its own; a project that fails (access denied, missing
  bucket or folder, bad manifest) gets its error on its entry of the job result and the
  other projects carry on.
* cur-aggregate shares its file budget (``CUR_AGGREGATE_MAX_FILES``, or the job's ``limit``)
  fairly: round by round, each project with PENDING files gets an equal share of what is
  left, so one project's backlog cannot starve the others. Each project is written in its
  own transaction; a file that cannot be read becomes ``ERROR`` and is listed in the result
  with its project id and key (``failed``), and a project whose store cannot be opened is
  listed in ``projectErrors``; the other projects' files complete.
* A global job fails as a whole only on fatal errors: an unreachable database (retried with
  backoff, like any job) or bad settings (not retried).
* A coordinator runs one global job at a time (the next waits in the queue); project jobs
  may run beside it, and the atomic file claims keep any two jobs from taking one file.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from cur_ray.adapters.db import schedules as store
from cur_ray.adapters.db.models import BatchSchedule, utcnow
from cur_ray.domain.schedules import CronSchedule, load_timezone, tick_job_id
from cur_ray.errors import ConfigurationError
from cur_ray.logs import log_context
from cur_ray.services.context import AppContext
from cur_ray.services.jobs import CUR_AGGREGATE, CUR_FETCH, enqueue_job
from cur_ray.settings import Settings

log = logging.getLogger(__name__)

FETCH_SCHEDULE_ID = "cur-fetch-schedule"
AGGREGATE_SCHEDULE_ID = "cur-aggregate-schedule"
TIMEZONE_VARIABLE = "CUR_SCHEDULER_TIMEZONE"
TRIGGER = "schedule"

Clock = Callable[[], dt.datetime]


@dataclass(frozen=True)
class ScheduleSpec:
    """One of the fixed schedules: its id, the job it enqueues, the setting of its cron."""

    schedule_id: str
    job_name: str
    variable: str

    def cron(self, settings: Settings) -> str:
        """The configured cron expression (not yet validated)."""
        value: str = getattr(settings, self.variable.lower())
        return value


# Ticks are handled in this order: a fetch and an aggregate due together queue fetch first.
SCHEDULES: tuple[ScheduleSpec, ...] = (
    ScheduleSpec(FETCH_SCHEDULE_ID, CUR_FETCH, "CUR_FETCH_CRON"),
    ScheduleSpec(AGGREGATE_SCHEDULE_ID, CUR_AGGREGATE, "CUR_AGGREGATE_CRON"),
)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; everything written is UTC.
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True)
class ScheduleView:
    """A stored schedule (a detached copy of the row; datetimes aware, in UTC)."""

    schedule_id: str
    job_name: str
    cron: str
    timezone: str
    enabled: bool
    last_tick_at: dt.datetime | None
    next_tick_at: dt.datetime | None
    updated_at: dt.datetime | None

    @classmethod
    def of(cls, row: BatchSchedule) -> ScheduleView:
        """Copy the fields of a schedule row."""
        return cls(
            schedule_id=row.schedule_id,
            job_name=row.job_name,
            cron=row.cron,
            timezone=row.timezone,
            enabled=bool(row.enabled),
            last_tick_at=_aware(row.last_tick_at),
            next_tick_at=_aware(row.next_tick_at),
            updated_at=_aware(row.updated_at),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (camelCase, ISO-8601 UTC timestamps with offset)."""
        return {
            "scheduleId": self.schedule_id,
            "jobName": self.job_name,
            "cron": self.cron,
            "timezone": self.timezone,
            "enabled": self.enabled,
            "lastTickAt": _iso(self.last_tick_at),
            "nextTickAt": _iso(self.next_tick_at),
            "updatedAt": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class DueTick:
    """The one job a due schedule enqueues now."""

    schedule_id: str
    job_name: str
    tick: dt.datetime
    job_id: str


# ---------------------------------------------------------------------------------------------
# Configuration


def schedules_from_settings(settings: Settings) -> dict[str, CronSchedule]:
    """Both schedules as configured, by schedule id; ConfigurationError naming the variable.

    Every expression and the time zone are checked before anything is written.
    """
    load_timezone(settings.cur_scheduler_timezone, variable=TIMEZONE_VARIABLE)
    return {
        spec.schedule_id: CronSchedule.parse(
            spec.cron(settings),
            settings.cur_scheduler_timezone,
            variable=spec.variable,
            timezone_variable=TIMEZONE_VARIABLE,
        )
        for spec in SCHEDULES
    }


def configure_schedules(
    session: Session, settings: Settings, *, now: dt.datetime | None = None
) -> list[ScheduleView]:
    """Validate the settings, then upsert both schedules; return them as stored.

    With ``CUR_BATCH_SCHEDULER_ENABLED`` true each schedule is enabled with its configured
    cron and time zone; a new, changed or re-enabled schedule starts at its next tick after
    ``now``, an unchanged one keeps its stored next tick (so a restart catches up once).
    With the flag false both are disabled (and have no next tick). Invalid settings raise
    ConfigurationError before anything is written.
    """
    configured = schedules_from_settings(settings)
    now = now or utcnow()
    enabled = settings.cur_batch_scheduler_enabled
    for spec in SCHEDULES:
        schedule = configured[spec.schedule_id]
        store.upsert_schedule(
            session,
            schedule_id=spec.schedule_id,
            job_name=spec.job_name,
            cron=schedule.expression,
            timezone=schedule.timezone,
            enabled=enabled,
            next_tick_at=schedule.next_after(now) if enabled else None,
        )
    views = list_schedules(session)
    log.info(
        "schedules configured",
        extra={"enabled": enabled, "schedules": {v.schedule_id: v.cron for v in views}},
    )
    return views


def list_schedules(session: Session) -> list[ScheduleView]:
    """Every stored schedule (cron, enabled, last and next tick), by id."""
    return [ScheduleView.of(row) for row in store.list_schedules(session)]


# ---------------------------------------------------------------------------------------------
# Ticks


def due_tick(schedule: ScheduleView, now: dt.datetime) -> DueTick | None:
    """The tick ``schedule`` must enqueue at ``now``, or None when nothing is due.

    Due: enabled with ``next_tick_at <= now``. The tick is the latest one at or before
    ``now``, never an older missed one.
    """
    if not schedule.enabled or schedule.next_tick_at is None or schedule.next_tick_at > now:
        return None
    cron = CronSchedule.parse(
        schedule.cron, schedule.timezone, variable=f"schedule {schedule.schedule_id}"
    )
    tick = cron.latest_at_or_before(now)
    if tick is None:  # pragma: no cover - next_tick_at <= now is itself a tick
        return None
    return DueTick(
        schedule_id=schedule.schedule_id,
        job_name=schedule.job_name,
        tick=tick,
        job_id=tick_job_id(schedule.schedule_id, tick),
    )


def due_ticks(schedules: Iterable[ScheduleView], now: dt.datetime) -> list[DueTick]:
    """The ticks due at ``now``, one per due schedule."""
    return [tick for s in schedules if (tick := due_tick(s, now)) is not None]


def _run_schedule(ctx: AppContext, schedule_id: str, now: dt.datetime) -> str | None:
    """Enqueue the due tick of one schedule in one transaction; the job id if this created it."""
    with ctx.db.transaction() as session:
        row = store.get_schedule(session, schedule_id)
        if row is None:
            return None
        view = ScheduleView.of(row)
        due = due_tick(view, now)
        if due is None:
            return None
        job, created = enqueue_job(
            session, name=due.job_name, project_id=None, trigger=TRIGGER, job_id=due.job_id
        )
        cron = CronSchedule(view.cron, view.timezone)
        advanced = store.record_tick(
            session,
            schedule_id,
            cron=view.cron,
            timezone=view.timezone,
            tick=due.tick,
            next_tick_at=cron.next_after(now),
        )
    with log_context(jobId=job.job_id):
        log.info(
            "schedule ticked" if created else "schedule tick already enqueued",
            extra={"schedule": schedule_id, "tick": due.tick.isoformat(), "advanced": advanced},
        )
    return job.job_id if created else None


def run_tick(
    ctx: AppContext, now: dt.datetime | None = None, *, clock: Clock = utcnow
) -> list[str]:
    """Enqueue one job for every schedule that is due; return the ids of the jobs created.

    ``now`` (or ``clock()``) is the time the ticks are judged at. Each schedule is handled
    in its own transaction: re-read, job enqueued for its latest due tick (idempotent by job
    id), last and next tick recorded (compare-and-set). A job another scheduler already
    created for the same tick is not created again and not returned. A schedule whose
    stored cron is invalid is logged and skipped; database errors propagate.
    """
    now = now or clock()
    if now.tzinfo is None:
        raise ValueError("run_tick needs a timezone-aware time")
    now = now.astimezone(dt.UTC)
    created: list[str] = []
    for spec in SCHEDULES:
        try:
            job_id = _run_schedule(ctx, spec.schedule_id, now)
        except ConfigurationError as exc:
            log.error(
                "schedule skipped", extra={"schedule": spec.schedule_id, "error": exc.message}
            )
            continue
        if job_id is not None:
            created.append(job_id)
    return created


def seconds_until_next_tick(schedules: Sequence[ScheduleView], now: dt.datetime) -> float | None:
    """Seconds from ``now`` to the earliest next tick of an enabled schedule (0 if due).

    None when no schedule is enabled.
    """
    upcoming = [s.next_tick_at for s in schedules if s.enabled and s.next_tick_at is not None]
    if not upcoming:
        return None
    return max((min(upcoming) - now).total_seconds(), 0.0)


__all__ = [
    "AGGREGATE_SCHEDULE_ID",
    "FETCH_SCHEDULE_ID",
    "SCHEDULES",
    "Clock",
    "DueTick",
    "ScheduleSpec",
    "ScheduleView",
    "configure_schedules",
    "due_tick",
    "due_ticks",
    "list_schedules",
    "run_tick",
    "schedules_from_settings",
    "seconds_until_next_tick",
]
