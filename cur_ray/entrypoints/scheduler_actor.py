"""The scheduler: one named, detached, restartable actor per Ray cluster.

On start it writes the configured schedules (:func:`configure_schedules`; invalid cron
expressions make the actor fail to start with a message naming the variable). When
``CUR_BATCH_SCHEDULER_ENABLED`` is true it then loops: sleep until the next tick (at most
``max_sleep_seconds``, so that changes made by another scheduler are noticed), enqueue the
due ticks (:func:`run_tick`), wake the coordinator. With the flag false the schedules are
disabled and the actor stays idle.

Like the coordinator it keeps nothing that the database does not have: a restarted scheduler
re-reads the schedules and catches up on the latest missed tick once. The actor is a
per-cluster singleton only; two clusters on one database are kept from enqueuing a tick twice
by the tick's job id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import ray

from cur_ray.adapters.db.models import utcnow
from cur_ray.entrypoints.coordinator import CoordinatorNotifier
from cur_ray.entrypoints.singletons import code_version, get_singleton
from cur_ray.logs import configure_logging
from cur_ray.services.context import AppContext
from cur_ray.services.scheduler import (
    ScheduleView,
    configure_schedules,
    list_schedules,
    run_tick,
    seconds_until_next_tick,
)
from cur_ray.settings import load_settings

log = logging.getLogger(__name__)

SCHEDULER_NAME = "cur_ray_scheduler"
MAX_SLEEP_SECONDS = 30.0
RETRY_SECONDS = 1.0
_LATE_BY = 0.05  # wake just after the tick, not a hair before it
_RECENT = 20


class Scheduler:
    """Enqueues the scheduled jobs of the cluster. Create it with :func:`get_scheduler`."""

    def __init__(self, max_sleep_seconds: float = MAX_SLEEP_SECONDS) -> None:
        settings = load_settings()
        configure_logging(settings.log_level)
        self._ctx = AppContext.from_settings(settings)
        self._enabled = settings.cur_batch_scheduler_enabled
        self._max_sleep = max_sleep_seconds
        with self._ctx.db.transaction() as session:
            schedules = configure_schedules(session, settings)
        self._notifier = CoordinatorNotifier()
        self._wake = asyncio.Event()
        self._ticks = 0
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=_RECENT)
        self._loop: asyncio.Task[None] | None = None
        if self._enabled:
            self._loop = asyncio.get_running_loop().create_task(self._run_forever())
            log.info("scheduler started", extra={"schedules": [s.cron for s in schedules]})
        else:
            log.info("scheduler disabled (CUR_BATCH_SCHEDULER_ENABLED is not true)")

    # ----------------------------------------------------------------- public methods
    async def version(self) -> str:
        """The code version this instance runs."""
        return code_version()

    async def status(self) -> dict[str, Any]:
        """Whether it runs, the stored schedules and the jobs its recent ticks created."""
        schedules = await asyncio.to_thread(self._read_schedules)
        return {
            "enabled": self._enabled,
            "running": self._loop is not None and not self._loop.done(),
            "version": code_version(),
            "ticks": self._ticks,
            "recentJobs": list(self._recent),
            "schedules": [s.as_dict() for s in schedules],
        }

    async def tick_now(self, at: str | None = None) -> list[str]:
        """Run the due ticks now (or as if it were ``at``, ISO-8601); return the jobs created.

        Idempotent: a tick already enqueued is not enqueued again. Works while the
        scheduler is disabled too, but disabled schedules are never due.
        """
        now = dt.datetime.fromisoformat(at) if at is not None else None
        created = await self._tick(now)
        self._wake.set()  # the loop recomputes its sleep
        return created

    # ------------------------------------------------------------------------ the loop
    def _read_schedules(self) -> list[ScheduleView]:
        with self._ctx.db.transaction() as session:
            return list_schedules(session)

    def _sleep_seconds(self) -> float:
        wait = seconds_until_next_tick(self._read_schedules(), utcnow())
        if wait is None:
            return self._max_sleep
        if wait <= 0:  # still due right after a tick: that tick failed, retry soon
            return RETRY_SECONDS
        return min(wait + _LATE_BY, self._max_sleep)

    async def _tick(self, now: dt.datetime | None) -> list[str]:
        created = await asyncio.to_thread(run_tick, self._ctx, now)
        self._ticks += 1
        if created:
            at = (now or utcnow()).isoformat()
            self._recent.extend({"jobId": job_id, "at": at} for job_id in created)
            try:
                await self._notifier.notify()
            except Exception:  # the job is stored; the coordinator finds it when it polls
                log.warning("could not wake the coordinator", exc_info=True)
        return created

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._tick(None)
                delay = await asyncio.to_thread(self._sleep_seconds)
            except Exception:  # the loop must survive a database outage
                log.exception("scheduler loop error")
                delay = min(5 * RETRY_SECONDS, self._max_sleep)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()


SchedulerActor: Any = ray.remote(Scheduler)


def get_scheduler(env: Mapping[str, str] | None = None) -> Any:
    """The cluster's scheduler, created if absent and replaced if it runs other code.

    A scheduler whose settings are invalid fails to start: ConfigurationError with its message.
    """
    return get_singleton(SchedulerActor, SCHEDULER_NAME, env)
